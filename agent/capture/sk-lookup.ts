// Inbound capture in eBPF mode: one sk_lookup program per enrolled pod, linked to the pod's netns, handing its incoming
// TCP connections to the agent's inbound listener (15006) there with no NAT (native/bpf/sk_lookup.bpf.c). HBONE
// (15008), the node's probe sources and connections from inside the pod go where they were going. Each link is held by
// a file descriptor of the agent: closed at unenrolment, and gone with the agent however it stops.
import type { Logger } from 'pino';
import { HBONE_PORT } from '../constants.js';
import type { Workload } from '../state/workload.js';
import { SK_LOOKUP_VERDICTS, SkLookupLink, type SkLookupVerdict } from '../native/index.js';

/** One pod's steering, as enrolment holds it. */
export interface Steered {
  /** The pod's listener was reopened (drift repair): connections go to the new one. */
  setListener(fd: number): void;
  close(): void;
}

/** What the manager needs of a link (SkLookupLink; a fake in tests). */
export interface LinkLike {
  readonly closed: boolean;
  readonly netnsPath: string;
  setListener(fd: number): void;
  verdicts(): Record<SkLookupVerdict, number>;
  ids(): { netnsInode: number };
  reattach(): void;
  close(): void;
}

export interface InboundSteeringInputs {
  /** The node's probe sources: their connections reach the app untouched (kubelet probes). */
  probeSources: readonly string[];
  attach?: (netnsPath: string, opts: { listenerFd: number; probeSources: readonly string[]; exemptPorts: readonly number[] }) => LinkLike;
  logger: Logger;
}

export class InboundSteering {
  private readonly links = new Set<LinkLike>();
  /** Verdicts of links closed since start, so the totals never go down when a pod leaves. */
  private readonly retired = zeros();

  constructor(private readonly inputs: InboundSteeringInputs) {}

  /** Loads and links the pod's program with `listenerFd` in its map; throws BpfError (nothing left behind). */
  attach(pod: Workload, listenerFd: number): Steered {
    if (!pod.netnsPath) throw new Error(`pod ${pod.key} has no netns path`);
    const attach = this.inputs.attach ?? ((path, opts) => SkLookupLink.attach(path, opts));
    const link = attach(pod.netnsPath, { listenerFd, probeSources: this.inputs.probeSources, exemptPorts: [HBONE_PORT] });
    this.links.add(link);
    return {
      setListener: (fd) => link.setListener(fd),
      close: () => this.release(link),
    };
  }

  /** Lookups per verdict, over every pod since the agent started. */
  verdicts(): Record<SkLookupVerdict, number> {
    const out = { ...this.retired };
    for (const link of this.links) add(out, this.read(link));
    return out;
  }

  /**
   * Drift: links detached from outside (bpftool link detach: no netns any more) are linked again; returns the netns
   * of each. A pod whose netns is gone is left to unenrolment. Throws the first failure, after trying every link.
   */
  repairDetached(): string[] {
    const repaired: string[] = [];
    let failure: unknown;
    for (const link of this.links) {
      try {
        if (link.closed || link.ids().netnsInode !== 0) continue;
        this.inputs.logger.warn({ netns: link.netnsPath }, 'capture drift: the pod\'s sk_lookup program was detached; attaching it again');
        link.reattach();
        repaired.push(link.netnsPath);
      } catch (err) {
        failure ??= err;
      }
    }
    if (failure !== undefined && repaired.length === 0) throw failure;
    return repaired;
  }

  /** Detaches every pod's program (the agent is stopping). */
  close(): void {
    for (const link of [...this.links]) this.release(link);
  }

  private release(link: LinkLike): void {
    if (!this.links.delete(link) || link.closed) return;
    add(this.retired, this.read(link));
    link.close();
  }

  private read(link: LinkLike): Record<SkLookupVerdict, number> {
    try {
      return link.verdicts();
    } catch (err) {
      this.inputs.logger.debug({ err: (err as Error).message }, 'cannot read sk_lookup verdicts');
      return zeros();
    }
  }
}

function zeros(): Record<SkLookupVerdict, number> {
  return Object.fromEntries(SK_LOOKUP_VERDICTS.map((v) => [v, 0])) as Record<SkLookupVerdict, number>;
}

function add(into: Record<SkLookupVerdict, number>, from: Record<SkLookupVerdict, number>): void {
  for (const v of SK_LOOKUP_VERDICTS) into[v] += from[v];
}
