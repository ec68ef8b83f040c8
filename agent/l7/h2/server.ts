// L7 downstream, HTTP/2 with prior knowledge (h2c from apps, gRPC): Node's HTTP/2 server (nghttp2) parses the
// frames; each stream becomes an L7Request and a Responder. nghttp2 bounds the session (rapid reset, CONTINUATION
// floods, header list size), and the limits below keep those bounds tight.
import http2 from 'node:http2';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Metrics } from '../../telemetry/metrics.js';
import { prefixed } from '../../io/bytes-only.js';
import { shutdownGracefully } from '../../io/goaway.js';
import { limitPings } from '../../io/ping-limit.js';
import { Body, type BodyProducer } from '../body.js';
import type { L7Request, Responder } from '../exchange.js';
import { HOP_BY_HOP, ensureRequestId, isGrpc, withoutPseudo, type Headers } from '../headers.js';
import { targetOf } from '../h1/server.js';

export interface H2Limits {
  /** Largest header list, bytes (SETTINGS_MAX_HEADER_LIST_SIZE). */
  readonly maxHeaderBytes: number;
  /** Most header fields per request. */
  readonly maxHeaderCount: number;
  /** Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS). */
  readonly maxConcurrentStreams: number;
}

export interface H2ServerInputs<C> {
  limits: H2Limits;
  metrics: Metrics;
  logger: Logger;
  authorityOf: (ctx: C) => string;
  onRequest: (ctx: C, req: L7Request, res: Responder) => Promise<void>;
  onRejected?: (ctx: C, status: number, reason: string, requestId?: string) => void;
}

export class H2Server<C> {
  private readonly server: http2.Http2Server;
  private readonly contexts = new WeakMap<object, C>();
  /** The context of the connection being handed to the server (its 'session' event fires synchronously). */
  private handing: C | undefined;
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  private draining = false;

  constructor(private readonly inputs: H2ServerInputs<C>) {
    const { limits } = inputs;
    this.server = http2.createServer({
      maxHeaderListPairs: limits.maxHeaderCount,
      maxSendHeaderBlockLength: limits.maxHeaderBytes * 4,
      settings: { maxConcurrentStreams: limits.maxConcurrentStreams, maxHeaderListSize: limits.maxHeaderBytes, enablePush: false },
      // Rapid reset and CONTINUATION floods: nghttp2 and Node bound both; these keep the bounds tight.
      maxSessionInvalidFrames: 100,
      maxSessionRejectedStreams: 100,
    });
    this.server.on('session', (session: http2.ServerHttp2Session) => {
      if (this.handing) this.contexts.set(session, this.handing);
      this.sessions.add(session);
      session.once('close', () => this.sessions.delete(session));
      session.on('error', (err) => this.inputs.logger.debug({ err: err.message }, 'downstream HTTP/2 session error'));
      limitPings(session, () => {
        this.inputs.metrics.connectionFailures.inc({ direction: 'inbound', reason: 'ping_flood' });
        this.inputs.logger.warn({}, 'HTTP/2 client closed: PING flood');
      });
      if (this.draining) shutdownGracefully(session);
    });
    this.server.on('stream', (stream, headers) => this.onStream(stream, headers));
  }

  /** Serves HTTP/2 with prior knowledge; bytes a sniff looked at are replayed through a small stream wrapper. */
  serve(socket: Duplex, ctx: C): void {
    // nghttp2 reads from the socket's handle directly, so bytes already in the JS buffer must come from a JS stream.
    const head = socket.readableLength > 0 ? (socket.read() as Buffer | null) : null;
    const transport: Duplex = head && head.length > 0 ? prefixed(socket, head) : socket;
    this.handing = ctx;
    try {
      this.server.emit('connection', transport);
    } finally {
      this.handing = undefined;
    }
  }

  /** Asks every client to open no new stream (GOAWAY); streams in flight finish. */
  drain(): void {
    this.draining = true;
    for (const s of this.sessions) shutdownGracefully(s);
  }

  private onStream(stream: http2.ServerHttp2Stream, raw: http2.IncomingHttpHeaders): void {
    // First: a stream the client reset in the same read as its HEADERS is already destroyed here (its session
    // gone from it), and its 'error' with no listener would take the agent down (rapid reset).
    stream.on('error', () => undefined);
    if (stream.destroyed) return;
    const ctx = this.contexts.get(stream.session as object);
    if (!ctx) return void stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
    const target = targetOf(raw[':method'], raw[':path'] ?? '/');
    if (!target.ok) {
      this.inputs.metrics.httpRejections.inc({ status: '400' });
      this.inputs.onRejected?.(ctx, 400, target.reason, typeof raw['x-request-id'] === 'string' ? raw['x-request-id'] : undefined);
      if (stream.destroyed || stream.closed) return;
      stream.respond({ ':status': 400, 'content-type': 'text/plain' });
      stream.end(`${target.reason}\n`);
      return;
    }
    const headers: Headers = {};
    for (const k in raw) {
      if (k.charCodeAt(0) === 58 || (HOP_BY_HOP.has(k) && k !== 'te')) continue;
      const v = raw[k];
      if (v !== undefined) headers[k] = v;
    }
    // Only "te: trailers" may cross an HTTP/2 hop (RFC 9113 8.2.2); gRPC needs it.
    if (headers.te !== undefined && headers.te !== 'trailers') delete headers.te;
    const requestId = ensureRequestId(headers);
    const length = raw['content-length'];
    const req: L7Request = {
      protocol: 'h2',
      grpc: isGrpc(headers),
      method: raw[':method'] ?? 'GET',
      authority: raw[':authority'] ?? (typeof raw.host === 'string' ? raw.host : this.inputs.authorityOf(ctx)),
      path: target.path,
      query: target.query,
      headers,
      body: streamBody(stream, typeof length === 'string' ? Number(length) : undefined, 'request'),
      requestId,
      startedAt: performance.now(),
    };
    const res = new H2Responder(stream, req.grpc);
    this.inputs.onRequest(ctx, req, res).catch((err: Error) => {
      this.inputs.logger.error({ err: err.message, stack: err.stack }, 'request handler failed');
      res.reset();
    });
  }
}

/** A body read off an HTTP/2 stream (a request downstream, a response upstream): DATA as it comes, then the trailers. */
export function streamBody(stream: http2.ServerHttp2Stream | http2.ClientHttp2Stream, length: number | undefined, side: 'request' | 'response'): Body {
  // END_STREAM on the HEADERS frame (a GET, a trailers-only answer): no body, and no chunked framing for one upstream.
  if (stream.readableEnded || stream.endAfterHeaders) {
    // A request's stream is left unread: Node reads its end itself when the stream closes, and destroys it only once
    // the response's last write has completed. Read here, the stream is destroyed as soon as nghttp2 sends
    // END_STREAM, before that write completes, and Node then builds an ERR_STREAM_DESTROYED per response (~15% of a
    // small h2c server's CPU).
    if (side === 'response') stream.resume();
    return Body.EMPTY;
  }
  const producer: BodyProducer = {
    resume: () => void stream.resume(),
    cancel: () => void (stream.destroyed || stream.resume()),
  };
  const body = new Body(producer, length);
  let trailers: Headers | undefined;
  stream.on('trailers', (t: http2.IncomingHttpHeaders) => (trailers = withoutPseudo(t)));
  stream.on('data', (chunk: Buffer) => {
    if (!body.push(chunk)) stream.pause();
  });
  stream.once('end', () => body.finish(trailers));
  stream.once('close', () => {
    if (!body.ended) body.fail(`stream reset (code ${stream.rstCode})`);
  });
  return body;
}

class H2Responder implements Responder {
  private trailers: Headers | undefined;

  constructor(
    private readonly stream: http2.ServerHttp2Stream,
    private readonly grpc: boolean,
  ) {
    // Only responses that may carry trailers hold END_STREAM back for them (gRPC always does; others when the
    // upstream announced them); an empty trailer block is still sent so the stream ends with END_STREAM.
    stream.on('wantTrailers', () => stream.sendTrailers(this.trailers ?? {}));
  }

  get headSent(): boolean {
    return this.stream.headersSent;
  }

  get closed(): boolean {
    const s = this.stream;
    return (s.destroyed && !s.writableFinished) || s.closed;
  }

  head(status: number, headers: Headers, endStream: boolean): void {
    const s = this.stream;
    // A stream the client reset (RST_STREAM) may be gone by the time an answer is ready.
    if (s.destroyed || s.closed || s.headersSent) return;
    const out: http2.OutgoingHttpHeaders = { ':status': status };
    for (const k in headers) if (!HOP_BY_HOP.has(k) || k === 'trailer') out[k] = headers[k];
    const expectTrailers = !endStream && (this.grpc || headers.trailer !== undefined);
    s.respond(out, { endStream, waitForTrailers: expectTrailers });
  }

  write(chunk: Buffer): boolean {
    return this.stream.destroyed ? true : this.stream.write(chunk);
  }

  end(trailers?: Headers): void {
    this.trailers = trailers;
    // Trailers with no room for them (the upstream sent some unannounced on a non-gRPC response) are dropped.
    if (!this.stream.destroyed) this.stream.end();
  }

  reset(): void {
    if (!this.stream.destroyed) this.stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
  }

  onDrain(fn: () => void): void {
    this.stream.once('drain', fn);
  }

  onClose(fn: () => void): void {
    const s = this.stream;
    s.once('close', () => {
      if (!s.writableFinished || s.rstCode !== http2.constants.NGHTTP2_NO_ERROR) fn();
    });
  }
}
