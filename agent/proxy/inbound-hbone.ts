// Inbound HBONE (15008): HTTP/2 CONNECT streams over mutual TLS from other agents. The peer's certificate names
// the caller; each stream is a tunnel into the pod, served by inbound-tunnel.ts as a same-node call is: authorized,
// then carried to the app from inside the pod's netns (opaque TCP) or served by the inbound L7 path.
import http2 from 'node:http2';
import type tls from 'node:tls';
import type { Svid } from '../identity/certs.js';
import { peerIdentity, serverTlsOptions } from '../identity/tls.js';
import { shutdownGracefully } from '../io/goaway.js';
import { limitPings } from '../io/ping-limit.js';
import { resetSide, splice } from '../io/splice.js';
import { AGENT_PORTS, MAX_CONCURRENT_STREAMS, SESSION_WINDOW, STREAM_WINDOW, parseAuthority } from './hbone.js';
import { PROTOCOL_HEADER, SERVICE_HEADER } from './hbone-pool.js';
import type { InboundInputs } from './inbound.js';
import { serveTunnel } from './inbound-tunnel.js';

export class HboneInbound {
  readonly server: http2.Http2SecureServer;
  /** Verified peer identity per session (session.socket is a proxy object, so the session is the key). */
  private readonly identities = new WeakMap<http2.Http2Session, string>();
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  /** Set by goaway(): a session set up after it (accepted just before the listener closed) gets one too. */
  private closing = false;

  constructor(private readonly inputs: InboundInputs, svid: Svid) {
    this.server = http2.createSecureServer({
      // Small HTTP/2 frames go out at once (Nagle plus delayed ACKs would add up to 40 ms to a request).
      noDelay: true,
      ...serverTlsOptions(svid, this.inputs.tlsGroups),
      allowHTTP1: false,
      settings: { initialWindowSize: STREAM_WINDOW, maxConcurrentStreams: MAX_CONCURRENT_STREAMS, enablePush: false },
    });
    this.server.on('tlsClientError', (err, socket) => {
      // Node reports a rejected client certificate only as a hang-up; the socket still knows why.
      const peer = peerIdentity(socket, inputs.trustDomain);
      const reason = peer.ok ? err.message : peer.reason;
      this.inputs.metrics.peerRefusals.inc({ direction: 'inbound' });
      this.inputs.logger.warn({ pod: inputs.pod.key, peer: socket.remoteAddress, reason }, 'refused HBONE peer: TLS handshake failed');
    });
    this.server.on('session', (session) => {
      if (!this.verify(session)) return;
      this.sessions.add(session);
      const leave = this.inputs.sessions?.enter();
      session.once('close', () => {
        this.sessions.delete(session);
        leave?.();
      });
      session.setLocalWindowSize(SESSION_WINDOW);
      session.on('error', (err) => this.inputs.logger.debug({ err: err.message }, 'inbound HBONE session error'));
      limitPings(session, () => {
        this.inputs.metrics.connectionFailures.inc({ direction: 'inbound', reason: 'ping_flood' });
        this.inputs.logger.warn({ pod: this.inputs.pod.key, peer: this.identities.get(session) }, 'HBONE session closed: PING flood');
      });
      if (this.closing) shutdownGracefully(session);
    });
    this.server.on('stream', (stream, headers) => void this.onStream(stream, headers));
  }

  /** Asks every peer session to open no new stream (HTTP/2 GOAWAY, in two steps); streams in flight go on. */
  goaway(): void {
    this.closing = true;
    for (const session of this.sessions) shutdownGracefully(session);
  }

  /** Swaps in a renewed certificate; established sessions keep theirs. */
  rotate(svid: Svid): void {
    this.server.setSecureContext(serverTlsOptions(svid, this.inputs.tlsGroups));
  }

  private verify(session: http2.ServerHttp2Session): boolean {
    const socket = session.socket as tls.TLSSocket;
    const peer = peerIdentity(socket, this.inputs.trustDomain);
    if (!peer.ok) {
      this.inputs.metrics.peerRefusals.inc({ direction: 'inbound' });
      this.inputs.logger.warn({ pod: this.inputs.pod.key, peer: socket.remoteAddress, reason: peer.reason }, 'refused HBONE peer');
      session.destroy();
      return false;
    }
    this.identities.set(session, peer.identity);
    return true;
  }

  private async onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): Promise<void> {
    // First: a stream the peer reset in the same read as its HEADERS is already destroyed here, and its 'error'
    // with no listener would take the agent down.
    stream.on('error', () => undefined);
    if (stream.destroyed) return;
    const pod = this.inputs.pod;
    const reject = (status: number, reason: string) => {
      this.inputs.metrics.connectionFailures.inc({ direction: 'inbound', reason: `hbone_${status}` });
      this.inputs.logger.warn({ pod: pod.key, authority: headers[':authority'], reason }, 'HBONE request refused');
      if (!stream.destroyed) {
        stream.respond({ ':status': status, 'trellis-error': reason }, { endStream: true });
      }
    };
    const tlsSocket = stream.session?.socket as tls.TLSSocket | undefined;
    const principal = stream.session ? this.identities.get(stream.session) : undefined;
    if (!principal) return reject(401, 'no verified peer identity');
    if (headers[':method'] !== 'CONNECT') return reject(405, 'only CONNECT is served on the HBONE port');
    const target = parseAuthority(headers[':authority']);
    if (!target) return reject(400, 'authority must be ip:port');
    if (target.ip !== pod.ip) return reject(403, `this agent serves ${pod.key} at ${pod.ip}, not ${target.ip}`);
    if (AGENT_PORTS.has(target.port)) return reject(403, `port ${target.port} belongs to the agent`);

    const remoteIp = tlsSocket?.remoteAddress;
    const tcpHealth = this.inputs.tcpHealth;
    /** The CONNECT was answered 200 (before a sniff, or before the bytes flow): a refusal then resets the stream. */
    let answered = false;
    const calledHeader = headers[SERVICE_HEADER];
    const hint = headers[PROTOCOL_HEADER];
    await serveTunnel(this.inputs, {
      principal,
      peer: { ip: remoteIp, port: tlsSocket?.remotePort },
      target,
      service: typeof calledHeader === 'string' ? calledHeader : undefined,
      hint: typeof hint === 'string' ? hint : undefined,
      stream,
      get peerHealth() {
        return tcpHealth?.session(stream.session);
      },
      accept: () => {
        if (answered) return;
        answered = true;
        stream.respond({ ':status': 200 });
      },
      refuse: (status, reason) => {
        if (!answered) return reject(status, reason);
        this.inputs.metrics.connectionFailures.inc({ direction: 'inbound', reason: `hbone_${status}` });
        this.inputs.logger.warn({ pod: pod.key, authority: headers[':authority'], reason }, 'HBONE tunnel refused after a sniff');
        resetSide(stream);
      },
      http: () => stream,
      carry: (app, record) => splice(stream, app, record),
    });
  }
}
