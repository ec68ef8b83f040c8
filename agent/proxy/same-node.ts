// Same-node calls (--same-node on): a meshed destination whose pod this thread holds listeners for is reached in
// process, with no HBONE and no TLS, as ztunnel does: nothing leaves the node, and this agent holds both identities
// and both policies. The destination's inbound side serves the call through the same path as an HBONE stream from
// that caller (inbound-tunnel.ts: authorization, metrics and access line with reporter="destination", the app dialled
// from inside its netns from the caller's address), and the source side records what it records for HBONE.
//  - Opaque TCP (outbound.ts): one splice from the app's socket on 15001 straight to the server app's socket, which the
//    kernel runs where it can (io/kernel-splice.ts: no payload byte in user space), user space otherwise.
//  - L7 (the TunnelOpener, through Connector.open): an in-memory byte pair (io/pair.ts) between the source's HTTP
//    client and the destination's inbound HTTP server, which still parses, authorizes and records every request.
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { TrellisError } from '../errors.js';
import type { KernelSplice } from '../io/kernel-splice.js';
import { bytePair } from '../io/pair.js';
import { resetSide, splice, type SpliceHooks, type SpliceOutcome } from '../io/splice.js';
import type { Workload } from '../state/workload.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { ConnectionRecord } from './connection.js';
import { AGENT_PORTS, formatAuthority } from './hbone.js';
import type { InboundInputs } from './inbound.js';
import { serveTunnel } from './inbound-tunnel.js';

/** Where a same-node call goes: an endpoint of a meshed pod, and the Service called (its host). */
export interface SameNodeTarget {
  readonly ip: string;
  readonly port: number;
  readonly service?: string | undefined;
}

/** The source side of an opaque same-node connection: what outbound.ts does for an HBONE stream. */
export interface SourceSide {
  /** The tunnel is open: the source's record (reporter="source"), which counts the same bytes as the destination's. */
  opened(): ConnectionRecord;
  /** The destination refused before the tunnel opened (its reason): the client is reset, as for a refused HBONE stream. */
  refused(message: string): void;
}

export class SameNode {
  /** The inbound side of every pod this thread has listeners for, by pod key: the source of truth for "local". */
  private readonly pods = new Map<string, InboundInputs>();

  /** `kernel`: the kernel moves opaque connections' bytes (absent: user space, splice.ts). */
  constructor(private readonly inputs: { metrics: Metrics; logger: Logger; kernel?: KernelSplice | undefined }) {}

  /** A pod's inbound side, from when its listeners open on this thread until the returned function is called. */
  add(inbound: InboundInputs): () => void {
    const key = inbound.pod.key;
    this.pods.set(key, inbound);
    return () => {
      if (this.pods.get(key) === inbound) this.pods.delete(key);
    };
  }

  /** The inbound side of a meshed destination this thread serves, or undefined: the call goes over HBONE. */
  local(dst: { readonly ip: string; readonly workload?: Workload | undefined }): InboundInputs | undefined {
    const w = dst.workload;
    if (!w?.meshed) return undefined;
    const inbound = this.pods.get(w.key);
    // The listeners were opened for the pod at this address; a pod that moved is not this one any more.
    return inbound?.pod.ip === dst.ip ? inbound : undefined;
  }

  /**
   * Carries an opaque connection the app made (`down`, accepted on 15001 in `src`'s netns) to `inbound`'s pod: one
   * splice from `down` to the server app's socket, counted by both records. `hint`: the source found the bytes are
   * not HTTP ('tcp'); absent, the destination side decides as for an HBONE stream without a hint (declared, sniffed).
   */
  async carry(inbound: InboundInputs, down: net.Socket, src: Workload, dst: SameNodeTarget, hint: 'tcp' | undefined, source: SourceSide): Promise<void> {
    this.inputs.metrics.sameNodeConnections.inc({ protocol: 'tcp' });
    const peer = { ip: src.ip ?? down.remoteAddress, port: down.remotePort };
    if (AGENT_PORTS.has(dst.port)) return source.refused(this.refuse(inbound, peer.ip, dst, 403, `port ${dst.port} belongs to the agent`));
    let record: ConnectionRecord | undefined;
    await serveTunnel(inbound, {
      principal: src.identity,
      peer,
      target: dst,
      service: dst.service,
      hint,
      stream: down,
      accept: () => {
        record ??= source.opened();
      },
      refuse: (status, reason) => {
        const message = this.refuse(inbound, peer.ip, dst, status, reason);
        if (!record) return source.refused(message);
        // Refused after a sniff: the source's record ends with the reset, as an HBONE stream reset after its 200 does.
        resetSide(down);
        record.finish(Object.assign(new Error(message), { code: 'ECONNRESET' }));
      },
      http: () => {
        // The destination parses HTTP the source carried as opaque (a call to a pod IP): its inbound HTTP server reads
        // one end of a pair, the source's record counts what crosses into the other, as it counts an HBONE stream's.
        const [near, far] = bytePair();
        const rec = record!;
        void splice(down, near, rec).then((outcome) => rec.finish(outcome.error));
        return far;
      },
      carry: async (app, destination) => {
        const rec = record!;
        const outcome = await this.splice(down, app, both(rec, destination));
        rec.finish(outcome.error);
        return outcome;
      },
    });
    // The client went away while the destination sniffed (nothing was carried): the source's record still ends once.
    record?.finish(Object.assign(new Error('client closed before the tunnel was served'), { code: 'ECONNRESET' }));
  }

  /**
   * A tunnel for the L7 path (the TunnelOpener's): one end of a byte pair whose other end the destination's inbound
   * side serves as it would an HBONE stream with this `protocol` hint; resolves once the destination accepted it.
   */
  open(inbound: InboundInputs, src: Workload, dst: SameNodeTarget, protocol: 'http1' | 'h2' | 'tcp' | undefined): Promise<Duplex> {
    this.inputs.metrics.sameNodeConnections.inc({ protocol: protocol ?? 'tcp' });
    const where = formatAuthority(dst.ip, dst.port);
    if (AGENT_PORTS.has(dst.port)) {
      const message = this.refuse(inbound, src.ip, dst, 403, `port ${dst.port} belongs to the agent`);
      return Promise.reject(new TrellisError('EREFUSED', `same-node call to ${where} refused: ${message}`));
    }
    const [near, far] = bytePair();
    near.on('error', () => undefined);
    far.on('error', () => undefined);
    return new Promise((resolve, reject) => {
      let accepted = false;
      serveTunnel(inbound, {
        principal: src.identity,
        peer: { ip: src.ip, port: undefined },
        target: dst,
        service: dst.service,
        hint: protocol,
        stream: far,
        accept: () => {
          if (accepted) return;
          accepted = true;
          resolve(near);
        },
        refuse: (status, reason) => {
          const message = this.refuse(inbound, src.ip, dst, status, reason);
          if (accepted) return resetSide(far);
          far.destroy();
          near.destroy();
          reject(new TrellisError('EREFUSED', `same-node call to ${where} refused: ${message}`));
        },
        http: () => far,
        carry: (app, record) => splice(far, app, record),
      }).catch((err: Error) => {
        // A bug, not an expected failure: the tunnel goes, and the caller hears of it.
        this.inputs.logger.error({ pod: inbound.pod.key, err: err.message }, 'same-node tunnel failed');
        far.destroy();
        if (!accepted) reject(err);
      });
    });
  }

  /** Both sockets' bytes moved by the kernel where it can, else by splice.ts; counted either way. */
  private async splice(down: net.Socket, app: net.Socket, hooks: SpliceHooks): Promise<SpliceOutcome> {
    const kernel = this.inputs.kernel;
    if (!kernel) {
      this.inputs.metrics.sameNodeSplices.inc({ splice: 'user', reason: 'off' });
      return splice(down, app, hooks);
    }
    let r: Awaited<ReturnType<KernelSplice['splice']>>;
    try {
      r = await kernel.splice(down, app, hooks, () => this.inputs.metrics.sameNodeSplices.inc({ splice: 'kernel', reason: '' }));
    } catch (err) {
      // The program refused the pair (a map full, a socket gone): the sockets are Node's as they were.
      this.inputs.logger.warn({ err: (err as Error).message }, 'same-node kernel splice failed; the connection is carried in user space');
      r = { refused: 'failed' };
    }
    if ('outcome' in r) return r.outcome;
    this.inputs.metrics.sameNodeSplices.inc({ splice: 'user', reason: r.refused });
    return splice(down, app, hooks);
  }

  /** The destination side's refusal, counted and logged as its HBONE listener counts one; returns the message. */
  private refuse(inbound: InboundInputs, peer: string | undefined, dst: SameNodeTarget, status: number, reason: string): string {
    inbound.metrics.connectionFailures.inc({ direction: 'inbound', reason: `same_node_${status}` });
    inbound.logger.warn({ pod: inbound.pod.key, peer, authority: formatAuthority(dst.ip, dst.port), reason }, 'same-node call refused');
    return `${status} ${reason}`;
  }
}

/** Both records count the bytes of one splice: the source's and the destination's view of one connection. */
function both(a: SpliceHooks, b: SpliceHooks): SpliceHooks {
  return {
    downToUp: (n) => {
      a.downToUp(n);
      b.downToUp(n);
    },
    upToDown: (n) => {
      a.upToDown(n);
      b.upToDown(n);
    },
  };
}
