// The kube source against the in-process fake API server: first sync, changes, relist on 410, outage, invalid objects.
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Gauge, Registry } from 'prom-client';
import { ManualClock } from '../../agent/clock.js';
import type { Snapshot } from '../../agent/sources/dir.js';
import { KubeSource, WATCHED_KINDS, backoffMs } from '../../agent/sources/kube.js';
import { FAKE_API_AUDIENCE, FakeApiServer } from '../support/fake-apiserver.js';
import { captureLogger } from '../support/logger.js';

const AGENT_USER = 'system:serviceaccount:trellis-system:trellis-agent';

const namespace = (name: string, mesh?: string) => ({
  apiVersion: 'v1',
  kind: 'Namespace',
  metadata: { name, ...(mesh ? { annotations: { 'trellis.dev/mesh': mesh } } : {}) },
});
const pod = (name: string, ip: string, more: { ns?: string; node?: string; labels?: Record<string, string> } = {}) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace: more.ns ?? 'demo', labels: more.labels ?? { app: name } },
  spec: { nodeName: more.node ?? 'node-a', serviceAccountName: name, containers: [{ name: 'app', ports: [{ containerPort: 8080 }] }] },
  status: { phase: 'Running', podIP: ip, podIPs: [{ ip }] },
});
const service = (name: string, ip: string, ns = 'demo') => ({
  apiVersion: 'v1',
  kind: 'Service',
  metadata: { name, namespace: ns },
  spec: { clusterIP: ip, selector: { app: name }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] },
});
const slice = (svc: string, ips: string[], ns = 'demo') => ({
  apiVersion: 'discovery.k8s.io/v1',
  kind: 'EndpointSlice',
  metadata: { name: `${svc}-abc`, namespace: ns, labels: { 'kubernetes.io/service-name': svc } },
  addressType: 'IPv4',
  endpoints: ips.map((ip) => ({ addresses: [ip], conditions: { ready: true }, nodeName: 'node-b' })),
  ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
});

const keys = (s: Snapshot) => s.objects.map((o) => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`).sort();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const fault = {
  apiVersion: 'traffic.trellis.dev/v1alpha1', kind: 'FaultInjection', metadata: { name: 'slow', namespace: 'demo' },
  spec: { delay: { fixedDelay: '1s', percentage: { value: 10 } } },
};

describe('kube source', () => {
  let api: FakeApiServer;
  let dir: string;
  let kubeconfig: string;
  let source: KubeSource | undefined;
  let snaps: Snapshot[];
  let log: ReturnType<typeof captureLogger>;

  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'trellis-kube-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  beforeEach(async () => {
    api = await FakeApiServer.start({ bookmarkIntervalMs: 200 });
    api.addToken('agent-token', { username: AGENT_USER, audiences: [FAKE_API_AUDIENCE] });
    kubeconfig = api.writeKubeconfig(path.join(dir, `kubeconfig-${Date.now()}`), { token: 'agent-token' });
    api.apply(namespace('demo', 'enabled'));
    api.apply(namespace('plain'));
    api.apply(pod('client', '10.244.1.2'));
    api.apply(pod('server', '10.244.2.2', { node: 'node-b' }));
    api.apply(service('server', '10.96.0.11'));
    api.apply(slice('server', ['10.244.2.2']));
    api.apply(fault);
    snaps = [];
    log = captureLogger();
  });
  afterEach(async () => {
    source?.close();
    source = undefined;
    await api.close();
  });

  const start = async (more: Partial<ConstructorParameters<typeof KubeSource>[0]> = {}) => {
    source = new KubeSource({ kubeconfig, node: 'node-a', logger: log.logger, random: () => 0.5, onSnapshot: (s) => snaps.push(s), ...more });
    await source.start();
    return source;
  };
  /** Waits for a snapshot (at or after index `from`) that satisfies pred. */
  const next = async (pred: (s: Snapshot) => boolean, timeoutMs = 1000, from = 0) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = snaps.slice(from).find(pred);
      if (hit) return hit;
      if (Date.now() > deadline) throw new Error(`no matching snapshot within ${timeoutMs} ms; last: ${JSON.stringify(snaps.at(-1) && keys(snaps.at(-1)!))}`);
      await sleep(10);
    }
  };
  const has = (k: string) => (s: Snapshot) => keys(s).includes(k);
  const podIp = (s: Snapshot, name: string) => {
    const p = s.objects.find((o) => o.kind === 'Pod' && o.metadata.name === name);
    return p?.kind === 'Pod' ? p.status?.podIP : undefined;
  };

  it('delivers every watched kind in the first snapshot, talking only list/watch as the agent', async () => {
    await start();
    expect(snaps).toHaveLength(1);
    expect(keys(snaps[0]!)).toEqual([
      'EndpointSlice/demo/server-abc',
      'FaultInjection/demo/slow',
      'Namespace//demo',
      'Namespace//plain',
      'Pod/demo/client',
      'Pod/demo/server',
      'Service/demo/server',
    ]);
    expect(snaps[0]!.problems).toEqual([]);
    const server = snaps[0]!.objects.find((o) => o.kind === 'Pod' && o.metadata.name === 'server');
    expect(server).toMatchObject({ apiVersion: 'v1', kind: 'Pod', spec: { nodeName: 'node-b' }, status: { podIP: '10.244.2.2' } });
    await sleep(100);
    const reqs = api.requests();
    expect(new Set(reqs.map((r) => r.user))).toEqual(new Set([AGENT_USER]));
    expect(new Set(reqs.map((r) => r.verb))).toEqual(new Set(['list', 'watch']));
    expect(new Set(reqs.map((r) => `${r.group}/${r.resource}`))).toEqual(
      new Set([
        '/namespaces', '/pods', '/services', 'discovery.k8s.io/endpointslices',
        'gateway.networking.k8s.io/httproutes', 'gateway.networking.k8s.io/grpcroutes',
        'traffic.trellis.dev/faultinjections', 'traffic.trellis.dev/retrybudgets',
        'security.trellis.dev/authorizationpolicies', 'security.trellis.dev/peerauthentications',
      ]),
    );
    expect(reqs.every((r) => r.namespace === undefined && r.name === undefined)).toBe(true);
  });

  it('starts without a CRD that is not installed, and picks its objects up once it is', async () => {
    api.setUninstalled('httproutes', true);
    const route = {
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'split', namespace: 'demo' },
      spec: { parentRefs: [{ group: '', kind: 'Service', name: 'server' }] },
    };
    api.apply(route);
    const clock = new ManualClock(Date.now());
    const started = start({ clock });
    // Debounce and restarts run on the injected clock: keep it moving in small steps until start() resolves.
    const tick = setInterval(() => clock.advance(25), 5);
    try {
      await started;
      expect(keys(snaps[0]!)).not.toContain('HTTPRoute/demo/split');
      expect(log.lines().some((l) => String(l.msg).includes('HTTPRoute is not served'))).toBe(true);
      expect(source!.configAgeSeconds()).toBeLessThan(1);
      api.setUninstalled('httproutes', false);
      clock.advance(30_000);
      await next(has('HTTPRoute/demo/split'), 3000);
    } finally {
      clearInterval(tick);
    }
  });

  it('turns add, update and delete into a new snapshot within a second', async () => {
    await start();
    api.apply(pod('extra', '10.244.1.9'));
    await next(has('Pod/demo/extra'));
    api.apply(pod('client', '10.244.1.3'));
    await next((s) => podIp(s, 'client') === '10.244.1.3');
    api.remove('v1', 'Service', 'demo', 'server');
    const s = await next((x) => !has('Service/demo/server')(x));
    expect(has('EndpointSlice/demo/server-abc')(s)).toBe(true);
    api.apply({ ...namespace('plain', 'enabled') });
    await next((x) => x.objects.some((o) => o.kind === 'Namespace' && o.metadata.name === 'plain' && o.metadata.annotations?.['trellis.dev/mesh'] === 'enabled'));
  });

  it('relists after the watch history is compacted and ends with the right state', async () => {
    await start();
    const lists = () => api.requests().filter((r) => r.verb === 'list' && r.resource === 'pods').length;
    expect(lists()).toBe(1);
    api.compact();
    api.apply(pod('after-compact', '10.244.1.20'));
    api.remove('v1', 'Pod', 'demo', 'client');
    const s = await next((x) => has('Pod/demo/after-compact')(x) && !has('Pod/demo/client')(x), 2000);
    expect(keys(s).filter((k) => k.startsWith('Pod/'))).toEqual(['Pod/demo/after-compact', 'Pod/demo/server']);
    expect(lists()).toBe(2);
    expect(log.lines().some((l) => String(l.msg).includes('relisting'))).toBe(true);
  });

  it('keeps the last state through an outage, reports a rising config age, then catches up', async () => {
    await start();
    await sleep(300);
    expect(source!.configAgeSeconds()).toBeLessThan(1);
    const before = snaps.length;
    api.pause();
    // Changes made while the agent cannot see them, with history forgotten: resuming needs a relist.
    api.apply(pod('during-outage', '10.244.1.30'));
    api.remove('v1', 'Pod', 'demo', 'client');
    await sleep(1500);
    expect(snaps.length).toBe(before); // no snapshot at all during the outage, least of all an empty one
    expect(source!.configAgeSeconds()).toBeGreaterThan(1);
    expect(log.lines().some((l) => l.level === 40 && String(l.msg).includes('keeping the last known state'))).toBe(true);
    api.apply(pod('also-during', '10.244.1.31'));
    api.resume();
    const s = await next((x) => has('Pod/demo/during-outage')(x) && has('Pod/demo/also-during')(x) && !has('Pod/demo/client')(x), 5000, before);
    expect(has('Service/demo/server')(s)).toBe(true);
    expect(snaps.every((x) => x.objects.length >= 5)).toBe(true);
    await sleep(300);
    expect(source!.configAgeSeconds()).toBeLessThan(1);

    // Once more with compaction during the outage: the resumed watch gets 410 and the informers relist.
    const mid = snaps.length;
    api.pause();
    api.apply(pod('third', '10.244.1.32'));
    api.compact();
    await sleep(300);
    api.resume();
    await next(has('Pod/demo/third'), 5000, mid);
    expect(snaps.slice(mid).every((x) => x.objects.length >= 5)).toBe(true);
  });

  it('reports an invalid object, skips it and keeps its last good version, while other changes apply', async () => {
    await start();
    api.apply(pod('bad', 'nope'));
    api.apply(pod('good', '10.244.1.40'));
    const s = await next((x) => has('Pod/demo/good')(x) && x.problems.length > 0);
    expect(has('Pod/demo/bad')(s)).toBe(false);
    expect(s.problems).toEqual([{ file: '/api/v1/pods', object: 'Pod/demo/bad', reason: expect.stringMatching(/status\.podIP/) }]);
    // A valid pod turning invalid keeps its last good version.
    api.apply(pod('client', 'nope'));
    const t = await next((x) => x.problems.some((p) => p.object === 'Pod/demo/client'), 1000, snaps.indexOf(s) + 1);
    expect(podIp(t, 'client')).toBe('10.244.1.2');
    expect(log.lines().some((l) => l.object === 'Pod/demo/client' && String(l.reason).includes('status.podIP'))).toBe(true);
    // Problems are reported once, in the snapshot after they were found.
    api.apply(pod('later', '10.244.1.41'));
    const u = await next(has('Pod/demo/later'), 1000, snaps.indexOf(t) + 1);
    expect(u.problems).toEqual([]);
  });

  it('keeps retrying while the API server refuses the token, and syncs once it is accepted', async () => {
    const file = api.writeKubeconfig(path.join(dir, 'kubeconfig-unknown'), { token: 'not-yet' });
    source = new KubeSource({ kubeconfig: file, node: 'node-a', logger: log.logger, random: () => 0, onSnapshot: (s) => snaps.push(s) });
    let started = false;
    const done = source.start().then(() => (started = true));
    await sleep(600);
    expect(started).toBe(false);
    const warn = log.lines().find((l) => l.level === 40 && l.code === 401);
    expect(String(warn?.msg)).toMatch(/refused the credentials/);
    api.addToken('not-yet', { username: AGENT_USER, audiences: [FAKE_API_AUDIENCE] });
    await done;
    expect(keys(snaps[0]!)).toContain('Pod/demo/client');
  });

  it('exports the config age through the given gauge', async () => {
    const registry = new Registry();
    const configAge = new Gauge({ name: 'trellis_config_age_seconds', help: 'h', registers: [registry] });
    await start({ metrics: { configAge } });
    api.pause();
    await sleep(2200);
    expect((await configAge.get()).values[0]!.value).toBeGreaterThan(1);
    api.resume();
  });

  it('rejects unusable kubeconfigs with a message that says what to do', async () => {
    const missing = new KubeSource({ kubeconfig: path.join(dir, 'missing'), node: 'n', logger: log.logger, onSnapshot: () => {} }).start();
    await expect(missing).rejects.toMatchObject({ code: 'ECONFIG', message: expect.stringMatching(/--kubeconfig .*missing: cannot load/) });
    const insecure = path.join(dir, 'http-kubeconfig');
    writeFileSync(insecure, readFileSync(kubeconfig, 'utf8').replace(/\s*insecure-skip-tls-verify: true/, ''));
    const http = new KubeSource({ kubeconfig: insecure, node: 'n', logger: log.logger, onSnapshot: () => {} }).start();
    await expect(http).rejects.toThrow(/plain http; use https, or set insecure-skip-tls-verify/);
  });

  it('rejects start() when closed before the first sync', async () => {
    api.pause();
    source = new KubeSource({ kubeconfig, node: 'node-a', logger: log.logger, onSnapshot: (s) => snaps.push(s) });
    const p = source.start();
    source.close();
    await expect(p).rejects.toMatchObject({ code: 'ECLOSED' });
    api.resume();
  });

  it('backs off exponentially from 200 ms to 30 s with injected jitter', () => {
    expect([1, 2, 3, 4].map((n) => backoffMs(n, () => 0.5))).toEqual([200, 400, 800, 1600]);
    expect(backoffMs(1, () => 0)).toBe(200);
    expect(backoffMs(3, () => 0)).toBe(600);
    expect(backoffMs(3, () => 0.999)).toBe(1000);
    expect(backoffMs(20, () => 0.999)).toBe(30_000);
    expect(backoffMs(20, () => 0)).toBe(22_500);
  });

  it('watches each kind through one table entry and reaches the API server only through client-node', () => {
    expect(WATCHED_KINDS.map((k) => k.kind)).toEqual([
      'Namespace', 'Pod', 'Service', 'EndpointSlice',
      'HTTPRoute', 'GRPCRoute', 'FaultInjection', 'RetryBudget', 'AuthorizationPolicy', 'PeerAuthentication',
    ]);
    const sources = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../agent/sources');
    const files = readdirSync(sources).filter((f) => /^kube.*\.ts$/.test(f));
    expect(files).toContain('kube.ts');
    for (const f of files) {
      const text = readFileSync(path.join(sources, f), 'utf8');
      expect(text, f).not.toMatch(/\bfetch\s*\(|from 'node:https?'|from 'undici'|from 'node:net'|from 'node:tls'/);
    }
  });

  it('first sync of 2000 pods and 500 services (informational)', async () => {
    for (let i = 0; i < 2000; i++) api.apply(pod(`p${i}`, `10.245.${i >> 8}.${i & 255}`, { node: `node-${i % 20}` }));
    for (let i = 0; i < 500; i++) api.apply(service(`s${i}`, `10.97.${i >> 8}.${i & 255}`));
    const t0 = performance.now();
    await start();
    const ms = performance.now() - t0;
    expect(snaps[0]!.objects.length).toBe(2000 + 500 + 7); // the seeded cluster has 7 objects (one FaultInjection)
    console.log(`kube source: first sync of 2000 pods + 500 services took ${ms.toFixed(0)} ms`);
    const t1 = performance.now();
    api.apply(pod('p0', '10.245.9.9'));
    await next((s) => podIp(s, 'p0') === '10.245.9.9', 2000, 1);
    console.log(`kube source: one pod change to a new snapshot of ${snaps.at(-1)!.objects.length} objects took ${(performance.now() - t1).toFixed(0)} ms`);
  });
});
