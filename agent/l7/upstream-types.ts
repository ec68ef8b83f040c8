// What the layers send upstream and get back, whatever the protocol to the endpoint (h1/client.ts, h2/client.ts).
import { TrellisError } from '../errors.js';
import type { Workload } from '../state/workload.js';
import type { Body } from './body.js';
import type { Headers } from './headers.js';

export interface UpstreamEndpoint {
  readonly ip: string;
  readonly port: number;
  readonly workload?: Workload | undefined;
  /** The backend Service it was picked from (its host): the tunnel tells the destination agent. */
  readonly service?: string | undefined;
  /**
   * Inbound: the caller's address, which the connection to the app leaves from when the agent keeps it; connections
   * are pooled per caller, so an app never sees one caller's request arrive from another's address.
   */
  readonly caller?: string | undefined;
}

export interface UpstreamRequest {
  readonly method: string;
  /** Path and query as sent upstream. */
  readonly path: string;
  readonly authority: string;
  /** Lowercase names, no pseudo-headers, no hop-by-hop headers. */
  readonly headers: Headers;
  /** A buffered body (replayable: a retry or a mirror sends it again), or the client's body as it arrives. */
  readonly body: Buffer | Body;
  /** HTTP/1.1 to a meshed endpoint for a client that spoke HTTP/2: tells the destination agent to use HTTP/2 to the app. */
  readonly appProtocol?: 'h2';
}

export interface UpstreamResponse {
  readonly status: number;
  readonly headers: Headers;
  /** The response body; its end carries the trailers. */
  readonly body: Body;
  /** Abandons the exchange (the connection is not reused). */
  abort(): void;
  /** True when the request went over a connection that had carried an earlier request. */
  readonly reused: boolean;
}

/** A failure before a response head arrived, classified for the retry layer. */
export class UpstreamError extends TrellisError {
  constructor(
    readonly kind: 'connect' | 'reset',
    message: string,
    /** The request went over a reused keep-alive connection the server may have closed meanwhile. */
    readonly reused = false,
  ) {
    super(kind === 'connect' ? 'ECONNREFUSED' : 'ECONNRESET', message);
  }
}

/** Methods whose requests carry a Content-Length even when their body is empty. */
export function needsLength(method: string): boolean {
  return method === 'POST' || method === 'PUT' || method === 'PATCH';
}
