// Runs nft inside a pod's network namespace (nsenter --net=PATH), feeding a ruleset on stdin.
import { spawn } from 'node:child_process';
import { TrellisError } from '../errors.js';

export interface NftResult {
  stdout: string;
}

/**
 * Runs argv inside the netns. `tolerated`: a failing exit still counts as success when every line it printed on
 * stderr matches (an `ip -batch` whose only failures are "already there" or "already gone").
 */
export function runInNetns(netnsPath: string, argv: string[], input?: string, timeoutMs = 10_000, tolerated?: RegExp): Promise<NftResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('nsenter', [`--net=${netnsPath}`, '--', ...argv], { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    // A child that exits before reading its input makes the write fail with EPIPE; its exit code already says
    // what went wrong, and an unheard 'error' here would take the agent down.
    child.stdin?.on('error', () => undefined);
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const hint = err.code === 'ENOENT' ? ' (install util-linux for nsenter and nftables for nft)' : '';
      reject(new TrellisError('ECAPTURE', `${argv[0]} in ${netnsPath}: ${err.message}${hint}`, { cause: err }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve({ stdout });
      if (tolerated && !signal && stderr.split('\n').every((l) => l.trim() === '' || tolerated.test(l))) return resolve({ stdout });
      const why = signal ? `killed by ${signal}` : `exit ${code}`;
      reject(new TrellisError('ECAPTURE', `${argv.join(' ')} in ${netnsPath} failed (${why}): ${stderr.trim()}`));
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

export function nftApply(netnsPath: string, ruleset: string): Promise<NftResult> {
  return runInNetns(netnsPath, ['nft', '-f', '-'], ruleset);
}

export function nftList(netnsPath: string): Promise<string> {
  return runInNetns(netnsPath, ['nft', 'list', 'ruleset']).then((r) => r.stdout);
}
