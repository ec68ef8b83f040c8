// One record per L7 request: the per-request golden metrics (one series update) and one access-log line,
// written exactly once however the request ends. Both sides use it: the source agent (reporter "source",
// which knows the route) and the destination agent (reporter "destination", which knows the verified peer).
import type { Workload } from '../state/workload.js';
import type { Metrics, RequestLabels, RequestSeries } from '../telemetry/metrics.js';
import type { CompiledRule } from '../model/routes/index.js';
import type { L7Request } from './exchange.js';
import type { Headers } from './headers.js';
import type { AccessLog } from '../telemetry/audit.js';
import { members, peer, q } from '../telemetry/access-line.js';
import type { TappedRequest } from '../tap/events.js';
import type { TapHub } from '../tap/hub.js';
import type { ActiveSpan, Tracer } from '../tracing/tracer.js';

export interface RecordSinks {
  metrics: Metrics;
  accessLog: AccessLog;
  /** This thread's tap hub: read once per request, `active` false while nobody taps. */
  tap?: TapHub | undefined;
  /** This thread's tracer: absent without --tracing-endpoint. */
  tracer?: Tracer | undefined;
}

export interface RecordPeer {
  workload?: Workload | undefined;
  principal?: string | undefined;
  ip?: string | undefined;
  port?: number | undefined;
}

/** The labels that chose a connection's last series, and that series: the next request with the same labels reuses it. */
interface SeriesMemo {
  srcWorkload: Workload | undefined;
  srcPrincipal: string | undefined;
  dstWorkload: Workload | undefined;
  dstPrincipal: string | undefined;
  service: string | undefined;
  security: string;
  grpc: boolean;
  status: number;
  grpcStatus: string;
  route: CompiledRule | undefined;
  series: RequestSeries;
}

/**
 * Per connection (keyed by the object that stands for it): requests on one keep-alive connection nearly always
 * land in the series of the one before, found by a dozen identity checks instead of a ~150-character key built,
 * flattened and hashed per request (~2% of an agent's CPU at L7).
 */
const memos = new WeakMap<object, SeriesMemo>();

export class RequestRecord implements TappedRequest {
  status = 0;
  grpcStatus = '';
  retries = 0;
  fault = false;
  error: string | undefined;
  responseBytes = 0;
  /** Known when the body was buffered; otherwise Content-Length is reported. */
  requestBytes: number | undefined;
  /** FQDN of the Service the request went to (destination_service). */
  destinationService: string | undefined;
  route: CompiledRule | undefined;
  /** Extra fields for the log line (the authorization decision, for instance). */
  readonly extra: Record<string, unknown> = {};
  dst: RecordPeer;
  /** The response head that came from upstream (relay.ts): a reference, for a tap; nothing is copied. */
  responseHeaders: Headers | undefined;
  /**
   * Microseconds from the request head to the response head (relay.ts), -1 until then: a whole number, which V8 stores
   * in the record as it is (a small integer), so measuring it allocates nothing.
   */
  firstByteUs = -1;
  /** The request's span, when it is traced and sampled (agent/tracing/). */
  span: ActiveSpan | undefined;
  private done = false;

  constructor(
    readonly req: L7Request,
    private readonly sinks: RecordSinks,
    readonly direction: 'outbound' | 'inbound',
    readonly src: RecordPeer,
    dst: RecordPeer,
    public security: 'mutual_tls' | 'none',
    /** The connection the request came on (any object that lives as long as it), for the series memo. */
    private readonly connection?: object,
  ) {
    this.dst = dst;
  }

  /** The endpoint a try went to (outbound): its workload, and its identity when the hop is mTLS. */
  setEndpoint(ep: { ip: string; port: number; workload?: Workload | undefined }): void {
    const meshed = !!ep.workload?.meshed;
    this.dst = { workload: ep.workload, principal: meshed ? ep.workload!.identity : undefined, ip: ep.ip, port: ep.port };
    this.security = meshed ? 'mutual_tls' : 'none';
  }

  grpcStatusFrom(headers: Headers): void {
    const v = headers['grpc-status'];
    if (v !== undefined) this.grpcStatus = String(Array.isArray(v) ? v[0] : v);
  }

  finish(): void {
    if (this.done) return;
    this.done = true;
    const { req, src, dst } = this;
    const route = this.route;
    const seconds = (performance.now() - req.startedAt) / 1000;
    const requestBytes = this.requestBytes ?? req.body.received;
    this.series().observe(seconds, requestBytes, this.responseBytes);
    // Tap: one check while nobody taps (agent/tap/hub.ts).
    if (this.sinks.tap?.active) this.sinks.tap.request(this, seconds, requestBytes);
    // Tracing: only a sampled request has a span.
    if (this.span) this.endSpan(this.span);
    const log = this.sinks.accessLog;
    const protocol = req.grpc ? 'grpc' : req.protocol;
    const durationMs = Math.round(seconds * 1e6) / 1000;
    if (!log.line) {
      log.info(
        {
          direction: this.direction,
          request_id: req.requestId,
          protocol,
          method: req.method,
          authority: req.authority,
          path: req.path,
          src: { ip: src.ip, port: src.port, workload: src.workload?.key, principal: src.principal },
          dst: { service: this.destinationService, ip: dst.ip, port: dst.port, workload: dst.workload?.key, principal: dst.principal },
          security: this.security,
          route: route?.route,
          rule: route?.name,
          status: this.status,
          grpc_status: this.grpcStatus || undefined,
          retries: this.retries || undefined,
          fault: this.fault || undefined,
          request_bytes: requestBytes,
          response_bytes: this.responseBytes,
          duration_ms: durationMs,
          ...this.extra,
          error: this.error,
        },
        'request',
      );
      return;
    }
    // The same line, built member by member: JSON.stringify of a whole object per request cost more than the rest of the record.
    let m = `"direction":"${this.direction}","request_id":${q(req.requestId)},"protocol":"${protocol}","method":${q(req.method)},"authority":${q(req.authority)},"path":${q(req.path)}`;
    m += `,"src":{${peer(src.ip, src.port, src.workload?.key, src.principal)}},"dst":{${this.destinationService === undefined ? '' : `"service":${q(this.destinationService)}`}`;
    const d = peer(dst.ip, dst.port, dst.workload?.key, dst.principal);
    m += `${this.destinationService !== undefined && d ? ',' : ''}${d}},"security":"${this.security}"`;
    if (route) m += `,"route":${q(route.route)},"rule":${q(route.name)}`;
    m += `,"status":${this.status}`;
    if (this.grpcStatus) m += `,"grpc_status":${q(this.grpcStatus)}`;
    if (this.retries) m += `,"retries":${this.retries}`;
    if (this.fault) m += ',"fault":true';
    m += `,"request_bytes":${requestBytes},"response_bytes":${this.responseBytes},"duration_ms":${durationMs}`;
    m += members(this.extra);
    if (this.error !== undefined) m += `,"error":${q(this.error)}`;
    log.line(m, 'request');
  }

  private endSpan(span: ActiveSpan): void {
    const authz = (this.extra as { authz?: { decision?: string; policy?: string; reason?: string } }).authz;
    this.sinks.tracer?.end(span, {
      req: this.req,
      status: this.status,
      grpcStatus: this.grpcStatus,
      error: this.error,
      srcPrincipal: this.src.principal,
      dstPrincipal: this.dst.principal,
      srcIp: this.src.ip,
      destinationService: this.destinationService,
      route: this.route?.route,
      rule: this.route?.name,
      retries: this.retries,
      authz,
    });
  }

  /** The metrics series of this request's labels: one lookup by a key built from them, the labels object only for a new series. */
  private series(): RequestSeries {
    const { src, dst, route } = this;
    const memo = this.connection && memos.get(this.connection);
    if (
      memo &&
      memo.status === this.status &&
      memo.route === route &&
      memo.dstWorkload === dst.workload &&
      memo.srcWorkload === src.workload &&
      memo.srcPrincipal === src.principal &&
      memo.dstPrincipal === dst.principal &&
      memo.service === this.destinationService &&
      memo.security === this.security &&
      memo.grpc === this.req.grpc &&
      memo.grpcStatus === this.grpcStatus
    ) {
      return memo.series;
    }
    const series = this.seriesByKey();
    if (this.connection) {
      memos.set(this.connection, {
        srcWorkload: src.workload,
        srcPrincipal: src.principal,
        dstWorkload: dst.workload,
        dstPrincipal: dst.principal,
        service: this.destinationService,
        security: this.security,
        grpc: this.req.grpc,
        status: this.status,
        grpcStatus: this.grpcStatus,
        route,
        series,
      });
    }
    return series;
  }

  private seriesByKey(): RequestSeries {
    const { src, dst, route } = this;
    const routeKey = route?.route ?? '';
    const key =
      `${this.direction}\u0001${src.workload?.name ?? 'unknown'}\u0001${src.workload?.namespace ?? 'unknown'}\u0001${src.principal ?? 'unknown'}` +
      `\u0001${dst.workload?.name ?? 'unknown'}\u0001${dst.workload?.namespace ?? 'unknown'}\u0001${dst.principal ?? 'unknown'}` +
      `\u0001${this.destinationService ?? 'unknown'}\u0001${this.security}\u0001${this.req.grpc ? 'g' : 'h'}\u0001${this.status}\u0001${this.grpcStatus}` +
      `\u0001${routeKey}\u0001${route?.name ?? ''}`;
    return this.sinks.metrics.requestSeries(key, () => {
      const slash = routeKey.indexOf('/');
      const labels: RequestLabels = {
        reporter: this.direction === 'outbound' ? 'source' : 'destination',
        source_workload: src.workload?.name ?? 'unknown',
        source_workload_namespace: src.workload?.namespace ?? 'unknown',
        source_principal: src.principal ?? 'unknown',
        destination_workload: dst.workload?.name ?? 'unknown',
        destination_workload_namespace: dst.workload?.namespace ?? 'unknown',
        destination_principal: dst.principal ?? 'unknown',
        destination_service: this.destinationService ?? 'unknown',
        connection_security_policy: this.security,
        request_protocol: this.req.grpc ? 'grpc' : 'http',
        response_code: String(this.status),
        grpc_response_status: this.grpcStatus,
        route_namespace: routeKey ? routeKey.slice(0, slash) : '',
        route_name: routeKey ? routeKey.slice(slash + 1) : '',
        route_rule: route?.name ?? '',
      };
      return labels;
    });
  }
}


/** The audit line of a request refused before it was parsed whole (malformed, oversized): no request id yet. */
export function rejectedLine(
  sinks: Pick<RecordSinks, 'accessLog' | 'tap'>,
  direction: 'outbound' | 'inbound',
  src: RecordPeer,
  dst: RecordPeer & { service?: string | undefined },
  security: 'mutual_tls' | 'none',
  status: number,
  reason: string,
  requestId?: string,
): void {
  if (sinks.tap?.active) sinks.tap.rejected({ direction, src, dst, security, status, reason });
  sinks.accessLog.info(
    {
      direction,
      request_id: requestId,
      rejected: true,
      src: { ip: src.ip, port: src.port, workload: src.workload?.key, principal: src.principal },
      dst: { service: dst.service, ip: dst.ip, port: dst.port, workload: dst.workload?.key, principal: dst.principal },
      security,
      status,
      error: reason,
    },
    'request',
  );
}
