// L7 upstream, HTTP/1.1: one kept-alive connection to an endpoint (an HBONE stream to a meshed pod, a TCP
// connection otherwise, or to the app on the inbound side), carrying one request at a time. The request head is
// written in one piece with the body when it is already here; the response is parsed with llhttp and its body
// handed on as it arrives. Reused only after a whole exchange both ways.
import type { Duplex } from 'node:stream';
import { Body, type BodyProducer, type BodyReader } from '../body.js';
import { fromRaw, type Headers } from '../headers.js';
import { UpstreamError, needsLength, type UpstreamRequest, type UpstreamResponse } from '../upstream-types.js';
import { CHUNK_END, chunkHeader, lastChunk, requestHead } from './encode.js';
import { Parser, SKIP_BODY, type Head, type ParseError, type ParserEvents } from './parser.js';

/** Pieces of one write up to this size are copied into one buffer (fewer system calls than writing each). */
const COALESCE_BYTES = 16 * 1024;

/** Told when a connection is free again (whole exchange, keep-alive both ways) or gone. */
export interface ClientOwner {
  released(client: H1Client): void;
  lost(client: H1Client): void;
}

interface InFlight {
  resolve: (r: UpstreamResponse) => void;
  reject: (e: Error) => void;
  method: string;
  /** The response, once its head came. */
  response?: Response;
  /** The response was handed on (after the read that parsed its head passed the framing checks). */
  announced?: boolean;
  /** The request's last byte is written. */
  sent: boolean;
  /** The response's last byte arrived. */
  received: boolean;
  keepAlive: boolean;
}

export class H1Client implements ParserEvents, BodyProducer {
  private readonly parser: Parser;
  private flight: InFlight | undefined;
  /** Exchanges completed on this connection (a request on a reused connection may meet a server's idle close). */
  exchanges = 0;
  /** When it went back to the pool (for the idle timeout). */
  idleSince = 0;
  private dead = false;

  constructor(
    readonly key: string,
    private readonly transport: Duplex,
    private readonly owner: ClientOwner,
    maxHeaderBytes: number,
  ) {
    this.parser = new Parser('response', this, maxHeaderBytes);
    transport.on('data', (chunk: Buffer) => this.read(chunk));
    transport.on('error', (err: Error) => this.broken(err.message));
    transport.once('end', () => this.ended());
    transport.once('close', () => this.broken('connection closed'));
  }

  /**
   * Whether the connection may carry another request. One inside an HBONE stream whose session got GOAWAY (the
   * destination agent is handing over, or stopping) is let go by this side while idle, never reused: closing from
   * the client side cannot cross a request.
   */
  get alive(): boolean {
    return !this.dead && !(this.transport as { session?: { closed?: boolean } }).session?.closed;
  }

  /** Sends one request; resolves with the response head (its body follows), rejects before one came. */
  send(req: UpstreamRequest): Promise<UpstreamResponse> {
    if (this.dead) return Promise.reject(new UpstreamError('reset', 'connection closed', this.exchanges > 0));
    return new Promise((resolve, reject) => {
      this.flight = { resolve, reject, method: req.method, sent: false, received: false, keepAlive: true };
      this.write(req);
    });
  }

  /** Closes the connection (an idle one, or one whose exchange was abandoned). */
  destroy(): void {
    if (this.dead) return;
    this.dead = true;
    this.transport.destroy();
    this.parser.release();
  }

  // ---- the request ----

  private write(req: UpstreamRequest): void {
    const t = this.transport;
    const body = req.body;
    let framing: string;
    let chunked = false;
    if (Buffer.isBuffer(body)) {
      framing = body.length > 0 || needsLength(req.method) ? `content-length: ${body.length}\r\n` : '';
    } else if (body.ended && body.received === 0) {
      framing = needsLength(req.method) ? 'content-length: 0\r\n' : '';
    } else if (body.length !== undefined) {
      framing = `content-length: ${body.length}\r\n`;
    } else {
      framing = 'transfer-encoding: chunked\r\n';
      chunked = true;
    }
    // Trailers are welcome (the relay passes them on); between agents, say what the client spoke.
    framing += req.appProtocol === 'h2' ? 'te: trailers\r\ntrellis-app-protocol: h2\r\n' : 'te: trailers\r\n';
    const head = requestHead(req.method, req.path, req.authority, req.headers, framing);
    // One write for the head and a body that is here already (a GET, a buffered body); a streamed body follows it.
    if (Buffer.isBuffer(body) || (body.ended && body.received === 0)) {
      if (!Buffer.isBuffer(body) || body.length === 0) t.write(head);
      else if (body.length <= COALESCE_BYTES) t.write(Buffer.concat([head, body]));
      else {
        t.write(head);
        t.write(body);
      }
      this.sent();
      return;
    }
    t.cork();
    t.write(head);
    body.read(new RequestWriter(this, t, body, chunked));
    t.uncork();
  }

  /** The request's last byte is written. */
  sent(): void {
    const f = this.flight;
    if (!f) return;
    f.sent = true;
    if (f.received) this.done();
  }

  /** The request body broke midway: the exchange cannot complete, the connection goes. */
  requestFailed(reason: string): void {
    const f = this.flight;
    if (!f) return;
    if (!f.response) f.reject(new UpstreamError('reset', `request body: ${reason}`, this.exchanges > 0));
    else f.response.body.fail(`request body: ${reason}`);
    this.flight = undefined;
    this.destroy();
    this.tellLost();
  }

  // ---- the response ----

  private read(chunk: Buffer): void {
    if (!this.flight) return this.broken('bytes from upstream with no request in flight');
    const f = this.flight;
    const r = this.parser.execute(chunk);
    if (typeof r !== 'number') return this.malformed(r);
    // llhttp checks a head's framing after its callback: the response goes on only once the read passed.
    if (f?.response && !f.announced) {
      f.announced = true;
      f.resolve(f.response);
    }
  }

  head(h: Head): number {
    const f = this.flight;
    if (!f) return 0;
    // 1xx answers (100 Continue, 103 Early Hints) are not passed on: the real response follows.
    if (h.status >= 100 && h.status < 200) return 0;
    f.keepAlive = h.keepAlive;
    const skip = f.method === 'HEAD' || h.status === 204 || h.status === 304;
    const headers = fromRaw(h.raw);
    const length = headers['content-length'];
    const empty = skip || length === '0';
    const body = empty ? Body.EMPTY : new Body(this, typeof length === 'string' ? Number(length) : undefined);
    const response = new Response(h.status, headers, body, this, this.exchanges > 0);
    f.response = response;
    if (empty) f.received = true;
    return skip ? SKIP_BODY : 0;
  }

  body(chunk: Buffer): void {
    const res = this.flight?.response;
    if (res && !res.body.push(chunk)) this.transport.pause();
  }

  complete(trailers: string[] | undefined): void {
    const f = this.flight;
    if (!f?.response) return;
    f.received = true;
    f.response.body.finish(trailers ? fromRaw(trailers) : undefined);
    if (f.sent) this.done();
  }

  // BodyProducer of the response body.
  resume(): void {
    this.transport.resume();
  }

  cancel(): void {
    // The response body is not wanted: this connection cannot be reused for another request.
    this.abandon();
  }

  /** Gives up on the exchange in flight: the connection goes (nothing else may read what is left of it). */
  abandon(): void {
    this.flight = undefined;
    this.destroy();
    this.tellLost();
  }

  private done(): void {
    const f = this.flight!;
    this.flight = undefined;
    this.exchanges++;
    if (f.keepAlive && !this.dead) this.owner.released(this);
    else {
      this.destroy();
      this.tellLost();
    }
  }

  private malformed(err: ParseError): void {
    this.broken(`malformed response from upstream (${err.code}: ${err.reason})`);
  }

  private ended(): void {
    // The server closed its side: a response delimited by the close ends here.
    if (this.flight?.response && !this.flight.received) {
      const err = this.parser.finish();
      if (err) return this.broken(`upstream closed mid-response (${err.code})`);
    }
    if (this.flight?.received) this.flight.keepAlive = false;
    this.broken('upstream closed the connection');
  }

  private broken(reason: string): void {
    const f = this.flight;
    this.flight = undefined;
    if (f) {
      // A response refused for its framing is not retried as an idle-close race on a reused connection.
      if (!f.announced) f.reject(new UpstreamError('reset', reason, !f.response && this.exchanges > 0));
      else if (!f.received) f.response?.body.fail(`upstream: ${reason}`);
    }
    this.destroy();
    this.tellLost();
  }

  private told = false;

  private tellLost(): void {
    if (this.told) return;
    this.told = true;
    this.owner.lost(this);
  }
}

/** Writes a request body as it arrives: raw after a Content-Length, framed as chunks otherwise. */
class RequestWriter implements BodyReader {
  constructor(
    private readonly client: H1Client,
    private readonly t: Duplex,
    private readonly body: Body,
    private readonly chunked: boolean,
  ) {}

  data(chunk: Buffer): boolean {
    let ok: boolean;
    if (!this.chunked) ok = this.t.write(chunk);
    else if (chunk.length <= COALESCE_BYTES) ok = this.t.write(Buffer.concat([chunkHeader(chunk.length), chunk, CHUNK_END]));
    else {
      this.t.write(chunkHeader(chunk.length));
      this.t.write(chunk);
      ok = this.t.write(CHUNK_END);
    }
    if (!ok) this.t.once('drain', () => this.body.pull());
    return ok;
  }

  end(trailers: Headers | undefined): void {
    if (this.chunked) this.t.write(lastChunk(trailers));
    this.client.sent();
  }

  error(reason: string): void {
    this.client.requestFailed(reason);
  }
}

class Response implements UpstreamResponse {
  constructor(
    readonly status: number,
    readonly headers: Headers,
    readonly body: Body,
    private readonly client: H1Client,
    readonly reused: boolean,
  ) {}

  abort(): void {
    // A response read to its end leaves the connection as it was; one cut short takes the connection with it.
    if (this.body.ended) this.body.discard();
    else this.client.abandon();
  }
}
