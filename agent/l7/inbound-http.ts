// L7 on the inbound side: HTTP arriving for a pod (through an HBONE stream, or in plaintext from outside the
// mesh) is parsed again here, where the caller's identity is verified. Each request: identity headers a
// client forged are dropped and the verified one is set (x-forwarded-client-cert, as Envoy does), the
// request is authorized, forwarded to the app over a kept-alive connection inside the pod's netns, and
// recorded (reporter "destination").
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import { resetSide, splice } from '../io/splice.js';
import type { ServiceInfo } from '../model/services.js';
import { countDecision, decisionFields, evaluateConnection, evaluateRequest, type AuthzDecision, type ConnectionAuthz, type PolicySet } from '../security/index.js';
import type { MeshState } from '../state/store.js';
import type { Workload } from '../state/workload.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { L7Request, Responder } from './exchange.js';
import { H1Server, type H1Limits } from './h1/server.js';
import { H2Server } from './h2/server.js';
import { headerValue, type Headers } from './headers.js';
import { RequestRecord, rejectedLine } from './record.js';
import { local, relay } from './relay.js';
import { UpstreamError, Upstreams } from './upstream.js';
import type { AccessLog } from '../telemetry/audit.js';
import type { TapHub } from '../tap/hub.js';
import type { Tracer } from '../tracing/tracer.js';

/** Headers that carry identity to the app: only the agent sets them; a client's copy is dropped. */
export const IDENTITY_HEADERS: readonly string[] = Object.freeze(['x-forwarded-client-cert', 'x-trellis-peer-identity']);

/** One inbound connection, as the request layers see it. */
export interface InboundCall {
  readonly pod: Workload;
  /** The app port (the pod's target port). */
  readonly port: number;
  readonly service: ServiceInfo | undefined;
  /** The caller: its verified principal over mTLS, none in plaintext. */
  readonly peer: { readonly principal?: string | undefined; readonly ip?: string | undefined; readonly port?: number | undefined; readonly workload?: Workload | undefined };
  readonly security: 'mutual_tls' | 'none';
  /** What the connection (an HBONE stream, or a plaintext connection) carries. */
  readonly protocol: 'http1' | 'h2';
  /**
   * What the app port declares: 'h2' (h2c, gRPC): the app gets HTTP/2 whatever the connection carries; 'http1'
   * (`http`): HTTP/1.1, but for gRPC; undefined: the client's own protocol.
   */
  readonly appProtocol: 'h2' | 'http1' | undefined;
  /** The connection's authorization check; each request is checked on top of it. */
  readonly connection: ConnectionAuthz;
}

export interface InboundHttpInputs {
  limits: H1Limits & { maxConcurrentStreams: number };
  metrics: Metrics;
  logger: Logger;
  accessLog: AccessLog;
  clock: Clock;
  /** Connects to the app port inside the pod's netns. */
  /** A connection to the app's port, from `caller`'s address when callers' addresses are kept. */
  dialApp: (pod: Workload, port: number, caller?: string) => Promise<Duplex>;
  /** The policy set in force now: a policy change applies to the next request of an open connection. */
  policies: () => PolicySet;
  /**
   * Re-checks an upgraded connection (WebSocket) whenever the policies change, until the returned function is
   * called: `cut` ends it when they now deny its request (proxy/recheck.ts).
   */
  track?: (check: (state: MeshState) => AuthzDecision, cut: (decision: AuthzDecision) => void) => () => void;
  /** This thread's tap hub (agent/tap/). */
  tap?: TapHub | undefined;
  /** This thread's tracer (agent/tracing/), with --tracing-endpoint only. */
  tracer?: Tracer | undefined;
}

export class InboundHttp {
  private readonly h1: H1Server<InboundCall>;
  private readonly h2: H2Server<InboundCall>;
  private readonly upstreams: Upstreams;

  constructor(private readonly inputs: InboundHttpInputs) {
    this.upstreams = new Upstreams({ open: (pod, ep) => inputs.dialApp(pod, ep.port, ep.caller), maxHeaderBytes: inputs.limits.maxHeaderBytes });
    const onRejected = (call: InboundCall, status: number, reason: string, requestId?: string) => {
      rejectedLine(
        inputs,
        'inbound',
        { workload: call.peer.workload, principal: call.peer.principal, ip: call.peer.ip, port: call.peer.port },
        { workload: call.pod, principal: call.pod.identity, ip: call.pod.ip, port: call.port, service: call.service?.host },
        call.security,
        status,
        reason,
        requestId,
      );
    };
    const authorityOf = (call: InboundCall) => `${call.pod.ip}:${call.port}`;
    const onRequest = (call: InboundCall, req: L7Request, res: Responder) => this.handle(call, req, res);
    this.h1 = new H1Server<InboundCall>({
      limits: inputs.limits,
      metrics: inputs.metrics,
      logger: inputs.logger,
      authorityOf,
      onRequest,
      onRejected,
      onUpgrade: (call, req, raw, socket, head) => this.upgrade(call, req, raw, socket, head),
    });
    this.h2 = new H2Server<InboundCall>({ limits: inputs.limits, metrics: inputs.metrics, logger: inputs.logger, authorityOf, onRequest, onRejected });
  }

  /** Serves the HTTP on one inbound stream or connection until the caller closes it. */
  serve(transport: Duplex, call: InboundCall): void {
    if (call.protocol === 'h2') this.h2.serve(transport, call);
    else this.h1.serve(transport, call);
  }

  forget(podKey: string): void {
    this.upstreams.forget(podKey);
  }

  /** The agent is going: HTTP/1.1 connections end after their next response, HTTP/2 clients get GOAWAY. */
  drain(): void {
    this.h1.drain();
    this.h2.drain();
  }

  close(): void {
    this.h1.close();
    this.upstreams.close();
  }

  private record(call: InboundCall, req: L7Request): RequestRecord {
    const rec = new RequestRecord(
      req,
      this.inputs,
      'inbound',
      { workload: call.peer.workload, principal: call.peer.principal, ip: call.peer.ip, port: call.peer.port },
      { workload: call.pod, principal: call.pod.identity, ip: call.pod.ip, port: call.port },
      call.security,
      call,
    );
    rec.destinationService = call.service?.host;
    return rec;
  }

  /** The request's decision (the connection's when the connection itself was denied), counted and logged. */
  private authorize(call: InboundCall, req: L7Request, rec: RequestRecord): AuthzDecision {
    const policies = this.inputs.policies();
    const authz = call.connection;
    // A connection refused before any rule could be read (policies not synced, unknown workload): re-run the
    // connection check when the policies changed, so the refusal does not outlive its cause.
    if (!authz.verdict.context && authz.policies !== policies) {
      authz.verdict = evaluateConnection(policies, authz.input);
      authz.policies = policies;
    }
    const context = authz.verdict.context;
    const decision = context
      ? evaluateRequest(policies, context, { method: req.method, path: req.path, host: req.authority, headers: (name) => headerValue(req.headers, name) })
      : authz.verdict.decision;
    countDecision(this.inputs.metrics, decision, 'request');
    Object.assign(rec.extra, decisionFields(decision));
    return decision;
  }

  private async handle(call: InboundCall, req: L7Request, res: Responder): Promise<void> {
    const rec = this.record(call, req);
    // Tracing: the SERVER span, a child of the caller's; the app gets this span as its parent.
    if (this.inputs.tracer) rec.span = this.inputs.tracer.start(req, 'server');
    try {
      // Identity headers first: a policy condition on them must see what the agent sets, never what a client forged.
      setIdentityHeaders(call, req.headers);
      const decision = this.authorize(call, req, rec);
      if (!decision.allowed) return local(res, req, rec, 403, 7, 'RBAC: access denied');
      let up;
      try {
        const path = req.query ? `${req.path}?${req.query}` : req.path;
        const upstreamReq = { method: req.method, path, authority: req.authority, headers: req.headers, body: req.body };
        up = await this.upstreams.send(appProtocol(call, req), call.pod, { ip: call.pod.ip ?? '127.0.0.1', port: call.port, caller: call.peer.ip }, upstreamReq);
      } catch (err) {
        rec.error = `app: ${(err as Error).message}`;
        const refused = err instanceof UpstreamError && err.kind === 'connect';
        return local(res, req, rec, 503, 14, refused ? 'upstream connect error' : 'upstream reset before headers');
      }
      if (res.closed) {
        up.abort();
        rec.error = 'client went away';
        return;
      }
      await relay(req, up, res, rec, this.inputs.clock, undefined);
    } catch (err) {
      rec.error = `internal: ${(err as Error).message}`;
      if (!res.headSent && !res.closed) local(res, req, rec, 500, 13, 'internal proxy error');
      else res.reset();
    } finally {
      rec.finish();
    }
  }

  /** An Upgrade (WebSocket): authorized like a request, then carried to the app as opaque bytes. */
  private async upgrade(call: InboundCall, req: L7Request, rawHeaders: readonly string[], socket: Duplex, head: Buffer): Promise<void> {
    const rec = this.record(call, req);
    socket.on('error', () => undefined);
    try {
      setIdentityHeaders(call, req.headers);
      const decision = this.authorize(call, req, rec);
      if (!decision.allowed) {
        rec.status = 403;
        socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
        return;
      }
      let app: Duplex;
      try {
        app = await this.inputs.dialApp(call.pod, call.port, call.peer.ip);
      } catch (err) {
        rec.status = 503;
        rec.error = `app: ${(err as Error).message}`;
        socket.end('HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
        return;
      }
      app.on('error', () => undefined);
      let text = `${req.method} ${req.query ? `${req.path}?${req.query}` : req.path} HTTP/1.1\r\n`;
      for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
        if (IDENTITY_HEADERS.includes(rawHeaders[i]!.toLowerCase())) continue;
        text += `${rawHeaders[i]}: ${rawHeaders[i + 1]}\r\n`;
      }
      const xfcc = clientCertHeader(call);
      if (xfcc) text += `x-forwarded-client-cert: ${xfcc}\r\n`;
      app.write(Buffer.from(`${text}\r\n`, 'latin1'));
      if (head.length > 0) app.write(head);
      rec.status = 101;
      // The upgrade request was authorized under the policies of its time; the bytes after it go on only while
      // the policies still allow that request (a new DENY cuts the connection, as it does opaque TCP).
      const untrack = this.inputs.track?.(
        (state) => {
          const pod = state.workloads.get(call.pod.key) ?? call.pod;
          const verdict = evaluateConnection(state.policies, { ...call.connection.input, workload: pod });
          if (!verdict.context) return verdict.decision;
          return evaluateRequest(state.policies, verdict.context, { method: req.method, path: req.path, host: req.authority, headers: (name) => headerValue(req.headers, name) });
        },
        (decision) => {
          countDecision(this.inputs.metrics, decision, 'request');
          this.inputs.logger.warn({ pod: call.pod.key, peer: call.peer.ip, principal: call.peer.principal, path: req.path, reason: decision.reason }, 'upgraded connection cut: the policies now deny it');
          Object.assign(rec.extra, decisionFields(decision));
          resetSide(socket);
          resetSide(app);
        },
      );
      const outcome = await splice(socket, app, { downToUp: () => undefined, upToDown: (n) => (rec.responseBytes += n) });
      untrack?.();
      if (outcome.error) rec.error = outcome.error.message;
    } finally {
      rec.finish();
    }
  }
}

/**
 * What the app gets: HTTP/2 when its port says so, when the connection carries HTTP/2, or when the source agent says
 * its client spoke HTTP/2 (only a verified agent is believed); HTTP/1.1 otherwise.
 */
/**
 * What the app is spoken to in: what its port declares (HTTP/2 for h2c and gRPC ports; HTTP/1.1, which every HTTP
 * server speaks, for `http` ports, except gRPC, which needs HTTP/2); on an undeclared port, what the client spoke
 * (over HBONE, the source agent says which: `req.appProtocol`).
 */
function appProtocol(call: InboundCall, req: L7Request): 'http1' | 'h2' {
  if (call.appProtocol === 'h2') return 'h2';
  const clientSpokeH2 = call.protocol === 'h2' || (req.appProtocol === 'h2' && call.security === 'mutual_tls');
  if (call.appProtocol === 'http1') return clientSpokeH2 && req.grpc ? 'h2' : 'http1';
  return clientSpokeH2 ? 'h2' : 'http1';
}

/** Envoy's XFCC form: By=<this workload>;URI=<the verified caller>. */
function clientCertHeader(call: InboundCall): string | undefined {
  if (call.security !== 'mutual_tls' || !call.peer.principal) return undefined;
  return `By=${call.pod.identity};URI=${call.peer.principal}`;
}

function setIdentityHeaders(call: InboundCall, headers: Headers): void {
  for (const h of IDENTITY_HEADERS) delete headers[h];
  const xfcc = clientCertHeader(call);
  if (xfcc) headers['x-forwarded-client-cert'] = xfcc;
}
