// The data plane of one thread: the listeners it opens in each enrolled pod's netns (PodProxy), the outbound and
// inbound paths (L4 and L7), the HBONE pool and the connector they share. The main thread runs one (app.ts) and so
// does each worker thread (workers/worker.ts); the kernel spreads connections among their listeners (SO_REUSEPORT).
import net from 'node:net';
import type { Logger } from 'pino';
import type { Clock } from './clock.js';
import { DEFAULT_OPAQUE_PORTS, type AgentConfig } from './config.js';
import { AGENT_MARK, TRANSPARENT_MARK } from './constants.js';
import { TrellisError } from './errors.js';
import type { CertSource } from './identity/certs.js';
import { whenConnected } from './io/splice.js';
import { InboundHttp } from './l7/inbound-http.js';
import { L7Proxy } from './l7/l7-proxy.js';
import { KernelSplice } from './io/kernel-splice.js';
import { connectInNetns, SameNodeMaps } from './native/index.js';
import { Connector } from './proxy/connector.js';
import { Drain } from './proxy/drain.js';
import { HbonePool } from './proxy/hbone-pool.js';
import { Outbound } from './proxy/outbound.js';
import { originalDstReader } from './proxy/original-dst.js';
import { TcpHealthReader } from './proxy/tcp-health.js';
import { PodProxy } from './proxy/pod-proxy.js';
import { PolicyRecheck } from './proxy/recheck.js';
import { SameNode } from './proxy/same-node.js';
import { SourceLimit } from './proxy/source-limit.js';
import type { MeshState, StateListener } from './state/store.js';
import type { Workload } from './state/workload.js';
import type { AccessLog } from './telemetry/audit.js';
import type { Metrics } from './telemetry/metrics.js';
import type { TapHub } from './tap/hub.js';
import { OtlpExporter } from './tracing/otlp.js';
import { Tracer } from './tracing/tracer.js';

export interface DataPlaneInputs {
  config: AgentConfig;
  certs: CertSource;
  /** The state in force now, and its changes (open opaque connections are re-authorized on them). */
  state: () => MeshState;
  subscribe: (fn: StateListener) => () => void;
  metrics: Metrics;
  logger: Logger;
  accessLog: AccessLog;
  clock: Clock;
  /** Which thread this is (0: the main thread), for the per-worker connection count. */
  worker: number;
  /** This thread's tap hub: every record of this data plane reports to it (agent/tap/). */
  tap?: TapHub | undefined;
}

export class DataPlane {
  readonly drain = new Drain();
  /** The pods' inbound HBONE sessions, which shutdown waits on beside `drain` (InboundInputs.sessions). */
  readonly sessions = new Drain();
  private readonly pool: HbonePool;
  private readonly l7: L7Proxy | undefined;
  private readonly inboundHttp: InboundHttp | undefined;
  private readonly outbound: Outbound;
  private readonly recheck = new PolicyRecheck();
  /** Shared by every pod's plaintext listener on this thread: a source's connections count across pods. */
  private readonly sourceLimit: SourceLimit | undefined;
  private readonly unsubscribe: () => void;
  /** With --tracing-endpoint: this thread's spans' queue and exporter. */
  private readonly exporter: OtlpExporter | undefined;

  constructor(private readonly inputs: DataPlaneInputs) {
    const { config, metrics, logger, accessLog, clock, state } = inputs;
    // Tracing: this thread's tracer and its own OTLP exporter (a bounded queue), only when asked for; without them the
    // L7 path checks for a tracer once per request and does nothing else.
    let tracer: Tracer | undefined;
    if (config.tracing) {
      const { endpoint, protocol, sampleRatio } = config.tracing;
      this.exporter = new OtlpExporter({ endpoint, protocol, metrics, logger: logger.child({ component: 'tracing' }) });
      tracer = new Tracer({ sampleRatio, sink: this.exporter, node: config.node, random: Math.random });
    }
    this.sourceLimit = config.maxConnectionsPerSource > 0 ? new SourceLimit(config.maxConnectionsPerSource) : undefined;
    // Sockets to peers and apps are opened inside the pod's netns with the agent's mark.
    const dial = (pod: Workload, host: string, port: number): net.Socket => {
      if (!pod.netnsPath) throw new TrellisError('ENOTREADY', `pod ${pod.key} has no network namespace yet (it is being enrolled)`);
      // noDelay: HTTP/2 frames and HTTP heads go out at once (Nagle plus delayed ACKs costs up to 40 ms).
      return connectInNetns(pod.netnsPath, { host, port, mark: AGENT_MARK, timeoutMs: config.connectTimeoutMs }).setNoDelay(true);
    };
    // To an app: from the caller's address when it is kept (TRANSPARENT_MARK: the pod's rules route the replies back).
    // In eBPF mode such a connection is bound to lo, so the pod's sk_lookup program sees it arrive there and leaves it
    // alone (capture/routing.ts); from the pod's own address it needs nothing: the program knows that source.
    const device = config.capture === 'ebpf' ? 'lo' : undefined;
    const dialApp = (pod: Workload, host: string, port: number, caller?: string): net.Socket => {
      const source = config.preserveSourceIp ? transparentSource(caller, host) : undefined;
      if (source === undefined) return dial(pod, host, port);
      if (!pod.netnsPath) throw new TrellisError('ENOTREADY', `pod ${pod.key} has no network namespace yet (it is being enrolled)`);
      return connectInNetns(pod.netnsPath, { host, port, mark: TRANSPARENT_MARK, timeoutMs: config.connectTimeoutMs, transparentSource: source, ...(device && { device }) }).setNoDelay(true);
    };
    this.dialApp = dialApp;
    this.pool = new HbonePool({
      certs: inputs.certs,
      dial,
      metrics,
      logger: logger.child({ component: 'hbone' }),
      clock,
      connectTimeoutMs: config.connectTimeoutMs,
      idleMs: config.hboneIdleMs,
      maxStreamsPerSession: config.hboneMaxStreamsPerSession,
      ...(config.tlsGroups && { tlsGroups: config.tlsGroups }),
    });
    // Same node: meshed pods this thread has listeners for are reached in process (--same-node on), opaque connections'
    // bytes moved in user space, or with --same-node-splice kernel by the kernel where it allows (a program of this
    // thread's own).
    if (config.sameNode && config.sameNodeSplice === 'kernel') this.sameNodeMaps = openSameNodeMaps(logger, inputs.worker);
    this.sameNode = config.sameNode
      ? new SameNode({ metrics, logger: logger.child({ component: 'same-node' }), ...(this.sameNodeMaps && { kernel: new KernelSplice(this.sameNodeMaps) }) })
      : undefined;
    const connector = new Connector({ pool: this.pool, dial, sameNode: this.sameNode });
    // TCP health per edge: read from the sockops program's map (by its fd, the main thread's) when it runs.
    this.tcpHealth = config.tcpHealthMapFd === undefined ? undefined : new TcpHealthReader({ mapFd: config.tcpHealthMapFd });
    this.unsubscribe = inputs.subscribe((next, previous) => void this.recheck.apply(next, previous));
    // L7: HTTP to Service ports is parsed and routed per request; its tunnels are the same HBONE/TCP paths.
    this.l7 = config.l7
      ? new L7Proxy({
          options: {
            detectTimeoutMs: config.l7.detectTimeoutMs,
            opaquePorts: config.l7.opaquePorts,
            limits: config.l7,
            bodyCapBytes: config.l7.bodyCapBytes,
            mirrorTimeoutMs: 10_000,
          },
          state,
          open: (src, ep, protocol) => connector.open(src, ep, protocol),
          metrics,
          logger: logger.child({ component: 'l7' }),
          accessLog,
          clock,
          random: Math.random,
          tap: inputs.tap,
          tracer,
        })
      : undefined;
    this.inboundHttp = config.l7
      ? new InboundHttp({
          limits: config.l7,
          metrics,
          logger: logger.child({ component: 'inbound-http' }),
          accessLog,
          clock,
          dialApp: (pod, port, caller) => whenConnected(dialApp(pod, pod.ip ?? '127.0.0.1', port, caller)),
          policies: () => state().policies,
          track: (check, cut) => this.recheck.track(check, cut),
          tap: inputs.tap,
          tracer,
        })
      : undefined;
    this.outbound = new Outbound({
      state,
      connector,
      metrics,
      logger: logger.child({ component: 'outbound' }),
      accessLog,
      drain: this.drain,
      random: Math.random,
      ...(this.l7 && { l7: this.l7 }),
      tap: inputs.tap,
      // Egress names are read within the sniff's bounds; with L7 off, within its defaults.
      detect: config.l7 ?? { detectTimeoutMs: 100, opaquePorts: new Set(DEFAULT_OPAQUE_PORTS.split(',').map(Number)) },
      tcpHealth: this.tcpHealth,
      // eBPF mode: the outbound programs' record (by their map's fd, the main thread's); nft mode: NAT's. Each falls
      // back on the other during a hand-over between agents of different modes.
      originalDst: originalDstReader({ mapFd: config.outboundMapFd, cgroupRoot: config.cgroupRoot }),
      sameNode: this.sameNode,
    });
  }

  private readonly sameNode: SameNode | undefined;
  /** This thread's same-node splice program (a sockhash and a stream verdict); absent: user space moves the bytes. */
  private readonly sameNodeMaps: SameNodeMaps | undefined;
  private readonly tcpHealth: TcpHealthReader | undefined;
  private readonly dialApp: (pod: Workload, host: string, port: number, caller?: string) => net.Socket;

  /** Opens this thread's listeners in the pod's netns; from then until they close, same-node calls reach the pod here. */
  async openListeners(pod: Workload): Promise<PodProxy> {
    const { config, certs, metrics, logger, accessLog, state } = this.inputs;
    const l7 = this.l7;
    const inboundHttp = this.inboundHttp;
    const accepted = metrics.workerConnections.labels({ worker: String(this.inputs.worker) });
    let local: (() => void) | undefined;
    const proxy = await PodProxy.open(pod, {
      trustDomain: config.trustDomain,
      certs,
      outbound: this.outbound,
      state,
      dialApp: this.dialApp,
      metrics,
      logger: logger.child({ component: 'inbound' }),
      accessLog,
      drain: this.drain,
      sessions: this.sessions,
      recheck: this.recheck,
      tap: this.inputs.tap,
      tcpHealth: this.tcpHealth,
      ...(this.sourceLimit && { sourceLimit: this.sourceLimit }),
      onAccept: () => accepted.inc(),
      ...(config.tlsGroups && { tlsGroups: config.tlsGroups }),
      onClose: (podKey) => {
        local?.();
        l7?.forget(podKey);
        inboundHttp?.forget(podKey);
      },
      ...(inboundHttp && config.l7 && { http: { server: inboundHttp, detectTimeoutMs: config.l7.detectTimeoutMs, opaquePorts: config.l7.opaquePorts } }),
    });
    local = this.sameNode?.add(proxy.inbound);
    return proxy;
  }

  /**
   * The agent is going (its listeners are closed): HTTP clients are told to go elsewhere without a failed request
   * (`connection: close` on the next HTTP/1.1 response, GOAWAY on HTTP/2), then `drain` is waited on.
   */
  startDrain(): void {
    this.l7?.drain();
    this.inboundHttp?.drain();
  }

  /** Closes the pools and servers; connections still open are cut (wait on `drain` first). */
  close(): void {
    this.unsubscribe();
    this.sameNodeMaps?.close();
    this.l7?.close();
    this.inboundHttp?.close();
    this.pool.close();
  }

  /** Exports the spans still queued (the agent stopping), within one export's limit. */
  async flushTraces(): Promise<void> {
    await this.exporter?.close();
  }
}

/** Loads this thread's same-node splice program; where the kernel refuses it, says why once and returns nothing. */
function openSameNodeMaps(logger: Logger, worker: number): SameNodeMaps | undefined {
  try {
    const maps = SameNodeMaps.open();
    if (worker === 0) logger.info({ splice: 'kernel' }, 'same-node splice: the kernel moves opaque same-node connections (sockhash, stream verdict)');
    return maps;
  } catch (err) {
    logger.warn({ splice: 'user', worker, reason: (err as Error).message }, 'same-node splice: user space (the kernel splice cannot load here)');
    return undefined;
  }
}

/**
 * The address a connection to `app` may leave from to keep the caller's: the caller's own, in the app's family (an
 * IPv4 caller mapped into IPv6 is unmapped); none when there is no caller, when the families differ, or when the
 * caller is the app's own address (nothing to keep).
 */
export function transparentSource(caller: string | undefined, app: string): string | undefined {
  if (caller === undefined) return undefined;
  const ip = caller.startsWith('::ffff:') && net.isIPv4(caller.slice(7)) ? caller.slice(7) : caller;
  if (ip === app || net.isIP(ip) === 0 || net.isIP(ip) !== net.isIP(app)) return undefined;
  return ip;
}
