// Golden TCP metrics (Istio's standard label set) and the agent's own health counters, on one registry per agent.
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

export const TCP_LABELS = [
  'reporter',
  'source_workload',
  'source_workload_namespace',
  'source_principal',
  'destination_workload',
  'destination_workload_namespace',
  'destination_principal',
  'destination_service',
  'connection_security_policy',
] as const;

export type TcpLabels = Record<(typeof TCP_LABELS)[number], string>;

/** The counters one connection updates, bound to its labels once at accept time. */
export interface TcpCounters {
  opened(): void;
  closed(): void;
  /** Bytes from the client toward the server (request direction). */
  received(n: number): void;
  /** Bytes from the server toward the client (response direction). */
  sent(n: number): void;
}

export class Metrics {
  readonly registry = new Registry();
  private readonly opened: Counter<string>;
  private readonly closedTotal: Counter<string>;
  private readonly receivedBytes: Counter<string>;
  private readonly sentBytes: Counter<string>;
  readonly connectionFailures: Counter<string>;
  readonly configErrors: Counter<string>;
  readonly enrolledPods: Gauge<string>;
  readonly hbonePoolSessions: Gauge<string>;
  readonly peerRefusals: Counter<string>;
  readonly configAge: Gauge<string>;
  readonly sourceWatchErrors: Counter<string>;
  readonly captureDriftRepairs: Counter<string>;
  readonly cniRequests: Counter<string>;

  constructor(inputs: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    const labelNames = [...TCP_LABELS];
    this.opened = new Counter({ name: 'trellis_tcp_connections_opened_total', help: 'TCP connections opened', labelNames, registers });
    this.closedTotal = new Counter({ name: 'trellis_tcp_connections_closed_total', help: 'TCP connections closed', labelNames, registers });
    this.receivedBytes = new Counter({ name: 'trellis_tcp_received_bytes_total', help: 'Bytes received in the request direction (client to server)', labelNames, registers });
    this.sentBytes = new Counter({ name: 'trellis_tcp_sent_bytes_total', help: 'Bytes sent in the response direction (server to client)', labelNames, registers });
    this.connectionFailures = new Counter({ name: 'trellis_connection_failures_total', help: 'Connections the agent could not proxy, by direction and reason', labelNames: ['direction', 'reason'], registers });
    this.configErrors = new Counter({ name: 'trellis_config_errors_total', help: 'Invalid objects or files rejected by a source', labelNames: ['source'], registers });
    this.enrolledPods = new Gauge({ name: 'trellis_enrolled_pods', help: 'Pods on this node whose traffic is captured', registers });
    this.hbonePoolSessions = new Gauge({ name: 'trellis_hbone_pool_sessions', help: 'Open outbound HBONE (HTTP/2 over mTLS) sessions', registers });
    this.peerRefusals = new Counter({ name: 'trellis_peer_refusals_total', help: 'mTLS peers refused (foreign CA, wrong identity, no certificate)', labelNames: ['direction'], registers });
    this.captureDriftRepairs = new Counter({ name: 'trellis_capture_drift_repairs_total', help: 'Enrolled pods whose capture rules or listeners had drifted and were repaired', labelNames: ['what'], registers });
    this.cniRequests = new Counter({ name: 'trellis_cni_requests_total', help: 'Requests from the trellis-cni plugin, by command and outcome', labelNames: ['command', 'outcome'], registers });
    this.configAge = new Gauge({ name: 'trellis_config_age_seconds', help: 'Seconds since the config source last knew it was in sync with its origin', registers });
    this.sourceWatchErrors = new Counter({ name: 'trellis_source_watch_errors_total', help: 'List/watch failures of the kube source', labelNames: ['kind'], registers });
    if (inputs.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'trellis_agent_' });
  }

  tcp(labels: TcpLabels): TcpCounters {
    const o = this.opened.labels(labels);
    const c = this.closedTotal.labels(labels);
    const r = this.receivedBytes.labels(labels);
    const s = this.sentBytes.labels(labels);
    return {
      opened: () => o.inc(),
      closed: () => c.inc(),
      received: (n) => r.inc(n),
      sent: (n) => s.inc(n),
    };
  }
}
