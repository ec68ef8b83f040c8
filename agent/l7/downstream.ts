// L7 downstream: the HTTP/1.1 and HTTP/2 (h2c) servers that parse what an app sends on a captured connection,
// and turn each request into an L7Request and a Responder for the router. Parsing is Node's (llhttp in strict
// mode, nghttp2): malformed requests and smuggling attempts (CL+TE, duplicate Content-Length, bare CR, space
// before the colon) answer 400, oversized headers 431, and none of them is ever forwarded.
// WebSocket and other HTTP/1.1 Upgrades are routed like any request, then carried as opaque bytes.
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import http2 from 'node:http2';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Metrics } from '../telemetry/metrics.js';
import { normalizeTarget } from '../model/normalize.js';
import type { CallContext, L7Request, Responder } from './exchange.js';
import { HOP_BY_HOP, type Headers } from './upstream.js';
import { bytesOnly, prefixed } from '../io/bytes-only.js';

export interface DownstreamLimits {
  /** Largest request head (request line and headers), bytes; beyond it 431. */
  maxHeaderBytes: number;
  /** Most header fields per request; beyond it 431. */
  maxHeaderCount: number;
  /** HTTP/2 streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS). */
  maxConcurrentStreams: number;
}

export interface DownstreamInputs<C> {
  limits: DownstreamLimits;
  metrics: Metrics;
  logger: Logger;
  /** The authority of a request that names none (HTTP/1.0 without Host). */
  authorityOf: (ctx: C) => string;
  /** Handles one parsed request. */
  onRequest: (ctx: C, req: L7Request, res: Responder) => Promise<void>;
  /** Told of every request refused before it was parsed whole (400, 431), for its audit line. */
  onRejected?: (ctx: C | undefined, status: number, reason: string, requestId?: string) => void;
  /** Handles an HTTP/1.1 Upgrade (WebSocket): the raw request head is replayed to the upstream. */
  onUpgrade: (ctx: C, req: L7Request, rawHeaders: readonly string[], socket: Duplex, head: Buffer) => Promise<void>;
}

/** Per-connection context C is whatever the side serving the connection needs (outbound: CallContext). */
export class Downstream<C = CallContext> {
  private readonly h1: http.Server;
  private readonly h2: http2.Http2Server;
  private readonly contexts = new WeakMap<object, C>();
  /** The context of the connection being handed to the HTTP/2 server (its 'session' event fires synchronously). */
  private handing: C | undefined;

  constructor(private readonly inputs: DownstreamInputs<C>) {
    const { limits } = inputs;
    this.h1 = http.createServer({ maxHeaderSize: limits.maxHeaderBytes, keepAliveTimeout: 0, requestTimeout: 0 }, (req, res) => this.onHttp1(req, res));
    // Header count is checked per request below; Node's own limit would silently drop headers instead.
    this.h1.maxHeadersCount = 0;
    this.h1.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.rejectHttp1(err, socket));
    this.h1.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
      const ctx = this.contexts.get(req.socket);
      if (!ctx) return void socket.destroy();
      const l7 = this.toL7(req, ctx);
      if (typeof l7 === 'string') {
        this.rejected(ctx, 400, l7, req.headers['x-request-id']);
        return void socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      }
      this.inputs.onUpgrade(ctx, l7, req.rawHeaders, socket, head).catch((err: Error) => {
        this.inputs.logger.error({ err: err.message }, 'upgrade handler failed');
        socket.destroy();
      });
    });
    this.h1.on('connect', (_req: http.IncomingMessage, socket: Duplex) => {
      socket.end('HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
    });

    this.h2 = http2.createServer({
      maxHeaderListPairs: limits.maxHeaderCount,
      maxSendHeaderBlockLength: limits.maxHeaderBytes * 4,
      settings: { maxConcurrentStreams: limits.maxConcurrentStreams, maxHeaderListSize: limits.maxHeaderBytes, enablePush: false },
      // Rapid reset and CONTINUATION floods: nghttp2 and Node bound both; these keep the bounds tight.
      maxSessionInvalidFrames: 100,
      maxSessionRejectedStreams: 100,
    });
    this.h2.on('session', (session: http2.ServerHttp2Session) => {
      if (this.handing) this.contexts.set(session, this.handing);
      session.on('error', (err) => this.inputs.logger.debug({ err: err.message }, 'downstream HTTP/2 session error'));
    });
    this.h2.on('stream', (stream, headers) => this.onHttp2(stream, headers));
  }

  /** Serves HTTP/1.1 on a captured connection (bytes a sniff looked at are still in its buffer). */
  serveHttp1(socket: Duplex, ctx: C): void {
    // Node's HTTP server writes its heads as latin1 strings through writev; an HTTP/2 stream (an HBONE tunnel)
    // garbles such mixed writes, so anything but a real socket goes through a byte-only wrapper.
    const transport = isNetSocket(socket) ? socket : bytesOnly(socket);
    this.contexts.set(transport, ctx);
    this.h1.emit('connection', transport);
    transport.resume();
  }

  /** Serves HTTP/2 with prior knowledge; bytes a sniff looked at are replayed through a small stream wrapper. */
  serveH2(socket: Duplex, ctx: C): void {
    // nghttp2 reads from the socket's handle directly, so bytes already in the JS buffer must come from a JS stream.
    const head = socket.readableLength > 0 ? (socket.read() as Buffer | null) : null;
    const transport: Duplex = head && head.length > 0 ? prefixed(socket, head) : socket;
    this.handing = ctx;
    try {
      this.h2.emit('connection', transport);
    } finally {
      this.handing = undefined;
    }
  }

  private onHttp1(req: http.IncomingMessage, res: http.ServerResponse): void {
    const ctx = this.contexts.get(req.socket);
    if (!ctx) return void res.destroy();
    if (req.rawHeaders.length / 2 > this.inputs.limits.maxHeaderCount) {
      this.rejected(ctx, 431, `more than ${this.inputs.limits.maxHeaderCount} header fields`, req.headers['x-request-id']);
      res.writeHead(431, { 'content-type': 'text/plain', connection: 'close' }).end(`more than ${this.inputs.limits.maxHeaderCount} header fields\n`);
      return;
    }
    const l7 = this.toL7(req, ctx);
    if (typeof l7 === 'string') {
      this.rejected(ctx, 400, l7, req.headers['x-request-id']);
      res.writeHead(400, { 'content-type': 'text/plain', connection: 'close' }).end(`${l7}\n`);
      return;
    }
    this.dispatch(ctx, l7, http1Responder(res));
  }

  private rejected(ctx: C | undefined, status: number, reason: string, requestId?: string | string[]): void {
    this.inputs.metrics.httpRejections.inc({ status: String(status) });
    this.inputs.onRejected?.(ctx, status, reason, typeof requestId === 'string' ? requestId : undefined);
  }

  // The handlers answer every failure themselves; this is the last guard so that a bug never becomes an
  // unhandled rejection (which would end the agent).
  private dispatch(ctx: C, req: L7Request, res: Responder): void {
    this.inputs.onRequest(ctx, req, res).catch((err: Error) => {
      this.inputs.logger.error({ err: err.message, stack: err.stack }, 'request handler failed');
      res.reset();
    });
  }

  /** The request as routes and policies see it, or why its target is refused (400). */
  private toL7(req: http.IncomingMessage, ctx: C): L7Request | string {
    const target = targetOf(req.method, req.url ?? '/');
    if (!target.ok) return target.reason;
    const { path, query } = target;
    const headers = requestHeaders(req.rawHeaders);
    // 100-continue was answered by the server when the request arrived; the upstream gets the body directly.
    delete headers.expect;
    const requestId = ensureRequestId(headers);
    return {
      protocol: 'http1',
      grpc: isGrpc(headers),
      method: req.method ?? 'GET',
      authority: req.headers.host ?? this.inputs.authorityOf(ctx),
      path,
      query,
      headers,
      body: req,
      requestId,
      startedAt: performance.now(),
    };
  }

  private onHttp2(stream: http2.ServerHttp2Stream, raw: http2.IncomingHttpHeaders): void {
    const ctx = this.contexts.get(stream.session as object);
    if (!ctx) return void stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
    stream.on('error', () => undefined);
    const target = targetOf(raw[':method'], raw[':path'] ?? '/');
    if (!target.ok) {
      this.rejected(ctx, 400, target.reason, raw['x-request-id']);
      if (stream.destroyed || stream.closed) return;
      stream.respond({ ':status': 400, 'content-type': 'text/plain' });
      stream.end(`${target.reason}\n`);
      return;
    }
    const { path, query } = target;
    const headers: Headers = {};
    for (const k in raw) {
      if (k.charCodeAt(0) === 58 || (HOP_BY_HOP.has(k) && k !== 'te')) continue;
      const v = raw[k];
      if (v !== undefined) headers[k] = v;
    }
    // Only "te: trailers" may cross an HTTP/2 hop (RFC 9113 8.2.2); gRPC needs it.
    if (headers.te !== undefined && headers.te !== 'trailers') delete headers.te;
    const requestId = ensureRequestId(headers);
    const l7: L7Request = {
      protocol: 'h2',
      grpc: isGrpc(headers),
      method: raw[':method'] ?? 'GET',
      authority: raw[':authority'] ?? (typeof raw.host === 'string' ? raw.host : this.inputs.authorityOf(ctx)),
      path,
      query,
      headers,
      body: stream,
      requestId,
      startedAt: performance.now(),
    };
    this.dispatch(ctx, l7, http2Responder(stream, l7.grpc));
  }

  private rejectHttp1(err: NodeJS.ErrnoException, socket: Duplex): void {
    const tooLarge = err.code === 'HPE_HEADER_OVERFLOW';
    const status = tooLarge ? 431 : 400;
    this.rejected(this.contexts.get(socket), status, `${err.code ?? 'HPE'}: ${err.message}`);
    this.inputs.logger.debug({ code: err.code, reason: err.message }, 'malformed HTTP request refused');
    if (socket.writable && !(socket as net.Socket & { _httpMessage?: unknown })._httpMessage) {
      const text = tooLarge ? 'Request Header Fields Too Large' : 'Bad Request';
      socket.end(`HTTP/1.1 ${status} ${text}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
    }
    socket.destroy();
  }
}

/** One normalization for routing, policy and the app (agent/model/normalize.ts); "OPTIONS *" passes as is. */
function targetOf(method: string | undefined, target: string): { ok: true; path: string; query: string } | { ok: false; reason: string } {
  if (target === '*' && method === 'OPTIONS') return { ok: true, path: '*', query: '' };
  const n = normalizeTarget(target);
  return n.ok ? { ok: true, path: n.path, query: n.query ?? '' } : { ok: false, reason: n.reason };
}

/**
 * The request's headers, lowercase, repeated fields kept as arrays, without hop-by-hop fields (and those the
 * Connection header names). Built from rawHeaders in one pass: cheaper than Node's headersDistinct.
 */
function requestHeaders(raw: readonly string[]): Headers {
  const out: Headers = {};
  let connection: string | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const value = raw[i + 1]!;
    if (name === 'connection') connection = connection === undefined ? value : `${connection},${value}`;
    if (HOP_BY_HOP.has(name)) continue;
    const prev = out[name];
    if (prev === undefined) out[name] = value;
    else if (Array.isArray(prev)) prev.push(value);
    else out[name] = [prev, value];
  }
  if (connection !== undefined) for (const n of connection.toLowerCase().split(',')) delete out[n.trim()];
  return out;
}

function isGrpc(headers: Headers): boolean {
  const ct = headers['content-type'];
  return typeof ct === 'string' && ct.startsWith('application/grpc');
}

function ensureRequestId(headers: Headers): string {
  const id = headers['x-request-id'];
  if (typeof id === 'string' && id.length > 0 && id.length <= 128) return id;
  const made = randomUUID();
  headers['x-request-id'] = made;
  return made;
}

function http1Responder(res: http.ServerResponse): Responder {
  let closedEarly = false;
  res.once('close', () => {
    if (!res.writableFinished) closedEarly = true;
  });
  return {
    get headSent() {
      return res.headersSent;
    },
    get closed() {
      return closedEarly || res.destroyed;
    },
    head(status, headers, endStream) {
      res.writeHead(status, headers);
      if (endStream) res.end();
    },
    write: (chunk) => res.write(chunk),
    end: () => void res.end(),
    reset: () => void res.destroy(),
    onDrain: (fn) => void res.once('drain', fn),
    onClose: (fn) =>
      void res.once('close', () => {
        if (!res.writableFinished) fn();
      }),
  };
}

function http2Responder(stream: http2.ServerHttp2Stream, grpc: boolean): Responder {
  let trailers: Headers | undefined;
  // Only responses that may carry trailers hold END_STREAM back for them (gRPC always does; others when the
  // upstream announced them); an empty trailer block is still sent so the stream ends with END_STREAM.
  stream.on('wantTrailers', () => stream.sendTrailers(trailers ?? {}));
  const closedEarly = () => stream.destroyed && !stream.writableFinished;
  return {
    get headSent() {
      return stream.headersSent;
    },
    get closed() {
      return closedEarly() || stream.closed;
    },
    head(status, headers, endStream) {
      // A stream the client reset (RST_STREAM) may be gone by the time an answer is ready.
      if (stream.destroyed || stream.closed || stream.headersSent) return;
      const out: http2.OutgoingHttpHeaders = { ':status': status };
      for (const k in headers) if (!HOP_BY_HOP.has(k) || k === 'trailer') out[k] = headers[k];
      const expectTrailers = !endStream && (grpc || headers.trailer !== undefined);
      stream.respond(out, { endStream, waitForTrailers: expectTrailers });
    },
    write: (chunk) => (stream.destroyed ? true : stream.write(chunk)),
    end(t) {
      trailers = t;
      // Trailers with no room for them (the upstream sent some unannounced on a non-gRPC response) are dropped.
      if (!stream.destroyed) stream.end();
    },
    reset: () => void (stream.destroyed || stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR)),
    onDrain: (fn) => void stream.once('drain', fn),
    onClose: (fn) =>
      void stream.once('close', () => {
        if (!stream.writableFinished || stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) fn();
      }),
  };
}

function isNetSocket(s: Duplex): s is net.Socket {
  return typeof (s as net.Socket).setNoDelay === 'function' && '_handle' in s;
}
