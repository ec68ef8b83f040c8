// The kube source against a real control plane (etcd, kube-apiserver, kube-controller-manager built from source):
// first sync with the agent's real token and RBAC, changes, relist after a real 410, an outage (kube-apiserver
// stopped, and a network partition), refused credentials, invalid objects. One control plane for the file; each
// test works in namespaces of its own and looks only at them.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Gauge, Registry } from 'prom-client';
import { stringify } from 'yaml';
import { ManualClock } from '../../agent/clock.js';
import type { Snapshot } from '../../agent/sources/dir.js';
import { KubeSource, WATCHED_KINDS, backoffMs } from '../../agent/sources/kube.js';
import { createPod, ensure, reportPodStatus } from '../../lab/cluster/kubelet.js';
import type { ApiObject } from '../../lab/controlplane/client.js';
import { AGENT_USER, startTestCluster, type TestCluster } from '../support/control-plane.js';
import { captureLogger } from '../support/logger.js';
import { until } from '../support/until.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const FAULT = { apiVersion: 'traffic.trellis.dev/v1alpha1', kind: 'FaultInjection' } as const;
const FAULT_CRD = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../manifests/crds/faultinjections.yaml');

describe('kube source against a real API server', () => {
  let cluster: TestCluster;
  /** The agent's kubeconfig: a real token of trellis-system/trellis-agent, bound to its pod on node-a. */
  let kubeconfig: string;
  let source: KubeSource | undefined;
  let snaps: Snapshot[];
  let log: ReturnType<typeof captureLogger>;
  let testNo = 0;
  /** This test's namespaces: `demo` (meshed) and `plain`, suffixed so tests never see each other's objects. */
  let demo: string;
  let plain: string;

  beforeAll(async () => {
    cluster = await startTestCluster({ audit: true });
    await cluster.node('node-a');
    await cluster.node('node-b');
    kubeconfig = cluster.kubeconfig('agent', (await cluster.agentToken('node-a')).token);
  });
  afterAll(async () => {
    await cluster?.close();
  });
  afterEach(() => {
    source?.close();
    source = undefined;
    cluster.forward.resume();
  });

  const api = () => cluster.api;
  const pod = (name: string, ip: string, more: { ns?: string; node?: string; labels?: Record<string, string> } = {}) => ({
    object: {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace: more.ns ?? demo, labels: more.labels ?? { app: name } },
      spec: { nodeName: more.node ?? 'node-a', serviceAccountName: 'default', containers: [{ name: 'app', image: 'app', ports: [{ containerPort: 8080 }] }] },
    } as never,
    ip,
    hostIp: more.node === 'node-b' ? '172.30.0.12' : '172.30.0.11',
    ready: true,
  });
  const service = (name: string, ns = demo) =>
    ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: ns }, spec: { selector: { app: name }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } }) as ApiObject;
  const fault = (name: string, spec: unknown = { delay: { fixedDelay: '1s', percentage: { value: 10 } } }) =>
    ({ ...FAULT, metadata: { name, namespace: demo }, spec }) as ApiObject;

  /** A fresh pair of namespaces with the classic seed: two pods, a Service (its EndpointSlice from the controller), a fault. */
  const seed = async () => {
    testNo++;
    demo = `demo-${testNo}`;
    plain = `plain-${testNo}`;
    await api().create({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: demo, annotations: { 'trellis.dev/mesh': 'enabled' } } });
    await api().create({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: plain } });
    // The namespace's default ServiceAccount comes from the controller, and admission refuses a pod before it
    // exists; after an API server restart the controller may take a while to catch up, so it is made here if need be.
    await ensure(api(), { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default', namespace: demo } });
    await createPod(api(), pod('client', '10.244.1.2'));
    await createPod(api(), pod('server', '10.244.2.2', { node: 'node-b' }));
    await api().create(service('server'));
    await api().create(fault('slow'));
    await until('the controller to publish the server endpoint', async () => {
      const l = await api().list<ApiObject & { endpoints?: { addresses: string[] }[] }>(
        { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', namespace: demo },
        { labelSelector: 'kubernetes.io/service-name=server' },
      );
      return l.items.some((s) => (s.endpoints ?? []).some((e) => e.addresses.includes('10.244.2.2')));
      // After an API server restart the controller manager's watches come back with backoff: up to ~30 s.
    }, 45_000);
    snaps = [];
    log = captureLogger();
  };

  const start = async (more: Partial<ConstructorParameters<typeof KubeSource>[0]> = {}) => {
    source = new KubeSource({ kubeconfig, node: 'node-a', logger: log.logger, random: () => 0.5, onSnapshot: (s) => snaps.push(s), ...more });
    await source.start();
    return source;
  };
  /** Kind/namespace/name of this test's objects; generated EndpointSlice names end in `-*`. */
  const keys = (s: Snapshot) =>
    s.objects
      .filter((o) => (o.kind === 'Namespace' ? [demo, plain].includes(o.metadata.name) : [demo, plain].includes(o.metadata.namespace ?? '')))
      .map((o) => `${o.kind}/${o.metadata.namespace?.replace(/-\d+$/, '') ?? ''}/${o.kind === 'EndpointSlice' ? o.metadata.name.replace(/-[a-z0-9]{5}$/, '-*') : o.metadata.name.replace(/-\d+$/, '')}`)
      .sort();
  const next = async (pred: (s: Snapshot) => boolean, timeoutMs = 3000, from = 0) => {
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
    const p = s.objects.find((o) => o.kind === 'Pod' && o.metadata.name === name && o.metadata.namespace === demo);
    return p?.kind === 'Pod' ? p.status?.podIP : undefined;
  };
  /** The agent's requests since `mark` (an index into the audit log). */
  const agentRequests = (mark: number) => cluster.audit().slice(mark).filter((r) => r.user === AGENT_USER);

  it('delivers every watched kind in the first snapshot, talking only list/watch, as the agent, with its RBAC', async () => {
    await seed();
    await api().create({ apiVersion: 'traffic.trellis.dev/v1alpha1', kind: 'EgressNetwork', metadata: { name: 'internet', namespace: demo }, spec: { trafficPolicy: 'Deny', networks: [{ cidr: '198.18.0.0/15' }] } } as ApiObject);
    const mark = cluster.audit().length;
    await start();
    expect(snaps).toHaveLength(1);
    expect(keys(snaps[0]!)).toEqual([
      'EgressNetwork/demo/internet',
      'EndpointSlice/demo/server-*',
      'FaultInjection/demo/slow',
      'Namespace//demo',
      'Namespace//plain',
      'Pod/demo/client',
      'Pod/demo/server',
      'Service/demo/server',
    ]);
    expect(snaps[0]!.problems).toEqual([]);
    const server = snaps[0]!.objects.find((o) => o.kind === 'Pod' && o.metadata.name === 'server' && o.metadata.namespace === demo);
    expect(server).toMatchObject({ apiVersion: 'v1', kind: 'Pod', spec: { nodeName: 'node-b' }, status: { podIP: '10.244.2.2' } });
    await until('a watch of every kind', async () => new Set(agentRequests(mark).filter((r) => r.verb === 'watch').map((r) => r.resource)).size === WATCHED_KINDS.length);
    const reqs = agentRequests(mark);
    expect(new Set(reqs.map((r) => r.verb))).toEqual(new Set(['list', 'watch']));
    expect(new Set(reqs.map((r) => `${r.group}/${r.resource}`))).toEqual(
      new Set([
        '/namespaces', '/pods', '/services', 'discovery.k8s.io/endpointslices',
        'gateway.networking.k8s.io/httproutes', 'gateway.networking.k8s.io/grpcroutes',
        'traffic.trellis.dev/faultinjections', 'traffic.trellis.dev/retrybudgets', 'traffic.trellis.dev/egressnetworks',
        'security.trellis.dev/authorizationpolicies', 'security.trellis.dev/peerauthentications',
      ]),
    );
    expect(reqs.every((r) => r.namespace === undefined && r.name === undefined && r.decision === 'allow')).toBe(true);
    // Watches ask for bookmarks and a server-side end, as client-go's reflectors do.
    for (const w of reqs.filter((r) => r.verb === 'watch')) expect(w.uri).toMatch(/allowWatchBookmarks=true.*timeoutSeconds=\d{3}\b/);
  });

  it('starts without a CRD that is not installed, and picks its objects up once it is', async () => {
    await seed();
    const crd = cluster.cp.bins.gatewayCrds.find((f) => f.endsWith('httproutes.yaml'))!;
    const del = await cluster.cp.kubectl(['delete', 'crd', 'httproutes.gateway.networking.k8s.io', '--wait=true', '--timeout=60s']);
    expect(del.code, del.stderr).toBe(0);
    const clock = new ManualClock(Date.now());
    const started = start({ clock });
    // Debounce and restarts run on the injected clock: keep it moving in small steps until start() resolves.
    const tick = setInterval(() => clock.advance(25), 5);
    try {
      await started;
      expect(keys(snaps[0]!).some((k) => k.startsWith('HTTPRoute/'))).toBe(false);
      expect(log.lines().some((l) => String(l.msg).includes('HTTPRoute is not served'))).toBe(true);
      expect(source!.configAgeSeconds()).toBeLessThan(1);
      const put = await cluster.cp.kubectl(['apply', '--server-side', '-f', crd]);
      expect(put.code, put.stderr).toBe(0);
      await cluster.cp.kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/httproutes.gateway.networking.k8s.io']);
      await until('the API server to serve HTTPRoutes again', () =>
        api().create({
          apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'split', namespace: demo },
          spec: { parentRefs: [{ group: '', kind: 'Service', name: 'server' }] },
        }),
      );
      const mark = cluster.audit().length;
      clock.advance(30_000);
      await next(has('HTTPRoute/demo/split'), 5000);
      // An open watch is in sync however quiet the cluster (the real server sends a bookmark only every minute):
      // once the HTTPRoute watch is open again, ten quiet minutes leave the config age at 0.
      await until('the HTTPRoute watch', async () => agentRequests(mark).some((r) => r.verb === 'watch' && r.resource === 'httproutes'));
      clearInterval(tick);
      clock.advance(10 * 60_000);
      await until('every watch open, so the config age is 0', async () => source!.configAgeSeconds() < 1);
    } finally {
      clearInterval(tick);
    }
  });

  it('turns add, update and delete into a new snapshot within a second or so', async () => {
    await seed();
    await start();
    await createPod(api(), pod('extra', '10.244.1.9'));
    await next(has('Pod/demo/extra'));
    await reportPodStatus(api(), pod('client', '10.244.1.3'));
    await next((s) => podIp(s, 'client') === '10.244.1.3');
    await api().delete({ apiVersion: 'v1', kind: 'Service', namespace: demo, name: 'server' });
    await next((x) => !has('Service/demo/server')(x));
    // The real garbage collector follows: the controller's EndpointSlice belongs to the Service.
    await next((x) => !has('EndpointSlice/demo/server-*')(x), 10_000);
    await api().patch({ apiVersion: 'v1', kind: 'Namespace', name: plain }, { metadata: { annotations: { 'trellis.dev/mesh': 'enabled' } } });
    await next((x) => x.objects.some((o) => o.kind === 'Namespace' && o.metadata.name === plain && o.metadata.annotations?.['trellis.dev/mesh'] === 'enabled'));
  });

  it('relists after a real 410 (etcd compacted, watches restarted) and ends with the right state', async () => {
    await seed();
    const mark = cluster.audit().length;
    await start();
    const lists = () => agentRequests(mark).filter((r) => r.verb === 'list' && r.resource === 'pods').length;
    expect(lists()).toBe(1);
    // Changes the agent cannot see (a partition between it and the API server), then history compacted and the
    // API server restarted: its watch cache starts from now, so resuming from an older resourceVersion is 410 Gone.
    cluster.forward.pause();
    await createPod(api(), pod('after-compact', '10.244.1.20'));
    await api().delete({ apiVersion: 'v1', kind: 'Pod', namespace: demo, name: 'client' }, { gracePeriodSeconds: 0 });
    await cluster.cp.compactEtcd();
    await cluster.cp.stopApiServer();
    await cluster.cp.startApiServer();
    cluster.forward.resume();
    const s = await next((x) => has('Pod/demo/after-compact')(x) && !has('Pod/demo/client')(x), 30_000);
    expect(keys(s).filter((k) => k.startsWith('Pod/'))).toEqual(['Pod/demo/after-compact', 'Pod/demo/server']);
    await until('the pods relisted', async () => lists() >= 2);
    expect(log.lines().some((l) => l.code === 410 && String(l.msg).includes('watch expired (410); relisting'))).toBe(true);
    expect(log.lines().find((l) => l.code === 410)?.message).toMatch(/too old resource version/);
  });

  it('keeps the last state while kube-apiserver is stopped, reports a rising config age, then catches up', async () => {
    await seed();
    await start();
    await sleep(300);
    expect(source!.configAgeSeconds()).toBeLessThan(1);
    await cluster.cp.stopApiServer();
    // (Counted once it is down: shutting down, the API server takes its own address out of the kubernetes
    // Service's EndpointSlice, a change the agent sees.)
    const before = snaps.length;
    try {
      await sleep(1500);
      expect(snaps.length).toBe(before); // no snapshot at all during the outage, least of all an empty one
      expect(source!.configAgeSeconds()).toBeGreaterThan(1);
      expect(log.lines().some((l) => l.level === 40 && String(l.msg).includes('keeping the last known state'))).toBe(true);
    } finally {
      await cluster.cp.startApiServer();
    }
    await createPod(api(), pod('after-outage', '10.244.1.31'));
    const s = await next(has('Pod/demo/after-outage'), 30_000, before);
    expect(has('Service/demo/server')(s)).toBe(true);
    expect(snaps.every((x) => keys(x).length >= 7)).toBe(true);
    await until('the config age back under a second', async () => source!.configAgeSeconds() < 1, 30_000);

    // A partition instead: the API server runs on and changes happen that the agent cannot see yet.
    const mid = snaps.length;
    cluster.forward.pause();
    await createPod(api(), pod('during-partition', '10.244.1.30'));
    await api().delete({ apiVersion: 'v1', kind: 'Pod', namespace: demo, name: 'client' }, { gracePeriodSeconds: 0 });
    await sleep(1500);
    expect(snaps.length).toBe(mid);
    expect(source!.configAgeSeconds()).toBeGreaterThan(1);
    cluster.forward.resume();
    await next((x) => has('Pod/demo/during-partition')(x) && !has('Pod/demo/client')(x), 30_000, mid);
    expect(snaps.slice(mid).every((x) => keys(x).length >= 7)).toBe(true);
  });

  // The real API server refuses objects its schemas refuse, so an invalid object reaches the agent only through a
  // schema that lets it in: here a FaultInjection CRD without validation, as an outdated or hand-made CRD would be.
  it('reports an invalid object, skips it and keeps its last good version, while other changes apply', async () => {
    await seed();
    const loose = {
      apiVersion: 'apiextensions.k8s.io/v1',
      kind: 'CustomResourceDefinition',
      metadata: { name: 'faultinjections.traffic.trellis.dev' },
      spec: {
        group: 'traffic.trellis.dev',
        scope: 'Namespaced',
        names: { kind: 'FaultInjection', listKind: 'FaultInjectionList', plural: 'faultinjections', singular: 'faultinjection' },
        versions: [{ name: 'v1alpha1', served: true, storage: true, subresources: { status: {} }, schema: { openAPIV3Schema: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } } }],
      },
    };
    const file = path.join(cluster.dir, 'loose-crd.yaml');
    writeFileSync(file, stringify(loose));
    const swap = async (f: string) => {
      const r = await cluster.cp.kubectl(['apply', '--server-side', '--force-conflicts', '-f', f]);
      expect(r.code, r.stderr).toBe(0);
    };
    await swap(file);
    try {
      await until('the loose schema in force', () => api().create(fault('probe', 'not-an-object')));
      await start();
      // Under a loaded suite the first snapshot has come without it (the kind then listed empty, and found again at
      // the source's 30 s look for kinds it could not list); so: the first snapshot that reports a problem.
      const p = await next((x) => x.problems.length > 0, 40_000, 0);
      if (p !== snaps[0]) console.log(`the probe's problem came in snapshot ${snaps.indexOf(p)}; log: ${JSON.stringify(log.lines().filter((l) => /not served|list|watch/i.test(String(l.msg))).slice(0, 5))}`);
      expect(p.problems).toEqual([{ file: '/apis/traffic.trellis.dev/v1alpha1/faultinjections', object: `FaultInjection/${demo}/probe`, reason: expect.stringMatching(/field spec/) }]);
      await api().create(fault('bad', ['nope']));
      await createPod(api(), pod('good', '10.244.1.40'));
      // The problem comes in the snapshot after the bad object arrived; the pod in that one or a later one (the
      // source paces its snapshots, so how the two changes group varies).
      const s = await next((x) => x.problems.length > 0, 3000, snaps.indexOf(p) + 1);
      expect(has('FaultInjection/demo/bad')(s)).toBe(false);
      expect(s.problems).toEqual([{ file: '/apis/traffic.trellis.dev/v1alpha1/faultinjections', object: `FaultInjection/${demo}/bad`, reason: expect.stringMatching(/field spec/) }]);
      const g = await next(has('Pod/demo/good'), 3000, snaps.indexOf(s));
      expect(has('FaultInjection/demo/bad')(g)).toBe(false);
      // A valid object turning invalid keeps its last good version.
      await api().patch({ ...FAULT, namespace: demo, name: 'slow' }, { spec: 'broken' }, 'merge');
      const t = await next((x) => x.problems.some((p) => p.object === `FaultInjection/${demo}/slow`), 3000, snaps.indexOf(g) + 1);
      const slow = t.objects.find((o) => o.kind === 'FaultInjection' && o.metadata.name === 'slow' && o.metadata.namespace === demo) as { spec?: unknown } | undefined;
      expect(slow?.spec).toEqual({ delay: { fixedDelay: '1s', percentage: { value: 10 } } });
      expect(log.lines().some((l) => l.object === `FaultInjection/${demo}/slow` && String(l.msg).includes('invalid object ignored'))).toBe(true);
      // Problems are reported once, in the snapshot after they were found.
      await createPod(api(), pod('later', '10.244.1.41'));
      const u = await next(has('Pod/demo/later'), 3000, snaps.indexOf(t) + 1);
      expect(u.problems).toEqual([]);
    } finally {
      for (const n of ['probe', 'bad', 'slow']) await api().delete({ ...FAULT, namespace: demo, name: n });
      await swap(FAULT_CRD);
    }
  });

  it('keeps retrying while the API server forbids the agent, and syncs once RBAC allows it', async () => {
    await seed();
    await api().create({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: `late-${testNo}`, namespace: 'default' } });
    const token = (await api().createToken('default', `late-${testNo}`)).token;
    source = new KubeSource({ kubeconfig: cluster.kubeconfig(`late-${testNo}`, token), node: 'node-a', logger: log.logger, random: () => 0, onSnapshot: (s) => snaps.push(s) });
    let started = false;
    const done = source.start().then(() => (started = true));
    await until('the refusal to be logged', async () => log.lines().find((l) => l.level === 40 && l.code === 403));
    expect(started).toBe(false);
    expect(String(log.lines().find((l) => l.code === 403)?.msg)).toMatch(/forbidden; the agent needs list and watch on what manifests\/rbac\/agent.yaml grants/);
    await api().create({
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: `late-${testNo}` },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'trellis-agent' },
      subjects: [{ kind: 'ServiceAccount', name: `late-${testNo}`, namespace: 'default' }],
    });
    await done;
    expect(keys(snaps[0]!)).toContain('Pod/demo/client');
  });

  it('says the API server refused the credentials when the token is not valid', async () => {
    await seed();
    source = new KubeSource({ kubeconfig: cluster.kubeconfig('bogus', 'not-a-token'), node: 'node-a', logger: log.logger, random: () => 0, onSnapshot: (s) => snaps.push(s) });
    void source.start().catch(() => {});
    const warn = await until('the refusal to be logged', async () => log.lines().find((l) => l.level === 40 && l.code === 401));
    expect(String(warn.msg)).toMatch(/refused the credentials/);
  });

  it('exports the config age through the given gauge', async () => {
    await seed();
    const registry = new Registry();
    const configAge = new Gauge({ name: 'trellis_config_age_seconds', help: 'h', registers: [registry] });
    await start({ metrics: { configAge } });
    expect((await configAge.get()).values[0]!.value).toBeLessThan(1);
    cluster.forward.pause();
    await sleep(2200);
    expect((await configAge.get()).values[0]!.value).toBeGreaterThan(1);
  });

  it('rejects unusable kubeconfigs with a message that says what to do', async () => {
    log = captureLogger();
    const missing = new KubeSource({ kubeconfig: path.join(cluster.dir, 'missing'), node: 'n', logger: log.logger, onSnapshot: () => {} }).start();
    await expect(missing).rejects.toMatchObject({ code: 'ECONFIG', message: expect.stringMatching(/--kubeconfig .*missing: cannot load/) });
    const insecure = path.join(cluster.dir, 'http-kubeconfig');
    writeFileSync(insecure, readFileSync(kubeconfig, 'utf8').replace(/server: https:/, 'server: http:'));
    const http = new KubeSource({ kubeconfig: insecure, node: 'n', logger: log.logger, onSnapshot: () => {} }).start();
    await expect(http).rejects.toThrow(/plain http; use https, or set insecure-skip-tls-verify/);
  });

  it('rejects start() when closed before the first sync', async () => {
    log = captureLogger();
    cluster.forward.pause();
    source = new KubeSource({ kubeconfig, node: 'node-a', logger: log.logger, onSnapshot: () => {} });
    const p = source.start();
    source.close();
    await expect(p).rejects.toMatchObject({ code: 'ECLOSED' });
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
      'HTTPRoute', 'GRPCRoute', 'FaultInjection', 'RetryBudget', 'EgressNetwork', 'AuthorizationPolicy', 'PeerAuthentication',
    ]);
    const sources = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../agent/sources');
    const files = readdirSync(sources).filter((f) => /^kube.*\.ts$/.test(f));
    expect(files).toContain('kube.ts');
    for (const f of files) {
      const text = readFileSync(path.join(sources, f), 'utf8');
      expect(text, f).not.toMatch(/\bfetch\s*\(|from 'node:https?'|from 'undici'|from 'node:net'|from 'node:tls'/);
    }
  });

  it('first sync of 2000 pods and 500 services created through the API (informational)', async () => {
    await seed();
    const ns = `scale-${testNo}`;
    await api().create({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
    await ensure(api(), { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default', namespace: ns } });
    const t0 = performance.now();
    const all: (() => Promise<unknown>)[] = [
      ...Array.from({ length: 2000 }, (_, i) => () => createPod(api(), pod(`p${i}`, `10.245.${i >> 8}.${i & 255}`, { ns, node: 'node-a', labels: { app: `s${i % 500}` } }))),
      ...Array.from({ length: 500 }, (_, i) => () => api().create(service(`s${i}`, ns))),
    ];
    let nextIndex = 0;
    await Promise.all(Array.from({ length: 16 }, async () => {
      while (nextIndex < all.length) await all[nextIndex++]!();
    }));
    console.log(`kube source: created 2000 pods (with status) and 500 services through the API in ${(performance.now() - t0).toFixed(0)} ms`);
    const t1 = performance.now();
    await start();
    const ms = performance.now() - t1;
    const inScale = snaps[0]!.objects.filter((o) => o.metadata.namespace === ns);
    expect(inScale.filter((o) => o.kind === 'Pod')).toHaveLength(2000);
    expect(inScale.filter((o) => o.kind === 'Service')).toHaveLength(500);
    console.log(`kube source: first sync of ${snaps[0]!.objects.length} objects (2000 pods, 500 services, their EndpointSlices so far) took ${ms.toFixed(0)} ms`);
    const t2 = performance.now();
    await reportPodStatus(api(), pod('p0', '10.245.9.9', { ns, labels: { app: 's0' } }));
    await next((s) => s.objects.some((o) => o.kind === 'Pod' && o.metadata.namespace === ns && o.metadata.name === 'p0' && o.status?.podIP === '10.245.9.9'), 5000, 1);
    console.log(`kube source: one pod change to a new snapshot of ${snaps.at(-1)!.objects.length} objects took ${(performance.now() - t2).toFixed(0)} ms`);
  }, 180_000);
});
