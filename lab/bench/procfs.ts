// Bench: what the proxies cost, read from /proc: CPU time (utime + stime, all threads of the process) and
// resident memory (VmRSS). Parsing is pure; reading takes the /proc root so tests can point elsewhere.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { LabError } from '../errors.js';

export interface ProcCpu {
  /** User and system time of every thread of the process, in clock ticks. */
  utimeTicks: number;
  stimeTicks: number;
  threads: number;
}

/** Parses /proc/PID/stat (the process-wide line, which sums all its threads). */
export function parseProcStat(text: string): ProcCpu {
  // comm may hold spaces and parentheses; the fields after the last ')' are fixed (field 3 is first).
  const close = text.lastIndexOf(')');
  if (close < 0) throw new LabError('EPROC', `not a /proc/PID/stat line: ${JSON.stringify(text.slice(0, 80))}`);
  const f = text.slice(close + 2).trim().split(' ');
  const field = (n: number): number => {
    const v = Number(f[n - 3]);
    if (!Number.isFinite(v)) throw new LabError('EPROC', `/proc/PID/stat field ${n} is not a number`);
    return v;
  };
  return { utimeTicks: field(14), stimeTicks: field(15), threads: field(20) };
}

/** VmRSS from /proc/PID/status, in kB. */
export function parseVmRssKb(status: string): number {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  if (!m) throw new LabError('EPROC', 'no VmRSS line in /proc/PID/status (is the process a zombie?)');
  return Number(m[1]);
}

/**
 * RssAnon from /proc/PID/status, in kB: resident memory of the process's own (heap, stacks, buffers), without
 * the pages of its executable and libraries, which the kernel shares between all processes running them.
 */
export function parseRssAnonKb(status: string): number {
  const m = /^RssAnon:\s+(\d+)\s+kB$/m.exec(status);
  if (!m) throw new LabError('EPROC', 'no RssAnon line in /proc/PID/status (is the process a zombie?)');
  return Number(m[1]);
}

/**
 * Busy clock ticks of one CPU from /proc/stat (user, nice, system, steal; interrupt time left out, since
 * it is not charged to any process and the proxies' own packets are part of it).
 */
export function parseCpuBusyTicks(procStat: string, cpu: number): number {
  const line = procStat.split('\n').find((l) => l.startsWith(`cpu${cpu} `));
  if (!line) throw new LabError('EPROC', `no cpu${cpu} line in /proc/stat`);
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, , , , , steal = 0] = f;
  return user + nice + system + steal;
}

/** Clock ticks per second (CLK_TCK); 100 on every Linux this runs on, asked once anyway. */
export function clockTicks(): number {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    if (n > 0) return n;
  } catch {
    // getconf missing: the kernel's USER_HZ is 100 on all mainstream architectures.
  }
  return 100;
}

export class ProcReader {
  constructor(
    private readonly ticksPerSecond: number = clockTicks(),
    private readonly root = '/proc',
  ) {}

  /** CPU seconds (user + system) the processes have used so far. */
  cpuSeconds(pids: readonly number[]): number {
    let ticks = 0;
    for (const pid of pids) {
      const st = parseProcStat(this.read(pid, 'stat'));
      ticks += st.utimeTicks + st.stimeTicks;
    }
    return ticks / this.ticksPerSecond;
  }

  /** Seconds CPU `cpu` has been busy (see parseCpuBusyTicks). */
  cpuBusySeconds(cpu: number): number {
    let text: string;
    try {
      text = readFileSync(`${this.root}/stat`, 'utf8');
    } catch (err) {
      throw new LabError('EPROC', `cannot read ${this.root}/stat: ${(err as Error).message}`, { cause: err });
    }
    return parseCpuBusyTicks(text, cpu) / this.ticksPerSecond;
  }

  /** Resident memory of the processes together, in kB. */
  rssKb(pids: readonly number[]): number {
    let kb = 0;
    for (const pid of pids) kb += parseVmRssKb(this.read(pid, 'status'));
    return kb;
  }

  /** Anonymous resident memory of the processes together (parseRssAnonKb), in kB. */
  anonKb(pids: readonly number[]): number {
    let kb = 0;
    for (const pid of pids) kb += parseRssAnonKb(this.read(pid, 'status'));
    return kb;
  }

  private read(pid: number, file: string): string {
    try {
      return readFileSync(`${this.root}/${pid}/${file}`, 'utf8');
    } catch (err) {
      throw new LabError('EPROC', `cannot read ${this.root}/${pid}/${file}: ${(err as Error).message} (did the process exit?)`, { cause: err });
    }
  }
}
