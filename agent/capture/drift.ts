// Drift repair: every interval, checks that each enrolled pod still has exactly our nft table and our three
// listeners inside its netns, and that our BPF links are still attached, and repairs what drifted (someone flushed
// the rules, a listener was killed, a link was detached with bpftool).
import { spawn } from 'node:child_process';
import { readdir, readlink } from 'node:fs/promises';
import type { Logger } from 'pino';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import { HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT } from '../constants.js';
import type { Workload } from '../state/workload.js';
import type { Metrics } from '../telemetry/metrics.js';
import { runInNetns } from './nft.js';
import type { OutboundLinkKind } from './connect.js';
import { netnsId } from './netns.js';
import { CAPTURE_TABLE, captureRuleset, type InboundCapture, type OutboundCapture } from './rules.js';

/** BPF links drift repairs, as trellis_capture_drift_repairs_total{what} counts them. */
export type BpfLinkKind = 'sk_lookup' | 'sockops' | OutboundLinkKind;

/** What the checker needs from the enrolment: who is enrolled, and repairs that run in its work loop. */
export interface DriftTarget {
  enrolledPods(): Workload[];
  repairRules(key: string, netnsPath: string): Promise<boolean>;
  reopenListeners(key: string, netnsPath: string): Promise<boolean>;
}

export interface DriftInputs {
  enrolment: DriftTarget;
  /** The same probe sources the enrolment installs with: they are part of the expected ruleset. */
  probeSources: readonly string[];
  /**
   * The BPF links (each pod's sk_lookup, the sockops program): those detached from outside are attached again and
   * returned, by kind. Throws when one cannot be; the next pass tries again.
   */
  bpf?: () => { what: BpfLinkKind; target: string }[];
  /** The capture mode's inbound, as the enrolment installs it (default nft). */
  inbound?: InboundCapture;
  /** The capture mode's outbound, as the enrolment installs it (default nft). */
  outbound?: OutboundCapture;
  intervalMs: number;
  metrics: Metrics;
  logger: Logger;
  clock?: Clock;
}

export interface DriftReport {
  checked: number;
  repaired: { rules: string[]; listeners: string[]; bpf: string[] };
  failed: { pod: string; what: 'rules' | 'listeners' | 'bpf'; error: string }[];
}

/** The agent's listeners in every enrolled pod: address as /proc/net/tcp shows it. */
const LISTENERS = [
  { host: '127.0.0.1', port: OUTBOUND_PORT },
  { host: '0.0.0.0', port: INBOUND_PLAINTEXT_PORT },
  { host: '0.0.0.0', port: HBONE_PORT },
] as const;
const TCP_LISTEN = '0A';
const COMMAND_TIMEOUT_MS = 5_000;

export class DriftChecker {
  private readonly clock: Clock;
  private timer: TimerHandle | undefined;
  private running: Promise<DriftReport> | undefined;
  private expected: Promise<string | undefined> | undefined;
  private stopped = false;

  constructor(private readonly inputs: DriftInputs) {
    this.clock = inputs.clock ?? systemClock;
  }

  /** Checks every interval until stop(). */
  start(): void {
    this.stopped = false;
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
    this.timer = undefined;
  }

  /** One pass over the enrolled pods; concurrent callers share the pass in progress. */
  check(): Promise<DriftReport> {
    this.running ??= this.pass().finally(() => (this.running = undefined));
    return this.running;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = this.clock.after(this.inputs.intervalMs, () => {
      void this.check()
        .catch((err: Error) => this.inputs.logger.error({ err: err.message }, 'drift check failed'))
        .finally(() => this.schedule());
    });
  }

  private async pass(): Promise<DriftReport> {
    const report: DriftReport = { checked: 0, repaired: { rules: [], listeners: [], bpf: [] }, failed: [] };
    this.checkBpf(report);
    const pods = this.inputs.enrolment.enrolledPods();
    if (pods.length === 0) return report;
    const expected = await this.expectedListing();
    const own = await ownSocketInodes();
    // One pod at a time: a pass costs two short processes per pod, spread out rather than in a burst.
    for (const pod of pods) await this.checkPod(pod, expected, own, report);
    return report;
  }

  private async checkPod(pod: Workload, expected: string | undefined, own: Set<string>, report: DriftReport): Promise<void> {
    const netns = pod.netnsPath;
    // A pod whose netns is gone is leaving; the state will unenrol it.
    if (!netns || !(await netnsId(netns))) return;
    report.checked++;
    const [listing, sockets] = await Promise.all([listTable(netns), listeningSockets(netns)]);

    const missing = sockets
      ? LISTENERS.filter((l) => !sockets.some((s) => s.host === l.host && s.port === l.port && own.has(s.inode)))
      : [...LISTENERS];
    if (missing.length) {
      const gone = missing.map((l) => `${l.host}:${l.port}`);
      this.inputs.logger.warn({ pod: pod.key, missing: gone }, 'capture drift: listeners missing, reopening them');
      await this.repair(pod, 'listeners', report, () => this.inputs.enrolment.reopenListeners(pod.key, netns));
    }

    const rulesOk = listing !== undefined && (expected === undefined || normalize(listing) === expected);
    if (!rulesOk) {
      const why = listing === undefined ? `table inet ${CAPTURE_TABLE} is missing` : `table inet ${CAPTURE_TABLE} was changed`;
      this.inputs.logger.warn({ pod: pod.key, why }, 'capture drift: reinstalling the capture rules');
      await this.repair(pod, 'rules', report, () => this.inputs.enrolment.repairRules(pod.key, netns));
    }
  }

  /** BPF links are checked by their ids (a detached link has no netns or cgroup), in the agent itself: no process. */
  private checkBpf(report: DriftReport): void {
    if (!this.inputs.bpf) return;
    try {
      for (const { what, target } of this.inputs.bpf()) {
        report.repaired.bpf.push(`${what} ${target}`);
        this.inputs.metrics.captureDriftRepairs.inc({ what });
        this.inputs.logger.info({ what, target }, 'capture drift repaired: BPF program attached again');
      }
    } catch (err) {
      const error = (err as Error).message;
      report.failed.push({ pod: '-', what: 'bpf', error });
      this.inputs.logger.error({ what: 'bpf', err: error }, 'capture drift repair failed; retrying on the next pass');
    }
  }

  private async repair(pod: Workload, what: 'rules' | 'listeners', report: DriftReport, fn: () => Promise<boolean>): Promise<void> {
    try {
      // False: the pod left while we looked; nothing to repair.
      if (!(await fn())) return;
      report.repaired[what].push(pod.key);
      this.inputs.metrics.captureDriftRepairs.inc({ what });
      this.inputs.logger.info({ pod: pod.key, what }, 'capture drift repaired');
    } catch (err) {
      const error = (err as Error).message;
      report.failed.push({ pod: pod.key, what, error });
      this.inputs.logger.error({ pod: pod.key, what, err: error }, 'capture drift repair failed; retrying on the next pass');
    }
  }

  /**
   * What nft lists for our ruleset, from a scratch netns: nft's own canonical text, so the comparison holds across
   * nft versions. Undefined if no scratch netns can be made: then only the table's presence is checked.
   */
  private expectedListing(): Promise<string | undefined> {
    this.expected ??= scratchListing(
      captureRuleset({ probeSources: this.inputs.probeSources, inbound: this.inputs.inbound ?? 'nft', outbound: this.inputs.outbound ?? 'nft' }),
    ).then(
      (text) => normalize(text),
      (err: Error) => {
        this.inputs.logger.error({ err: err.message }, 'cannot list the expected capture rules in a scratch netns; drift checks only that the table exists');
        return undefined;
      },
    );
    return this.expected;
  }
}

function normalize(listing: string): string {
  return listing
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .join('\n');
}

async function listTable(netns: string): Promise<string | undefined> {
  try {
    return (await runInNetns(netns, ['nft', 'list', 'table', 'inet', CAPTURE_TABLE], undefined, COMMAND_TIMEOUT_MS)).stdout;
  } catch {
    return undefined;
  }
}

interface Listening {
  host: string;
  port: number;
  inode: string;
}

/** Listening IPv4 TCP sockets in the netns, read from /proc/net/tcp by a process inside it. */
async function listeningSockets(netns: string): Promise<Listening[] | undefined> {
  try {
    return parseProcNetTcp((await runInNetns(netns, ['cat', '/proc/net/tcp'], undefined, COMMAND_TIMEOUT_MS)).stdout);
  } catch {
    return undefined;
  }
}

export function parseProcNetTcp(text: string): Listening[] {
  const out: Listening[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    const local = f[1];
    if (!local || f[3] !== TCP_LISTEN || f[9] === undefined) continue;
    const [hex, port] = local.split(':');
    if (!hex || hex.length !== 8 || !port) continue;
    // The address is the kernel's 32-bit word printed in host (little-endian) order.
    const host = [6, 4, 2, 0].map((i) => parseInt(hex.slice(i, i + 2), 16)).join('.');
    out.push({ host, port: parseInt(port, 16), inode: f[9] });
  }
  return out;
}

/** Inodes of the sockets this process holds: a listener counts only if it is ours, not an app's on our port. */
async function ownSocketInodes(): Promise<Set<string>> {
  const out = new Set<string>();
  const fds = await readdir('/proc/self/fd').catch(() => [] as string[]);
  await Promise.all(
    fds.map(async (fd) => {
      const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
      const m = /^socket:\[(\d+)\]$/.exec(target);
      if (m?.[1]) out.add(m[1]);
    }),
  );
  return out;
}

function scratchListing(ruleset: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const script = `nft -f - && exec nft list table inet ${CAPTURE_TABLE}`;
    const child = spawn('unshare', ['--net', '--', 'sh', '-c', script], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), COMMAND_TIMEOUT_MS);
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(stdout);
      else reject(new Error(`unshare --net nft: exit ${code}: ${stderr.trim()}`));
    });
    child.stdin.end(ruleset);
  });
}
