// The lab's processes (pod commands, agents): started detached in their own process group, recorded
// with their kernel start time so a later `down` or `sweep` never signals a recycled pid.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, readdirSync } from 'node:fs';
import { LAB_ENV } from './names.js';
import { run } from './run.js';

export interface ProcRecord {
  pid: number;
  /** Start time in clock ticks since boot (/proc/<pid>/stat field 22): a pid's identity across reuse. */
  start: number;
}

interface ProcStat {
  comm: string;
  state: string;
  pgrp: number;
  start: number;
}

const POLL_MS = 50;

export function procStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // comm may hold spaces and parentheses; the fields after the last ')' are fixed.
  const close = text.lastIndexOf(')');
  const fields = text.slice(close + 2).split(' ');
  return {
    comm: text.slice(text.indexOf('(') + 1, close),
    state: fields[0]!,
    pgrp: Number(fields[2]),
    start: Number(fields[19]),
  };
}

/** Whether the recorded process still runs (a zombie counts as gone: it only waits to be reaped). */
export function isAlive(p: ProcRecord): boolean {
  const st = procStat(p.pid);
  return st !== undefined && st.state !== 'Z' && st.start === p.start;
}

export function recordOf(pid: number): ProcRecord | undefined {
  const st = procStat(pid);
  return st && st.state !== 'Z' ? { pid, start: st.start } : undefined;
}

export function describeProc(pid: number): string {
  const st = procStat(pid);
  return st ? `${pid} (${st.comm})` : String(pid);
}

/** Starts argv detached (own session and process group), output appended to logFile. */
export function spawnDetached(
  argv: string[],
  opts: { env: NodeJS.ProcessEnv; logFile: string },
): { child: ChildProcess; record: Promise<ProcRecord> } {
  const fd = openSync(opts.logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio: ['ignore', fd, fd], env: opts.env });
  } finally {
    // The child holds its own copy of the descriptor.
    closeSync(fd);
  }
  child.unref();
  const record = new Promise<ProcRecord>((resolve, reject) => {
    child.once('error', reject);
    child.once('spawn', () => {
      const rec = child.pid === undefined ? undefined : recordOf(child.pid);
      // A command that exits at once still has a pid worth recording; start 0 never matches a live process.
      resolve(rec ?? { pid: child.pid ?? 0, start: 0 });
    });
  });
  return { child, record };
}

/** The pids whose network namespace is the named one (`ip netns pids`). */
export async function netnsPids(netns: string): Promise<number[]> {
  const r = await run('ip', ['netns', 'pids', netns], { timeoutMs: 10_000 });
  if (r.code !== 0) return [];
  return r.stdout
    .split(/\s+/)
    .filter(Boolean)
    .map(Number)
    .filter((n) => Number.isInteger(n) && n > 0);
}

/** Processes carrying the lab marker in their environment, for labs the predicate accepts. */
export function labEnvPids(accept: (lab: string) => boolean): { pid: number; lab: string }[] {
  const out: { pid: number; lab: string }[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  const marker = `${LAB_ENV}=`;
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    let env: string;
    try {
      env = readFileSync(`/proc/${name}/environ`, 'latin1');
    } catch {
      continue;
    }
    const hit = env.split('\0').find((kv) => kv.startsWith(marker));
    if (!hit) continue;
    const lab = hit.slice(marker.length);
    if (accept(lab)) out.push({ pid: Number(name), lab });
  }
  return out;
}

export interface Target extends ProcRecord {
  /** Also signal the process group this pid leads (set for processes the lab started itself). */
  group: boolean;
}

/**
 * SIGTERM, then SIGKILL for what is left after graceMs, then waits (bounded) until all are gone.
 * Never signals this process, its parent, or a pid whose start time changed. Returns the pids it signalled.
 */
export async function terminate(targets: Target[], graceMs = 3000): Promise<number[]> {
  const protectedPids = new Set([0, 1, process.pid, process.ppid]);
  const ownGroup = procStat(process.pid)?.pgrp;
  const live = dedupe(targets).filter((t) => !protectedPids.has(t.pid) && isAlive(t));
  // Leaders checked once, while their identity is verified; a pgid is not reused while any member lives.
  const leaders = live.filter((t) => t.group && procStat(t.pid)?.pgrp === t.pid && t.pid !== ownGroup);
  const signal = (sig: NodeJS.Signals): void => {
    for (const t of leaders) {
      try {
        process.kill(-t.pid, sig);
      } catch {
        // Group already gone.
      }
    }
    for (const t of live) {
      if (!isAlive(t)) continue;
      try {
        process.kill(t.pid, sig);
      } catch {
        // Exited meanwhile.
      }
    }
  };
  signal('SIGTERM');
  if (!(await waitGone(live, graceMs))) {
    signal('SIGKILL');
    await waitGone(live, 2000);
  }
  return live.map((t) => t.pid);
}

async function waitGone(targets: ProcRecord[], ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (!targets.some(isAlive)) return true;
    if (Date.now() >= deadline) return false;
    await sleep(POLL_MS);
  }
}

function dedupe(targets: Target[]): Target[] {
  const byPid = new Map<number, Target>();
  for (const t of targets) {
    const prev = byPid.get(t.pid);
    byPid.set(t.pid, prev ? { ...prev, group: prev.group || t.group } : t);
  }
  return [...byPid.values()];
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
