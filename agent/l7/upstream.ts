// L7 upstream: requests to one chosen endpoint, each over a tunnel the outbound side opens (an HBONE CONNECT
// stream to a meshed endpoint, plain TCP from the source pod otherwise). HTTP/1.1 connections are kept alive
// and reused per (source pod, endpoint) through an http.Agent; HTTP/2 gets one multiplexed session per
// (source pod, endpoint). The caller sees one shape for both: send a request, get the response head, read
// the body, then the trailers.
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import type { Duplex, Readable } from 'node:stream';
import { TrellisError } from '../errors.js';
import type { Workload } from '../state/workload.js';
import { bytesOnly } from '../io/bytes-only.js';

export interface UpstreamEndpoint {
  readonly ip: string;
  readonly port: number;
  readonly workload?: Workload;
  /** The backend Service it was picked from (its host): the tunnel tells the destination agent. */
  readonly service?: string;
}

/** Opens the byte stream a request travels in: the outbound side decides HBONE or plain TCP. */
export type TunnelOpener = (src: Workload, ep: UpstreamEndpoint, protocol: 'http1' | 'h2') => Promise<Duplex>;

export type Headers = Record<string, string | string[]>;

export interface UpstreamRequest {
  readonly method: string;
  /** Path and query as sent upstream. */
  readonly path: string;
  readonly authority: string;
  /** Lowercase names, no pseudo-headers, no hop-by-hop headers. */
  readonly headers: Headers;
  /** A buffered body (replayable), or the client's stream. */
  readonly body: Buffer | Readable;
}

export interface UpstreamResponse {
  readonly status: number;
  readonly headers: Headers;
  readonly body: Readable;
  /** Trailers, once the body ended (HTTP/2 only; HTTP/1 trailers are not forwarded). */
  trailers(): Headers | undefined;
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

/** Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1, plus the HTTP/2 ban list). */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
  'host',
]);

const FREE_SOCKET_IDLE_MS = 4_000; // below Node's 5 s server keepAliveTimeout, the most common app default

interface TunnelOptions extends http.ClientRequestArgs {
  trellisSrc: Workload;
  trellisEndpoint: UpstreamEndpoint;
}

/** An http.Agent whose connections are tunnels; sockets are pooled per endpoint (host:port). */
class TunnelAgent extends http.Agent {
  constructor(private readonly open: TunnelOpener) {
    super({ keepAlive: true, maxFreeSockets: 64, scheduling: 'lifo', timeout: FREE_SOCKET_IDLE_MS });
  }

  /** Tunnels are kept per endpoint and Service: each tells the destination agent which Service was called. */
  override getName(options: TunnelOptions): string {
    return `${super.getName(options)}|${options.trellisEndpoint.service ?? ''}`;
  }

  override createConnection(options: TunnelOptions, cb: (err: Error | null, socket?: Duplex) => void): undefined {
    this.open(options.trellisSrc, options.trellisEndpoint, 'http1').then(
      (tunnel) => cb(null, socketLike(tunnel)),
      (err: Error) => cb(new UpstreamError('connect', err.message)),
    );
    return undefined;
  }

}

/**
 * A tunnel as http.Agent and ClientRequest want a socket: an HTTP/2 stream (HBONE) goes through a byte-only
 * wrapper (Node's HTTP writes latin1 strings through writev, which an HTTP/2 stream garbles), and gets the
 * few net.Socket methods they call.
 */
function socketLike(tunnel: Duplex): Duplex {
  const s = (tunnel instanceof net.Socket ? tunnel : bytesOnly(tunnel)) as Duplex & Record<string, unknown>;
  for (const m of ['setKeepAlive', 'setNoDelay', 'ref', 'unref']) {
    if (typeof s[m] !== 'function') s[m] = () => s;
  }
  return s;
}

export class Upstreams {
  private readonly agents = new Map<string, TunnelAgent>();
  private readonly sessions = new Map<string, Promise<http2.ClientHttp2Session>>();
  private closed = false;

  constructor(private readonly inputs: { open: TunnelOpener; maxHeaderListSize: number }) {}

  /** Sends one HTTP/1.1 request; resolves with the response head. */
  http1(src: Workload, ep: UpstreamEndpoint, req: UpstreamRequest): Promise<UpstreamResponse> {
    return new Promise((resolve, reject) => {
      const headers: http.OutgoingHttpHeaders = { ...req.headers, host: req.authority };
      if (Buffer.isBuffer(req.body)) {
        delete headers['transfer-encoding'];
        if (req.body.length > 0 || needsLength(req.method)) headers['content-length'] = req.body.length;
      }
      const options: TunnelOptions = {
        agent: this.agent(src),
        host: ep.ip,
        port: ep.port,
        method: req.method,
        path: req.path,
        headers,
        setHost: false,
        trellisSrc: src,
        trellisEndpoint: ep,
      };
      const creq = http.request(options);
      let settled = false;
      creq.once('response', (res) => {
        settled = true;
        res.on('error', () => undefined);
        resolve({
          status: res.statusCode ?? 502,
          headers: stripHopByHop(res.headers),
          body: res,
          trailers: () => undefined,
          abort: () => creq.destroy(),
          reused: creq.reusedSocket,
        });
      });
      creq.once('error', (err: NodeJS.ErrnoException) => {
        if (settled) return;
        settled = true;
        reject(err instanceof UpstreamError ? err : new UpstreamError('reset', err.message, creq.reusedSocket));
      });
      // A 1xx other than 100 (e.g. 103 Early Hints) is not forwarded; 100 Continue was answered downstream.
      if (Buffer.isBuffer(req.body)) creq.end(req.body);
      else req.body.pipe(creq);
    });
  }

  /** Sends one HTTP/2 request over the endpoint's session; resolves with the response head. */
  async h2(src: Workload, ep: UpstreamEndpoint, req: UpstreamRequest): Promise<UpstreamResponse> {
    const session = await this.session(src, ep);
    const reused = session.state.nextStreamID !== undefined && (session.state.nextStreamID ?? 1) > 1;
    return new Promise((resolve, reject) => {
      let stream: http2.ClientHttp2Stream;
      try {
        stream = session.request(
          { ':method': req.method, ':path': req.path, ':authority': req.authority, ':scheme': 'http', ...req.headers },
          { endStream: Buffer.isBuffer(req.body) && req.body.length === 0 },
        );
      } catch (err) {
        reject(new UpstreamError('reset', (err as Error).message, reused));
        return;
      }
      let trailers: Headers | undefined;
      let settled = false;
      stream.once('trailers', (t) => (trailers = stripPseudo(t)));
      stream.once('response', (h) => {
        settled = true;
        stream.on('error', () => undefined);
        resolve({
          status: Number(h[':status']),
          headers: stripHopByHop(stripPseudo(h), true),
          body: stream,
          trailers: () => trailers,
          abort: () => stream.close(http2.constants.NGHTTP2_CANCEL),
          reused,
        });
      });
      stream.once('error', (err) => {
        if (settled) return;
        settled = true;
        reject(new UpstreamError('reset', err.message, reused));
      });
      stream.once('close', () => {
        if (settled) return;
        settled = true;
        reject(new UpstreamError('reset', `stream closed before a response (code ${stream.rstCode})`, reused));
      });
      if (Buffer.isBuffer(req.body)) {
        if (req.body.length > 0) stream.end(req.body);
      } else {
        req.body.pipe(stream);
      }
    });
  }

  /** A raw tunnel to the endpoint, not pooled (HTTP/1.1 Upgrade). */
  async tunnel(src: Workload, ep: UpstreamEndpoint): Promise<Duplex> {
    try {
      return await this.inputs.open(src, ep, 'http1');
    } catch (err) {
      throw new UpstreamError('connect', (err as Error).message);
    }
  }

  /** Closes every pooled connection and session; requests in flight are cut. */
  close(): void {
    this.closed = true;
    for (const a of this.agents.values()) a.destroy();
    this.agents.clear();
    for (const s of this.sessions.values()) void s.then((x) => x.destroy(), () => undefined);
    this.sessions.clear();
  }

  /**
   * Lets go of a source pod's pool (it left this node or the mesh, or its listeners were reopened): idle
   * connections close now, connections carrying a request close when it is answered.
   */
  forget(srcKey: string): void {
    const agent = this.agents.get(srcKey);
    if (agent) {
      // No socket is kept once free from now on (Node's Agent reads these on every 'free').
      Object.assign(agent, { keepAlive: false, maxFreeSockets: 0 });
      for (const list of Object.values(agent.freeSockets)) for (const socket of list ?? []) socket.destroy();
    }
    this.agents.delete(srcKey);
    for (const [key, s] of this.sessions) {
      if (key.startsWith(`${srcKey}|`)) {
        void s.then((x) => x.close(), () => undefined);
        this.sessions.delete(key);
      }
    }
  }

  private agent(src: Workload): TunnelAgent {
    let a = this.agents.get(src.key);
    if (!a) {
      a = new TunnelAgent(this.inputs.open);
      this.agents.set(src.key, a);
    }
    return a;
  }

  private session(src: Workload, ep: UpstreamEndpoint): Promise<http2.ClientHttp2Session> {
    if (this.closed) return Promise.reject(new UpstreamError('connect', 'the agent is stopping'));
    const key = `${src.key}|${ep.ip}:${ep.port}|${ep.service ?? ''}`;
    let s = this.sessions.get(key);
    if (!s) {
      s = this.connect(src, ep);
      this.sessions.set(key, s);
      const forget = () => {
        if (this.sessions.get(key) === s) this.sessions.delete(key);
      };
      s.then(
        (session) => {
          session.once('close', forget);
          session.once('goaway', forget);
          session.on('error', () => undefined);
        },
        forget,
      );
    }
    return s;
  }

  private async connect(src: Workload, ep: UpstreamEndpoint): Promise<http2.ClientHttp2Session> {
    let tunnel: Duplex;
    try {
      tunnel = await this.inputs.open(src, ep, 'h2');
    } catch (err) {
      throw new UpstreamError('connect', (err as Error).message);
    }
    const session = http2.connect(`http://${ep.ip.includes(':') ? `[${ep.ip}]` : ep.ip}:${ep.port}`, {
      createConnection: () => tunnel,
      settings: { enablePush: false, maxHeaderListSize: this.inputs.maxHeaderListSize },
    });
    return new Promise((resolve, reject) => {
      session.once('connect', () => {
        session.off('error', reject);
        resolve(session);
      });
      session.once('error', (err) => reject(new UpstreamError('connect', err.message)));
    });
  }
}

function needsLength(method: string): boolean {
  return method === 'POST' || method === 'PUT' || method === 'PATCH';
}

export function stripPseudo(h: http2.IncomingHttpHeaders): Headers {
  const out: Headers = {};
  for (const k in h) {
    if (k.charCodeAt(0) === 58 /* : */) continue;
    const v = h[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
}

/** Drops hop-by-hop headers; `keepTrailer` keeps the Trailer announcement (HTTP/2 to HTTP/2). */
export function stripHopByHop(h: http.IncomingHttpHeaders | Headers, keepTrailer = false): Headers {
  const out: Headers = {};
  const named = typeof h.connection === 'string' ? h.connection.toLowerCase().split(',').map((s) => s.trim()) : [];
  for (const k in h) {
    if ((HOP_BY_HOP.has(k) && !(keepTrailer && k === 'trailer')) || named.includes(k)) continue;
    const v = h[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
}
