// L7 upstream, HTTP/2: one multiplexed session per (source pod, endpoint, Service), over a tunnel the connector
// opens (an HBONE stream to a meshed endpoint, plain TCP otherwise). Each request is a stream; the response body
// and its trailers come back as a Body, as from HTTP/1.1.
import http2 from 'node:http2';
import type { Duplex } from 'node:stream';
import { endWithTransport } from '../../io/h2-transport.js';
import type { Workload } from '../../state/workload.js';
import { withoutHopByHop, withoutPseudo, type Headers } from '../headers.js';
import type { Opener } from '../h1/pool.js';
import { UpstreamError, type UpstreamEndpoint, type UpstreamRequest, type UpstreamResponse } from '../upstream-types.js';
import { streamBody } from './server.js';

export class H2Sessions {
  private readonly sessions = new Map<string, Promise<http2.ClientHttp2Session>>();
  /** The established session of each key, and each session's key (to retire one that refuses streams). */
  private readonly current = new Map<string, http2.ClientHttp2Session>();
  private readonly keys = new WeakMap<http2.ClientHttp2Session, string>();
  private closed = false;

  constructor(private readonly inputs: { open: Opener; maxHeaderListSize: number }) {}

  /**
   * Sends one request over the endpoint's session; resolves with the response head. A stream the app refuses
   * unprocessed (REFUSED_STREAM, or ENHANCE_YOUR_CALM: a Node app's session past its memory limit, which one session
   * carrying every connection of a pod reaches sooner than the pod's own connections would) is sent once more on a
   * session of its own, when the request can be sent again (no body, or one held whole); the refusing session takes
   * no new stream.
   */
  async send(src: Workload, ep: UpstreamEndpoint, req: UpstreamRequest): Promise<UpstreamResponse> {
    const body = req.body;
    const replayable = Buffer.isBuffer(body) || (body.ended && body.received === 0);
    try {
      return await this.sendOnce(src, ep, req);
    } catch (err) {
      if (!(err instanceof RefusedStream) || !replayable) throw err;
      this.retire(err.session);
      return this.sendOnce(src, ep, req);
    }
  }

  /** The session takes no new stream: the next request to its endpoint opens another; it closes with its last stream. */
  private retire(session: http2.ClientHttp2Session): void {
    const key = this.keys.get(session);
    if (key !== undefined && this.current.get(key) === session) {
      this.sessions.delete(key);
      this.current.delete(key);
      session.close();
    }
  }

  private async sendOnce(src: Workload, ep: UpstreamEndpoint, req: UpstreamRequest): Promise<UpstreamResponse> {
    const session = await this.session(src, ep);
    const reused = (session.state.nextStreamID ?? 1) > 1;
    const body = req.body;
    const empty = Buffer.isBuffer(body) ? body.length === 0 : body.ended && body.received === 0;
    return new Promise((resolve, reject) => {
      let stream: http2.ClientHttp2Stream;
      try {
        const headers: http2.OutgoingHttpHeaders = { ':method': req.method, ':path': req.path, ':authority': req.authority, ':scheme': 'http', ...req.headers };
        // gRPC servers want "te: trailers"; a request that crossed an HTTP/1.1 hop between agents lost it.
        if (headers.te === undefined && typeof headers['content-type'] === 'string' && headers['content-type'].startsWith('application/grpc')) headers.te = 'trailers';
        stream = session.request(headers, { endStream: empty });
      } catch (err) {
        reject(new UpstreamError('reset', (err as Error).message, reused));
        return;
      }
      let settled = false;
      stream.once('response', (h) => {
        settled = true;
        stream.on('error', () => undefined);
        const status = Number(h[':status']);
        resolve({
          status,
          headers: withoutHopByHop(withoutPseudo(h), true),
          body: streamBody(stream, undefined, 'response'),
          abort: () => void (stream.destroyed || stream.close(http2.constants.NGHTTP2_CANCEL)),
          reused,
        });
      });
      stream.once('error', (err) => {
        if (settled) return;
        // A refusal also comes as an error before 'close'; 'close' says which (rstCode is set by then).
        if (stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM || stream.rstCode === http2.constants.NGHTTP2_ENHANCE_YOUR_CALM) return;
        settled = true;
        reject(new UpstreamError('reset', err.message, reused));
      });
      stream.once('close', () => {
        if (settled) return;
        settled = true;
        const code = stream.rstCode;
        const message = `stream closed before a response (code ${code})`;
        if (code === http2.constants.NGHTTP2_REFUSED_STREAM || code === http2.constants.NGHTTP2_ENHANCE_YOUR_CALM) reject(new RefusedStream(message, reused, session));
        else reject(new UpstreamError('reset', message, reused));
      });
      if (empty) return;
      if (Buffer.isBuffer(body)) {
        stream.end(body);
        return;
      }
      body.read({
        data: (chunk) => {
          const ok = stream.write(chunk);
          if (!ok) stream.once('drain', () => body.pull());
          return ok;
        },
        end: (trailers: Headers | undefined) => {
          if (trailers && Object.keys(trailers).length > 0) {
            // Request trailers (gRPC clients rarely send any) need END_STREAM on the trailer block.
            stream.sendTrailers(trailers);
          } else {
            stream.end();
          }
        },
        error: () => void stream.close(http2.constants.NGHTTP2_CANCEL),
      });
    });
  }

  /** Closes every session; requests in flight are cut. */
  close(): void {
    this.closed = true;
    for (const s of this.sessions.values()) void s.then((x) => x.destroy(), () => undefined);
    this.sessions.clear();
    this.current.clear();
  }

  /** Lets go of a source pod's sessions: they close once their streams have. */
  forget(srcKey: string): void {
    for (const [key, s] of this.sessions) {
      if (key.startsWith(`${srcKey}|`)) {
        void s.then((x) => x.close(), () => undefined);
        this.sessions.delete(key);
        this.current.delete(key);
      }
    }
  }

  private session(src: Workload, ep: UpstreamEndpoint): Promise<http2.ClientHttp2Session> {
    if (this.closed) return Promise.reject(new UpstreamError('connect', 'the agent is stopping'));
    const key = `${src.key}|${ep.ip}:${ep.port}|${ep.service ?? ''}|${ep.caller ?? ''}`;
    let s = this.sessions.get(key);
    if (!s) {
      s = this.connect(src, ep);
      this.sessions.set(key, s);
      const forget = () => {
        if (this.sessions.get(key) === s) {
          this.sessions.delete(key);
          this.current.delete(key);
        }
      };
      s.then(
        (session) => {
          if (this.sessions.get(key) === s) this.current.set(key, session);
          this.keys.set(session, key);
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
      tunnel = await this.inputs.open(src, ep);
    } catch (err) {
      throw new UpstreamError('connect', (err as Error).message);
    }
    const session = http2.connect(`http://${ep.ip.includes(':') ? `[${ep.ip}]` : ep.ip}:${ep.port}`, {
      createConnection: () => tunnel,
      settings: { enablePush: false, maxHeaderListSize: this.inputs.maxHeaderListSize },
    });
    endWithTransport(session, tunnel);
    return new Promise((resolve, reject) => {
      session.once('connect', () => {
        session.off('error', reject);
        resolve(session);
      });
      session.once('error', (err) => reject(new UpstreamError('connect', err.message)));
    });
  }
}

/** The app refused the stream without processing it: the request may be sent again, on another session. */
class RefusedStream extends UpstreamError {
  constructor(
    message: string,
    reused: boolean,
    readonly session: http2.ClientHttp2Session,
  ) {
    super('reset', message, reused);
  }
}
