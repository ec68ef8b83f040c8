// Runs the host tools the lab is built with (ip, nft, sysctl) and the commands users run in pods;
// a failure names the command and carries its stderr.
import { spawn } from 'node:child_process';
import os from 'node:os';
import { LabError, systemCode } from '../errors.js';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
  /** Default 60 s; on expiry the whole process group is killed and the promise rejects with ETIMEDOUT. */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 60_000;
// Keeps a runaway command from filling memory; the tail is what explains a failure.
const MAX_OUTPUT = 16 * 1024 * 1024;

/** Runs file with args to completion. The exit code of a command killed by a signal is 128 + its number. */
export function run(file: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    // Its own process group, so a timeout also kills whatever the command started.
    const child = spawn(file, args, { env: opts.env ?? process.env, detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outLen = 0;
    let errLen = 0;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid, 'SIGKILL');
    }, timeoutMs);
    child.stdout.on('data', (d: Buffer) => {
      if (outLen < MAX_OUTPUT) out.push(d);
      outLen += d.length;
    });
    child.stderr.on('data', (d: Buffer) => {
      if (errLen < MAX_OUTPUT) err.push(d);
      errLen += d.length;
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const hint = e.code === 'ENOENT' ? ` (is ${file} installed? the lab needs iproute2 and nftables)` : '';
      reject(new LabError(systemCode(e.code, 'EPROC'), `${file}: ${e.message}${hint}`, { cause: e }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (timedOut) {
        const tail = (stderr || stdout).trim().split('\n').slice(-5).join('\n');
        reject(
          new LabError(
            'ETIMEDOUT',
            `${[file, ...args].join(' ')}: timed out after ${timeoutMs} ms${tail ? `; last output:\n${tail}` : ''}`,
          ),
        );
        return;
      }
      resolve({ code: code ?? 128 + signalNumber(signal), stdout, stderr });
    });
    child.stdin.on('error', () => {
      // The command may exit without reading its input; that is its business, not an error here.
    });
    child.stdin.end(opts.input ?? '');
  });
}

/** Runs a command that must succeed; otherwise throws ELAB saying what the lab was doing. */
export async function must(what: string, file: string, args: string[], opts: RunOptions = {}): Promise<string> {
  const r = await run(file, args, opts);
  if (r.code !== 0) {
    const detail = (r.stderr.trim() || r.stdout.trim() || `exit ${r.code}`).split('\n').slice(0, 8).join('\n');
    throw new LabError('ELAB', `${what}: \`${[file, ...args].join(' ')}\` failed: ${detail}`);
  }
  return r.stdout;
}

export function killGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined || pid <= 1) return;
  try {
    process.kill(-pid, signal);
  } catch {
    // Already gone.
  }
}

function signalNumber(signal: NodeJS.Signals | null): number {
  return signal ? (os.constants.signals[signal] ?? 0) : 0;
}
