// Agent configuration: parsed and validated once at the edge, then frozen. Nothing below reads process.env.
import net from 'node:net';
import os from 'node:os';
import tls from 'node:tls';
import { DEFAULT_TRUST_DOMAIN, HEALTH_PORT, METRICS_PORT, TAP_PORT } from './constants.js';
import { TrellisError } from './errors.js';
import { DEFAULT_REDACTED_HEADERS } from './tap/events.js';

/** --capture: how pods' traffic is captured; `auto` becomes the mode the kernel allows when the agent starts. */
export type CaptureRequest = 'auto' | 'nft' | 'ebpf';

export interface AgentConfig {
  readonly node: string;
  /**
   * nft: nftables NAT in each pod's netns both ways. ebpf: inbound handed to the agent's listener by an sk_lookup
   * program, outbound by cgroup connect4/6 programs on the cgroup root, both without NAT. auto (until the agent has
   * probed the kernel): ebpf where it can run.
   */
  readonly capture: CaptureRequest;
  /**
   * --cgroup-root: the cgroup (v2) the outbound programs attach to in eBPF mode, above every pod's processes. Absent:
   * the root of the cgroup2 mount the agent sees.
   */
  readonly cgroupRoot?: string;
  /**
   * Set by the agent at start in eBPF mode (capture/connect.ts): the fd of the map of original destinations by
   * accepted port, which every thread reads for the connections on its outbound listeners.
   */
  readonly outboundMapFd?: number;
  /**
   * Set by the agent at start when its sockops program runs (capture/tcp-health.ts): the fd of the map holding its
   * sockets' RTT and retransmissions, which every thread reads for trellis_tcp_rtt_seconds and _retransmits_total.
   */
  readonly tcpHealthMapFd?: number;
  readonly source: { readonly kind: 'dir'; readonly dir: string } | { readonly kind: 'kube'; readonly kubeconfig?: string };
  /** Local mode: directory of the in-process CA (ca.key.pem, ca.cert.pem); created if absent. */
  readonly caDir: string;
  /** Cluster mode: certificates come from the identity service instead of the local CA. */
  readonly identityService?: {
    readonly address: string;
    /** Projected service-account token (audience trellis-identity), re-read on every request. */
    readonly tokenFile: string;
    /** Trust bundle (the mounted trellis-ca-root ConfigMap), re-read on every request. */
    readonly caFile: string;
    /** How often the trust bundle is read again, so a CA rotation reaches every handshake without a restart. */
    readonly caPollMs: number;
  };
  readonly trustDomain: string;
  readonly probeSources: readonly string[];
  readonly metrics: { readonly host: string; readonly port: number };
  readonly health: { readonly host: string; readonly port: number };
  readonly certTtlMs: number;
  readonly connectTimeoutMs: number;
  readonly hboneIdleMs: number;
  /** Streams an HBONE session carries before a new one (a new TLS handshake) is opened; 0: no limit. */
  readonly hboneMaxStreamsPerSession: number;
  /**
   * Connections to apps leave from the caller's address (IP_TRANSPARENT in the pod netns, policy routing for the
   * replies), so apps see who calls; off (or a kernel that refuses it): from the pod's own address.
   */
  readonly preserveSourceIp: boolean;
  /** TCP health per edge (the sockops program, capture/tcp-health.ts) where the kernel and the agent's cgroup allow it. */
  readonly tcpHealth: boolean;
  /**
   * A meshed pod of this node is reached in process, without HBONE or TLS (proxy/same-node.ts); off: over HBONE to the
   * agent itself, as a pod of another node is.
   */
  readonly sameNode: boolean;
  /**
   * Who moves an opaque same-node connection's bytes: `user`, user space (splice.ts, with backpressure); `kernel`, the
   * kernel (a sockhash and a stream verdict program, io/kernel-splice.ts) where its program loads, which has no
   * backpressure yet: a server that reads slower than its client sends lets the kernel buffer without bound.
   */
  readonly sameNodeSplice: 'user' | 'kernel';
  /** TLS key exchange groups for HBONE, OpenSSL names colon-separated in order of preference; Node's default when absent. */
  readonly tlsGroups?: string;
  readonly drainMs: number;
  /**
   * Written while this process is ready, removed when it is not or stops: how a hand-over (the lab's restart-agent, a
   * DaemonSet surge pod's exec readiness probe) tells this agent's readiness from its predecessor's, which answers on
   * the same health port meanwhile.
   */
  readonly readyFile?: string;
  readonly resyncMs: number;
  /** Cluster mode: the socket trellis-cni talks to and the opt-in file it reads when the agent is down. */
  readonly cni?: { readonly socketPath: string; readonly optinFile: string; readonly waitForPodMs: number };
  /** How often enrolled pods' rules and listeners are checked and repaired; 0 turns the check off. */
  readonly driftIntervalMs: number;
  /** Open plaintext connections (15006) one source address may hold per agent thread; 0: no limit. */
  readonly maxConnectionsPerSource: number;
  /**
   * HTTP handling both ways: outbound routes and per-request metrics, inbound per-request authorization and
   * metrics. Absent (--l7 off): every connection is opaque TCP, and policy rules with HTTP fields fail safe.
   */
  readonly l7?: L7Config;
  /** The audit trail (the access log): stdout, or a file rotated by size. */
  readonly audit: AuditConfig;
  readonly logLevel: string;
  /** Threads that carry traffic: the main thread and workers-1 worker threads, each with listeners of its own. */
  readonly workers: number;
  readonly tap: TapConfig;
  /** Distributed tracing (agent/tracing/); absent without --tracing-endpoint. */
  readonly tracing?: TracingConfig;
}

/** Where spans go, how, and the share of new traces sampled. */
export interface TracingConfig {
  readonly endpoint: string;
  readonly protocol: 'grpc' | 'http/protobuf' | 'http/json';
  /** 0 to 1: the share of requests that start a trace here and are sampled; a caller's decision is kept. */
  readonly sampleRatio: number;
}

/** The live tap (agent/tap/): where it is served, what it hides, how fast one tap may go. */
export interface TapConfig {
  /** The Unix socket of the tap API; absent with --tap-socket off. */
  readonly socket?: string;
  /**
   * Cluster mode (--source kube): the TCP address of the tap API over TLS, whose callers present a Kubernetes token and
   * are authorized by RBAC; absent with --tap-addr off, and always with --source dir (no API server to ask).
   */
  readonly addr?: { readonly host: string; readonly port: number };
  /** Lowercase header names whose values taps never see: the defaults plus --tap-redact-headers. */
  readonly redactHeaders: readonly string[];
  /** Observations per second one tap may carry at most. */
  readonly maxRps: number;
}

/** Where the tap API listens unless told otherwise. */
export const DEFAULT_TAP_SOCKET = '/run/trellis/tap.sock';

export interface AuditConfig {
  /** False with --no-audit: no access line is written. */
  readonly enabled: boolean;
  /** Absent: stdout. */
  readonly file?: string;
  readonly maxBytes: number;
  readonly maxFiles: number;
}

export interface L7Config {
  readonly detectTimeoutMs: number;
  readonly opaquePorts: ReadonlySet<number>;
  readonly maxHeaderBytes: number;
  readonly maxHeaderCount: number;
  /** An HTTP/1.1 request head must arrive whole within this long of its first byte (408 otherwise); 0: no limit. */
  readonly headerTimeoutMs: number;
  /** A kept-alive HTTP/1.1 connection with no request in flight is closed after this long; 0: never. */
  readonly idleTimeoutMs: number;
  readonly maxConcurrentStreams: number;
  readonly bodyCapBytes: number;
}

/** Most threads the agent runs traffic on. */
export const MAX_WORKERS = 8;

/** As many threads as CPUs the agent may run on (its affinity), at most MAX_WORKERS. */
export function defaultWorkers(): number {
  return Math.max(1, Math.min(os.availableParallelism(), MAX_WORKERS));
}

/** Linkerd's default opaque ports: server-speaks-first or never-HTTP protocols, never sniffed. */
export const DEFAULT_OPAQUE_PORTS = '25,587,3306,4444,5432,6379,9300,11211';

export interface AgentFlags {
  node?: string;
  capture?: string;
  source?: string;
  dir?: string;
  kubeconfig?: string;
  caDir?: string;
  identityService?: string;
  identityTokenFile?: string;
  identityCaFile?: string;
  identityCaPoll?: string;
  trustDomain?: string;
  probeSource?: string[];
  metricsAddr?: string;
  healthAddr?: string;
  certTtl?: string;
  connectTimeout?: string;
  drain?: string;
  readyFile?: string;
  maxConnectionsPerSource?: string;
  workers?: string;
  logLevel?: string;
  cniSocket?: string;
  cniOptinFile?: string;
  cniWaitForPod?: string;
  driftInterval?: string;
  hboneMaxStreamsPerSession?: string;
  preserveSourceIp?: string;
  tcpHealth?: string;
  cgroupRoot?: string;
  sameNode?: string;
  sameNodeSplice?: string;
  tlsGroups?: string;
  l7?: string;
  protocolDetectTimeout?: string;
  opaquePorts?: string;
  maxHeaderBytes?: string;
  maxHeaderCount?: string;
  httpHeaderTimeout?: string;
  httpIdleTimeout?: string;
  /** Commander's --no-audit: false. */
  audit?: boolean;
  auditFile?: string;
  auditMaxBytes?: string;
  auditMaxFiles?: string;
  tapSocket?: string;
  tapAddr?: string;
  tapRedactHeaders?: string;
  tapMaxRps?: string;
  tracingEndpoint?: string;
  tracingProtocol?: string;
  tracingSampleRatio?: string;
}

function integerFlag(text: string, flag: string, min: number, max: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n < min || n > max) throw new TrellisError('ECONFIG', `${flag} ${text}: expected a whole number from ${min} to ${max}`);
  return n;
}

function l7Config(flags: AgentFlags): L7Config | undefined {
  const mode = flags.l7 ?? 'on';
  if (mode !== 'on' && mode !== 'off') throw new TrellisError('ECONFIG', `--l7 ${mode}: use on or off`);
  if (mode === 'off') return undefined;
  const detectTimeoutMs = flags.protocolDetectTimeout === '0' ? 0 : parseDuration(flags.protocolDetectTimeout ?? '100ms', '--protocol-detect-timeout');
  if (detectTimeoutMs > 10_000) throw new TrellisError('ECONFIG', '--protocol-detect-timeout must be at most 10s: server-first protocols wait that long');
  const opaquePorts = new Set(
    (flags.opaquePorts ?? DEFAULT_OPAQUE_PORTS)
      .split(',')
      .map((p) => p.trim())
      .filter(Boolean)
      .map((p) => integerFlag(p, '--opaque-ports', 1, 65535)),
  );
  return Object.freeze({
    detectTimeoutMs,
    opaquePorts,
    maxHeaderBytes: integerFlag(flags.maxHeaderBytes ?? String(60 * 1024), '--max-header-bytes', 1024, 1024 * 1024),
    maxHeaderCount: integerFlag(flags.maxHeaderCount ?? '100', '--max-header-count', 8, 10_000),
    headerTimeoutMs: flags.httpHeaderTimeout === '0' ? 0 : parseDuration(flags.httpHeaderTimeout ?? '10s', '--http-header-timeout'),
    idleTimeoutMs: flags.httpIdleTimeout === '0' ? 0 : parseDuration(flags.httpIdleTimeout ?? '60s', '--http-idle-timeout'),
    maxConcurrentStreams: 100,
    bodyCapBytes: 64 * 1024,
  });
}

function auditConfig(flags: AgentFlags): AuditConfig {
  const enabled = flags.audit !== false;
  if (!enabled && (flags.auditFile !== undefined || flags.auditMaxBytes !== undefined || flags.auditMaxFiles !== undefined)) {
    throw new TrellisError('ECONFIG', '--no-audit turns the audit trail off: drop --audit-file, --audit-max-bytes and --audit-max-files, or --no-audit');
  }
  if (!flags.auditFile && (flags.auditMaxBytes !== undefined || flags.auditMaxFiles !== undefined)) {
    throw new TrellisError('ECONFIG', '--audit-max-bytes and --audit-max-files go with --audit-file (without it the audit trail goes to stdout)');
  }
  const size = /^(\d+)(Ki|Mi|Gi)?$/.exec(flags.auditMaxBytes?.trim() ?? '100Mi');
  const maxBytes = size ? Number(size[1]) * { '': 1, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3 }[size[2] ?? '']! : NaN;
  if (!(maxBytes >= 4096 && Number.isSafeInteger(maxBytes))) {
    throw new TrellisError('ECONFIG', `--audit-max-bytes ${flags.auditMaxBytes}: expected a size of at least 4096 bytes, such as 104857600 or 100Mi`);
  }
  return Object.freeze({
    enabled,
    ...(flags.auditFile && { file: flags.auditFile }),
    maxBytes,
    maxFiles: integerFlag(flags.auditMaxFiles ?? '5', '--audit-max-files', 1, 1000),
  });
}

function tapConfig(flags: AgentFlags, source: 'dir' | 'kube'): TapConfig {
  const socket = flags.tapSocket ?? DEFAULT_TAP_SOCKET;
  if (socket !== 'off' && !socket.startsWith('/')) throw new TrellisError('ECONFIG', `--tap-socket ${socket}: an absolute path, or off`);
  if (source === 'dir' && flags.tapAddr !== undefined && flags.tapAddr !== 'off') {
    throw new TrellisError('ECONFIG', `--tap-addr ${flags.tapAddr}: the tap port authorizes callers through the API server (TokenReview, SubjectAccessReview), so it goes with --source kube; with --source dir tap over --tap-socket`);
  }
  const addrText = flags.tapAddr ?? (source === 'kube' ? `0.0.0.0:${TAP_PORT}` : 'off');
  const addr = addrText === 'off' ? undefined : Object.freeze(parseAddr(addrText, '--tap-addr'));
  const extra = (flags.tapRedactHeaders ?? '').split(',').map((h) => h.trim().toLowerCase()).filter(Boolean);
  for (const h of extra) {
    if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(h)) throw new TrellisError('ECONFIG', `--tap-redact-headers: "${h}" is not a header name`);
  }
  return Object.freeze({
    ...(socket !== 'off' && { socket }),
    ...(addr && { addr }),
    redactHeaders: Object.freeze([...new Set([...DEFAULT_REDACTED_HEADERS, ...extra])]),
    maxRps: integerFlag(flags.tapMaxRps ?? '100', '--tap-max-rps', 1, 100_000),
  });
}

function tracingConfig(flags: AgentFlags): TracingConfig | undefined {
  if (flags.tracingEndpoint === undefined) {
    if (flags.tracingProtocol !== undefined || flags.tracingSampleRatio !== undefined) {
      throw new TrellisError('ECONFIG', '--tracing-protocol and --tracing-sample-ratio go with --tracing-endpoint (where the spans are sent)');
    }
    return undefined;
  }
  const protocol = flags.tracingProtocol ?? 'grpc';
  if (protocol !== 'grpc' && protocol !== 'http/protobuf' && protocol !== 'http/json') {
    throw new TrellisError('ECONFIG', `--tracing-protocol ${protocol}: use grpc (OTLP/gRPC, port 4317), http/protobuf or http/json (OTLP/HTTP, port 4318)`);
  }
  let url: URL | undefined;
  try {
    url = new URL(flags.tracingEndpoint);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || !url.hostname) {
    const port = protocol === 'grpc' ? 4317 : 4318;
    throw new TrellisError('ECONFIG', `--tracing-endpoint ${flags.tracingEndpoint}: an http:// or https:// URL of an OTLP collector, e.g. http://otel-collector.observability:${port}`);
  }
  if (protocol === 'grpc' && url.pathname !== '/' && url.pathname !== '') {
    throw new TrellisError('ECONFIG', `--tracing-endpoint ${flags.tracingEndpoint}: OTLP/gRPC takes no path, give http://HOST:4317`);
  }
  const text = flags.tracingSampleRatio ?? '0.01';
  const ratio = Number(text);
  if (!/^\d*\.?\d+$/.test(text.trim()) || !(ratio >= 0 && ratio <= 1)) {
    throw new TrellisError('ECONFIG', `--tracing-sample-ratio ${text}: a number from 0 to 1 (0.01 samples 1% of new traces)`);
  }
  return Object.freeze({ endpoint: url.href, protocol, sampleRatio: ratio });
}

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text.trim());
  if (!m) throw new TrellisError('ECONFIG', `${flag}: "${text}" is not a duration (examples: 500ms, 30s, 10m, 24h)`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(m[1]) * unit);
}

function parseAddr(text: string, flag: string): { host: string; port: number } {
  const m = /^(.*):(\d{1,5})$/.exec(text);
  const host = m?.[1]?.replace(/^\[|\]$/g, '') ?? '';
  const port = Number(m?.[2]);
  if (!m || !net.isIP(host) || port < 1 || port > 65535) {
    throw new TrellisError('ECONFIG', `${flag}: "${text}" must be IP:PORT, e.g. 0.0.0.0:${METRICS_PORT}`);
  }
  return { host, port };
}

/** "X25519,P-256" -> "X25519:P-256", each group checked against this Node's OpenSSL. */
export function parseTlsGroups(text: string): string {
  const groups = text.split(/[,:]/).map((g) => g.trim()).filter(Boolean);
  if (groups.length === 0) throw new TrellisError('ECONFIG', '--tls-groups: give at least one group, e.g. X25519 or X25519MLKEM768,X25519');
  for (const g of groups) {
    try {
      tls.createSecureContext({ ecdhCurve: g });
    } catch {
      throw new TrellisError('ECONFIG', `--tls-groups: ${g} is not a key exchange group this Node's OpenSSL knows (examples: X25519MLKEM768, X25519, P-256, P-384)`);
    }
  }
  return groups.join(':');
}

function parseCount(text: string, flag: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n > 1_000_000) throw new TrellisError('ECONFIG', `${flag}: "${text}" must be a whole number from 0 to 1000000`);
  return n;
}

export function agentConfig(flags: AgentFlags): AgentConfig {
  if (!flags.node) throw new TrellisError('ECONFIG', '--node is required: the name of the node this agent serves (spec.nodeName of its pods)');
  const source = flags.source ?? 'dir';
  if (source !== 'dir' && source !== 'kube') throw new TrellisError('ECONFIG', `--source ${source}: use dir or kube`);
  if (source === 'dir' && !flags.dir) throw new TrellisError('ECONFIG', '--dir is required with --source dir: a directory of Kubernetes YAML');
  if (source === 'dir' && flags.kubeconfig) throw new TrellisError('ECONFIG', '--kubeconfig goes with --source kube');
  if (source === 'kube' && flags.dir) throw new TrellisError('ECONFIG', '--dir goes with --source dir');
  const level = flags.logLevel ?? 'info';
  if (!LEVELS.includes(level)) throw new TrellisError('ECONFIG', `--log-level ${level}: use one of ${LEVELS.join(', ')}`);
  const probeSources = (flags.probeSource ?? []).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
  for (const ip of probeSources) {
    if (!net.isIP(ip)) throw new TrellisError('ECONFIG', `--probe-source ${ip}: not an IP address`);
  }
  const certTtlMs = parseDuration(flags.certTtl ?? '24h', '--cert-ttl');
  if (certTtlMs < 60_000) throw new TrellisError('ECONFIG', '--cert-ttl must be at least 1m');
  let identityService: AgentConfig['identityService'];
  if (flags.identityService) {
    if (!/^[^\s:]+:\d{1,5}$/.test(flags.identityService)) {
      throw new TrellisError('ECONFIG', `--identity-service ${flags.identityService}: use HOST:PORT, e.g. trellis-identity.trellis-system.svc:15012`);
    }
    identityService = Object.freeze({
      address: flags.identityService,
      tokenFile: flags.identityTokenFile ?? '/var/run/secrets/trellis/token',
      caFile: flags.identityCaFile ?? '/var/run/trellis/ca-root/root-cert.pem',
      caPollMs: parseDuration(flags.identityCaPoll ?? '10s', '--identity-ca-poll'),
    });
    if (identityService.caPollMs < 100) throw new TrellisError('ECONFIG', `--identity-ca-poll ${flags.identityCaPoll}: at least 100ms`);
  } else if (flags.identityTokenFile || flags.identityCaFile || flags.identityCaPoll) {
    throw new TrellisError('ECONFIG', '--identity-token-file, --identity-ca-file and --identity-ca-poll go with --identity-service');
  }
  if (!flags.cniSocket && (flags.cniOptinFile || flags.cniWaitForPod)) {
    throw new TrellisError('ECONFIG', '--cni-optin-file and --cni-wait-for-pod go with --cni-socket');
  }
  const cni = flags.cniSocket
    ? Object.freeze({
        socketPath: flags.cniSocket,
        optinFile: flags.cniOptinFile ?? '/var/run/trellis/cni/optin',
        waitForPodMs: parseDuration(flags.cniWaitForPod ?? '5s', '--cni-wait-for-pod'),
      })
    : undefined;
  const l7 = l7Config(flags);
  const audit = auditConfig(flags);
  const tracing = tracingConfig(flags);
  const driftIntervalMs = flags.driftInterval === '0' ? 0 : parseDuration(flags.driftInterval ?? '30s', '--drift-interval');
  const capture = flags.capture ?? 'auto';
  if (capture !== 'auto' && capture !== 'nft' && capture !== 'ebpf') throw new TrellisError('ECONFIG', `--capture ${capture}: use auto, nft or ebpf`);
  if (flags.cgroupRoot !== undefined && !flags.cgroupRoot.startsWith('/')) {
    throw new TrellisError('ECONFIG', `--cgroup-root ${flags.cgroupRoot}: give an absolute path, a directory of a cgroup v2 mount (e.g. /sys/fs/cgroup)`);
  }
  return Object.freeze({
    node: flags.node,
    capture,
    ...(flags.cgroupRoot !== undefined && { cgroupRoot: flags.cgroupRoot }),
    workers: flags.workers === undefined ? defaultWorkers() : integerFlag(flags.workers, '--workers', 1, MAX_WORKERS),
    ...(cni && { cni }),
    driftIntervalMs,
    maxConnectionsPerSource: integerFlag(flags.maxConnectionsPerSource ?? '1024', '--max-connections-per-source', 0, 1_000_000),
    ...(l7 && { l7 }),
    audit,
    ...(identityService && { identityService }),
    source: Object.freeze(
      source === 'kube'
        ? { kind: 'kube' as const, ...(flags.kubeconfig !== undefined && { kubeconfig: flags.kubeconfig }) }
        : { kind: 'dir' as const, dir: flags.dir! },
    ),
    caDir: flags.caDir ?? '/var/lib/trellis/ca',
    trustDomain: flags.trustDomain ?? DEFAULT_TRUST_DOMAIN,
    probeSources: Object.freeze(probeSources),
    metrics: Object.freeze(parseAddr(flags.metricsAddr ?? `0.0.0.0:${METRICS_PORT}`, '--metrics-addr')),
    health: Object.freeze(parseAddr(flags.healthAddr ?? `0.0.0.0:${HEALTH_PORT}`, '--health-addr')),
    certTtlMs,
    connectTimeoutMs: parseDuration(flags.connectTimeout ?? '5s', '--connect-timeout'),
    hboneIdleMs: 60_000,
    hboneMaxStreamsPerSession: parseCount(flags.hboneMaxStreamsPerSession ?? '0', '--hbone-max-streams-per-session'),
    preserveSourceIp: onOff(flags.preserveSourceIp ?? 'on', '--preserve-source-ip'),
    tcpHealth: onOff(flags.tcpHealth ?? 'on', '--tcp-health'),
    sameNode: onOff(flags.sameNode ?? 'on', '--same-node'),
    sameNodeSplice: oneOf(flags.sameNodeSplice ?? 'user', ['user', 'kernel'] as const, '--same-node-splice'),
    ...(flags.tlsGroups !== undefined && { tlsGroups: parseTlsGroups(flags.tlsGroups) }),
    drainMs: parseDuration(flags.drain ?? '5s', '--drain'),
    ...(flags.readyFile !== undefined && { readyFile: flags.readyFile }),
    resyncMs: 5_000,
    logLevel: level,
    tap: tapConfig(flags, source),
    ...(tracing && { tracing }),
  });
}

function oneOf<T extends string>(value: string, allowed: readonly T[], flag: string): T {
  if (!(allowed as readonly string[]).includes(value)) throw new TrellisError('ECONFIG', `${flag} ${value}: use ${allowed.join(' or ')}`);
  return value as T;
}

function onOff(value: string, flag: string): boolean {
  if (value !== 'on' && value !== 'off') throw new TrellisError('ECONFIG', `${flag} ${value}: use on or off`);
  return value === 'on';
}
