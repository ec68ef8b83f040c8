// The one way the agent reaches a destination for a pod, used by the L4 path (outbound.ts) and the L7 path
// (l7/upstream.ts, through its TunnelOpener): a meshed workload over HBONE (an HTTP/2 CONNECT stream over mTLS to
// its agent), or in process when this agent holds its pod (same-node.ts), anything else as plain TCP from inside the
// source pod's netns.
import type http2 from 'node:http2';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { whenConnected } from '../io/splice.js';
import type { Workload } from '../state/workload.js';
import type { HbonePool } from './hbone-pool.js';
import type { SameNode } from './same-node.js';

/** Opens a plain TCP connection from inside the source pod's netns (marked, so capture skips it). */
export type PodDialer = (src: Workload, ip: string, port: number) => net.Socket;

export interface Destination {
  readonly ip: string;
  readonly port: number;
  /** The pod at ip, when the state knows it; meshed pods are reached over HBONE. */
  readonly workload?: Workload | undefined;
  /** The Service called (its host), told to the destination agent for its metrics. */
  readonly service?: string | undefined;
}

export class Connector {
  /** `sameNode`: meshed pods of this node are reached in process (--same-node on). */
  constructor(private readonly inputs: { pool: HbonePool; dial: PodDialer; sameNode?: SameNode | undefined }) {}

  /** Whether a connection to `dst` is carried over HBONE (mutual TLS) rather than plain TCP. */
  static secured(dst: Destination): boolean {
    return !!dst.workload?.meshed;
  }

  /**
   * A byte stream from `src` to `dst`, connected (an HBONE stream answered 200, or a TCP handshake done).
   * `protocol`: the source agent parsed HTTP and says which version the tunnel carries, or found the bytes are not
   * HTTP ('tcp').
   */
  open(src: Workload, dst: Destination, protocol?: 'http1' | 'h2' | 'tcp'): Promise<http2.ClientHttp2Stream | net.Socket | Duplex> {
    if (dst.workload && Connector.secured(dst)) {
      const local = this.inputs.sameNode?.local(dst);
      if (local) return this.inputs.sameNode!.open(local, src, dst, protocol);
      return this.inputs.pool.open({ src, dstIdentity: dst.workload.identity, ip: dst.ip, port: dst.port, service: dst.service, ...(protocol && { protocol }) });
    }
    return whenConnected(this.inputs.dial(src, dst.ip, dst.port));
  }
}
