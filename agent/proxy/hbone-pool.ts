// Outbound HBONE pool: one HTTP/2-over-mTLS session per (source pod, source identity, destination identity,
// destination IP), carrying many CONNECT streams; closed after it has been idle with no stream.
import http2 from 'node:http2';
import type net from 'node:net';
import type { Logger } from 'pino';
import type { Clock, TimerHandle } from '../clock.js';
import { HBONE_PORT } from '../constants.js';
import { TrellisError, wrapError } from '../errors.js';
import type { CertSource } from '../identity/certs.js';
import { connectAgent } from '../identity/tls.js';
import { endWithTransport } from '../io/h2-transport.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { Workload } from '../state/workload.js';
import { SESSION_WINDOW, STREAM_WINDOW, formatAuthority } from './hbone.js';

export interface HboneRequest {
  src: Workload;
  /** SPIFFE ID the destination must present. */
  dstIdentity: string;
  ip: string;
  port: number;
  /**
   * Set when the source agent parsed HTTP (the destination agent parses it too), or found the bytes are not HTTP
   * ('tcp': the destination does not sniff them again).
   */
  protocol?: 'http1' | 'h2' | 'tcp';
  /** The Service called (its host), when the endpoint was reached through one. */
  service?: string | undefined;
}

/** CONNECT request header naming the protocol inside the tunnel (the destination's hint; never a trust input). */
export const PROTOCOL_HEADER = 'trellis-protocol';

/**
 * CONNECT request header naming the Service the source called (its host): the destination agent reports it as
 * destination_service when the endpoint belongs to it, so a pod behind several Services is counted against the
 * one its caller used. Telemetry only; never a trust input.
 */
export const SERVICE_HEADER = 'trellis-service';

/** Opens the TCP connection for a session: inside the source pod's netns in the agent, plain TCP in tests. */
export type Dialer = (src: Workload, ip: string, port: number) => net.Socket;

interface Entry {
  key: string;
  session: http2.ClientHttp2Session;
  /** Streams open now, and ever opened. */
  streams: number;
  opened: number;
  idle?: TimerHandle;
  /** Out of the pool (it has carried its maximum): closes when its last stream does. */
  retired?: boolean;
}

/** Times a stream refused unprocessed is tried (each time on a new session). */
const REFUSED_ATTEMPTS = 3;

function refused(req: HboneRequest): TrellisError {
  return new TrellisError('EREFUSED', `HBONE stream to ${formatAuthority(req.ip, req.port)} refused unprocessed (the destination agent sent GOAWAY)`);
}

export class HbonePool {
  /** Established sessions, and sessions being set up (so concurrent callers share one handshake). */
  private readonly live = new Map<string, Entry>();
  private readonly pending = new Map<string, Promise<Entry>>();
  /** Sessions out of the pool whose streams are still open. */
  private readonly retired = new Set<Entry>();
  private closed = false;

  constructor(
    private readonly inputs: {
      certs: CertSource;
      dial: Dialer;
      metrics: Metrics;
      logger: Logger;
      clock: Clock;
      connectTimeoutMs: number;
      idleMs: number;
      /** Streams a session carries before the next connection gets a session (a TLS handshake) of its own; 0 or absent: no limit. */
      maxStreamsPerSession?: number;
      /** TLS key exchange groups offered (OpenSSL names, colon-separated); Node's default when absent. */
      tlsGroups?: string;
    },
  ) {}

  /**
   * A CONNECT stream to ip:port through the destination's agent, answered 200. A stream the destination never
   * processed (it sent GOAWAY first: its agent is handing over to a new one, or stopping) is opened again on a new
   * session, which reaches whichever agent listens now.
   */
  async open(req: HboneRequest): Promise<http2.ClientHttp2Stream> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.attempt(req);
      } catch (err) {
        if (!(err instanceof TrellisError && err.code === 'EREFUSED') || attempt >= REFUSED_ATTEMPTS || this.closed) throw err;
        this.inputs.metrics.hboneRefusedStreams.inc();
      }
    }
  }

  private async attempt(req: HboneRequest): Promise<http2.ClientHttp2Stream> {
    if (this.closed) throw new TrellisError('ECLOSED', 'HBONE pool is closed');
    const entry = await this.session(req);
    if (entry.session.closed || entry.session.destroyed) {
      // Got GOAWAY between the lookup and now.
      entry.opened--;
      throw refused(req);
    }
    entry.streams++;
    entry.idle?.cancel();
    entry.idle = undefined;
    const stream = entry.session.request(
      {
        ':method': 'CONNECT',
        ':authority': formatAuthority(req.ip, req.port),
        ...(req.protocol && { [PROTOCOL_HEADER]: req.protocol }),
        ...(req.service && { [SERVICE_HEADER]: req.service }),
      },
      { endStream: false },
    );
    stream.once('close', () => this.release(entry));
    return new Promise((resolve, reject) => {
      const timer = this.inputs.clock.after(this.inputs.connectTimeoutMs, () =>
        fail(new TrellisError('ETIMEDOUT', `HBONE CONNECT to ${formatAuthority(req.ip, req.port)} timed out`)),
      );
      const fail = (err: Error) => {
        timer.cancel();
        // Refused unprocessed (REFUSED_STREAM, or beyond the last stream id of a GOAWAY): safe to open again.
        if (stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM || (err as NodeJS.ErrnoException).code === 'ERR_HTTP2_GOAWAY_SESSION') err = refused(req);
        stream.off('response', onResponse);
        if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_CANCEL);
        reject(err);
      };
      const onResponse = (headers: http2.IncomingHttpHeaders) => {
        timer.cancel();
        stream.off('error', fail);
        stream.off('close', onClose);
        const status = Number(headers[':status']);
        if (status === 200) return resolve(stream);
        stream.close(http2.constants.NGHTTP2_CANCEL);
        reject(new TrellisError('EHBONE', `destination agent answered ${status} for ${formatAuthority(req.ip, req.port)} (${headers['trellis-error'] ?? 'no reason given'})`));
      };
      const onClose = () => fail(new TrellisError('ECONNRESET', `HBONE stream to ${formatAuthority(req.ip, req.port)} closed before the response (code ${stream.rstCode})`));
      stream.once('response', onResponse);
      stream.once('error', fail);
      stream.once('close', onClose);
    });
  }

  /** Number of live sessions (for metrics and tests). */
  size(): number {
    return this.live.size;
  }

  close(): void {
    this.closed = true;
    for (const e of [...this.live.values(), ...this.retired]) e.session.destroy();
    for (const p of this.pending.values()) p.then((e) => e.session.destroy(), () => undefined);
    this.live.clear();
    this.retired.clear();
    this.inputs.metrics.hbonePoolSessions.set(0);
  }

  /** A session with room for one more stream, that stream counted: a pooled one, or a new one. */
  private async session(req: HboneRequest): Promise<Entry> {
    const key = `${req.src.netnsPath ?? ''}|${req.src.identity}|${req.dstIdentity}|${req.ip}`;
    // Callers that shared one handshake may find the session full (a limit below their number): they go
    // round again for the next. Each round gives at least one caller a stream.
    for (;;) {
      const live = this.live.get(key);
      const entry = live && !live.session.closed && !live.session.destroyed ? live : await this.established(key, req);
      if (this.take(entry)) return entry;
    }
  }

  /** Counts a stream on the session; false when it has carried its maximum already. */
  private take(entry: Entry): boolean {
    const max = this.inputs.maxStreamsPerSession ?? 0;
    if (max > 0 && entry.opened >= max) {
      this.retire(entry);
      return false;
    }
    entry.opened++;
    if (max > 0 && entry.opened >= max) this.retire(entry);
    return true;
  }

  /** Takes the session out of the pool: no new stream goes to it, and it closes once its last stream has. */
  private retire(entry: Entry): void {
    if (entry.retired) return;
    entry.retired = true;
    this.retired.add(entry);
    if (this.live.get(entry.key) === entry) {
      this.live.delete(entry.key);
      this.inputs.metrics.hbonePoolSessions.set(this.live.size);
    }
  }

  /** The pooled session for key, set up once however many callers ask at the same time. */
  private established(key: string, req: HboneRequest): Promise<Entry> {
    let p = this.pending.get(key);
    if (!p) {
      p = this.connect(key, req)
        .then((e) => {
          if (this.closed) e.session.destroy();
          else this.live.set(key, e);
          this.inputs.metrics.hbonePoolSessions.set(this.live.size);
          return e;
        })
        .finally(() => this.pending.delete(key));
      this.pending.set(key, p);
    }
    return p;
  }

  private async connect(key: string, req: HboneRequest): Promise<Entry> {
    const where = `HBONE ${req.src.key} -> ${req.ip}:${HBONE_PORT} (${req.dstIdentity})`;
    const svid = await this.inputs.certs.get(req.src.identity);
    const tcp = this.inputs.dial(req.src, req.ip, HBONE_PORT);
    // Failures of the raw socket surface through the TLS socket and the session; an unheard 'error' here
    // would take the whole agent down.
    tcp.on('error', () => undefined);
    const socket = connectAgent(svid, req.dstIdentity, this.inputs.tlsGroups, tcp);
    const session = http2.connect(`https://${formatAuthority(req.ip, HBONE_PORT)}`, {
      createConnection: () => socket,
      settings: { initialWindowSize: STREAM_WINDOW, enablePush: false },
    });
    endWithTransport(session, socket);
    const entry: Entry = { key, session, streams: 0, opened: 0 };
    await new Promise<void>((resolve, reject) => {
      const timer = this.inputs.clock.after(this.inputs.connectTimeoutMs, () => {
        session.destroy();
        reject(new TrellisError('ETIMEDOUT', `${where}: no TLS handshake within ${this.inputs.connectTimeoutMs} ms (is the destination agent running? maybe a NetworkPolicy blocks port ${HBONE_PORT})`));
      });
      const onError = (err: NodeJS.ErrnoException) => {
        timer.cancel();
        session.destroy();
        if (err.code === 'EIDENTITY' || /certificate|self.signed|verify/i.test(err.message)) {
          this.inputs.metrics.peerRefusals.inc({ direction: 'outbound' });
          this.inputs.logger.warn({ err: err.message, dst: req.ip, expected: req.dstIdentity }, 'refused destination peer');
        }
        reject(wrapError(where, err));
      };
      session.once('error', onError);
      session.once('connect', () => {
        timer.cancel();
        session.off('error', onError);
        resolve();
      });
    });
    session.setLocalWindowSize(SESSION_WINDOW);
    const forget = () => {
      entry.idle?.cancel();
      this.retired.delete(entry);
      if (this.live.get(key) === entry) {
        this.live.delete(key);
        this.inputs.metrics.hbonePoolSessions.set(this.live.size);
      }
    };
    session.on('error', (err) => this.inputs.logger.debug({ err: err.message, key }, 'HBONE session error'));
    session.on('close', forget);
    // GOAWAY (the destination agent is handing over, or stopping): no new stream here; the session ends with its
    // last stream, which HTTP/1.1 connections riding on it close as they come free (H1Client.alive).
    session.on('goaway', () => {
      forget();
      entry.retired = true;
      if (entry.streams === 0) session.close();
    });
    return entry;
  }

  private release(entry: Entry): void {
    entry.streams--;
    if (entry.streams > 0 || entry.session.destroyed) return;
    if (entry.retired) {
      entry.session.close();
      return;
    }
    entry.idle = this.inputs.clock.after(this.inputs.idleMs, () => {
      if (entry.streams === 0) entry.session.close();
    });
  }
}
