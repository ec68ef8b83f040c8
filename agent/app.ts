// Composition root: builds the agent's parts in order and wires them; `stop()` takes them down in reverse.
import { closeSync, existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { AggregatorRegistry } from 'prom-client';
import { systemClock, type Clock } from './clock.js';
import { CniServer } from './capture/cni-server.js';
import { DriftChecker } from './capture/drift.js';
import { Enrolment } from './capture/enrolment.js';
import { probeKernel } from './capture/kernel.js';
import { CAPTURE_MODES, chooseCapture, type CaptureChoice } from './capture/mode.js';
import { cgroup2View } from './capture/cgroup.js';
import { startOutboundCapture, type OutboundCapture } from './capture/connect.js';
import type { BpfLinkKind } from './capture/drift.js';
import { queuedConnectionMigration } from './capture/migrate.js';
import { NetnsFinder } from './capture/netns.js';
import { OptinFile, optinFromObjects } from './capture/optin-file.js';
import { nftApply } from './capture/nft.js';
import { addLoopbackDelivery, addSourceRouting, removeSourceRouting } from './capture/routing.js';
import { InboundSteering } from './capture/sk-lookup.js';
import { startTcpHealth, type TcpHealth } from './capture/tcp-health.js';
import type { AgentConfig } from './config.js';
import { AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT } from './constants.js';
import { DataPlane } from './dataplane.js';
import { TrellisError } from './errors.js';
import { LocalCa, type CsrSigner } from './identity/ca.js';
import type { RemoteSigner } from './identity/remote.js';
import { WorkloadCerts } from './identity/certs.js';
import { spiffeId } from './identity/spiffe.js';
import { releaseFreeMemory, tcpSocketInNetns } from './native/index.js';
import { DirSource, type Snapshot } from './sources/dir.js';
import { Store } from './state/store.js';
import { describe as describePolicies } from './security/describe.js';
import { healthServer, listen, metricsServer } from './telemetry/admin.js';
import { createAuditLog } from './telemetry/audit.js';
import { MemoryReclaimer } from './telemetry/memory.js';
import { ReadyFile } from './telemetry/ready-file.js';
import { Metrics } from './telemetry/metrics.js';
import { authorizationOf, TapServer } from './tap/server.js';
import { TapService } from './tap/service.js';
import type { Workers } from './workers/pool.js';

/** How often memory left by a burst goes back (telemetry/memory.ts). */
const MEMORY_TRIM_MS = 10_000;

function readTrustBundle(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new TrellisError('EBUNDLE', `cannot read the trust bundle ${file}: ${(err as Error).message} (mount the trellis-ca-root ConfigMap there, or pass --identity-ca-file)`);
  }
}

export interface Agent {
  readonly store: Store;
  readonly metrics: Metrics;
  readonly enrolment: Enrolment;
  stop(): Promise<void>;
}

export async function startAgent(given: AgentConfig, logger: Logger, clock: Clock = systemClock): Promise<Agent> {
  // 1. Telemetry first, so every later failure is counted. The audit trail (the access log) has a destination of
  //    its own that counts every line written or dropped.
  const metrics = new Metrics();
  // 1a. What the kernel allows: a transparent socket for callers' addresses, and the capture mode (--capture auto
  //     becomes nft or ebpf here; ebpf refuses to start without what it needs). Everything below, worker threads
  //     included, gets the config as this kernel allows it.
  //     In eBPF mode the outbound programs are attached to the cgroup root here (one set for every pod). The sockops
  //     program that keeps RTT and retransmissions of the agent's sockets is attached here too, where the kernel and
  //     the agent's cgroup allow it; the threads read both programs' maps by the fds the config carries.
  const { config, tcpHealth, outbound } = await withCaptureMode(withKernelSupport(given, logger), logger, metrics);
  const audit = createAuditLog({ ...config.audit, registry: metrics.registry, logger: logger.child({ component: 'audit' }), base: logger.bindings() });
  const accessLog = audit.access;

  // 2. Identity: the cluster's identity service signs, or in local mode an in-process CA shared through caDir.
  const identityLogger = logger.child({ component: 'identity' });
  let signer: CsrSigner;
  let remote: RemoteSigner | undefined;
  let trustBundle: string;
  if (config.identityService) {
    const { address, tokenFile, caFile } = config.identityService;
    trustBundle = readTrustBundle(caFile);
    // gRPC and the Kubernetes client are imported only when used: together they are tens of MB of heap
    // and half a second of start-up that an agent in local mode would carry for nothing.
    const { RemoteSigner } = await import('./identity/remote.js');
    signer = remote = new RemoteSigner({ address, tokenFile, caPem: () => readTrustBundle(caFile), clock, logger: identityLogger, timeoutMs: config.connectTimeoutMs * 2 });
  } else {
    const ca = LocalCa.loadOrCreate(config.caDir, config.trustDomain);
    signer = ca;
    trustBundle = ca.rootCertPem;
  }
  const certs = new WorkloadCerts({
    signer,
    trustBundle,
    ttlMs: config.certTtlMs,
    clock,
    logger: identityLogger,
  });

  metrics.reportCertificates(() => certs.report());

  // 2a. Cluster mode: the bundle (a mounted ConfigMap the kubelet updates in place, within about a minute) is followed,
  //     so a CA rotation (a new root added, the signing root switched, the old one removed) reaches every handshake
  //     without a restart.
  const bundleCheck = config.identityService
    ? setInterval(() => {
        const caFile = config.identityService!.caFile;
        try {
          certs.setTrustBundle(readFileSync(caFile, 'utf8'));
        } catch (err) {
          identityLogger.warn({ err: (err as Error).message, file: caFile }, 'cannot read the trust bundle; the one in force stays');
        }
      }, config.identityService.caPollMs)
    : undefined;
  bundleCheck?.unref();

  // 3. State: one store, one writer (the source).
  const store = new Store({ trustDomain: config.trustDomain, logger, onInvalid: (n) => metrics.configErrors.inc({ source: 'routes' }, n) });

  // 3a. Tap: the hub every record of this thread reports to (idle until someone taps), and the streams of the taps.
  const tap = new TapService({
    node: config.node,
    redact: new Set(config.tap.redactHeaders),
    maxRps: config.tap.maxRps,
    clock,
    metrics,
  });

  // 4. Data plane: listeners in every enrolled pod's netns, the outbound and inbound paths (L4 and L7), the HBONE
  //    pool. The main thread runs one; with --workers N, N-1 worker threads run one each, with listeners of their
  //    own on the same ports (SO_REUSEPORT), fed the same snapshots and certificates.
  const state = () => store.current();
  const plane = new DataPlane({ config, certs, state, subscribe: (fn) => store.subscribe(fn), metrics, logger, accessLog, clock, worker: 0, tap: tap.hub });
  let workers: Workers | undefined;
  if (config.workers > 1) {
    const { Workers } = await import('./workers/pool.js');
    workers = await Workers.start({ count: config.workers - 1, config, certs, audit: (line) => audit.write(line), tap, logger: logger.child({ component: 'workers' }) });
    logger.info({ workers: config.workers }, 'worker threads started');
  }

  // 5. Capture: enrol this node's meshed pods whenever the state changes. In a cluster, pods without a netns
  //    annotation (running before the agent, or opted in later) are found by their IP through /proc. In eBPF mode
  //    each pod's inbound is its sk_lookup program's, linked at enrolment and held by this process, and its netns is
  //    registered with the outbound programs.
  const captureLogger = logger.child({ component: 'capture' });
  const steering = config.capture === 'ebpf' ? new InboundSteering({ probeSources: config.probeSources, logger: captureLogger }) : undefined;
  if (steering) metrics.reportSkLookup(() => steering.verdicts());
  if (outbound) metrics.reportConnect(() => outbound.verdicts());
  const netns = config.source.kind === 'kube' ? new NetnsFinder({ clock, logger: captureLogger }) : undefined;
  const enrolment = new Enrolment({
    node: config.node,
    probeSources: config.probeSources,
    openListeners: async (pod) => {
      const own = await plane.openListeners(pod);
      if (!workers) return own;
      try {
        await workers.openListeners(pod);
      } catch (err) {
        own.close();
        workers.closeListeners(pod.key);
        throw err;
      }
      return {
        close: () => {
          own.close();
          workers?.closeListeners(pod.key);
        },
        // One listener of the pod's SO_REUSEPORT group is enough: the kernel spreads connections over the group.
        inboundListenerFd: () => own.inboundListenerFd(),
      };
    },
    ...(steering && { steerInbound: (pod, fd) => steering.attach(pod, fd) }),
    ...(outbound && { steerOutbound: (pod) => outbound.register(pod) }),
    tuneNetns: queuedConnectionMigration(captureLogger),
    applyRules: nftApply,
    // Removed whatever the flag says (an agent started with it off cleans up after one that had it on).
    sourceRouting: {
      add: async (netnsPath, podIp) => {
        if (!config.preserveSourceIp) return;
        await addSourceRouting(netnsPath, podIp.includes(':'));
        if (steering) await addLoopbackDelivery(netnsPath, [podIp]);
      },
      remove: removeSourceRouting,
    },
    ...(netns && { findNetns: (ip: string) => netns.find(ip) }),
    metrics,
    logger: captureLogger,
  });
  store.subscribe((next) => void enrolment.reconcile(next));

  // 6. Source: the first snapshot is applied before we report ready.
  const optin = config.cni ? new OptinFile({ path: config.cni.optinFile, logger: captureLogger }) : undefined;
  const onSnapshot = (snap: Snapshot) => {
    if (snap.problems.length) metrics.configErrors.inc({ source: config.source.kind }, snap.problems.length);
    store.replace(snap.objects);
    workers?.snapshot(snap.objects);
    // What trellis-cni falls back on while this agent is down.
    optin?.write(optinFromObjects(snap.objects, config.node));
  };
  const sourceLogger = logger.child({ component: 'source' });
  const source =
    config.source.kind === 'kube'
      ? new (await import('./sources/kube.js')).KubeSource({
          kubeconfig: config.source.kubeconfig,
          node: config.node,
          logger: sourceLogger,
          clock,
          onSnapshot,
          metrics: { configAge: metrics.configAge, watchErrors: metrics.sourceWatchErrors },
        })
      : new DirSource({ dir: config.source.dir, logger: sourceLogger, onSnapshot });
  await source.start();
  // 6a. Status: what the store decided about routes and policy objects is written back to them (kube source only).
  const statusWriter =
    source instanceof DirSource || config.source.kind !== 'kube'
      ? undefined
      : new (await import('./sources/status-writer.js')).StatusWriter({
          kubeconfig: config.source.kubeconfig,
          current: (ref) => source.cached(ref.kind, ref.namespace, ref.name),
          logger: sourceLogger,
          clock,
          registry: metrics.registry,
        });
  if (statusWriter) {
    statusWriter.update(store.current());
    store.subscribe((next) => statusWriter.update(next));
  }
  // 6b. CNI: new pods wait in their CNI ADD until their capture is in place; the state is loaded by now.
  const cni = config.cni
    ? await CniServer.start({
        socketPath: config.cni.socketPath,
        state,
        subscribe: (fn) => store.subscribe(fn),
        enrol: (pod, sandbox) => enrolment.enrolNow(pod, sandbox),
        unenrol: (key, sandbox) => enrolment.unenrolNow(key, sandbox),
        enrolled: () => enrolment.pods(),
        ...(netns && { findNetns: (ip: string) => netns.find(ip) }),
        waitForPodMs: config.cni.waitForPodMs,
        logger: logger.child({ component: 'cni' }),
        metrics,
        clock,
      })
    : undefined;
  await enrolment.reconcile(store.current());
  // 6c. Drift: rules flushed or listeners killed behind our back are put back.
  const drift = new DriftChecker({
    enrolment,
    probeSources: config.probeSources,
    inbound: steering ? 'sk_lookup' : 'nft',
    outbound: outbound ? 'connect' : 'nft',
    ...((steering || tcpHealth || outbound) && { bpf: () => repairBpfLinks(steering, tcpHealth, outbound) }),
    intervalMs: config.driftIntervalMs,
    metrics,
    logger: captureLogger,
    clock,
  });
  if (config.driftIntervalMs > 0) drift.start();
  // Retries failed enrolments; for the dir source also catches file events the watcher missed.
  const resync = setInterval(() => {
    const reloaded = source instanceof DirSource ? source.reload() : Promise.resolve();
    void reloaded.then(() => enrolment.reconcile(store.current()));
  }, config.resyncMs);
  resync.unref();
  // After a burst, garbage in the V8 heap and freed buffers in malloc's arenas go back (telemetry/memory.ts).
  const reclaimer = new MemoryReclaimer({
    cpuMicros: () => {
      const u = process.cpuUsage();
      return u.user + u.system;
    },
    heapUsed: () => process.memoryUsage().heapUsed,
    // 'last-resort': V8 also releases the pages it pools for reuse and shrinks the young generation.
    gc: typeof globalThis.gc === 'function' ? () => void globalThis.gc!({ type: 'major', execution: 'sync', flavor: 'last-resort' }) : undefined,
    trim: () => void releaseFreeMemory(),
    now: () => performance.now(),
  });
  const trim = setInterval(() => {
    const started = performance.now();
    const { gc } = reclaimer.tick();
    const ms = performance.now() - started;
    if (gc || ms > 5) logger.debug({ ms: Math.round(ms), gc }, 'idle: memory given back');
  }, MEMORY_TRIM_MS);
  trim.unref();

  // 7. Admin endpoints last: ready means state loaded and pods enrolled.
  // With worker threads, /metrics adds up every thread's series (the process's own metrics are the main thread's).
  const collect = async (): Promise<{ body: string; contentType: string }> => {
    if (!workers) return { body: await metrics.registry.metrics(), contentType: metrics.registry.contentType };
    const all = [await metrics.registry.getMetricsAsJSON(), ...(await workers.metrics())];
    const merged = AggregatorRegistry.aggregate(all as Parameters<typeof AggregatorRegistry.aggregate>[0]);
    return { body: await merged.metrics(), contentType: merged.contentType };
  };
  const metricsHttp = metricsServer(collect, {
    describePolicies: (key) => {
      const s = store.current();
      const pod = s.workloads.get(key);
      return pod && describePolicies(s.policies, pod);
    },
  });
  const healthHttp = healthServer({
    notReadyReason: () => (store.isSynced() ? enrolment.notReadyReason() : 'state not loaded from the source yet'),
  });
  await listen(metricsHttp, config.metrics.host, config.metrics.port);
  await listen(healthHttp, config.health.host, config.health.port);
  // The tap API (agent/tap/server.ts): a Unix socket; grpc-js is loaded when someone connects. An agent that cannot
  // serve it still carries traffic: it says so and goes on.
  const tapLogger = logger.child({ component: 'tap' });
  let tapServer: TapServer | undefined;
  if (config.tap.socket) {
    try {
      tapServer = await TapServer.listen({ socketPath: config.tap.socket, service: tap, logger: tapLogger });
    } catch (err) {
      tapLogger.warn({ err: (err as Error).message }, 'tap API not served: `trellis tap` will not reach this agent');
    }
  }
  // In cluster mode, also on a TCP port over TLS, with the agent's own SVID (its service account's SPIFFE ID, signed as
  // any workload's): callers present a Kubernetes token, and RBAC decides (tap/authorize.ts). Started beside
  // readiness, not before it: the certificate is one more signing request, and tap never holds the data path.
  const tapPort = config.tap.addr && config.source.kind === 'kube' ? serveTapPort(config, certs, tap, tapLogger, clock) : undefined;
  const readyFile = config.readyFile
    ? new ReadyFile({
        path: config.readyFile,
        notReadyReason: () => (store.isSynced() ? enrolment.notReadyReason() : 'state not loaded from the source yet'),
        logger,
      })
    : undefined;
  logger.info({ pods: enrolment.pods(), metrics: config.metrics, health: config.health, tap: tapServer ? config.tap.socket : 'off' }, 'agent ready');

  let stopping: Promise<void> | undefined;
  return {
    store,
    metrics,
    enrolment,
    stop() {
      stopping ??= (async () => {
        // Not ready from the first moment: whoever waits on this process's readiness sees it go.
        readyFile?.close();
        clearInterval(resync);
        clearInterval(trim);
        clearInterval(bundleCheck);
        drift.stop();
        // Pods starting from now on wait for the next agent (or fail per the opt-in file), never start uncaptured.
        await cni?.close();
        // In a hand-over, the next agent learns the pods we enrolled from CNI ADDs before our listeners close: it may
        // not know their IP yet, and so not find them by itself (capture/cni-server.ts).
        await cni?.handOver(enrolment.pods());
        statusWriter?.close();
        source.close();
        // Stop accepting; capture rules stay, so nothing bypasses the mesh while we are gone. Connections still
        // queued on our listeners move to a successor's (tcp_migrate_req, capture/migrate.ts); HBONE peers get
        // GOAWAY, HTTP clients are told to reconnect (to the successor, if one runs) at their next response. In eBPF
        // mode our sk_lookup programs go too (and the outbound programs once the threads have drained): a
        // successor's hand connections to its listeners, and without one the pods' rules refuse them.
        enrolment.close();
        steering?.close();
        tcpHealth?.close();
        plane.startDrain();
        healthHttp.close();
        const active = plane.drain.active();
        // Peer agents' sessions close as the GOAWAY reaches them (or a second after it, idle or not): waited on too,
        // so none sends a stream to a process that is gone.
        const [left, others] = await Promise.all([plane.drain.wait(config.drainMs), workers?.stop(config.drainMs), plane.sessions.wait(config.drainMs)]);
        // The outbound programs go once every thread has stopped accepting (worker threads close their listeners a
        // moment after this one): each accepted connection reads its original destination from their map. Until then
        // a pod's new connects still reach 15001, a successor's listener or none (refused).
        outbound?.close();
        const drained = active - left + (others?.drained ?? 0);
        const cut = left + (others?.cut ?? 0);
        logger.info({ drained, cut, drainMs: config.drainMs }, 'connections drained');
        // Taps saw the drained requests; their streams end now, each with a last summary.
        tap.stop();
        // A tap port still waiting for its certificate closes when it has it; stopping waits a second for it at most.
        const portClosed = tapPort?.then((p) => p?.close());
        await Promise.all([tapServer?.close(), portClosed && Promise.race([portClosed, new Promise((r) => setTimeout(r, 1000).unref())])]);
        plane.close();
        // The spans of the drained requests leave before the process does (bounded by one export's limit).
        await plane.flushTraces();
        certs.close();
        remote?.close();
        metricsHttp.close();
        // Last: every connection above has written its line by now.
        await audit.close();
        logger.info('agent stopped');
      })();
      return stopping;
    },
  };
}

/**
 * The tap API on its TCP port (cluster mode); undefined, and said, when it cannot be served: the agent goes on without
 * it. The certificate follows the SVID's renewals until the server closes.
 */
async function serveTapPort(config: AgentConfig, certs: WorkloadCerts, tap: TapService, logger: Logger, clock: Clock): Promise<{ close(): Promise<void> } | undefined> {
  const { host, port } = config.tap.addr!;
  try {
    const identity = spiffeId(config.trustDomain, AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT);
    const svid = await certs.get(identity);
    const { TapAuthorizer } = await import('./tap/authorize.js');
    const { KubeTapReviewer } = await import('./tap/kube-review.js');
    const kubeconfig = config.source.kind === 'kube' ? config.source.kubeconfig : undefined;
    const authorizer = new TapAuthorizer({ reviewer: new KubeTapReviewer(kubeconfig), clock });
    const server = await TapServer.listenTls({
      host,
      port,
      certificate: svid,
      service: tap,
      logger,
      authorize: (metadata, request) => authorizer.authorize(authorizationOf(metadata), request.match),
    });
    const unsubscribe = certs.onRotate((next) => {
      if (next.identity === identity) server.setCertificate(next);
    });
    logger.info({ addr: `${host}:${server.port}`, identity }, 'tap port serving (callers authorized by RBAC)');
    return {
      close: async () => {
        unsubscribe();
        await server.close();
      },
    };
  } catch (err) {
    logger.warn({ err: (err as Error).message, addr: `${host}:${port}` }, 'tap port not served: `trellis tap --kubeconfig` will not reach this agent');
    return undefined;
  }
}

/**
 * --capture as this kernel allows it: what it offers is probed (by loading programs, never attaching one), logged and
 * exported (trellis_kernel_feature, trellis_capture_mode), and auto becomes ebpf or nft. `ebpf` on a kernel that
 * lacks something throws, naming it. In eBPF mode the outbound programs are attached to the cgroup root; where that
 * fails, auto falls back to nft with the reason and ebpf refuses to start.
 */
async function withCaptureMode(
  config: AgentConfig,
  logger: Logger,
  metrics: Metrics,
): Promise<{ config: AgentConfig; tcpHealth: TcpHealth | undefined; outbound: OutboundCapture | undefined }> {
  const log = logger.child({ component: 'capture' });
  // The cgroup2 mount first (one of its own where the agent sees none and may mount it), so the probe finds it.
  const cgroup = config.capture !== 'nft' || config.tcpHealth ? await cgroup2View({ logger: log }) : undefined;
  const report = await probeKernel();
  for (const f of report.features) metrics.kernelFeature.set({ feature: f.name }, f.ok ? 1 : 0);
  log.debug({ features: report.features }, 'kernel probed');
  let choice: CaptureChoice = chooseCapture(config.capture, report, { probeSources: config.probeSources });
  let outbound: OutboundCapture | undefined;
  // Where eBPF-mode agents attach their outbound programs: this agent's, or (in nft mode) a predecessor's or
  // successor's of the other mode, whose records this agent reads during a hand-over.
  const root = config.cgroupRoot ?? (cgroup?.ok ? cgroup.mount.path : undefined);
  if (choice.mode === 'ebpf') {
    try {
      if (!root) throw new TrellisError('ECAPTURE', `no cgroup v2 mount to attach the outbound programs to (${cgroup && !cgroup.ok ? cgroup.reason : 'none found'}); pass --cgroup-root`);
      // In a container's cgroup namespace the mount's root is the container's own cgroup (the machine's root, unlike
      // every other cgroup, has no cgroup.events): programs there would never see the pods.
      if (config.cgroupRoot === undefined && existsSync(path.join(root, 'cgroup.events'))) {
        throw new TrellisError(
          'ECAPTURE',
          `the cgroup2 mount the agent sees (${root}) is rooted at its own cgroup (a container's cgroup namespace), where the outbound programs would not see the pods' sockets: mount the host's cgroup2 into the agent and pass it as --cgroup-root`,
        );
      }
      outbound = startOutboundCapture({ cgroupRoot: root, logger: log });
    } catch (err) {
      const why = (err as Error).message;
      if (config.capture === 'ebpf') {
        throw new TrellisError('ECAPTURE', `--capture ebpf: the outbound programs cannot be attached (${why}); run with --capture auto to fall back to nftables, or --capture nft`, { cause: err });
      }
      choice = { mode: 'nft', reason: `--capture auto: nftables, because the outbound programs cannot be attached: ${why}`, missing: choice.missing };
    }
  }
  for (const mode of CAPTURE_MODES) metrics.captureMode.set({ mode }, mode === choice.mode ? 1 : 0);
  log.info(
    {
      mode: choice.mode,
      reason: choice.reason,
      kernel: Object.fromEntries(report.features.map((f) => [f.name, f.ok])),
      ...(outbound && { cgroupRoot: outbound.cgroupPath, sharedMaps: outbound.shared }),
    },
    choice.mode === 'ebpf'
      ? 'capture mode ebpf: inbound by sk_lookup, outbound by cgroup connect4/6 programs (no NAT)'
      : 'capture mode nft: nftables both ways',
  );
  const health = config.tcpHealth ? await startTcpHealth({ report, logger: log }) : { ok: false as const, reason: 'turned off (--tcp-health off)' };
  if (health.ok) {
    log.info({ cgroup: health.health.cgroupPath }, 'tcp health: sockops program on the agent\'s cgroup (trellis_tcp_rtt_seconds, trellis_tcp_retransmits_total)');
  } else {
    log.warn({ reason: health.reason }, `tcp health off: ${health.reason}`);
  }
  const tcpHealth = health.ok ? health.health : undefined;
  metrics.tcpHealthEnabled.set(tcpHealth ? 1 : 0);
  return {
    config: Object.freeze({
      ...config,
      capture: choice.mode,
      ...(root !== undefined && { cgroupRoot: root }),
      ...(tcpHealth && { tcpHealthMapFd: tcpHealth.mapFd }),
      ...(outbound && { outboundMapFd: outbound.mapFd }),
    }),
    tcpHealth,
    outbound,
  };
}

/** Drift of the BPF attachments: links detached from outside are made again; what was, by kind (for the repair count). */
function repairBpfLinks(steering: InboundSteering | undefined, tcpHealth: TcpHealth | undefined, outbound: OutboundCapture | undefined): { what: BpfLinkKind; target: string }[] {
  const repaired: { what: BpfLinkKind; target: string }[] = [];
  let failure: unknown;
  const attempt = (fn: () => void) => {
    try {
      fn();
    } catch (err) {
      failure ??= err;
    }
  };
  attempt(() => {
    for (const netns of steering?.repairDetached() ?? []) repaired.push({ what: 'sk_lookup', target: netns });
  });
  attempt(() => {
    if (tcpHealth?.repairDetached()) repaired.push({ what: 'sockops', target: tcpHealth.cgroupPath });
  });
  attempt(() => {
    for (const what of outbound?.repairDetached() ?? []) repaired.push({ what, target: outbound!.cgroupPath });
  });
  if (failure !== undefined && repaired.length === 0) throw failure;
  return repaired;
}

/**
 * The config as this kernel allows it: keeping callers' addresses needs IP_TRANSPARENT (CAP_NET_ADMIN); where a
 * socket cannot have it, apps see the pod's own address, as with --preserve-source-ip off, and the log says why.
 */
function withKernelSupport(config: AgentConfig, logger: Logger): AgentConfig {
  if (!config.preserveSourceIp) return config;
  try {
    closeSync(tcpSocketInNetns('/proc/self/ns/net', 4, 0, true));
    return config;
  } catch (err) {
    logger.warn({ err: (err as Error).message }, 'cannot open a transparent socket (IP_TRANSPARENT needs CAP_NET_ADMIN): apps will see the pod\'s own address as the caller\'s (--preserve-source-ip off)');
    return Object.freeze({ ...config, preserveSourceIp: false });
  }
}
