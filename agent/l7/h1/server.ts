// L7 downstream, HTTP/1.1: requests read off a connection's bytes with llhttp (h1/parser.ts, strict, as Node's
// server runs it) and answered by writing heads and bodies straight back, with keep-alive, pipelining (one
// request served at a time, in order), 100-continue, chunked bodies and trailers, and Upgrade handed over as raw
// bytes. The connection is a real socket on the outbound side and an HBONE stream on the inbound side.
// Malformed requests and smuggling attempts answer 400 and oversized heads 431, and none is ever forwarded. A
// connection that sends its head too slowly, or sits idle between requests too long, is closed.
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { normalizeTarget } from '../../model/normalize.js';
import type { Metrics } from '../../telemetry/metrics.js';
import { Body, type BodyProducer } from '../body.js';
import type { L7Request, Responder } from '../exchange.js';
import { APP_PROTOCOL_HEADER, HOP_BY_HOP, ensureRequestId, isGrpc, type Headers } from '../headers.js';
import { CHUNK_END, CONTINUE, chunkHeader, lastChunk, plainResponse, responseHead } from './encode.js';
import { Parser, type Head, type ParseError, type ParserEvents } from './parser.js';

export interface H1Limits {
  /** Largest request head (request line and headers), bytes; beyond it 431. */
  readonly maxHeaderBytes: number;
  /** Most header fields per request; beyond it 431. */
  readonly maxHeaderCount: number;
  /** A request head must arrive whole within this long of its first byte; 0: no limit. */
  readonly headerTimeoutMs: number;
  /** A kept-alive connection with no request in flight is closed after this long; 0: never. */
  readonly idleTimeoutMs: number;
}

export interface H1ServerInputs<C> {
  limits: H1Limits;
  metrics: Metrics;
  logger: Logger;
  /** The authority of a request that names none (HTTP/1.0 without Host). */
  authorityOf: (ctx: C) => string;
  /** Handles one parsed request; it answers through the Responder. */
  onRequest: (ctx: C, req: L7Request, res: Responder) => Promise<void>;
  /** Told of every request refused before it was parsed whole (400, 431), for its audit line. */
  onRejected?: (ctx: C, status: number, reason: string, requestId?: string) => void;
  /** Handles an Upgrade (WebSocket): the connection is the handler's from now on, `head` its first bytes. */
  onUpgrade: (ctx: C, req: L7Request, raw: readonly string[], socket: Duplex, head: Buffer) => Promise<void>;
}

/** How often connections are checked for the head and idle timeouts: one coarse timer for all of them. */
const SWEEP_MS = 1000;
/** Requests parsed ahead of the one being served (pipelining) before the connection stops reading. */
const MAX_QUEUED = 16;
/** Pieces of one response write up to this size are copied into one buffer. */
const COALESCE_BYTES = 16 * 1024;
/** How long a refused connection may linger after its answer before it is destroyed. */
const LINGER_MS = 2000;

function destroy(t: Duplex): void {
  t.destroy();
}

export class H1Server<C> {
  readonly connections = new Set<H1Connection<C>>();
  private sweep: NodeJS.Timeout | undefined;
  private draining = false;

  constructor(readonly inputs: H1ServerInputs<C>) {}

  /** Serves HTTP/1.1 on a connection until it closes; bytes a sniff looked at are still in its buffer. */
  serve(transport: Duplex, ctx: C): H1Connection<C> {
    const conn = new H1Connection(this, transport, ctx);
    this.connections.add(conn);
    if (this.draining) conn.drain();
    const { headerTimeoutMs, idleTimeoutMs } = this.inputs.limits;
    if (!this.sweep && (headerTimeoutMs > 0 || idleTimeoutMs > 0)) {
      this.sweep = setInterval(() => this.check(), SWEEP_MS);
      this.sweep.unref();
    }
    return conn;
  }

  /**
   * Tells every connection, and every one served from now on, to end after its next response, which says
   * `connection: close`. An idle connection stays open for its client's next request: closing it now could cross
   * a request the client is sending (a reset between requests); one that never sends is cut when the drain ends.
   */
  drain(): void {
    this.draining = true;
    for (const c of this.connections) c.drain();
  }

  close(): void {
    if (this.sweep) clearInterval(this.sweep);
    this.sweep = undefined;
  }

  forget(conn: H1Connection<C>): void {
    this.connections.delete(conn);
  }

  private check(): void {
    const now = Date.now();
    const { headerTimeoutMs, idleTimeoutMs } = this.inputs.limits;
    for (const c of this.connections) c.expire(now, headerTimeoutMs, idleTimeoutMs);
  }
}

/** The phase a connection is in, for the timeouts: between requests, inside a head, or serving. */
const enum Phase {
  Idle,
  Head,
  Busy,
}

export class H1Connection<C> implements ParserEvents, BodyProducer {
  private readonly parser: Parser;
  /** The request being answered now. */
  private current: H1Exchange<C> | undefined;
  /** The request whose body the parser is reading (the current one, or the last queued). */
  private incoming: H1Exchange<C> | undefined;
  private queue: H1Exchange<C>[] | undefined;
  /** A request head asking for an Upgrade: the connection is handed over after this chunk's head. */
  private upgrading: { exchange: H1Exchange<C>; raw: readonly string[] } | undefined;
  /** A refusal to send once the request in flight is answered (the bytes after it were malformed). */
  private refusal: { status: number; reason: string } | undefined;
  /**
   * The request whose head this read parsed, dispatched only once the read parsed without error: llhttp checks
   * the framing (Transfer-Encoding against Content-Length, chunk sizes) after the head's callback, and a request
   * it then refuses must never have reached a handler.
   */
  private unstarted: H1Exchange<C> | undefined;
  /** The last request whose head this read parsed (the one a parse error belongs to). */
  private lastHead: H1Exchange<C> | undefined;
  private phase = Phase.Idle;
  private since = Date.now();
  private closing = false;
  /** Drain asked for: the next response with nothing queued behind it is the last. */
  private retiring = false;
  private gone = false;
  private readonly onData = (chunk: Buffer) => this.read(chunk);

  constructor(
    private readonly server: H1Server<C>,
    readonly transport: Duplex,
    readonly ctx: C,
  ) {
    this.parser = new Parser('request', this, server.inputs.limits.maxHeaderBytes);
    transport.on('data', this.onData);
    transport.on('error', () => undefined);
    transport.once('close', () => this.closed());
    transport.once('end', () => this.ended());
    transport.resume();
  }

  // ---- reading ----

  private read(chunk: Buffer): void {
    if (this.phase === Phase.Idle) {
      this.phase = Phase.Head;
      this.since = Date.now();
    }
    const n = this.parser.execute(chunk);
    if (typeof n !== 'number') return this.malformed(n);
    this.lastHead = undefined;
    const next = this.unstarted;
    this.unstarted = undefined;
    if (next) this.start(next);
    if (this.upgrading) this.handOver(chunk.subarray(n));
  }

  private malformed(err: ParseError): void {
    // The request the error belongs to is dropped (never dispatched, or its body fails where it went); those
    // parsed whole before it are served, and the refusal follows them.
    const bad = this.lastHead ?? this.incoming;
    this.lastHead = undefined;
    this.upgrading = undefined;
    if (bad) {
      if (this.unstarted === bad) this.unstarted = undefined;
      const i = this.queue?.indexOf(bad) ?? -1;
      if (i >= 0) this.queue!.splice(i, 1);
      if (this.queue?.length === 0) this.queue = undefined;
      bad.req.body.fail('malformed request');
    }
    this.incoming = undefined;
    const next = this.unstarted;
    this.unstarted = undefined;
    if (next) this.start(next);
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    this.server.inputs.logger.debug({ code: err.code, reason: err.reason }, 'malformed HTTP request refused');
    this.refuse(status, `${err.code}: ${err.reason}`);
  }

  /** Answers `status` and closes; after the request in flight, if there is one (nothing behind it is read). */
  private refuse(status: number, reason: string, requestId?: string): void {
    this.stopReading();
    this.server.inputs.metrics.httpRejections.inc({ status: String(status) });
    this.server.inputs.onRejected?.(this.ctx, status, reason, requestId);
    if (this.current) {
      this.refusal ??= { status, reason };
      this.closing = true;
      return;
    }
    this.sendRefusal(status, reason);
  }

  private sendRefusal(status: number, reason: string): void {
    const t = this.transport;
    if (!t.writable) return void t.destroy();
    t.end(plainResponse(status, status === 431 ? 'Request Header Fields Too Large' : reason, true));
    // A client that never closes its side does not keep the connection: it goes a moment after the answer.
    setTimeout(destroy, LINGER_MS, t).unref();
  }

  private stopReading(): void {
    this.transport.off('data', this.onData);
    this.transport.pause();
  }

  head(h: Head): number {
    if (this.closing) return 0;
    const limits = this.server.inputs.limits;
    let reqId: string | undefined;
    if (h.raw.length / 2 > limits.maxHeaderCount) {
      this.refuse(431, `more than ${limits.maxHeaderCount} header fields`);
      return 0;
    }
    const parsed = readHead(h.raw);
    reqId = typeof parsed.headers['x-request-id'] === 'string' ? parsed.headers['x-request-id'] : undefined;
    if (h.method === 'CONNECT') {
      this.refuse(405, 'CONNECT is not proxied');
      return 0;
    }
    if (h.versionMinor === 1 && parsed.host === undefined) {
      this.refuse(400, 'missing Host header', reqId);
      return 0;
    }
    // RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing (Node refuses it too; a
    // backend that reads it by Content-Length or until close would see another request boundary than the agent).
    if (h.versionMinor === 0 && parsed.chunked) {
      this.refuse(400, 'Transfer-Encoding in an HTTP/1.0 request', reqId);
      return 0;
    }
    const target = targetOf(h.method, h.url);
    if (!target.ok) {
      this.refuse(400, target.reason, reqId);
      return 0;
    }
    const headers = parsed.headers;
    const requestId = ensureRequestId(headers);
    // 100-continue is answered here at once; the upstream gets the body directly. Any other expectation cannot be
    // met (RFC 9110 section 10.1.1): 417, as Node's server answers it.
    const expectContinue = parsed.expect !== undefined && parsed.expect.toLowerCase() === '100-continue';
    if (parsed.expect !== undefined && !expectContinue) {
      this.refuse(417, `unsupported expectation: ${parsed.expect.slice(0, 64)}`, requestId);
      return 0;
    }
    delete headers.expect;
    const contentLength = headers['content-length'];
    const chunked = parsed.chunked;
    const bodyless = !chunked && (contentLength === undefined || contentLength === '0');
    const body = bodyless ? Body.EMPTY : new Body(this, typeof contentLength === 'string' ? Number(contentLength) : undefined);
    const req: L7Request = {
      protocol: 'http1',
      grpc: isGrpc(headers),
      method: h.method,
      authority: parsed.host ?? this.server.inputs.authorityOf(this.ctx),
      path: target.path,
      query: target.query,
      headers,
      body,
      requestId,
      startedAt: performance.now(),
      ...(parsed.appProtocol && { appProtocol: parsed.appProtocol }),
    };
    const exchange = new H1Exchange(this, req, h.versionMinor === 1 && h.keepAlive, h.versionMinor === 0, parsed.trailers, expectContinue && !bodyless);
    this.lastHead = exchange;
    if (h.upgrade) {
      if (this.current || this.queue || this.unstarted) {
        this.refuse(400, 'an Upgrade request pipelined behind another request');
        return 0;
      }
      this.upgrading = { exchange, raw: h.raw };
      return 0;
    }
    this.incoming = bodyless ? undefined : exchange;
    if (this.current || this.unstarted) {
      (this.queue ??= []).push(exchange);
      // Stop reading ahead once enough is waiting; the queue resumes reading as it empties.
      if (this.queue.length >= MAX_QUEUED) this.transport.pause();
    } else {
      this.unstarted = exchange;
    }
    return 0;
  }

  body(chunk: Buffer): void {
    const e = this.incoming;
    if (!e) return;
    if (!e.req.body.push(chunk)) this.transport.pause();
  }

  complete(trailers: string[] | undefined): void {
    const e = this.incoming;
    this.incoming = undefined;
    if (!this.current && !this.queue) {
      this.phase = Phase.Idle;
      this.since = Date.now();
    }
    if (e) e.req.body.finish(trailers ? readHead(trailers).headers : undefined);
  }

  // BodyProducer: the request body's reader asks for more, or gives up on it.
  resume(): void {
    if (!this.closing && (!this.queue || this.queue.length < MAX_QUEUED)) this.transport.resume();
  }

  cancel(): void {
    // The rest of the body is read and dropped, so the next request on the connection can be parsed.
    this.incoming = undefined;
    this.resume();
  }

  private handOver(head: Buffer): void {
    const { exchange, raw } = this.upgrading!;
    this.upgrading = undefined;
    this.stopReading();
    this.parser.release();
    this.server.forget(this);
    this.gone = true;
    this.phase = Phase.Busy;
    const t = this.transport;
    t.off('end', this.ended);
    t.off('data', this.onData);
    this.server.inputs.onUpgrade(this.ctx, exchange.req, raw, t, head).catch((err: Error) => {
      this.server.inputs.logger.error({ err: err.message }, 'upgrade handler failed');
      t.destroy();
    });
  }

  // ---- serving ----

  private start(exchange: H1Exchange<C>): void {
    this.current = exchange;
    this.phase = Phase.Busy;
    if (exchange.expectContinue && !exchange.req.body.ended) this.transport.write(CONTINUE);
    // The handlers answer every failure themselves; this is the last guard so that a bug never becomes an
    // unhandled rejection (which would end the agent).
    this.server.inputs.onRequest(this.ctx, exchange.req, exchange).catch((err: Error) => {
      this.server.inputs.logger.error({ err: err.message, stack: err.stack }, 'request handler failed');
      exchange.reset();
    });
  }

  /** The response of the current exchange ended: the next request, or the end of the connection. */
  finished(exchange: H1Exchange<C>, keepAlive: boolean): void {
    if (exchange !== this.current) return;
    this.current = undefined;
    if (!exchange.req.body.ended) {
      // Answered before its body arrived whole: read the rest and drop it, unless the connection is closing.
      if (keepAlive) exchange.req.body.discard();
      else this.incoming = undefined;
    }
    if (!keepAlive || this.closing) {
      if (this.refusal) {
        const r = this.refusal;
        this.refusal = undefined;
        this.sendRefusal(r.status, r.reason);
      } else {
        this.transport.end();
      }
      this.stopReading();
      return;
    }
    const next = this.queue?.shift();
    if (this.queue?.length === 0) this.queue = undefined;
    if (next) {
      this.start(next);
      if (!this.queue || this.queue.length < MAX_QUEUED) this.transport.resume();
      return;
    }
    this.phase = this.parser.inMessage ? Phase.Head : Phase.Idle;
    this.since = Date.now();
  }

  /**
   * Ends the connection after its next response (`connection: close` on it): the one in flight, or the answer to
   * the client's next request. Requests already pipelined behind it are answered first; the last one closes.
   */
  drain(): void {
    this.retiring = true;
  }

  /** Whether the response being written now is the connection's last. */
  get draining(): boolean {
    return this.closing || (this.retiring && !this.queue?.length);
  }

  expire(now: number, headerTimeoutMs: number, idleTimeoutMs: number): void {
    // Already refused or ending: the linger below ends it; a second refusal would count it twice.
    if (this.closing) return;
    if (this.phase === Phase.Head && headerTimeoutMs > 0 && now - this.since > headerTimeoutMs && !this.current) {
      this.server.inputs.logger.debug({ ms: now - this.since }, 'request head too slow: connection closed');
      this.refuse(408, `no complete request head within ${headerTimeoutMs} ms`);
      this.closing = true;
    } else if (this.phase === Phase.Idle && idleTimeoutMs > 0 && now - this.since > idleTimeoutMs) {
      this.closing = true;
      this.stopReading();
      this.transport.end();
      // A client that never closes its side does not keep the connection either.
      setTimeout(destroy, LINGER_MS, this.transport).unref();
    }
  }

  private ended = (): void => {
    // The client half-closed: a body delimited by it ends; an unfinished head or body is an error.
    if (this.gone) return;
    if (this.parser.inMessage) {
      this.incoming?.req.body.fail('client closed in the middle of the request');
      this.incoming = undefined;
    }
    // The response in flight still goes out, with `connection: close`; then the connection ends.
    this.closing = true;
    if (!this.current) this.transport.end();
  };

  private closed(): void {
    if (this.gone) return;
    this.gone = true;
    this.server.forget(this);
    this.incoming?.req.body.fail('client went away');
    this.current?.gone();
    for (const q of this.queue ?? []) q.req.body.fail('client went away');
    this.queue = undefined;
    this.parser.release();
  }
}

/** One request and its response on an HTTP/1.1 connection; the Responder the layers answer through. */
class H1Exchange<C> implements Responder {
  headSent = false;
  private done = false;
  private lost = false;
  private chunked = false;
  private bodyless = false;
  private closeAfter: boolean;
  /** The head, held until the body that follows (or end/flush) so both leave in one write. */
  private pending: Buffer | undefined;
  private closeWaiters: (() => void)[] | undefined;

  constructor(
    private readonly conn: H1Connection<C>,
    readonly req: L7Request,
    keepAlive: boolean,
    /** HTTP/1.0: no chunked encoding; a body of unknown length is delimited by the close. */
    private readonly http10: boolean,
    /** The client accepts trailers (TE: trailers). */
    private readonly acceptsTrailers: boolean,
    /** The client waits for 100 Continue before it sends the body. */
    readonly expectContinue: boolean,
  ) {
    this.closeAfter = !keepAlive;
  }

  get closed(): boolean {
    return this.lost;
  }

  head(status: number, headers: Headers, endStream: boolean): void {
    if (this.headSent || this.lost) return;
    this.headSent = true;
    const t = this.conn.transport;
    this.bodyless = this.req.method === 'HEAD' || status === 204 || status === 304 || (status >= 100 && status < 200);
    let framing = '';
    if (!this.bodyless && headers['content-length'] === undefined) {
      if (endStream) framing = 'content-length: 0\r\n';
      else if (this.http10) this.closeAfter = true;
      else {
        this.chunked = true;
        framing = 'transfer-encoding: chunked\r\n';
      }
    }
    if (this.conn.draining) this.closeAfter = true;
    if (this.closeAfter) framing += 'connection: close\r\n';
    else if (this.http10) framing += 'connection: keep-alive\r\n';
    const head = responseHead(status, headers, framing);
    if (endStream) {
      t.write(head);
      this.finish();
      return;
    }
    // The head waits for the body that follows: one write for both (end() or flush() sends it alone).
    this.pending = head;
  }

  write(chunk: Buffer): boolean {
    if (this.done || this.lost || chunk.length === 0 || this.bodyless) return this.flushed();
    const parts = this.chunked ? [chunkHeader(chunk.length), chunk, CHUNK_END] : [chunk];
    return this.send(parts);
  }

  end(trailers?: Headers): void {
    if (this.done || this.lost) return;
    if (this.chunked) this.send([lastChunk(this.acceptsTrailers ? trailers : undefined)]);
    this.finish();
  }

  /**
   * One write: the held head (if any) and `parts`, copied together when small (a socket write per piece cost a
   * system call each, and writev more JavaScript than the copy), else each written in turn.
   */
  private send(parts: Buffer[]): boolean {
    const t = this.conn.transport;
    const head = this.pending;
    this.pending = undefined;
    if (head) parts.unshift(head);
    if (parts.length === 1) return t.write(parts[0]!);
    let size = 0;
    for (const p of parts) size += p.length;
    if (size <= COALESCE_BYTES) return t.write(Buffer.concat(parts, size));
    let ok = true;
    for (const p of parts) ok = t.write(p);
    return ok;
  }

  private flushed(): boolean {
    this.flush();
    return true;
  }

  reset(): void {
    if (this.lost) return;
    this.done = true;
    this.lost = true;
    this.conn.transport.destroy();
  }

  onDrain(fn: () => void): void {
    this.conn.transport.once('drain', fn);
  }

  onClose(fn: () => void): void {
    if (this.lost) return void fn();
    (this.closeWaiters ??= []).push(fn);
  }

  /** The connection closed before the response ended. */
  gone(): void {
    if (this.done) return;
    this.lost = true;
    this.done = true;
    for (const fn of this.closeWaiters ?? []) fn();
    this.closeWaiters = undefined;
  }

  flush(): void {
    const head = this.pending;
    if (!head) return;
    this.pending = undefined;
    this.conn.transport.write(head);
  }

  private finish(): void {
    this.done = true;
    this.closeWaiters = undefined;
    this.flush();
    this.conn.finished(this, !this.closeAfter);
  }
}

interface ReadHead {
  headers: Headers;
  host: string | undefined;
  expect: string | undefined;
  chunked: boolean;
  /** TE: trailers was asked for. */
  trailers: boolean;
  appProtocol: 'h2' | undefined;
}

/**
 * The head's fields in one pass: lowercase names, repeated fields as arrays, hop-by-hop fields (and those the
 * Connection header names) dropped; Host, Expect, Transfer-Encoding and TE read on the way.
 */
function readHead(raw: readonly string[]): ReadHead {
  const headers: Headers = {};
  let host: string | undefined;
  let expect: string | undefined;
  let connection: string | undefined;
  let chunked = false;
  let trailers = false;
  let appProtocol: 'h2' | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const value = raw[i + 1]!;
    if (HOP_BY_HOP.has(name)) {
      if (name === 'host') host ??= value;
      else if (name === 'connection') connection = connection === undefined ? value : `${connection},${value}`;
      else if (name === 'transfer-encoding') chunked = true;
      else if (name === 'te') trailers ||= /\btrailers\b/i.test(value);
      else if (name === APP_PROTOCOL_HEADER) appProtocol = value === 'h2' ? 'h2' : undefined;
      continue;
    }
    if (name === 'expect') expect = value;
    const prev = headers[name];
    if (prev === undefined) headers[name] = value;
    else if (Array.isArray(prev)) prev.push(value);
    else headers[name] = [prev, value];
  }
  if (connection !== undefined) for (const n of connection.toLowerCase().split(',')) delete headers[n.trim()];
  return { headers, host, expect, chunked, trailers, appProtocol };
}

/** One normalization for routing, policy and the app (agent/model/normalize.ts); "OPTIONS *" passes as is. */
export function targetOf(method: string | undefined, target: string): { ok: true; path: string; query: string } | { ok: false; reason: string } {
  if (target === '*' && method === 'OPTIONS') return { ok: true, path: '*', query: '' };
  const n = normalizeTarget(target);
  return n.ok ? { ok: true, path: n.path, query: n.query ?? '' } : { ok: false, reason: n.reason };
}
