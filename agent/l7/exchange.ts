// L7 exchange: one request as the router sees it, whatever protocol the client spoke, and the one way to
// answer it. downstream.ts builds these from HTTP/1.1 and HTTP/2 servers; router.ts only reads and answers.
import type { Readable } from 'node:stream';
import type { ServiceInfo } from '../model/services.js';
import type { Workload } from '../state/workload.js';
import type { Headers } from './upstream.js';

export type HttpProtocol = 'http1' | 'h2';

/** What is fixed for every request of one downstream connection. */
export interface CallContext {
  readonly src: Workload;
  readonly srcIp: string | undefined;
  readonly srcPort: number | undefined;
  /** The Service the client called by ClusterIP, and the Service port. */
  readonly service: ServiceInfo;
  readonly port: number;
  readonly protocol: HttpProtocol;
}

export interface L7Request {
  readonly protocol: HttpProtocol;
  /** content-type application/grpc*: errors become grpc-status, success needs grpc-status 0. */
  readonly grpc: boolean;
  readonly method: string;
  readonly authority: string;
  /** Path without the query, as matched and sent (see normalizeTarget). */
  readonly path: string;
  /** Query string without "?", "" when none. */
  readonly query: string;
  /** Lowercase names; no pseudo-headers and no hop-by-hop headers. */
  readonly headers: Headers;
  readonly body: Readable;
  /** x-request-id: the client's, or one the agent made. */
  readonly requestId: string;
  /** performance.now() when the request head arrived. */
  readonly startedAt: number;
}

export interface Responder {
  /** True once the response head went out: from then on a failure can only reset the stream. */
  readonly headSent: boolean;
  /** True when the client went away. */
  readonly closed: boolean;
  head(status: number, headers: Headers, endStream: boolean): void;
  write(chunk: Buffer): boolean;
  /** Ends the body; HTTP/2 sends the trailers (if any) with END_STREAM. */
  end(trailers?: Headers): void;
  /** Aborts the response (HTTP/1: the connection; HTTP/2: RST_STREAM). */
  reset(): void;
  /** Calls fn once when the client can take more body after write() returned false. */
  onDrain(fn: () => void): void;
  /** Calls fn once if the client goes away before the response ended. */
  onClose(fn: () => void): void;
}

/** A header's value as routes match it: repeated values joined with ",". */
export function headerValue(headers: Headers, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}
