// L7 relay: streams an upstream response to the client with backpressure, the trailers at the end, and a
// reset (never a truncated success) when either side fails midway or the request deadline passes.
import type { Clock } from '../clock.js';
import type { L7Request, Responder } from './exchange.js';
import type { RequestRecord } from './record.js';
import type { Headers, UpstreamResponse } from './upstream.js';

/** Sends `up` to the client; resolves when the response ended or was cut (the reason is left in rec.error). */
export async function relay(req: L7Request, up: UpstreamResponse, res: Responder, rec: RequestRecord, clock: Clock, deadline: number | undefined): Promise<void> {
  const headers = up.headers;
  rec.status = up.status;
  rec.grpcStatusFrom(headers);
  // A gRPC "trailers-only" answer carries grpc-status in its only HEADERS frame: it is passed on the same way.
  const trailersOnly = req.grpc && headers['grpc-status'] !== undefined;
  const noBody = req.method === 'HEAD' || up.status === 204 || up.status === 304;
  if (trailersOnly) {
    res.head(up.status, headers, true);
    up.body.resume();
    return;
  }
  res.head(up.status, headers, noBody && up.body.readableEnded);
  await new Promise<void>((resolve) => {
    let settled = false;
    let timer: { cancel(): void } | undefined;
    const finish = (why?: string) => {
      if (settled) return;
      settled = true;
      timer?.cancel();
      up.body.off('data', onData);
      up.body.off('end', onEnd);
      up.body.off('close', onClose);
      up.body.off('error', onError);
      if (why !== undefined) {
        rec.error = why;
        up.abort();
        res.reset();
      }
      resolve();
    };
    const onData = (chunk: Buffer) => {
      rec.responseBytes += chunk.length;
      if (!res.write(chunk)) {
        up.body.pause();
        res.onDrain(() => up.body.resume());
      }
    };
    const onEnd = () => {
      const trailers = up.trailers();
      if (trailers) rec.grpcStatusFrom(trailers);
      res.end(trailers);
      finish();
    };
    // 'close' without 'end': the upstream reset the response midway.
    const onClose = () => finish('upstream reset the response');
    const onError = (err: Error) => finish(`upstream: ${err.message}`);
    if (deadline !== undefined) {
      timer = clock.after(Math.max(0, deadline - performance.now()), () => finish('request timeout while streaming the response'));
    }
    res.onClose(() => finish('client went away'));
    if (up.body.readableEnded) return onEnd();
    up.body.on('data', onData);
    up.body.once('end', onEnd);
    up.body.once('close', onClose);
    up.body.once('error', onError);
  });
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
