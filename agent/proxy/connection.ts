// One record per proxied connection: metrics bound at accept, bytes counted as they move, and exactly one
// access-log line and one close count, however the connection ends.
import type { Metrics, TcpCounters, TcpLabels } from '../telemetry/metrics.js';
import type { Workload } from '../state/workload.js';
import type { Drain } from './drain.js';
import type { SpliceHooks } from '../io/splice.js';
import type { AccessLog } from '../telemetry/audit.js';
import { members, peer, q } from '../telemetry/access-line.js';
import type { TappedConnection } from '../tap/events.js';
import type { TapHub } from '../tap/hub.js';
import { EGRESS_WORKLOAD, egressMember, type EgressFacts } from './egress.js';
import type { PeerSocketHealth, TcpHealthReader } from './tcp-health.js';

/** What every connection record reports to. */
export interface RecordSinks {
  metrics: Metrics;
  accessLog: AccessLog;
  drain: Drain;
  /** This thread's tap hub: read at open and at close, `active` false while nobody taps. */
  tap?: TapHub | undefined;
  /** The sockops program's map, read for each connection's socket toward its peer; absent where it does not run. */
  tcpHealth?: TcpHealthReader | undefined;
}

export interface ConnectionFields {
  direction: 'outbound' | 'inbound';
  src: { ip?: string; port?: number; workload?: Workload; principal?: string };
  /** `host`: the name the client gave an egress destination (TLS SNI, HTTP Host). */
  dst: { ip?: string; port?: number; workload?: Workload; principal?: string; service?: string; host?: string };
  security: 'mutual_tls' | 'none';
  /** Set for a destination outside the cluster (proxy/egress.ts). */
  egress?: EgressFacts;
  /** The authorization decision, as the access (audit) line carries it. */
  authz?: Record<string, unknown>;
}

export function tcpLabels(f: ConnectionFields): TcpLabels {
  const e = f.egress;
  if (e) {
    // Bounded: a declared host by its declared name, anything else `unknown` (the access line has the real name).
    return {
      reporter: 'source',
      source_workload: f.src.workload?.name ?? 'unknown',
      source_workload_namespace: f.src.workload?.namespace ?? 'unknown',
      source_principal: f.src.principal ?? 'unknown',
      destination_workload: EGRESS_WORKLOAD,
      destination_workload_namespace: e.networkNamespace ?? 'unknown',
      destination_principal: 'unknown',
      destination_service: e.declared ?? 'unknown',
      connection_security_policy: f.security,
    };
  }
  return {
    reporter: f.direction === 'outbound' ? 'source' : 'destination',
    source_workload: f.src.workload?.name ?? 'unknown',
    source_workload_namespace: f.src.workload?.namespace ?? 'unknown',
    source_principal: f.src.principal ?? 'unknown',
    destination_workload: f.dst.workload?.name ?? 'unknown',
    destination_workload_namespace: f.dst.workload?.namespace ?? 'unknown',
    destination_principal: f.dst.principal ?? 'unknown',
    destination_service: f.dst.service ?? 'unknown',
    connection_security_policy: f.security,
  };
}

/** A connection moving bytes for longer than this has its peer socket's health read again (RTT, retransmissions). */
export const HEALTH_PERIOD_MS = 60_000;

export class ConnectionRecord implements SpliceHooks, TappedConnection {
  private readonly counters: TcpCounters;
  private readonly started = performance.now();
  /** Client to server, and server to client. */
  bytesIn = 0;
  bytesOut = 0;
  private done = false;
  private readonly accessLog: AccessLog;
  private readonly leave: () => void;
  private readonly tap: TapHub | undefined;
  /** When the peer socket's health was last read (performance.now()). */
  private healthAt: number;

  /**
   * `peer`: the connection's socket toward its peer (tcp-health.ts), read at finish for its RTT and retransmissions,
   * and every HEALTH_PERIOD_MS while the connection moves bytes (told in batches: at most four times a second).
   */
  constructor(
    readonly fields: ConnectionFields,
    sinks: RecordSinks,
    private readonly peer?: PeerSocketHealth,
  ) {
    this.counters = sinks.metrics.tcp(tcpLabels(fields));
    this.counters.opened();
    this.healthAt = this.started;
    this.accessLog = sinks.accessLog;
    this.leave = sinks.drain.enter();
    this.tap = sinks.tap;
    if (this.tap?.active) this.tap.connection(this, 'open');
  }

  downToUp(n: number): void {
    this.bytesIn += n;
    this.counters.received(n);
    if (this.peer) this.healthDue();
  }

  upToDown(n: number): void {
    this.bytesOut += n;
    this.counters.sent(n);
    if (this.peer) this.healthDue();
  }

  private healthDue(): void {
    const now = performance.now();
    if (now - this.healthAt < HEALTH_PERIOD_MS) return;
    this.healthAt = now;
    this.health(false);
  }

  private health(final: boolean): void {
    const h = this.peer?.read(final);
    if (h) this.counters.health(h.rttSeconds, h.retransmits);
  }

  /** Replaces the authorization decision the line carries (a connection cut by a later policy). */
  setAuthz(authz: Record<string, unknown>): void {
    this.fields.authz = authz;
  }

  finish(error?: Error): void {
    if (this.done) return;
    this.done = true;
    this.leave();
    this.counters.closed();
    this.health(true);
    const f = this.fields;
    const durationMs = Math.round((performance.now() - this.started) * 1000) / 1000;
    const errorText = error ? `${(error as NodeJS.ErrnoException).code ?? 'ERROR'}: ${error.message}` : undefined;
    if (this.tap?.active) this.tap.connection(this, 'close', durationMs, errorText);
    const log = this.accessLog;
    if (log.line) {
      // The same line, built member by member (telemetry/access-line.ts): a connection's line is a tenth of an
      // agent's CPU when every connection is short.
      const d = peer(f.dst.ip, f.dst.port, f.dst.workload?.key, f.dst.principal);
      let m = `"direction":"${f.direction}","src":{${peer(f.src.ip, f.src.port, f.src.workload?.key, f.src.principal)}}`;
      m += `,"dst":{${d}${f.dst.service === undefined ? '' : `${d ? ',' : ''}"service":${q(f.dst.service)}`}${f.dst.host === undefined ? '' : `${d || f.dst.service !== undefined ? ',' : ''}"host":${q(f.dst.host)}`}}`;
      if (f.egress) m += `,"egress":{${members(egressMember(f.egress)).slice(1)}}`;
      m += `,"security":"${f.security}"`;
      m += `,"bytes_received":${this.bytesIn},"bytes_sent":${this.bytesOut},"duration_ms":${durationMs}${members(f.authz)}`;
      if (errorText !== undefined) m += `,"error":${q(errorText)}`;
      log.line(m, 'connection');
      return;
    }
    log.info(
      {
        direction: f.direction,
        src: { ip: f.src.ip, port: f.src.port, workload: f.src.workload?.key, principal: f.src.principal },
        dst: { ip: f.dst.ip, port: f.dst.port, workload: f.dst.workload?.key, principal: f.dst.principal, service: f.dst.service, host: f.dst.host },
        ...(f.egress && { egress: egressMember(f.egress) }),
        security: f.security,
        bytes_received: this.bytesIn,
        bytes_sent: this.bytesOut,
        duration_ms: durationMs,
        ...f.authz,
        error: errorText,
      },
      'connection',
    );
  }
}
