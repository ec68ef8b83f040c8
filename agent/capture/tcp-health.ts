// TCP health per edge: a sockops program on the agent's own cgroup (v2) keeps the smoothed RTT and retransmissions of
// every TCP socket of the agent (native/bpf/tcp_health.bpf.c); the data plane reads a connection's socket toward its
// peer when the connection ends (proxy/tcp-health.ts). It runs in both capture modes wherever the kernel has sockops
// and cgroup v2 and the agent has a cgroup of its own: at the root cgroup it would see every socket of the machine.
// Held by file descriptors of the agent (nothing pinned): gone with it however it stops.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { TcpHealthLink } from '../native/index.js';
import { cgroup2View, type Cgroup2Inputs } from './cgroup.js';
import { feature, type KernelReport } from './kernel.js';

/** What the agent needs of the link (TcpHealthLink; a fake in tests). */
export interface TcpHealthLinkLike {
  readonly closed: boolean;
  ids(): { cgroupId: number; mapFd: number };
  reattach(): void;
  close(): void;
}

export interface TcpHealthInputs extends Cgroup2Inputs {
  report: KernelReport;
  logger: Logger;
  attach?: (cgroupPath: string) => TcpHealthLinkLike;
  /** /proc/self/cgroup's text. */
  procCgroup?: () => string;
  /** Whether a cgroup directory is the machine's root cgroup (which, unlike every other, has no cgroup.events). */
  isRootCgroup?: (dir: string) => boolean;
}

export type TcpHealthStart = { readonly ok: true; readonly health: TcpHealth } | { readonly ok: false; readonly reason: string };

/** The agent's cgroup v2 path ("0::/path" of /proc/self/cgroup); undefined without cgroup v2. */
export function ownCgroup2Path(procCgroup: string): string | undefined {
  for (const line of procCgroup.split('\n')) {
    if (line.startsWith('0::')) return line.slice(3).trim() || undefined;
  }
  return undefined;
}

/**
 * Attaches the program to the agent's cgroup, or says why not (never throws). With no cgroup2 mount visible it mounts
 * one of its own where that touches nobody else (cgroup.ts).
 */
export async function startTcpHealth(inputs: TcpHealthInputs): Promise<TcpHealthStart> {
  const sockOps = feature(inputs.report, 'sock_ops');
  if (!sockOps.ok) return { ok: false, reason: `sock_ops: ${sockOps.detail}` };
  const own = ownCgroup2Path((inputs.procCgroup ?? (() => readFileSync('/proc/self/cgroup', 'utf8')))());
  if (own === undefined) return { ok: false, reason: 'the agent is in no cgroup v2 (/proc/self/cgroup has no 0:: line)' };
  const found = await cgroup2View(inputs);
  if (!found.ok) return found;
  const mount = found.mount;
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
