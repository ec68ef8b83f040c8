// L7 exchange: one request as the layers see it, whatever protocol the client spoke, and the one way to answer
// it. h1/server.ts and h2/server.ts build these; the layers only read them and answer through a Responder.
import type { ServiceInfo } from '../model/services.js';
import type { Workload } from '../state/workload.js';
import type { Body } from './body.js';
import type { Headers } from './headers.js';
import type { Balancer } from './policy/balancer.js';
import type { UpstreamEndpoint } from './upstream-types.js';

export type HttpProtocol = 'http1' | 'h2';

/** What is fixed for every request of one downstream connection (outbound side). */
export interface CallContext {
  readonly src: Workload;
  readonly srcIp: string | undefined;
  readonly srcPort: number | undefined;
  /**
   * The Service the client called by ClusterIP, and the Service port. For egress, a stand-in: its key is the routes'
   * (model/routes egressRouteKey), its host the declared host's name, and it has no endpoints.
   */
  readonly service: ServiceInfo;
  readonly port: number;
  readonly protocol: HttpProtocol;
  /** Egress routed at L7: every try goes to the address the client dialled, the one endpoint of this balancer. */
  readonly egress?: { readonly balancer: Balancer<UpstreamEndpoint> };
}

export interface L7Request {
  readonly protocol: HttpProtocol;
  /** content-type application/grpc*: errors become grpc-status, success needs grpc-status 0. */
  readonly grpc: boolean;
  readonly method: string;
  readonly authority: string;
  /** Path without the query, as matched and sent (see agent/model/normalize.ts). */
  readonly path: string;
  /** Query string without "?", "" when none. */
  readonly query: string;
  /** Lowercase names; no pseudo-headers and no hop-by-hop headers. */
  readonly headers: Headers;
  readonly body: Body;
  /** x-request-id: the client's, or one the agent made. */
  readonly requestId: string;
  /** performance.now() when the request head arrived. */
  readonly startedAt: number;
  /** Set by the source agent on a request between agents: the client spoke HTTP/2 (see headers.ts). */
  readonly appProtocol?: 'h2';
}

export interface Responder {
  /** True once the response head went out: from then on a failure can only reset the stream. */
  readonly headSent: boolean;
  /** True when the client went away. */
  readonly closed: boolean;
  head(status: number, headers: Headers, endStream: boolean): void;
  write(chunk: Buffer): boolean;
  /** Ends the body; HTTP/2 (and chunked HTTP/1.1 to a client that accepts them) sends the trailers. */
  end(trailers?: Headers): void;
  /** Aborts the response (HTTP/1: the connection; HTTP/2: RST_STREAM). */
  reset(): void;
  /** Calls fn once when the client can take more body after write() returned false. */
  onDrain(fn: () => void): void;
  /** Calls fn once if the client goes away before the response ended. */
  onClose(fn: () => void): void;
  /**
   * Sends what was written so far now. A head is held back (corked) so that it leaves with the body in one write;
   * whoever writes the head without ending the response calls this once what is here is written.
   */
  flush?(): void;
}
