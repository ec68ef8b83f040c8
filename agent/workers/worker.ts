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
      case 'metrics':
        void metrics.registry.getMetricsAsJSON().then((json) => post({ t: 'metrics', id: m.id, json }));
        return;
      case 'stop':
        void (async () => {
          for (const p of proxies.values()) p.close();
          proxies.clear();
          plane.startDrain();
          const active = plane.drain.active();
          const left = await plane.drain.wait(m.drainMs);
          plane.close();
          flushAudit();
          post({ t: 'stopped', drained: active - left, cut: left });
        })();
        return;
      case 'init':
        return;
    }
  });
  post({ t: 'ready' });
});
