// Golden TCP metrics (Istio's standard label set) and the agent's own health counters, on one registry per agent.
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { CounterVec, HistogramVec } from './series.js';

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

/** Per-request labels: Istio's standard set plus the route (never raw paths or hosts: bounded cardinality). */
export const REQUEST_LABELS = [
  ...TCP_LABELS,
  'request_protocol',
  'response_code',
  'grpc_response_status',
  'route_namespace',
  'route_name',
  'route_rule',
] as const;

export type RequestLabels = Record<(typeof REQUEST_LABELS)[number], string>;

/** The series one kind of request updates, bound once per distinct label set. */
export interface RequestSeries {
  observe(durationSeconds: number, requestBytes: number, responseBytes: number): void;
}

// Latency buckets in seconds, from 0.5 ms (a same-node hop) to a minute.
const DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
// RTT buckets in seconds, from 50 us (two sockets on one node) to a second.
const RTT_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];
const SIZE_BUCKETS = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];
/** Bound series kept for reuse; past this many the cache starts over (prom-client keeps the series itself). */
const MAX_CACHED_SERIES = 10_000;

/** The counters one connection updates, bound to its labels once at accept time. */
export interface TcpCounters {
  opened(): void;
  closed(): void;
  /** Bytes from the client toward the server (request direction). */
  received(n: number): void;
  /** Bytes from the server toward the client (response direction). */
  sent(n: number): void;
  /** The health of the connection's socket toward its peer, as the sockops program saw it (at close, and each minute of a long one). */
  health(rttSeconds: number, retransmits: number): void;
}

/** The trust bundle's roots and the root each workload certificate chains to (SHA-256 fingerprints). */
export interface CertificatesByRoot {
  bundle: readonly string[];
  /** Each SVID in force: its identity, its root, and its validity (Unix milliseconds). */
  svids: readonly { identity: string; root: string; notBefore: number; notAfter: number }[];
}

export class Metrics {
  readonly registry = new Registry();
  /** Asked at each scrape; set by the composition root (telemetry knows nothing of identity). */
  private certificates: (() => CertificatesByRoot) | undefined;
  private readonly opened: CounterVec;
  private readonly closedTotal: CounterVec;
  private readonly receivedBytes: CounterVec;
  private readonly sentBytes: CounterVec;
  private readonly tcpRtt: HistogramVec;
  private readonly tcpRetransmits: CounterVec;
  readonly connectionFailures: Counter<string>;
  readonly configErrors: Counter<string>;
  readonly enrolledPods: Gauge<string>;
  readonly hbonePoolSessions: Gauge<string>;
  readonly hboneRefusedStreams: Counter<string>;
  readonly peerRefusals: Counter<string>;
  readonly configAge: Gauge<string>;
  readonly sourceWatchErrors: Counter<string>;
  readonly captureDriftRepairs: Counter<string>;
  readonly cniRequests: Counter<string>;
  readonly captureMode: Gauge<string>;
  readonly kernelFeature: Gauge<string>;
  readonly tcpHealthEnabled: Gauge<string>;
  /** Asked at each scrape: the inbound sk_lookup programs' verdicts, summed over pods (capture/sk-lookup.ts). */
  private skLookupVerdicts: (() => Readonly<Record<string, number>>) | undefined;
  /** Asked at each scrape: the outbound connect4/connect6 programs' verdicts (capture/connect.ts). */
  private connectVerdicts: (() => Readonly<Record<string, number>>) | undefined;
  private readonly requestsTotal: CounterVec;
  private readonly requestDuration: HistogramVec;
  private readonly requestBytes: HistogramVec;
  private readonly responseBytes: HistogramVec;
  private readonly requestSeriesCache = new Map<string, RequestSeries>();
  readonly retries: Counter<string>;
  readonly retryBudgetExhausted: Counter<string>;
  readonly mirrorRequests: Counter<string>;
  readonly protocolDetections: Counter<string>;
  readonly protocolDetectTimeouts: Counter<string>;
  readonly endpointEjections: Counter<string>;
  readonly httpRejections: Counter<string>;
  readonly authzDecisions: Counter<string>;
  readonly workerConnections: Counter<string>;
  /** Calls carried in process to a pod of this node (proxy/same-node.ts), by what the tunnel carries. */
  readonly sameNodeConnections: Counter<string>;
  /** Opaque same-node connections by who moved their bytes: the kernel, or user space (and why). */
  readonly sameNodeSplices: Counter<string>;
  readonly tapStreams: Gauge<string>;
  readonly tapActiveThreads: Gauge<string>;
  readonly tapDropped: Counter<string>;
  readonly tracingSpansExported: Counter<string>;
  readonly tracingSpansDropped: Counter<string>;

  constructor(inputs: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    const r = this.registry;
    this.opened = new CounterVec('trellis_tcp_connections_opened_total', 'TCP connections opened', TCP_LABELS, r);
    this.closedTotal = new CounterVec('trellis_tcp_connections_closed_total', 'TCP connections closed', TCP_LABELS, r);
    this.receivedBytes = new CounterVec('trellis_tcp_received_bytes_total', 'Bytes received in the request direction (client to server)', TCP_LABELS, r);
    this.sentBytes = new CounterVec('trellis_tcp_sent_bytes_total', 'Bytes sent in the response direction (server to client)', TCP_LABELS, r);
    // TCP health (capture/tcp-health.ts): absent where the sockops program does not run (the agent's log says why).
    this.tcpRtt = new HistogramVec('trellis_tcp_rtt_seconds', "Smoothed RTT of the connection's socket toward its peer (the other agent, or a client or server outside the mesh) when it closed, and each minute of a longer one moving bytes", TCP_LABELS, RTT_BUCKETS, r);
    this.tcpRetransmits = new CounterVec('trellis_tcp_retransmits_total', "TCP segments the agent retransmitted on the connection's socket toward its peer", TCP_LABELS, r);
    this.connectionFailures = new Counter({ name: 'trellis_connection_failures_total', help: 'Connections the agent could not proxy, by direction and reason', labelNames: ['direction', 'reason'], registers });
    this.configErrors = new Counter({ name: 'trellis_config_errors_total', help: 'Invalid objects or files rejected by a source', labelNames: ['source'], registers });
    this.enrolledPods = new Gauge({ name: 'trellis_enrolled_pods', help: 'Pods on this node whose traffic is captured', registers });
    this.hbonePoolSessions = new Gauge({ name: 'trellis_hbone_pool_sessions', help: 'Open outbound HBONE (HTTP/2 over mTLS) sessions', registers });
    this.hboneRefusedStreams = new Counter({ name: 'trellis_hbone_refused_streams_total', help: 'Outbound HBONE streams the destination agent refused unprocessed (GOAWAY during its hand-over or shutdown), opened again on a new session', registers });
    this.peerRefusals = new Counter({ name: 'trellis_peer_refusals_total', help: 'mTLS peers refused (foreign CA, wrong identity, no certificate)', labelNames: ['direction'], registers });
    this.captureDriftRepairs = new Counter({ name: 'trellis_capture_drift_repairs_total', help: 'Enrolled pods whose capture rules or listeners had drifted and were repaired', labelNames: ['what'], registers });
    this.cniRequests = new Counter({ name: 'trellis_cni_requests_total', help: 'Requests from the trellis-cni plugin, by command and outcome', labelNames: ['command', 'outcome'], registers });
    this.captureMode = new Gauge({ name: 'trellis_capture_mode', help: 'The capture mode this agent runs (1) and the one it does not (0); the log says why', labelNames: ['mode'], registers });
    this.kernelFeature = new Gauge({ name: 'trellis_kernel_feature', help: 'What the kernel offers capture, as probed at start (1: present, 0: missing or could not tell)', labelNames: ['feature'], registers });
    this.tcpHealthEnabled = new Gauge({ name: 'trellis_tcp_health_enabled', help: 'Whether the agent\'s sockops program records RTT and retransmissions per edge (1), or cannot here (0: the log says why, "tcp health off")', registers });
    const skLookup = () => this.skLookupVerdicts?.();
    new Counter({
      name: 'trellis_capture_sk_lookup_total',
      help: 'Inbound TCP lookups seen by the pods\' sk_lookup programs (eBPF capture), by verdict: steered to the agent, or left alone (local, exempt_port, probe_source), or refused (no_listener, refused)',
      labelNames: ['verdict'],
      registers,
      collect() {
        const totals = skLookup();
        if (!totals) return;
        this.reset();
        for (const [verdict, n] of Object.entries(totals)) this.inc({ verdict }, n);
      },
    });
    const connect = () => this.connectVerdicts?.();
    new Counter({
      name: 'trellis_capture_connect_total',
      help: 'TCP connects from meshed pods seen by the outbound connect4/connect6 programs (eBPF capture), by verdict: redirected to the agent, or left alone (agent, local), or refused (ipv6_refused, no_record)',
      labelNames: ['verdict'],
      registers,
      collect() {
        const totals = connect();
        if (!totals) return;
        this.reset();
        for (const [verdict, n] of Object.entries(totals)) this.inc({ verdict }, n);
      },
    });
    this.configAge = new Gauge({ name: 'trellis_config_age_seconds', help: 'Seconds since the config source last knew it was in sync with its origin', registers });
    this.sourceWatchErrors = new Counter({ name: 'trellis_source_watch_errors_total', help: 'List/watch failures of the kube source', labelNames: ['kind'], registers });
    this.requestsTotal = new CounterVec('trellis_requests_total', 'HTTP and gRPC requests, by outcome and route', REQUEST_LABELS, r);
    this.requestDuration = new HistogramVec('trellis_request_duration_seconds', 'Time from the request arriving to the end of the response', REQUEST_LABELS, DURATION_BUCKETS, r);
    this.requestBytes = new HistogramVec('trellis_request_bytes', 'Request body sizes', REQUEST_LABELS, SIZE_BUCKETS, r);
    this.responseBytes = new HistogramVec('trellis_response_bytes', 'Response body sizes', REQUEST_LABELS, SIZE_BUCKETS, r);
    this.retries = new Counter({ name: 'trellis_request_retries_total', help: 'Retries sent by route retry policies', labelNames: ['destination_service'], registers });
    this.retryBudgetExhausted = new Counter({ name: 'trellis_retry_budget_exhausted_total', help: 'Retries not sent because the Service retry budget was spent', labelNames: ['destination_service'], registers });
    this.mirrorRequests = new Counter({ name: 'trellis_mirror_requests_total', help: 'Mirrored request copies, by outcome (sent, failed, skipped)', labelNames: ['destination_service', 'outcome'], registers });
    this.protocolDetections = new Counter({ name: 'trellis_protocol_detections_total', help: 'Connections to undeclared ports, by the protocol sniffing found', labelNames: ['protocol'], registers });
    this.protocolDetectTimeouts = new Counter({ name: 'trellis_protocol_detect_timeouts_total', help: 'Connections forwarded as opaque TCP because the client sent nothing within the detection timeout', registers });
    this.endpointEjections = new Counter({ name: 'trellis_endpoint_ejections_total', help: 'Endpoints taken out of load balancing after consecutive failures', labelNames: ['destination_service'], registers });
    this.httpRejections = new Counter({ name: 'trellis_http_rejections_total', help: 'Malformed or oversized HTTP requests answered by the agent and never forwarded, by status', labelNames: ['status'], registers });
    this.authzDecisions = new Counter({ name: 'trellis_authz_decisions_total', help: 'Authorization decisions on connections and requests, by outcome, deciding action, policy and reason code', labelNames: ['decision', 'action', 'policy', 'reason', 'level'], registers });
    const certificates = () => this.certificates?.();
    new Gauge({
      name: 'trellis_trust_bundle_roots',
      help: 'The roots of the trust bundle this agent verifies peers with (1 per root, by SHA-256 fingerprint; position 0 is the root the identity service signs with)',
      labelNames: ['root', 'position'],
      registers,
      collect() {
        this.reset();
        certificates()?.bundle.forEach((root, i) => this.set({ root, position: String(i) }, 1));
      },
    });
    new Gauge({
      name: 'trellis_workload_certificates',
      help: 'Workload certificates (SVIDs) this agent holds, by the root they chain to ("none": a root no longer in the bundle)',
      labelNames: ['root'],
      registers,
      collect() {
        this.reset();
        const report = certificates();
        if (!report) return;
        for (const root of report.bundle) this.set({ root }, 0);
        for (const s of report.svids) this.inc({ root: s.root });
      },
    });
    // When each SVID in force was issued and expires: renewed at half-life, one with less than half its lifetime left
    // has failed to renew (trellis check says so).
    for (const [name, help, field] of [
      ['trellis_workload_certificate_not_before_timestamp_seconds', 'When each workload certificate (SVID) this agent holds became valid, Unix seconds', 'notBefore'],
      ['trellis_workload_certificate_expiry_timestamp_seconds', 'When each workload certificate (SVID) this agent holds expires, Unix seconds (renewed at half its lifetime)', 'notAfter'],
    ] as const) {
      new Gauge({
        name,
        help,
        labelNames: ['identity'],
        registers,
        collect() {
          this.reset();
          for (const s of certificates()?.svids ?? []) this.set({ identity: s.identity }, s[field] / 1000);
        },
      });
    }
    this.workerConnections = new Counter({ name: 'trellis_worker_connections_total', help: 'Connections accepted on the pods\' listeners, by the agent thread that took them (0: the main thread)', labelNames: ['worker'], registers });
    this.sameNodeConnections = new Counter({ name: 'trellis_same_node_connections_total', help: 'Calls to a meshed pod of this node carried in process, without HBONE or TLS (--same-node), by what the tunnel carries: tcp (one opaque connection), http1 or h2 (a tunnel of the L7 path, which carries many requests)', labelNames: ['protocol'], registers });
    this.sameNodeSplices = new Counter({ name: 'trellis_same_node_splices_total', help: 'Opaque same-node connections by who moved their bytes: splice="kernel" (a sockhash and a stream verdict program, no payload byte in user space; --same-node-splice kernel) or "user", with the reason (off: user space asked for, or no kernel splice here; ended: a side had ended before the hand-over; unread_bytes: bytes waited unread at the hand-over and nothing came after them; unsettled: bytes kept arriving while the hand-over looked; failed: the program refused the pair)', labelNames: ['splice', 'reason'], registers });
    this.tapStreams = new Gauge({ name: 'trellis_tap_streams', help: 'Tap streams open on this agent (trellis tap)', registers });
    this.tapActiveThreads = new Gauge({ name: 'trellis_tap_active_threads', help: 'Agent threads whose tap hub matches records (0: nobody taps, and requests pay one check for tap)', registers });
    this.tapDropped = new Counter({ name: 'trellis_tap_dropped_total', help: 'Observations a tap matched and did not send (its rate bound, or a reader slower than the events)', registers });
    this.tracingSpansExported = new Counter({ name: 'trellis_tracing_spans_exported_total', help: 'Spans the OTLP collector accepted (--tracing-endpoint)', registers });
    this.tracingSpansDropped = new Counter({ name: 'trellis_tracing_spans_dropped_total', help: 'Sampled spans never exported, by reason: queue_full (the bounded queue of a thread was full), export_failed (the collector refused or did not answer)', labelNames: ['reason'], registers });
    if (inputs.defaultMetrics !== false) {
      collectDefaultMetrics({ register: this.registry, prefix: 'trellis_agent_' });
      // prom-client's sums of the per-type gauges beside them, named like counters: `promtool check metrics` refuses
      // a gauge ending in _total, and the per-type series already add up to them.
      for (const n of ['active_handles_total', 'active_requests_total', 'active_resources_total']) this.registry.removeSingleMetric(`trellis_agent_nodejs_${n}`);
    }
  }

  /** Where trellis_capture_sk_lookup_total reads from at each scrape. */
  reportSkLookup(fn: () => Readonly<Record<string, number>>): void {
    this.skLookupVerdicts = fn;
  }

  /** Where trellis_capture_connect_total reads from at each scrape. */
  reportConnect(fn: () => Readonly<Record<string, number>>): void {
    this.connectVerdicts = fn;
  }

  /** Where the certificate gauges read from at each scrape. */
  reportCertificates(fn: () => CertificatesByRoot): void {
    this.certificates = fn;
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
      // Bound when first told: an agent without the sockops program never makes these series.
      health: (rttSeconds, retransmits) => {
        this.tcpRtt.labels(labels).observe(rttSeconds);
        this.tcpRetransmits.labels(labels).inc(retransmits);
      },
    };
  }

  /** The request series for one label set; bound series are cached so a request costs one lookup. */
  request(labels: RequestLabels): RequestSeries {
    let key = '';
    for (let i = 0; i < REQUEST_LABELS.length; i++) key += `${labels[REQUEST_LABELS[i]!]}\u0001`;
    return this.requestSeries(key, () => labels);
  }

  /**
   * The request series cached under `key` (any string that stands for exactly one label set); `labels` is called
   * only the first time, so a request that finds its series allocates no labels object.
   */
  requestSeries(key: string, labelsOf: () => RequestLabels): RequestSeries {
    let series = this.requestSeriesCache.get(key);
    if (series) return series;
    const labels = labelsOf();
    const total = this.requestsTotal.labels(labels);
    const duration = this.requestDuration.labels(labels);
    const reqBytes = this.requestBytes.labels(labels);
    const resBytes = this.responseBytes.labels(labels);
    series = {
      observe(seconds, requestBytes, responseBytes) {
        total.inc();
        duration.observe(seconds);
        reqBytes.observe(requestBytes);
        resBytes.observe(responseBytes);
      },
    };
    if (this.requestSeriesCache.size >= MAX_CACHED_SERIES) this.requestSeriesCache.clear();
    this.requestSeriesCache.set(key, series);
    return series;
  }
}
