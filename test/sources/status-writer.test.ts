// The status writer: what it would write (in-process), then the whole path against the fake API server (kube
// source -> store -> writer -> PATCH .../status): rejections surfaced as Accepted=False, transitions, other
// controllers' entries kept, no write when nothing changed, agents converging, conflicts, rate limiting.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { KubernetesObject } from '@kubernetes/client-node';
import { Registry, type Counter } from 'prom-client';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../agent/clock.js';
import { KubeSource } from '../../agent/sources/kube.js';
import { STATUS_WRITES_METRIC, StatusWriter, nextStatus, type DesiredStatus, type ObjectRef } from '../../agent/sources/status-writer.js';
import { Store } from '../../agent/state/store.js';
import { FAKE_API_AUDIENCE, FakeApiServer } from '../support/fake-apiserver.js';
import { captureLogger } from '../support/logger.js';

const AGENT_USER = 'system:serviceaccount:trellis-system:trellis-agent';
const MESH = 'trellis.dev/mesh';
const GW = 'gateway.networking.k8s.io/v1';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

type Cond = { type: string; status: string; reason: string; message: string; observedGeneration?: number; lastTransitionTime: string };
type Parent = { parentRef: Record<string, unknown>; controllerName: string; conditions: Cond[] };

const service = (name: string, ip: string) => ({
  apiVersion: 'v1',
  kind: 'Service',
  metadata: { name, namespace: 'demo' },
  spec: { clusterIP: ip, selector: { app: name }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] },
});
/** An HTTPRoute on Service web; `path` without a leading "/" makes it invalid. */
const route = (name: string, pathValue = '/v2', more: { parentRefs?: object[]; status?: object } = {}) => ({
  apiVersion: GW,
  kind: 'HTTPRoute',
  metadata: { name, namespace: 'demo' },
  spec: {
    parentRefs: more.parentRefs ?? [{ group: '', kind: 'Service', name: 'web' }],
    rules: [{ matches: [{ path: { type: 'PathPrefix', value: pathValue } }], backendRefs: [{ name: 'web-v2', port: 80 }] }],
  },
  ...(more.status ? { status: more.status } : {}),
});

describe('nextStatus: what a write would hold', () => {
  const t0 = Date.UTC(2026, 0, 1);
  const ref: ObjectRef = { kind: 'AuthorizationPolicy', namespace: 'demo', name: 'p' };
  const accepted = (status: 'True' | 'False', message: string): DesiredStatus => ({
    shape: 'conditions',
    ref,
    accepted: { type: 'Accepted', status, reason: status === 'True' ? 'Accepted' : 'Invalid', message, observedGeneration: 3 },
  });
  const obj = (status: object): KubernetesObject => ({ apiVersion: 'security.trellis.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'p', namespace: 'demo', generation: 3 }, status } as KubernetesObject);

  it('stamps lastTransitionTime on a change of status only, and keeps conditions of other types', () => {
    const first = nextStatus(accepted('False', 'bad'), obj({}), t0)!;
    expect(first).toEqual({ conditions: [{ type: 'Accepted', status: 'False', reason: 'Invalid', message: 'bad', observedGeneration: 3, lastTransitionTime: '2026-01-01T00:00:00Z' }] });
    const held = { conditions: [{ type: 'Ready', status: 'True', reason: 'X', message: '', lastTransitionTime: '2025-01-01T00:00:00Z' }, ...(first.conditions as Cond[])] };
    expect(nextStatus(accepted('False', 'bad'), obj(held), t0 + 60_000)).toBeUndefined();
    // Same status, new message: rewritten, the transition time kept.
    const reworded = nextStatus(accepted('False', 'worse'), obj(held), t0 + 60_000)!;
    expect(reworded.conditions).toEqual([held.conditions[0], { ...held.conditions[1], message: 'worse' }]);
    // Status flips: a new transition time.
    const fixed = nextStatus(accepted('True', 'ok'), obj(held), t0 + 60_000)!;
    expect((fixed.conditions as Cond[])[1]).toMatchObject({ status: 'True', lastTransitionTime: '2026-01-01T00:01:00Z' });
  });

  it('compares route parents whatever the key order the server returns, and stays within 32 entries', () => {
    const routeRef: ObjectRef = { kind: 'HTTPRoute', namespace: 'demo', name: 'r' };
    const ours = (name: string) => ({
      parentRef: { group: '', kind: 'Service', name },
      controllerName: MESH,
      conditions: [{ type: 'Accepted' as const, status: 'True' as const, reason: 'Accepted', message: 'ok', observedGeneration: 1 }],
    });
    const want: DesiredStatus = { shape: 'parents', ref: routeRef, parents: [ours('a'), ours('b')] };
    const written = nextStatus(want, { metadata: { name: 'r' } }, t0)!;
    // The server sorts keys: the same content in another order is no reason to write.
    const sorted = JSON.parse(JSON.stringify(written, (_k, v: unknown) =>
      v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([x], [y]) => x.localeCompare(y))) : v)) as object;
    expect(nextStatus(want, { metadata: { name: 'r' }, status: sorted } as KubernetesObject, t0 + 1000)).toBeUndefined();
    // 31 entries of another controller leave room for one of ours; the capped result is stable.
    const others = Array.from({ length: 31 }, (_, i) => ({ parentRef: { kind: 'Gateway', name: `gw-${i}` }, controllerName: 'example.com/gw', conditions: [] }));
    const capped = nextStatus(want, { metadata: { name: 'r' }, status: { parents: others } } as KubernetesObject, t0)!;
    expect((capped.parents as Parent[]).map((p) => p.parentRef.name)).toEqual([...others.map((o) => o.parentRef.name), 'a']);
    expect(nextStatus(want, { metadata: { name: 'r' }, status: capped } as KubernetesObject, t0)).toBeUndefined();
  });
});

describe('status writer against the API server', () => {
  let api: FakeApiServer;
  let dir: string;
  let kubeconfig: string;
  let log: ReturnType<typeof captureLogger>;
  let offset = 0;
  /** The writer's clock: real timers, a wall clock the test can move forward (lastTransitionTime is in seconds). */
  const clock: Clock = { now: () => Date.now() + offset, after: (ms, fn) => systemClock.after(ms, fn) };
  const agents: Agent[] = [];

  interface Agent {
    source: KubeSource;
    store: Store;
    writer: StatusWriter;
    registry: Registry;
  }

  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'trellis-status-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  beforeEach(async () => {
    offset = 0;
    api = await FakeApiServer.start({ bookmarkIntervalMs: 200 });
    api.addToken('agent-token', { username: AGENT_USER, audiences: [FAKE_API_AUDIENCE] });
    kubeconfig = api.writeKubeconfig(path.join(dir, `kubeconfig-${Date.now()}`), { token: 'agent-token' });
    api.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', annotations: { 'trellis.dev/mesh': 'enabled' } } });
    api.apply(service('web', '10.96.0.10'));
    api.apply(service('web-v2', '10.96.0.11'));
    log = captureLogger();
  });
  afterEach(async () => {
    for (const a of agents.splice(0)) {
      a.writer.close();
      a.source.close();
    }
    await api.close();
  });

  /** An agent's kube source, store and status writer, wired as app.ts wires them. */
  const startAgent = async (more: { spreadMs?: number; current?: (ref: ObjectRef, cached: KubernetesObject | undefined) => KubernetesObject | undefined; ratePerSecond?: number; burst?: number } = {}) => {
    const store = new Store({ trustDomain: 'cluster.local', logger: log.logger });
    const source = new KubeSource({ kubeconfig, node: `node-${agents.length}`, logger: log.logger, debounceMs: 10, onSnapshot: (s) => store.replace(s.objects) });
    const registry = new Registry();
    const cached = (ref: ObjectRef) => source.cached(ref.kind, ref.namespace, ref.name);
    const writer = new StatusWriter({
      kubeconfig,
      current: more.current ? (ref) => more.current!(ref, cached(ref)) : cached,
      logger: log.logger,
      clock,
      registry,
      spreadMs: more.spreadMs ?? 30,
      ...(more.ratePerSecond !== undefined && { ratePerSecond: more.ratePerSecond }),
      ...(more.burst !== undefined && { burst: more.burst }),
    });
    const agent = { source, store, writer, registry };
    agents.push(agent);
    await source.start();
    writer.update(store.current());
    store.subscribe((next) => writer.update(next));
    return agent;
  };

  const statusOf = (kind: string, apiVersion: string, name: string) =>
    ((api.get(apiVersion, kind, 'demo', name) as { status?: { parents?: Parent[]; conditions?: Cond[] } } | undefined)?.status ?? {});
  const ourParents = (name: string, kind = 'HTTPRoute') => (statusOf(kind, GW, name).parents ?? []).filter((p) => p.controllerName === MESH);
  const accepted = (name: string) => ourParents(name)[0]?.conditions.find((c) => c.type === 'Accepted');
  /** A spec edit as kubectl makes it: the status subresource is kept (the fake's apply replaces the whole object). */
  const edit = (obj: { apiVersion: string; kind: string; metadata: { name: string; labels?: Record<string, string> } }) => {
    const held = (api.get(obj.apiVersion, obj.kind, 'demo', obj.metadata.name) as { status?: object } | undefined)?.status;
    api.apply({ ...obj, ...(held ? { status: held } : {}) });
  };
  const statusPatches = () => api.requests().filter((r) => r.verb === 'patch' && r.subresource === 'status').length;
  const writes = async (a: Agent, outcome: string) => {
    const m = a.registry.getSingleMetric(STATUS_WRITES_METRIC) as Counter<string>;
    return (await m.get()).values.filter((v) => v.labels.outcome === outcome).reduce((n, v) => n + v.value, 0);
  };
  /** Every agent has nothing pending, twice over a pause longer than the spread delay (late watch events included). */
  const settled = async () => {
    for (let i = 0; i < 2; i++) {
      await sleep(150);
      await Promise.all(agents.map((a) => a.writer.idle()));
    }
  };

  it('an invalid HTTPRoute gets Accepted=False naming the field; fixed, it flips to True with a new lastTransitionTime', async () => {
    api.apply(route('split', 'v2'));
    const agent = await startAgent();
    await until(() => accepted('split')?.status === 'False', 'Accepted=False on the invalid route');
    const rejected = accepted('split')!;
    expect(rejected).toMatchObject({ reason: 'UnsupportedValue', observedGeneration: 1 });
    expect(rejected.message).toContain('spec.rules[0].matches[0].path.value: must start with "/"');
    expect(rejected.lastTransitionTime).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    expect(ourParents('split')[0]!.parentRef).toEqual({ group: '', kind: 'Service', name: 'web' });
    await agent.writer.idle();
    expect(await writes(agent, 'written')).toBe(1);

    offset = 10_000;
    edit(route('split', '/v2'));
    await until(() => accepted('split')?.status === 'True', 'Accepted=True once fixed');
    const fixed = ourParents('split')[0]!.conditions;
    expect(fixed.find((c) => c.type === 'Accepted')).toMatchObject({ reason: 'Accepted', observedGeneration: 2 });
    expect(Date.parse(fixed.find((c) => c.type === 'Accepted')!.lastTransitionTime)).toBeGreaterThanOrEqual(Date.parse(rejected.lastTransitionTime) + 9_000);
    expect(fixed.find((c) => c.type === 'ResolvedRefs')).toMatchObject({ status: 'True', observedGeneration: 2 });

    // Broken again, then broken differently: Accepted stays False across the new generation, so its transition
    // time stays.
    offset = 20_000;
    edit(route('split', 'v3'));
    await until(() => accepted('split')?.status === 'False', 'the route rejected again');
    const again = accepted('split')!;
    expect(again.message).toContain('The last valid version of this route stays in force');
    expect(Date.parse(again.lastTransitionTime)).toBeGreaterThanOrEqual(Date.parse(rejected.lastTransitionTime) + 19_000);
    offset = 30_000;
    edit(route('split', 'v4'));
    await until(() => accepted('split')?.observedGeneration === 4, 'the new generation rejected');
    expect(accepted('split')).toMatchObject({ status: 'False', lastTransitionTime: again.lastTransitionTime });
  });

  it("keeps other controllers' entries of status.parents and drops its own stale ones", async () => {
    const foreign: Parent = {
      parentRef: { group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'edge' },
      controllerName: 'example.com/gateway-controller',
      conditions: [{ type: 'Accepted', status: 'True', reason: 'Accepted', message: 'attached', lastTransitionTime: '2025-06-01T00:00:00Z' }],
    };
    const stale: Parent = {
      parentRef: { group: '', kind: 'Service', name: 'gone' },
      controllerName: MESH,
      conditions: [{ type: 'Accepted', status: 'False', reason: 'NoMatchingParent', message: 'old', lastTransitionTime: '2025-06-01T00:00:00Z' }],
    };
    api.apply(route('both', '/v2', {
      parentRefs: [{ group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'edge' }, { group: '', kind: 'Service', name: 'web' }],
      status: { parents: [foreign, stale] },
    }));
    await startAgent();
    await until(() => ourParents('both')[0]?.parentRef.name === 'web', 'our entry written');
    const parents = statusOf('HTTPRoute', GW, 'both').parents!;
    expect(parents).toHaveLength(2);
    expect(parents[0]).toEqual(foreign);
    expect(parents[1]!.parentRef).toEqual({ group: '', kind: 'Service', name: 'web' });

    // A spec change re-evaluates ours; the foreign entry still stands untouched.
    edit(route('both', 'bad', { parentRefs: [{ group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'edge' }, { group: '', kind: 'Service', name: 'web' }] }));
    await until(() => accepted('both')?.status === 'False', 'Accepted=False after the bad change');
    expect(statusOf('HTTPRoute', GW, 'both').parents![0]).toEqual(foreign);
  });

  it('writes nothing when the object already says it: later snapshots and a restarted agent send no PATCH', async () => {
    api.apply(route('good'));
    api.apply(route('bad', 'x'));
    const first = await startAgent();
    await until(() => accepted('good')?.status === 'True' && accepted('bad')?.status === 'False', 'both routes written');
    await settled();
    const before = statusPatches();
    expect(before).toBe(2);
    // New snapshots that change no status: an unrelated Service, a label on a route (no new generation).
    let version = first.store.current().version;
    api.apply(service('other', '10.96.0.12'));
    await until(() => first.store.current().version > version, 'a snapshot with the new Service');
    version = first.store.current().version;
    edit({ ...route('good'), metadata: { ...route('good').metadata, labels: { team: 'a' } } });
    await until(() => first.store.current().version > version, 'a snapshot with the new label');
    await settled();
    expect(statusPatches()).toBe(before);
    // A second agent starting on a converged cluster compares and finds nothing to write.
    first.writer.close();
    const second = await startAgent();
    await settled();
    expect(statusPatches()).toBe(before);
    expect(await writes(second, 'written')).toBe(0);
    // The writes did not make snapshots: only the spec-changing events above did.
    expect(log.lines().filter((l) => l.msg === 'status written')).toHaveLength(2);
  });

  it('two agents converge: one successful write per object, the loser of a race reads and stops', async () => {
    const names = ['r1', 'r2', 'r3', 'r4', 'r5'];
    for (const n of names) api.apply(route(n, n === 'r3' ? 'broken' : `/${n}`));
    api.apply({ apiVersion: 'security.trellis.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-admin', namespace: 'demo' }, spec: { action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin'] } }] }] } });
    // No spread: both agents wake at once on the same snapshot, so some writes race.
    const [a, b] = await Promise.all([startAgent({ spreadMs: 0 }), startAgent({ spreadMs: 0 })]);
    await until(() => names.every((n) => accepted(n)), 'every route written');
    await settled();
    expect(names.map((n) => accepted(n)!.status)).toEqual(['True', 'True', 'False', 'True', 'True']);
    expect(statusOf('AuthorizationPolicy', 'security.trellis.dev/v1alpha1', 'deny-admin').conditions).toMatchObject([{ type: 'Accepted', status: 'True' }]);
    const written = (await writes(a, 'written')) + (await writes(b, 'written'));
    const conflicts = (await writes(a, 'conflict')) + (await writes(b, 'conflict'));
    expect(written).toBe(names.length + 1);
    expect(statusPatches()).toBe(written + conflicts);

    // A change seen by both: still one write.
    edit(route('r1', 'now-broken'));
    await until(() => accepted('r1')?.status === 'False', 'r1 rejected');
    await settled();
    expect((await writes(a, 'written')) + (await writes(b, 'written'))).toBe(names.length + 2);
  });

  it('a write against a stale copy gets 409 Conflict, reads the object once more and writes once', async () => {
    api.apply(route('r'));
    // The informer's copy with an old resourceVersion, as when another agent has just written.
    const agent = await startAgent({ current: (_ref, o) => o && { ...o, metadata: { ...o.metadata, resourceVersion: '1' } } });
    await until(() => accepted('r')?.status === 'True', 'the route written');
    await settled();
    expect(await writes(agent, 'conflict')).toBe(1);
    expect(await writes(agent, 'written')).toBe(1);
    const reads = api.requests().filter((r) => r.verb === 'get' && r.subresource === 'status' && r.name === 'r');
    expect(reads).toHaveLength(1);
  });

  it('every Trellis kind gets its Accepted condition; invalid policies get Accepted=False with the reason', async () => {
    const sec = 'security.trellis.dev/v1alpha1';
    const traffic = 'traffic.trellis.dev/v1alpha1';
    api.apply({ apiVersion: sec, kind: 'AuthorizationPolicy', metadata: { name: 'custom', namespace: 'demo' }, spec: { action: 'CUSTOM', rules: [{}] } });
    api.apply({ apiVersion: sec, kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'demo' }, spec: { mtls: { mode: 'STRICT' } } });
    api.apply({ apiVersion: sec, kind: 'PeerAuthentication', metadata: { name: 'off', namespace: 'demo' }, spec: { mtls: { mode: 'OFF' } } });
    api.apply({ apiVersion: traffic, kind: 'FaultInjection', metadata: { name: 'slow', namespace: 'demo' }, spec: { delay: { fixedDelay: '1s', percentage: { value: 10 } } } });
    api.apply({ apiVersion: traffic, kind: 'RetryBudget', metadata: { name: 'web', namespace: 'demo' }, spec: { targetRef: { group: '', kind: 'Service', name: 'web' }, retryRatio: 0.2 } });
    api.apply({ apiVersion: traffic, kind: 'RetryBudget', metadata: { name: 'wild', namespace: 'demo' }, spec: { targetRef: { group: '', kind: 'Service', name: 'web-v2' }, retryRatio: 2 } });
    api.apply({
      apiVersion: GW, kind: 'GRPCRoute', metadata: { name: 'g', namespace: 'demo' },
      spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web-v2' }], rules: [{ backendRefs: [{ name: 'web', port: 80 }] }] },
    });
    await startAgent();
    const cond = (apiVersion: string, kind: string, name: string) => statusOf(kind, apiVersion, name).conditions?.find((c) => c.type === 'Accepted');
    await until(
      () => [[sec, 'AuthorizationPolicy', 'custom'], [sec, 'PeerAuthentication', 'strict'], [sec, 'PeerAuthentication', 'off'], [traffic, 'FaultInjection', 'slow'], [traffic, 'RetryBudget', 'web'], [traffic, 'RetryBudget', 'wild']]
        .every(([v, k, n]) => cond(v!, k!, n!)) && ourParents('g', 'GRPCRoute').length === 1,
      'every object written',
    );
    const custom = cond(sec, 'AuthorizationPolicy', 'custom')!;
    expect(custom).toMatchObject({ status: 'False', reason: 'Invalid', observedGeneration: 1 });
    expect(custom.message).toMatch(/spec\.action/);
    expect(cond(sec, 'PeerAuthentication', 'strict')).toMatchObject({ status: 'True', reason: 'Accepted', observedGeneration: 1 });
    expect(cond(sec, 'PeerAuthentication', 'off')).toMatchObject({ status: 'False', reason: 'Invalid' });
    expect(cond(sec, 'PeerAuthentication', 'off')!.message).toMatch(/mtls\.mode/);
    expect(cond(traffic, 'FaultInjection', 'slow')).toMatchObject({ status: 'True', observedGeneration: 1 });
    expect(cond(traffic, 'RetryBudget', 'web')).toMatchObject({ status: 'True', reason: 'Accepted', observedGeneration: 1 });
    expect(cond(traffic, 'RetryBudget', 'wild')).toMatchObject({ status: 'False', reason: 'Invalid', message: 'spec.retryRatio must be a number from 0 to 1', observedGeneration: 1 });
    expect(ourParents('g', 'GRPCRoute')[0]!.conditions.map((c) => `${c.type}=${c.status}`)).toEqual(['Accepted=True', 'ResolvedRefs=True']);
    // The status writes changed no spec: generations stay at 1.
    expect((api.get(sec, 'AuthorizationPolicy', 'demo', 'custom') as { metadata: { generation: number } }).metadata.generation).toBe(1);
  });

  it('stays under its rate: six writes at 20/s with a burst of one take at least 250 ms', async () => {
    for (let i = 0; i < 6; i++) api.apply(route(`r${i}`));
    const agent = await startAgent({ spreadMs: 0, ratePerSecond: 20, burst: 1 });
    const started = Date.now(); // the first write goes out on the next tick, the others one per 50 ms
    await until(() => Array.from({ length: 6 }, (_, i) => accepted(`r${i}`)).every(Boolean), 'six routes written', 5000);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    await agent.writer.idle();
    expect(await writes(agent, 'written')).toBe(6);
  });

  it('keeps at most four writes in flight: eight writes to a server answering in 150 ms take two rounds', async () => {
    for (let i = 0; i < 8; i++) api.apply(route(`r${i}`));
    const agent = await startAgent({ spreadMs: 0 });
    api.setLatency(150); // before the first write: it goes out on a later tick
    const started = Date.now();
    await until(() => Array.from({ length: 8 }, (_, i) => accepted(`r${i}`)).every(Boolean), 'eight routes written', 5000);
    expect(Date.now() - started).toBeGreaterThanOrEqual(290); // two rounds of 150 ms (timers may fire a millisecond early)
    await agent.writer.idle();
    expect(await writes(agent, 'written')).toBe(8);
  });

  it('a write that fails is counted, logged and retried with backoff once the API server answers again', async () => {
    api.apply(route('r'));
    const agent = await startAgent({ spreadMs: 300 });
    // The outage starts before the spread delay ends: the write cannot get through.
    api.pause();
    await until(() => log.lines().some((l) => l.msg === 'status write failed; retrying later'), 'the failed write logged', 3000);
    expect(await writes(agent, 'error')).toBe(1);
    expect(log.lines().find((l) => l.msg === 'status write failed; retrying later')).toMatchObject({ level: 20, object: 'HTTPRoute/demo/r', failures: 1 });
    api.resume();
    await until(() => accepted('r')?.status === 'True', 'the retried write', 5000);
    await agent.writer.idle();
    expect(await writes(agent, 'written')).toBe(1);
    expect(await writes(agent, 'error')).toBe(1);
  });
});
