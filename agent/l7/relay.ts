// L7 relay: streams an upstream response to the client with backpressure, the trailers at the end, and a reset
// (never a truncated success) when either side fails midway or the request deadline passes; and the answers the
// agent makes itself (local, grpcLocal).
import type { Clock } from '../clock.js';
import type { BodyReader } from './body.js';
import type { L7Request, Responder } from './exchange.js';
import type { Headers } from './headers.js';
import type { RequestRecord } from './record.js';
import type { UpstreamResponse } from './upstream-types.js';

/** Sends `up` to the client; resolves when the response ended or was cut (the reason is left in rec.error). */
export function relay(req: L7Request, up: UpstreamResponse, res: Responder, rec: RequestRecord, clock: Clock, deadline: number | undefined): Promise<void> {
  const headers = up.headers;
  rec.status = up.status;
  // For a tap: the head as it came (a reference) and the time to it, in whole microseconds (no allocation).
  rec.responseHeaders = headers;
  rec.firstByteUs = ((performance.now() - req.startedAt) * 1000) | 0;
  rec.grpcStatusFrom(headers);
  // A gRPC "trailers-only" answer carries grpc-status in its only HEADERS frame: it is passed on the same way.
  if (req.grpc && headers['grpc-status'] !== undefined) {
    res.head(up.status, headers, true);
    up.body.discard();
    return Promise.resolve();
  }
  const body = up.body;
  if (body.ended && body.received === 0 && body.failed === undefined) {
    // No body (HEAD, 204, 304, an empty answer): the head is the whole response, unless trailers follow.
    let trailers: Headers | undefined;
    let hasTrailers = false;
    body.read({ data: () => true, end: (t) => ((trailers = t), (hasTrailers = t !== undefined && Object.keys(t).length > 0)), error: () => undefined });
    if (!hasTrailers) {
      res.head(up.status, headers, true);
      return Promise.resolve();
    }
    res.head(up.status, headers, false);
    rec.grpcStatusFrom(trailers!);
    res.end(trailers);
    return Promise.resolve();
  }
  res.head(up.status, headers, false);
  return new Promise<void>((resolve) => {
    const relayed = new Relay(up, res, rec, clock, deadline, resolve);
    relayed.start();
    // What arrived with the head went out with it; the rest is written as it comes.
    res.flush?.();
  });
}

class Relay implements BodyReader {
  private settled = false;
  private timer: { cancel(): void } | undefined;

  constructor(
    private readonly up: UpstreamResponse,
    private readonly res: Responder,
    private readonly rec: RequestRecord,
    private readonly clock: Clock,
    private readonly deadline: number | undefined,
    private readonly resolve: () => void,
  ) {}

  start(): void {
    if (this.deadline !== undefined) {
      this.timer = this.clock.after(Math.max(0, this.deadline - performance.now()), () => this.cut('request timeout while streaming the response'));
    }
    this.res.onClose(() => this.cut('client went away'));
    this.up.body.read(this);
  }

  data(chunk: Buffer): boolean {
    if (this.settled) return true;
    this.rec.responseBytes += chunk.length;
    if (this.res.write(chunk)) return true;
    this.res.onDrain(() => this.up.body.pull());
    return false;
  }

  end(trailers: Headers | undefined): void {
    if (this.settled) return;
    if (trailers) this.rec.grpcStatusFrom(trailers);
    this.res.end(trailers);
    this.settle();
  }

  error(reason: string): void {
    this.cut(reason.startsWith('upstream') ? reason : `upstream: ${reason}`);
  }

  private cut(why: string): void {
    if (this.settled) return;
    this.rec.error = why;
    this.up.abort();
    this.res.reset();
    this.settle();
  }

  private settle(): void {
    this.settled = true;
    this.timer?.cancel();
    this.resolve();
  }
}

/** An answer made by the agent itself: HTTP status with a short text body, or a trailers-only gRPC status. */
export function local(res: Responder, req: L7Request, rec: RequestRecord, status: number, grpcStatus: number, message: string, extra: Headers = {}): void {
  if (req.grpc && status >= 400) return grpcLocal(res, rec, grpcStatus, message);
  rec.status = status;
  if (status >= 400 && message) rec.error ??= message;
  if (res.closed) return;
  const body = Buffer.from(message ? `${message}\n` : '');
  rec.responseBytes = body.length;
  res.head(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': String(body.length), ...extra }, body.length === 0);
  if (body.length > 0) {
    res.write(body);
    res.end();
  }
}

export function grpcLocal(res: Responder, rec: RequestRecord, code: number, message: string): void {
  rec.status = 200;
  rec.grpcStatus = String(code);
  if (code !== 0) rec.error ??= message;
  if (res.closed) return;
  res.head(200, { 'content-type': 'application/grpc', 'grpc-status': String(code), 'grpc-message': grpcMessage(message) }, true);
}

/** grpc-message is percent-encoded only outside printable ASCII and for "%" itself (gRPC over HTTP/2 spec). */
export function grpcMessage(text: string): string {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
