// L7 upstream: requests to one chosen endpoint over a tunnel the connector opens (an HBONE stream to a meshed
// endpoint, plain TCP from the source pod otherwise; on the inbound side, the app). HTTP/1.1 connections are
// kept alive and pooled (h1/pool.ts); HTTP/2 gets one multiplexed session per endpoint (h2/client.ts). The caller
// sees one shape for both: send a request, get the response head, read the body and its trailers.
import type { Duplex } from 'node:stream';
import type { Workload } from '../state/workload.js';
import { H1Pool } from './h1/pool.js';
import { H2Sessions } from './h2/client.js';
import { UpstreamError, type UpstreamEndpoint, type UpstreamRequest, type UpstreamResponse } from './upstream-types.js';

/** Opens the byte stream a request travels in; `protocol` tells the destination agent what the tunnel carries. */
export type TunnelOpener = (src: Workload, ep: UpstreamEndpoint, protocol: 'http1' | 'h2') => Promise<Duplex>;

export class Upstreams {
  private readonly h1: H1Pool;
  private readonly h2: H2Sessions;

  constructor(private readonly inputs: { open: TunnelOpener; maxHeaderBytes: number; idleMs?: number }) {
    this.h1 = new H1Pool({ open: (src, ep) => inputs.open(src, ep, 'http1'), maxHeaderBytes: inputs.maxHeaderBytes, ...(inputs.idleMs !== undefined && { idleMs: inputs.idleMs }) });
    this.h2 = new H2Sessions({ open: (src, ep) => inputs.open(src, ep, 'h2'), maxHeaderListSize: inputs.maxHeaderBytes });
  }

  /** Sends one request in the protocol the client spoke; resolves with the response head. */
  send(protocol: 'http1' | 'h2', src: Workload, ep: UpstreamEndpoint, req: UpstreamRequest): Promise<UpstreamResponse> {
    return protocol === 'h2' ? this.h2.send(src, ep, req) : this.h1.send(src, ep, req);
  }

  /** A raw tunnel to the endpoint, not pooled (HTTP/1.1 Upgrade). */
  async tunnel(src: Workload, ep: UpstreamEndpoint): Promise<Duplex> {
    try {
      return await this.inputs.open(src, ep, 'http1');
    } catch (err) {
      throw new UpstreamError('connect', (err as Error).message);
    }
  }

  /** Idle pooled HTTP/1.1 connections (for tests). */
  idleConnections(): number {
    return this.h1.idleCount();
  }

  /** Lets go of a source pod's connections and sessions: idle ones close now, busy ones after their exchange. */
  forget(srcKey: string): void {
    this.h1.forget(srcKey);
    this.h2.forget(srcKey);
  }

  /** Closes every pooled connection and session; requests in flight are cut. */
  close(): void {
    this.h1.close();
    this.h2.close();
  }
}

export { UpstreamError, type UpstreamEndpoint, type UpstreamRequest, type UpstreamResponse } from './upstream-types.js';
