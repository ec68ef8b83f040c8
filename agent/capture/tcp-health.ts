// TCP health per edge: a sockops program on the agent's own cgroup (v2) keeps the smoothed RTT and retransmissions of
// every TCP socket of the agent (native/bpf/tcp_health.bpf.c); the data plane reads a connection's socket toward its
// peer when the connection ends (proxy/tcp-health.ts). It runs in both capture modes wherever the kernel has sockops
// and cgroup v2 and the agent has a cgroup of its own: at the root cgroup it would see every socket of the machine.
// Held by file descriptors of the agent (nothing pinned): gone with it however it stops.
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { TcpHealthLink } from '../native/index.js';
import { cgroup2Mount, feature, type KernelReport } from './kernel.js';

/** What the agent needs of the link (TcpHealthLink; a fake in tests). */
export interface TcpHealthLinkLike {
  readonly closed: boolean;
  ids(): { cgroupId: number; mapFd: number };
  reattach(): void;
  close(): void;
}

export interface TcpHealthInputs {
  report: KernelReport;
  logger: Logger;
  attach?: (cgroupPath: string) => TcpHealthLinkLike;
  /** /proc/self/cgroup's text. */
  procCgroup?: () => string;
  /** /proc/self/mountinfo's text (read again after a mount). */
  mountinfo?: () => string;
  /** Whether this process has a mount namespace of its own (not PID 1's), where a mount of ours touches nobody else. */
  privateMounts?: () => boolean;
  /** Mounts cgroup2 at the path, in this process's mount namespace. */
  mountCgroup2?: (at: string) => Promise<void>;
  /** Whether a cgroup directory is the machine's root cgroup (which, unlike every other, has no cgroup.events). */
  isRootCgroup?: (dir: string) => boolean;
}

export type TcpHealthStart = { readonly ok: true; readonly health: TcpHealth } | { readonly ok: false; readonly reason: string };

/** Where a cgroup2 mount of our own goes when none is visible: sysfs's own mount point, empty in a fresh /sys. */
const PRIVATE_MOUNT = '/sys/fs/cgroup';

/** The agent's cgroup v2 path ("0::/path" of /proc/self/cgroup); undefined without cgroup v2. */
export function ownCgroup2Path(procCgroup: string): string | undefined {
  for (const line of procCgroup.split('\n')) {
    if (line.startsWith('0::')) return line.slice(3).trim() || undefined;
  }
  return undefined;
}

/**
 * Attaches the program to the agent's cgroup, or says why not (never throws). With no cgroup2 mount visible (an agent
 * started by `ip netns exec`, which mounts a fresh /sys) it mounts one of its own, but only in a mount namespace of
 * its own, where nobody else sees it and it goes with the namespace.
 */
export async function startTcpHealth(inputs: TcpHealthInputs): Promise<TcpHealthStart> {
  const sockOps = feature(inputs.report, 'sock_ops');
  if (!sockOps.ok) return { ok: false, reason: `sock_ops: ${sockOps.detail}` };
  const own = ownCgroup2Path((inputs.procCgroup ?? (() => readFileSync('/proc/self/cgroup', 'utf8')))());
  if (own === undefined) return { ok: false, reason: 'the agent is in no cgroup v2 (/proc/self/cgroup has no 0:: line)' };
  const mountinfo = inputs.mountinfo ?? (() => readFileSync('/proc/self/mountinfo', 'utf8'));
  let mount = cgroup2Mount(safe(mountinfo));
  if (!mount) {
    if (!(inputs.privateMounts ?? privateMountNamespace)()) {
      return { ok: false, reason: 'no cgroup v2 mount visible to the agent, and it shares its mount namespace: mount cgroup2 (e.g. at /sys/fs/cgroup) where it runs' };
    }
    try {
      await (inputs.mountCgroup2 ?? mountCgroup2)(PRIVATE_MOUNT);
    } catch (err) {
      return { ok: false, reason: `no cgroup v2 mount visible, and mounting one at ${PRIVATE_MOUNT} (in the agent's own mount namespace) failed: ${(err as Error).message}` };
    }
    mount = cgroup2Mount(safe(mountinfo));
    if (!mount) return { ok: false, reason: `cgroup2 was mounted at ${PRIVATE_MOUNT} but does not show in /proc/self/mountinfo` };
    inputs.logger.info({ at: mount.path }, 'cgroup v2 mounted in the agent\'s own mount namespace, for its sockops program');
  }
  // "/" in a container's cgroup namespace is the container's cgroup; the machine's root is told by its files.
  const cgroupPath = path.resolve(mount.path, `.${own}`);
  if ((inputs.isRootCgroup ?? ((dir) => !existsSync(path.join(dir, 'cgroup.events'))))(cgroupPath)) {
    return { ok: false, reason: `the agent runs in the root cgroup (${cgroupPath}), where a sockops program would see every TCP socket of the machine; run it in a cgroup of its own (a container has one)` };
  }
  try {
    const link = (inputs.attach ?? ((p) => TcpHealthLink.attach(p)))(cgroupPath);
    return { ok: true, health: new TcpHealth(link, cgroupPath, inputs.logger) };
  } catch (err) {
    return { ok: false, reason: (err as Error).message };
  }
}

export class TcpHealth {
  /** The stats map's fd, which every thread of the agent reads. */
  readonly mapFd: number;

  constructor(
    private readonly link: TcpHealthLinkLike,
    readonly cgroupPath: string,
    private readonly logger: Logger,
  ) {
    this.mapFd = link.ids().mapFd;
  }

  /**
   * Drift: the link was detached from outside (bpftool link detach: its cgroup is gone from it) and is made again;
   * true when it was. Throws when it cannot be.
   */
  repairDetached(): boolean {
    if (this.link.closed || this.link.ids().cgroupId !== 0) return false;
    this.logger.warn({ cgroup: this.cgroupPath }, 'capture drift: the sockops program was detached from the agent\'s cgroup; attaching it again');
    this.link.reattach();
    return true;
  }

  close(): void {
    this.link.close();
  }
}

function safe(read: () => string): string {
  try {
    return read();
  } catch {
    return '';
  }
}

function emptyDir(dir: string): boolean {
  try {
    return readdirSync(dir).length === 0;
  } catch {
    return false;
  }
}

/**
 * Whether this process's mount namespace is not that of PID 1, or (where PID 1's cannot be read) not that of the
 * process that started it: `ip netns exec` makes one and then execs the agent.
 */
function privateMountNamespace(): boolean {
  const ns = (pid: string): string | undefined => {
    try {
      return readlinkSync(`/proc/${pid}/ns/mnt`);
    } catch {
      return undefined;
    }
  };
  const own = ns('self');
  const other = ns('1') ?? (process.ppid > 0 ? ns(String(process.ppid)) : undefined);
  return own !== undefined && other !== undefined && own !== other;
}

/** Mounts cgroup2 at `at`, which must be an empty directory (nothing is ever mounted over something). */
function mountCgroup2(at: string): Promise<void> {
  if (!emptyDir(at)) return Promise.reject(new Error(`${at} is not an empty directory`));
  return new Promise((resolve, reject) => {
    execFile('mount', ['-t', 'cgroup2', 'cgroup2', at], { timeout: 5_000 }, (err, _stdout, stderr) => {
      if (err) reject(new Error(String(stderr).trim() || err.message));
      else resolve();
    });
  });
}
