// Outbound capture in eBPF mode: one set of programs on a cgroup root (native/bpf/outbound.bpf.c) sends the TCP
// connects of meshed pods, known by their netns cookie, to the agent's outbound listener (15001) in the pod with no
// NAT, and remembers where each was going; the data plane reads that back for each accepted connection (by the map's
// fd, proxy/outbound.ts). Enrolment registers a pod's netns here; held by file descriptors of the agent, the programs
// go with it however it stops.
import path from 'node:path';
import type { Logger } from 'pino';
import { AGENT_MARK, OUTBOUND_PORT, TRANSPARENT_MARK } from '../constants.js';
import type { Workload } from '../state/workload.js';
import { netnsCookie, OUTBOUND_VERDICTS, OutboundLink, type OutboundVerdict } from '../native/index.js';

/** The outbound programs as drift repairs count them (trellis_capture_drift_repairs_total{what}). */
export type OutboundLinkKind = 'connect4' | 'connect6' | 'getpeername4' | 'getpeername6' | 'outbound_sockops';

const OUTBOUND_KINDS: Readonly<Record<string, OutboundLinkKind>> = {
  trellis_conn4: 'connect4',
  trellis_conn6: 'connect6',
  trellis_peer4: 'getpeername4',
  trellis_peer6: 'getpeername6',
  trellis_outops: 'outbound_sockops',
};

/** What the capture needs of the programs (OutboundLink; a fake in tests). */
export interface OutboundLinkLike {
  readonly closed: boolean;
  ids(): { links: readonly { name: string; cgroupId: number }[]; shared: boolean; mapFd: number };
  reattach(): void;
  setPod(netnsCookie: number, ips: readonly string[]): void;
  deletePod(netnsCookie: number): void;
  verdicts(): Record<OutboundVerdict, number>;
  close(): void;
}

/** One pod's registration, as enrolment holds it. */
export interface Registered {
  close(): void;
}

export interface OutboundCaptureInputs {
  link: OutboundLinkLike;
  cgroupPath: string;
  /** The cookie of a pod's netns (SO_NETNS_COOKIE on a socket opened there). */
  netnsCookie?: (netnsPath: string) => number;
  logger: Logger;
}

export class OutboundCapture {
  /** The map of original destinations by accepted port, which every thread of the agent reads. */
  readonly mapFd: number;
  /** Whether the maps are a predecessor's (a hand-over: connections its programs redirect are found here too). */
  readonly shared: boolean;
  /** Registered pods: netns cookie by pod key, so a pod's registration is released once. */
  private readonly pods = new Map<string, number>();

  constructor(private readonly inputs: OutboundCaptureInputs) {
    const ids = inputs.link.ids();
    this.mapFd = ids.mapFd;
    this.shared = ids.shared;
  }

  get cgroupPath(): string {
    return this.inputs.cgroupPath;
  }

  /** The pod's connects go to the agent from now on; throws (nothing registered) when its netns cannot be read. */
  register(pod: Workload): Registered {
    if (!pod.netnsPath || !pod.ip) throw new Error(`pod ${pod.key} has no netns path or IP`);
    const cookie = (this.inputs.netnsCookie ?? netnsCookie)(pod.netnsPath);
    this.inputs.link.setPod(cookie, [pod.ip]);
    this.pods.set(pod.key, cookie);
    let closed = false;
    return {
      close: () => {
        if (closed) return;
        closed = true;
        if (this.pods.get(pod.key) === cookie) this.pods.delete(pod.key);
        if (this.inputs.link.closed) return;
        try {
          this.inputs.link.deletePod(cookie);
        } catch (err) {
          this.inputs.logger.warn({ pod: pod.key, err: (err as Error).message }, "cannot forget the pod's netns in the outbound programs");
        }
      },
    };
  }

  /** Connects per verdict since the agent started. */
  verdicts(): Record<OutboundVerdict, number> {
    try {
      return this.inputs.link.verdicts();
    } catch (err) {
      this.inputs.logger.debug({ err: (err as Error).message }, 'cannot read the outbound verdicts');
      return Object.fromEntries(OUTBOUND_VERDICTS.map((v) => [v, 0])) as Record<OutboundVerdict, number>;
    }
  }

  /**
   * Drift: programs whose link was detached from outside (bpftool link detach: no cgroup any more) are linked again;
   * returns them as trellis_capture_drift_repairs_total{what} counts them. Throws when they cannot be.
   */
  repairDetached(): OutboundLinkKind[] {
    if (this.inputs.link.closed) return [];
    const detached = this.inputs.link.ids().links.filter((l) => l.cgroupId === 0).map((l) => l.name);
    if (detached.length === 0) return [];
    this.inputs.logger.warn({ cgroup: this.inputs.cgroupPath, programs: detached }, 'capture drift: outbound programs were detached from the cgroup root; attaching them again');
    this.inputs.link.reattach();
    return detached.map((name) => OUTBOUND_KINDS[name] ?? 'connect4');
  }

  /** Detaches the programs (the agent is stopping): a pod's new connections are then refused by its guard. */
  close(): void {
    this.pods.clear();
    this.inputs.link.close();
  }
}

export interface StartOutboundInputs {
  /** --cgroup-root, or the cgroup2 mount the agent sees. */
  cgroupRoot: string;
  logger: Logger;
  /** The agent's own netns cookie: a predecessor in the same netns lends its maps. */
  ownNetns?: () => number;
  attach?: (cgroupPath: string, opts: { ownerNetns: number; agentMark: number; transparentMark: number; port: number }) => OutboundLinkLike;
}

/** Loads and links the programs on the cgroup root; throws BpfError (nothing left behind) when it cannot. */
export function startOutboundCapture(inputs: StartOutboundInputs): OutboundCapture {
  const cgroupPath = path.resolve(inputs.cgroupRoot);
  const ownerNetns = (inputs.ownNetns ?? (() => netnsCookie('/proc/self/ns/net')))();
  const link = (inputs.attach ?? ((p, o) => OutboundLink.attach(p, o)))(cgroupPath, { ownerNetns, agentMark: AGENT_MARK, transparentMark: TRANSPARENT_MARK, port: OUTBOUND_PORT });
  try {
    return new OutboundCapture({ link, cgroupPath, logger: inputs.logger });
  } catch (err) {
    link.close();
    throw err;
  }
}
