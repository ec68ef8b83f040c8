// Inbound: HBONE (15008, mTLS, the caller's identity verified) and plaintext (15006, permissive mode) traffic
// for one pod, each connected to the app from inside the pod's netns.
import http2 from 'node:http2';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type tls from 'node:tls';
import type { Logger } from 'pino';
import { declaredProtocol, httpVersion, sniff } from '../l7/detect.js';
import { countDecision, decisionFields, type ConnectionAuthz, type InboundCall, type InboundHttp } from '../l7/inbound-http.js';
import { evaluateConnection, modeFor, type ConnectionInput } from '../security/index.js';
import { wrapError } from '../errors.js';
import type { Svid } from '../identity/certs.js';
import { peerIdentity, serverTlsOptions } from '../identity/tls.js';
import { originalDst, socketFd } from '../native/index.js';
import type { MeshState } from '../state/store.js';
import type { Workload } from '../state/workload.js';
import type { Metrics } from '../telemetry/metrics.js';
import { ConnectionRecord } from './connection.js';
import type { Drain } from './drain.js';
import { AGENT_PORTS, MAX_CONCURRENT_STREAMS, SESSION_WINDOW, STREAM_WINDOW, formatAuthority, parseAuthority } from './hbone.js';
import { PROTOCOL_HEADER, SERVICE_HEADER } from './hbone-pool.js';
import type { PolicyRecheck } from './recheck.js';
import { resetSide, splice, whenConnected } from './splice.js';

/** Connects to the app inside the pod's netns (with the agent's mark, so capture skips it). */
export type AppDialer = (pod: Workload, ip: string, port: number) => net.Socket;

export interface InboundInputs {
  pod: Workload;
  trustDomain: string;
  state: () => MeshState;
  dialApp: AppDialer;
  metrics: Metrics;
  logger: Logger;
  accessLog: Logger;
  drain: Drain;
  /** HTTP handling for app ports that speak it (per-request metrics, identity headers, authorization). */
  http?: InboundHttpOptions;
  /** Opaque connections are re-authorized here when policies change. */
  recheck?: PolicyRecheck;
  /** TLS key-exchange groups (--tls-groups); Node's default when absent. */
  tlsGroups?: string;
}

export interface InboundHttpOptions {
  server: InboundHttp;
  /** Plaintext from outside the mesh to an undeclared port is sniffed this long; 0: never. */
  detectTimeoutMs: number;
  opaquePorts: ReadonlySet<number>;
}

interface ConnectionFacts {
  principal: string | undefined;
  sourceIp: string | undefined;
  sourcePort: number | undefined;
  ip: string;
  port: number;
  l7: boolean;
}

/**
 * The connection's authorization check (AuthorizationPolicy L4 fields, PeerAuthentication), counted; a denied
 * connection gets its one access-log line here, since it never reaches a ConnectionRecord.
 */
function authorizeConnection(inputs: InboundInputs, state: MeshState, f: ConnectionFacts): ConnectionAuthz {
  const pod = state.workloads.get(inputs.pod.key) ?? inputs.pod;
  const input: ConnectionInput = {
    workload: pod,
    sourceIdentity: f.principal,
    sourceIp: f.sourceIp,
    destinationIp: f.ip,
    destinationPort: f.port,
    protocol: f.l7 ? 'http' : 'tcp',
  };
  const verdict = evaluateConnection(state.policies, input);
  countDecision(inputs.metrics, verdict.decision, 'connection');
  // An HTTP connection denied at L4 is still served: each request is answered 403 (checked again per request).
  if (!verdict.decision.allowed && (!f.l7 || verdict.decision.code === 'denied_plaintext')) {
    inputs.accessLog.info(
      {
        direction: 'inbound',
        src: { ip: f.sourceIp, port: f.sourcePort, principal: f.principal },
        dst: { ip: f.ip, port: f.port, workload: pod.key, principal: pod.identity },
        security: f.principal ? 'mutual_tls' : 'none',
        bytes_received: 0,
        bytes_sent: 0,
        ...decisionFields(verdict.decision),
      },
      'connection',
    );
  }
  return { verdict, input, policies: state.policies };
}

/** Tracks an opaque connection for re-authorization; a later denial resets both sides and is logged. */
function trackConnection(inputs: InboundInputs, f: ConnectionFacts, sides: Duplex[], record: ConnectionRecord): () => void {
  if (!inputs.recheck) return () => undefined;
  return inputs.recheck.track(
    (state) => {
      const pod = state.workloads.get(inputs.pod.key) ?? inputs.pod;
      return evaluateConnection(state.policies, { workload: pod, sourceIdentity: f.principal, sourceIp: f.sourceIp, destinationIp: f.ip, destinationPort: f.port, protocol: 'tcp' }).decision;
    },
    (decision) => {
      countDecision(inputs.metrics, decision, 'connection');
      inputs.logger.warn({ pod: inputs.pod.key, peer: f.sourceIp, principal: f.principal, port: f.port, reason: decision.reason }, 'open connection cut: the policies now deny it');
      // The connection's one audit line carries the decision that ended it.
      record.setAuthz(decisionFields(decision));
      for (const s of sides) resetSide(s);
    },
  );
}

/**
 * The protocol of an app port: what the Services it is an endpoint of declare, when they agree; when they do
 * not (a TCP Service and an HTTP Service on one pod port), undefined: the source agent's hint (HBONE) or a
 * sniff (plaintext) decides, as for an undeclared port.
 */
function declaredFor(state: MeshState, ip: string, port: number): 'http1' | 'h2' | 'tcp' | undefined {
  let found: 'http1' | 'h2' | 'tcp' | undefined;
  for (const sp of state.servicePortsByEndpoint(ip, port)) {
    const p = declaredProtocol(sp);
    if (p === undefined || (found !== undefined && p !== found)) return undefined;
    found = p;
  }
  return found;
}


export class HboneInbound {
  readonly server: http2.Http2SecureServer;
  /** Verified peer identity per session (session.socket is a proxy object, so the session is the key). */
  private readonly identities = new WeakMap<http2.Http2Session, string>();
  private readonly sessions = new Set<http2.ServerHttp2Session>();

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
      session.once('close', () => this.sessions.delete(session));
      session.setLocalWindowSize(SESSION_WINDOW);
      session.on('error', (err) => this.inputs.logger.debug({ err: err.message }, 'inbound HBONE session error'));
    });
    this.server.on('stream', (stream, headers) => void this.onStream(stream, headers));
  }

  /** Asks every peer session to open no new stream (HTTP/2 GOAWAY); streams in flight go on. */
  goaway(): void {
    for (const session of this.sessions) if (!session.closed) session.close();
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
    const state = this.inputs.state();
    const srcWorkload = remoteIp ? state.workloadByIp(remoteIp) : undefined;
    const http = this.inputs.http;
    const hint = headers[PROTOCOL_HEADER];
    const calledHeader = headers[SERVICE_HEADER];
    const service = state.serviceCalled(target.ip, target.port, typeof calledHeader === 'string' ? calledHeader : undefined);
    const declared = http ? declaredFor(state, target.ip, target.port) : 'tcp';
    // A port declared HTTP carries either version; the source agent's hint says which one it sends.
    const hinted = hint === 'http1' || hint === 'h2' ? hint : undefined;
    const protocol = declared === 'http1' ? (hinted ?? 'http1') : (declared ?? hinted ?? 'tcp');
    const authz = authorizeConnection(this.inputs, state, {
      principal,
      sourceIp: remoteIp,
      sourcePort: tlsSocket?.remotePort,
      ip: target.ip,
      port: target.port,
      l7: protocol !== 'tcp',
    });
    if (http && protocol !== 'tcp') {
      stream.respond({ ':status': 200 });
      const call: InboundCall = {
        pod,
        port: target.port,
        service,
        peer: { principal, ip: remoteIp, port: tlsSocket?.remotePort, workload: srcWorkload },
        security: 'mutual_tls',
        protocol,
        connection: authz,
      };
      const leave = this.inputs.drain.enter();
      stream.once('close', leave);
      http.server.serve(stream, call);
      return;
    }
    if (!authz.verdict.decision.allowed) return reject(403, authz.verdict.decision.reason);
    let app: net.Socket;
    try {
      app = await whenConnected(this.inputs.dialApp(pod, target.ip, target.port));
    } catch (err) {
      return reject(503, wrapError(`connect to app ${formatAuthority(target.ip, target.port)}`, err).message);
    }
    if (stream.destroyed) {
      app.destroy();
      return;
    }
    stream.respond({ ':status': 200 });
    const record = new ConnectionRecord(
      {
        direction: 'inbound',
        src: { ip: remoteIp, port: tlsSocket?.remotePort, workload: srcWorkload, principal },
        dst: { ip: target.ip, port: target.port, workload: pod, principal: pod.identity, service: service?.host },
        security: 'mutual_tls',
        authz: decisionFields(authz.verdict.decision),
      },
      this.inputs,
    );
    const untrack = trackConnection(this.inputs, { principal, sourceIp: remoteIp, sourcePort: tlsSocket?.remotePort, ip: target.ip, port: target.port, l7: false }, [stream, app], record);
    const outcome = await splice(stream, app, record);
    untrack();
    record.finish(outcome.error);
  }
}

/** Permissive mode: plaintext from clients outside the mesh, redirected to 15006, forwarded to the app. */
export class PlaintextInbound {
  readonly server: net.Server;

  constructor(private readonly inputs: InboundInputs) {
    this.server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => void this.onConnection(socket));
  }

  private async onConnection(down: net.Socket): Promise<void> {
    const pod = this.inputs.pod;
    down.on('error', () => undefined);
    let dst: { address: string; port: number };
    try {
      dst = originalDst(socketFd(down));
    } catch (err) {
      return this.refuse(down, 'no_original_dst', (err as Error).message);
    }
    if (AGENT_PORTS.has(dst.port)) return this.refuse(down, 'agent_port', `port ${dst.port} belongs to the agent`);
    let state = this.inputs.state();
    const srcWorkload = down.remoteAddress ? state.workloadByIp(down.remoteAddress) : undefined;
    const facts = { principal: undefined, sourceIp: down.remoteAddress, sourcePort: down.remotePort, ip: dst.address, port: dst.port };
    // STRICT (or policies not synced yet) refuses plaintext at once, before any sniffing.
    const current = state.workloads.get(pod.key) ?? pod;
    if (modeFor(state.policies, current, dst.port) === 'STRICT') {
      const authz = authorizeConnection(this.inputs, state, { ...facts, l7: false });
      return this.refuse(down, 'policy', authz.verdict.decision.reason);
    }
    const http = this.inputs.http;
    let protocol: 'http1' | 'h2' | 'tcp' = 'tcp';
    if (http) {
      let declared = declaredFor(state, dst.address, dst.port);
      if (declared === 'http1') {
        declared = await httpVersion(down, http.detectTimeoutMs);
        if (down.destroyed) return;
      } else if (declared === undefined) {
        if (http.detectTimeoutMs === 0 || http.opaquePorts.has(dst.port)) {
          declared = 'tcp';
        } else {
          const found = await sniff(down, http.detectTimeoutMs);
          if (found.timedOut) this.inputs.metrics.protocolDetectTimeouts.inc();
          this.inputs.metrics.protocolDetections.inc({ protocol: found.protocol });
          declared = found.protocol;
          if (down.destroyed) return;
          state = this.inputs.state();
        }
      }
      protocol = declared;
    }
    const authz = authorizeConnection(this.inputs, state, { ...facts, l7: protocol !== 'tcp' });
    if (http && protocol !== 'tcp') {
      if (authz.verdict.decision.code === 'denied_plaintext') return this.refuse(down, 'policy', authz.verdict.decision.reason);
      const call: InboundCall = {
        pod,
        port: dst.port,
        service: state.serviceByEndpoint(dst.address, dst.port),
        peer: { ip: down.remoteAddress, port: down.remotePort, workload: srcWorkload },
        security: 'none',
        protocol,
        connection: authz,
      };
      const leave = this.inputs.drain.enter();
      down.once('close', leave);
      http.server.serve(down, call);
      return;
    }
    if (!authz.verdict.decision.allowed) return this.refuse(down, 'policy', authz.verdict.decision.reason);
    let app: net.Socket;
    try {
      app = await whenConnected(this.inputs.dialApp(pod, dst.address, dst.port));
    } catch (err) {
      return this.refuse(down, 'app_unreachable', wrapError(`connect to app ${formatAuthority(dst.address, dst.port)}`, err).message);
    }
    if (down.destroyed) {
      app.destroy();
      return;
    }
    const record = new ConnectionRecord(
      {
        direction: 'inbound',
        src: { ip: down.remoteAddress, port: down.remotePort, workload: srcWorkload },
        dst: { ip: dst.address, port: dst.port, workload: pod, principal: pod.identity, service: this.inputs.state().serviceByEndpoint(dst.address, dst.port)?.host },
        security: 'none',
        authz: decisionFields(authz.verdict.decision),
      },
      this.inputs,
    );
    const untrack = trackConnection(this.inputs, { ...facts, l7: false }, [down, app], record);
    const outcome = await splice(down, app, record);
    untrack();
    record.finish(outcome.error);
  }

  private refuse(down: net.Socket, reason: string, message: string): void {
    this.inputs.metrics.connectionFailures.inc({ direction: 'inbound', reason });
    this.inputs.logger.warn({ pod: this.inputs.pod.key, peer: down.remoteAddress, reason: message }, 'inbound plaintext connection refused');
    resetSide(down);
  }
}
