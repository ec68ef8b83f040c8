// A worker thread of the agent: one more data plane (dataplane.ts) with listeners of its own in every enrolled
// pod's netns. The main thread hands it the source's objects (it compiles its own MeshState), which pods to open
// listeners for, and the certificates; it hands back its metrics on request and its access lines as they come.
import { parentPort } from 'node:worker_threads';
import pino from 'pino';
import { systemClock } from '../clock.js';
import { DataPlane } from '../dataplane.js';
import type { Svid } from '../identity/certs.js';
import type { PodProxy } from '../proxy/pod-proxy.js';
import { Store } from '../state/store.js';
import { accessLogTo } from '../telemetry/audit.js';
import { Metrics } from '../telemetry/metrics.js';
import type { FromWorker, ToWorker } from './messages.js';
import { RemoteCerts } from './remote-certs.js';
import { TapHub } from '../tap/hub.js';
import type { TapBatch } from '../tap/service.js';

/** Access lines are handed to the main thread at least this often (as its own audit trail gathers them). */
const AUDIT_BATCH_MS = 20;
const AUDIT_BATCH_LINES = 512;

const port = parentPort;
if (!port) throw new Error('agent/workers/worker.js runs as a worker thread of the agent');
const post = (m: FromWorker): void => port.postMessage(m);

port.once('message', (init: ToWorker) => {
  if (init.t !== 'init') throw new Error(`worker: expected init, got ${init.t}`);
  const { config, worker } = init;
  // Its own log lines go straight to stdout (fd 1), as the main thread's do.
  const logger = pino({ level: config.logLevel, base: { node: config.node, worker }, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ fd: 1, sync: true }));
  const metrics = new Metrics({ defaultMetrics: false });
  let batch: string[] = [];
  let timer: NodeJS.Timeout | undefined;
  const flushAudit = () => {
    if (timer) clearTimeout(timer);
    timer = undefined;
    if (batch.length === 0) return;
    post({ t: 'audit', lines: batch });
    batch = [];
  };
  const { access } = accessLogTo(
    (line) => {
      batch.push(line);
      if (batch.length >= AUDIT_BATCH_LINES) flushAudit();
      else timer ??= setTimeout(flushAudit, AUDIT_BATCH_MS);
    },
    { enabled: config.audit.enabled, base: { node: config.node } },
  );
  // Tap: this thread's hub matches its records against the taps the main thread says are open; what it admits and
  // what its bound drops go to the main thread's streams in batches, as access lines do. Nothing is sent while
  // nobody taps: the hub is idle then.
  let tapEvents: TapBatch['events'] = [];
  const tapDrops = new Map<number, number>();
  let tapTimer: NodeJS.Timeout | undefined;
  const flushTap = () => {
    if (tapTimer) clearTimeout(tapTimer);
    tapTimer = undefined;
    if (tapEvents.length === 0 && tapDrops.size === 0) return;
    post({ t: 'tap', batch: { events: tapEvents, dropped: [...tapDrops] } });
    tapEvents = [];
    tapDrops.clear();
  };
  const tap = new TapHub({
    node: config.node,
    redact: new Set(config.tap.redactHeaders),
    now: () => systemClock.now(),
    emit: (id, obs) => {
      tapEvents.push([id, obs]);
      tapTimer ??= setTimeout(flushTap, AUDIT_BATCH_MS);
    },
    onDrop: (id) => {
      tapDrops.set(id, (tapDrops.get(id) ?? 0) + 1);
      tapTimer ??= setTimeout(flushTap, AUDIT_BATCH_MS);
    },
    onActive: (active) => metrics.tapActiveThreads.set(active ? 1 : 0),
  });
  const certs = new RemoteCerts(init.trustBundle, (id, identity) => post({ t: 'cert', id, identity }));
  const store = new Store({ trustDomain: config.trustDomain, logger });
  const plane = new DataPlane({
    config,
    certs,
    state: () => store.current(),
    subscribe: (fn) => store.subscribe(fn),
    metrics,
    logger,
    accessLog: access,
    clock: systemClock,
    worker,
    tap,
  });
  const proxies = new Map<string, PodProxy>();

  port.on('message', (m: ToWorker) => {
    switch (m.t) {
      case 'snapshot':
        store.replace(m.objects);
        return;
      case 'open':
        proxies.get(m.pod.key)?.close();
        plane.openListeners(m.pod).then(
          (proxy) => {
            proxies.set(m.pod.key, proxy);
            post({ t: 'opened', id: m.id });
          },
          (err: Error) => post({ t: 'opened', id: m.id, error: err.message }),
        );
        return;
      case 'close':
        proxies.get(m.key)?.close();
        proxies.delete(m.key);
        return;
      case 'svid':
        certs.answer(m.id, m.svid, m.error);
        return;
      case 'rotate':
        certs.rotated(m.svid as Svid);
        return;
      case 'taps':
        tap.set(m.specs);
        if (!tap.active) flushTap();
        return;
      case 'metrics':
        void metrics.registry.getMetricsAsJSON().then((json) => post({ t: 'metrics', id: m.id, json }));
        return;
      case 'stop':
        void (async () => {
          for (const p of proxies.values()) p.close();
          proxies.clear();
          plane.startDrain();
          const active = plane.drain.active();
          const [left] = await Promise.all([plane.drain.wait(m.drainMs), plane.sessions.wait(m.drainMs)]);
          plane.close();
          await plane.flushTraces();
          flushAudit();
          flushTap();
          post({ t: 'stopped', drained: active - left, cut: left });
        })();
        return;
      case 'init':
        return;
    }
  });
  post({ t: 'ready' });
});
