// Inbound HBONE (15008): HTTP/2 CONNECT streams over mutual TLS from other agents. The peer's certificate names
// the caller; each stream is authorized, then carried to the app from inside the pod's netns (opaque TCP) or
// served as HTTP by the inbound L7 path (per-request authorization and metrics).
import http2 from 'node:http2';
import type net from 'node:net';
import type tls from 'node:tls';
import { wrapError } from '../errors.js';
import type { Svid } from '../identity/certs.js';
import { peerIdentity, serverTlsOptions } from '../identity/tls.js';
import { shutdownGracefully } from '../io/goaway.js';
import { limitPings } from '../io/ping-limit.js';
import { resetSide, splice, whenConnected } from '../io/splice.js';
import { declaredForEndpoint, selectProtocol } from '../l7/detect.js';
import type { InboundCall } from '../l7/inbound-http.js';
import { decisionFields } from '../security/index.js';
import { ConnectionRecord } from './connection.js';
import { AGENT_PORTS, MAX_CONCURRENT_STREAMS, SESSION_WINDOW, STREAM_WINDOW, formatAuthority, parseAuthority } from './hbone.js';
import { PROTOCOL_HEADER, SERVICE_HEADER } from './hbone-pool.js';
import { authorizeConnection, trackConnection, type InboundInputs } from './inbound.js';

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
    let state = this.inputs.state();
    const srcWorkload = remoteIp ? state.workloadByIp(remoteIp) : undefined;
    const http = this.inputs.http;
    const hint = headers[PROTOCOL_HEADER];
    const calledHeader = headers[SERVICE_HEADER];
    const service = state.serviceCalled(target.ip, target.port, typeof calledHeader === 'string' ? calledHeader : undefined);
    const declared = http ? declaredForEndpoint(state.servicePortsByEndpoint(target.ip, target.port)) : 'tcp';
    // The source agent's hint says what the tunnel carries: HTTP it parsed itself (HTTP/1.1 for requests of HTTP/1.1
    // and HTTP/2 clients alike), or `tcp` when it found the bytes are not HTTP (declared so, or sniffed). Without a
    // hint (a call to a pod IP, which the source carries as L4, or a source agent without L7), what the port
    // declares; and a port that declares nothing is sniffed here, so that HTTP a client sends straight to a pod is
    // parsed too and the app never gets identity headers the client forged.
    // A port this agent knows to carry HTTP is parsed whatever the hint says (`tcp` only spares a second sniff).
    const hinted = hint === 'http1' || hint === 'h2' ? hint : undefined;
    let protocol: 'http1' | 'h2' | 'tcp' | undefined = declared === 'tcp' ? 'tcp' : (hinted ?? declared ?? (hint === 'tcp' ? 'tcp' : undefined));
    /** The CONNECT was answered 200 before the decision (to sniff the tunnel): a refusal then resets the stream. */
    let answered = false;
    if (protocol === undefined && http) {
      stream.respond({ ':status': 200 });
      answered = true;
      const selection = await selectProtocol(stream, target.port, undefined, http, this.inputs.metrics);
      if (stream.destroyed) return;
      // The sniff waited for the client: decide under the policies of now.
      state = this.inputs.state();
      protocol = selection.protocol;
    }
    protocol ??= 'tcp';
    const refuse = (status: number, reason: string) => {
      if (!answered) return reject(status, reason);
      this.inputs.metrics.connectionFailures.inc({ direction: 'inbound', reason: `hbone_${status}` });
      this.inputs.logger.warn({ pod: pod.key, authority: headers[':authority'], reason }, 'HBONE tunnel refused after a sniff');
      resetSide(stream);
    };
    const authz = authorizeConnection(this.inputs, state, {
      principal,
      sourceIp: remoteIp,
      sourcePort: tlsSocket?.remotePort,
      ip: target.ip,
      port: target.port,
      l7: protocol !== 'tcp',
    });
    if (http && protocol !== 'tcp') {
      if (!answered) stream.respond({ ':status': 200 });
      const call: InboundCall = {
        pod,
        port: target.port,
        service,
        peer: { principal, ip: remoteIp, port: tlsSocket?.remotePort, workload: srcWorkload },
        security: 'mutual_tls',
        protocol,
        appProtocol: declared === 'h2' || declared === 'http1' ? declared : undefined,
        connection: authz,
      };
      const leave = this.inputs.drain.enter();
      stream.once('close', leave);
      http.server.serve(stream, call);
      return;
    }
    if (!authz.verdict.decision.allowed) return refuse(403, authz.verdict.decision.reason);
    let app: net.Socket;
    try {
      app = await whenConnected(this.inputs.dialApp(pod, target.ip, target.port, remoteIp));
    } catch (err) {
      return refuse(503, wrapError(`connect to app ${formatAuthority(target.ip, target.port)}`, err).message);
    }
    if (stream.destroyed) {
      app.destroy();
      return;
    }
    if (!answered) stream.respond({ ':status': 200 });
    const record = new ConnectionRecord(
      {
        direction: 'inbound',
        src: { ip: remoteIp, port: tlsSocket?.remotePort, workload: srcWorkload, principal },
        dst: { ip: target.ip, port: target.port, workload: pod, principal: pod.identity, service: service?.host },
        security: 'mutual_tls',
        authz: decisionFields(authz.verdict.decision),
      },
      this.inputs,
      this.inputs.tcpHealth?.session(stream.session),
    );
    const untrack = trackConnection(this.inputs, { principal, sourceIp: remoteIp, sourcePort: tlsSocket?.remotePort, ip: target.ip, port: target.port, l7: false }, [stream, app], record);
    const outcome = await splice(stream, app, record);
    untrack();
    record.finish(outcome.error);
  }
}
