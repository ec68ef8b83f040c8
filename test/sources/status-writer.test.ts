// The status writer: what it would write (in-process), then the whole path against a real control plane (kube
// source -> store -> writer -> PATCH .../status on the real status subresources, with the agent's real token and
// RBAC): rejections surfaced as Accepted=False, transitions, other controllers' entries kept, no write when nothing
// changed, agents converging, conflicts, rate limiting, a slow and an unreachable API server.
import type { KubernetesObject } from '@kubernetes/client-node';
import { Registry, type Counter } from 'prom-client';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../agent/clock.js';
import { KubeSource } from '../../agent/sources/kube.js';
import { STATUS_WRITES_METRIC, StatusWriter, nextStatus, type DesiredStatus, type ObjectRef } from '../../agent/sources/status-writer.js';
import { Store } from '../../agent/state/store.js';
import type { ApiObject } from '../../lab/controlplane/client.js';
import { AGENT_USER, startTestCluster, type TestCluster } from '../support/control-plane.js';
import { captureLogger } from '../support/logger.js';

const MESH = 'trellis.dev/mesh';
const GW = 'gateway.networking.k8s.io/v1';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

type Cond = { type: string; status: string; reason: string; message: string; observedGeneration?: number; lastTransitionTime: string };
type Parent = { parentRef: Record<string, unknown>; controllerName: string; conditions: Cond[] };


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

describe('status writer against a real API server', () => {
  let cluster: TestCluster;
  let kubeconfigs: string[];
  let log: ReturnType<typeof captureLogger>;
  let offset = 0;
  let testNo = 0;
  /** This test's namespace: every object of a test lives there, and is deleted with it afterwards. */
  let ns = '';
  /** Index into the audit log when the test started. */
  let mark = 0;
  /** The writer's clock: real timers, a wall clock the test can move forward (lastTransitionTime is in seconds). */
  const clock: Clock = { now: () => Date.now() + offset, after: (ms, fn) => systemClock.after(ms, fn) };
  const agents: Agent[] = [];

  interface Agent {
    source: KubeSource;
    store: Store;
    writer: StatusWriter;
    registry: Registry;
  }

  const service = (name: string) =>
    ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: ns }, spec: { selector: { app: name }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } }) as ApiObject;
  /**
   * An HTTPRoute on Service web. A path with a lookahead (`/v2(?=x)`, a RegularExpression) makes it invalid to
   * Trellis (RE2 has no lookaround) while the Gateway API CRD stores it: the real server refuses what its schema
   * and CEL rules refuse (a PathPrefix without a leading "/", say), so those never reach an agent.
   */
  const route = (name: string, pathValue = '/v2', more: { parentRefs?: object[] } = {}) =>
    ({
      apiVersion: GW,
      kind: 'HTTPRoute',
      metadata: { name, namespace: ns },
      spec: {
        parentRefs: more.parentRefs ?? [{ group: '', kind: 'Service', name: 'web' }],
        rules: [{ matches: [{ path: { type: pathValue.includes('(?') ? 'RegularExpression' : 'PathPrefix', value: pathValue } }], backendRefs: [{ name: 'web-v2', port: 80 }] }],
      },
    }) as ApiObject;
  const api = () => cluster.api;
  const create = (o: ApiObject) => api().create({ ...o, metadata: { ...o.metadata, namespace: ns } });

  beforeAll(async () => {
    cluster = await startTestCluster({ audit: true });
    // Two agents, as two DaemonSet pods: each with its own bound token.
    kubeconfigs = [
      cluster.kubeconfig('agent-a', (await cluster.agentToken('node-a')).token),
      cluster.kubeconfig('agent-b', (await cluster.agentToken('node-b')).token),
    ];
  });
  afterAll(async () => {
    await cluster?.close();
  });

  beforeEach(async () => {
    offset = 0;
    testNo++;
    ns = `demo-${testNo}`;
    await api().create({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns, annotations: { 'trellis.dev/mesh': 'enabled' } } });
    await create(service('web'));
    await create(service('web-v2'));
    log = captureLogger();
    mark = cluster.audit().length;
  });
  afterEach(async () => {
    for (const a of agents.splice(0)) {
      a.writer.close();
      a.source.close();
    }
    cluster.forward.resume();
    cluster.forward.setLatency(0);
    // Objects of this test must not need writes in the next one: the routes and policies go first, at once (left
    // to the namespace controller, routes would outlive their Services for seconds, and their statuses change).
    for (const [apiVersion, kind] of STATUS_KINDS) {
      const list = await api().list({ apiVersion, kind, namespace: ns });
      for (const o of list.items) await api().delete({ apiVersion, kind, namespace: ns, name: o.metadata.name! });
    }
    await api().delete({ apiVersion: 'v1', kind: 'Namespace', name: ns });
  });

  /** An agent's kube source, store and status writer, wired as app.ts wires them. */
  const startAgent = async (more: { spreadMs?: number; current?: (ref: ObjectRef, cached: KubernetesObject | undefined) => KubernetesObject | undefined; ratePerSecond?: number; burst?: number } = {}) => {
    const kubeconfig = kubeconfigs[agents.length % kubeconfigs.length]!;
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

  const get = (kind: string, apiVersion: string, name: string) => api().get<ApiObject & { status?: { parents?: Parent[]; conditions?: Cond[] } }>({ apiVersion, kind, namespace: ns, name });
  const statusOf = async (kind: string, apiVersion: string, name: string) => (await get(kind, apiVersion, name))?.status ?? {};
  const ourParents = async (name: string, kind = 'HTTPRoute') => ((await statusOf(kind, GW, name)).parents ?? []).filter((p) => p.controllerName === MESH);
  const accepted = async (name: string) => (await ourParents(name))[0]?.conditions.find((c) => c.type === 'Accepted');
  /** A spec edit as `kubectl apply --server-side` makes it: the status subresource is untouched. */
  const edit = (o: ApiObject) => api().apply({ ...o, metadata: { ...o.metadata, namespace: ns } });
  /** Requests of the agents in this test's namespace, from the API server's audit log. */
  const agentRequests = () => cluster.audit().slice(mark).filter((r) => r.user === AGENT_USER && r.namespace === ns);
  const statusPatches = () => agentRequests().filter((r) => r.verb === 'patch' && r.subresource === 'status').length;
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
  const LOOKAHEAD = 'lookahead and lookbehind are not supported (RE2 syntax)';
  const STATUS_KINDS = [
    [GW, 'HTTPRoute'], [GW, 'GRPCRoute'],
    ['traffic.trellis.dev/v1alpha1', 'FaultInjection'], ['traffic.trellis.dev/v1alpha1', 'RetryBudget'], ['traffic.trellis.dev/v1alpha1', 'EgressNetwork'],
    ['security.trellis.dev/v1alpha1', 'AuthorizationPolicy'], ['security.trellis.dev/v1alpha1', 'PeerAuthentication'],
  ] as const;

  it('an invalid HTTPRoute gets Accepted=False naming the field; fixed, it flips to True with a new lastTransitionTime', async () => {
    await create(route('split', '/v2(?=x)'));
    const agent = await startAgent();
    await until(async () => (await accepted('split'))?.status === 'False', 'Accepted=False on the invalid route');
    const rejected = (await accepted('split'))!;
    expect(rejected).toMatchObject({ reason: 'UnsupportedValue', observedGeneration: 1 });
    expect(rejected.message).toContain(`spec.rules[0].matches[0].path.value: ${LOOKAHEAD}`);
    expect(rejected.lastTransitionTime).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    expect((await ourParents('split'))[0]!.parentRef).toEqual({ group: '', kind: 'Service', name: 'web' });
    await agent.writer.idle();
    expect(await writes(agent, 'written')).toBe(1);

    offset = 10_000;
    await edit(route('split', '/v2'));
    await until(async () => (await accepted('split'))?.status === 'True', 'Accepted=True once fixed');
    const fixed = (await ourParents('split'))[0]!.conditions;
    expect(fixed.find((c) => c.type === 'Accepted')).toMatchObject({ reason: 'Accepted', observedGeneration: 2 });
    expect(Date.parse(fixed.find((c) => c.type === 'Accepted')!.lastTransitionTime)).toBeGreaterThanOrEqual(Date.parse(rejected.lastTransitionTime) + 9_000);
    expect(fixed.find((c) => c.type === 'ResolvedRefs')).toMatchObject({ status: 'True', observedGeneration: 2 });

    // Broken again, then broken differently: Accepted stays False across the new generation, so its transition
    // time stays.
    offset = 20_000;
    await edit(route('split', '/v3(?=x)'));
    await until(async () => (await accepted('split'))?.status === 'False', 'the route rejected again');
    const again = (await accepted('split'))!;
    expect(again.message).toContain('The last valid version of this route stays in force');
    expect(Date.parse(again.lastTransitionTime)).toBeGreaterThanOrEqual(Date.parse(rejected.lastTransitionTime) + 19_000);
    offset = 30_000;
    await edit(route('split', '/v4(?=x)'));
    await until(async () => (await accepted('split'))?.observedGeneration === 4, 'the new generation rejected');
    expect(await accepted('split')).toMatchObject({ status: 'False', lastTransitionTime: again.lastTransitionTime });
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
    const parentRefs = [{ group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'edge' }, { group: '', kind: 'Service', name: 'web' }];
    await create(route('both', '/v2', { parentRefs }));
    // The status as another controller (and an earlier Trellis) left it: written through the status subresource.
    await api().patch({ apiVersion: GW, kind: 'HTTPRoute', namespace: ns, name: 'both' }, { status: { parents: [foreign, stale] } }, 'merge', 'status');
    await startAgent();
    await until(async () => (await ourParents('both'))[0]?.parentRef.name === 'web', 'our entry written');
    const parents = (await statusOf('HTTPRoute', GW, 'both')).parents!;
    expect(parents).toHaveLength(2);
    expect(parents[0]).toEqual(foreign);
    expect(parents[1]!.parentRef).toEqual({ group: '', kind: 'Service', name: 'web' });

    // A spec change re-evaluates ours; the foreign entry still stands untouched.
    await edit(route('both', '/bad(?=x)', { parentRefs }));
    await until(async () => (await accepted('both'))?.status === 'False', 'Accepted=False after the bad change');
    expect((await statusOf('HTTPRoute', GW, 'both')).parents![0]).toEqual(foreign);
  });

  it('writes nothing when the object already says it: later snapshots and a restarted agent send no PATCH', async () => {
    await create(route('good'));
    await create(route('bad', '/x(?=y)'));
    const first = await startAgent();
    await until(async () => (await accepted('good'))?.status === 'True' && (await accepted('bad'))?.status === 'False', 'both routes written');
    await settled();
    const before = statusPatches();
    expect(before).toBe(2);
    // New snapshots that change no status: an unrelated Service, a label on a route (no new generation).
    let version = first.store.current().version;
    await create(service('other'));
    await until(() => first.store.current().version > version, 'a snapshot with the new Service');
    version = first.store.current().version;
    const labelled = route('good');
    await edit({ ...labelled, metadata: { ...labelled.metadata, labels: { team: 'a' } } });
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
    for (const n of names) await create(route(n, n === 'r3' ? '/broken(?=x)' : `/${n}`));
    await create({ apiVersion: 'security.trellis.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-admin', namespace: ns }, spec: { action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin'] } }] }] } });
    // No spread: both agents wake at once on the same snapshot, so some writes race.
    const [a, b] = await Promise.all([startAgent({ spreadMs: 0 }), startAgent({ spreadMs: 0 })]);
    await until(async () => (await Promise.all(names.map((n) => accepted(n)))).every(Boolean), 'every route written');
    await settled();
    expect((await Promise.all(names.map((n) => accepted(n)))).map((c) => c!.status)).toEqual(['True', 'True', 'False', 'True', 'True']);
    expect((await statusOf('AuthorizationPolicy', 'security.trellis.dev/v1alpha1', 'deny-admin')).conditions).toMatchObject([{ type: 'Accepted', status: 'True' }]);
    const written = (await writes(a, 'written')) + (await writes(b, 'written'));
    const conflicts = (await writes(a, 'conflict')) + (await writes(b, 'conflict'));
    expect(written).toBe(names.length + 1);
    expect(statusPatches()).toBe(written + conflicts);

    // A change seen by both: still one write.
    await edit(route('r1', '/now-broken(?=x)'));
    await until(async () => (await accepted('r1'))?.status === 'False', 'r1 rejected');
    await settled();
    expect((await writes(a, 'written')) + (await writes(b, 'written'))).toBe(names.length + 2);
  });

  it('a write against a stale copy gets 409 Conflict, reads the object once more and writes once', async () => {
    await create(route('r'));
    // The informer's copy with an old resourceVersion, as when another agent has just written.
    const agent = await startAgent({ current: (_ref, o) => o && { ...o, metadata: { ...o.metadata, resourceVersion: '1' } } });
    await until(async () => (await accepted('r'))?.status === 'True', 'the route written');
    await settled();
    expect(await writes(agent, 'conflict')).toBe(1);
    expect(await writes(agent, 'written')).toBe(1);
    const reads = agentRequests().filter((r) => r.verb === 'get' && r.subresource === 'status' && r.name === 'r');
    expect(reads).toHaveLength(1);
    // The real server's answer to the stale precondition.
    expect(agentRequests().filter((r) => r.verb === 'patch' && r.subresource === 'status').map((r) => r.code)).toEqual([409, 200]);
  });

  it('every Trellis kind gets its Accepted condition; invalid policies get Accepted=False with the reason', async () => {
    const sec = 'security.trellis.dev/v1alpha1';
    const traffic = 'traffic.trellis.dev/v1alpha1';
    // Invalid to Trellis, stored by the CRDs: the policy kinds keep unknown fields (a typo is refused by the
    // agent, not pruned); a RetryBudget ttl the schema's pattern lets through but Trellis bounds to 1-60 s.
    await create({ apiVersion: sec, kind: 'AuthorizationPolicy', metadata: { name: 'typo', namespace: ns }, spec: { rules: [{ from: [{ source: { notPrincipal: ['cluster.local/ns/x/sa/y'] } }] }] } });
    await create({ apiVersion: sec, kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: ns }, spec: { mtls: { mode: 'STRICT' } } });
    await create({ apiVersion: sec, kind: 'PeerAuthentication', metadata: { name: 'typo', namespace: ns }, spec: { mtls: { mod: 'STRICT' } } });
    await create({ apiVersion: traffic, kind: 'FaultInjection', metadata: { name: 'slow', namespace: ns }, spec: { delay: { fixedDelay: '1s', percentage: { value: 10 } } } });
    await create({ apiVersion: traffic, kind: 'RetryBudget', metadata: { name: 'web', namespace: ns }, spec: { targetRef: { group: '', kind: 'Service', name: 'web' }, retryRatio: 0.2 } });
    await create({ apiVersion: traffic, kind: 'RetryBudget', metadata: { name: 'slow-window', namespace: ns }, spec: { targetRef: { group: '', kind: 'Service', name: 'web-v2' }, ttl: '2m' } });
    // An EgressNetwork, and one whose prefix length the schema's pattern lets through but no address family has.
    await create({ apiVersion: traffic, kind: 'EgressNetwork', metadata: { name: 'internet', namespace: ns }, spec: { trafficPolicy: 'Deny', hosts: [{ name: 'api.example.com' }] } });
    await create({ apiVersion: traffic, kind: 'EgressNetwork', metadata: { name: 'wide', namespace: ns }, spec: { trafficPolicy: 'Allow', networks: [{ cidr: '198.18.0.0/40' }] } });
    await create({
      apiVersion: GW, kind: 'GRPCRoute', metadata: { name: 'g', namespace: ns },
      spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web-v2' }], rules: [{ backendRefs: [{ name: 'web', port: 80 }] }] },
    });
    await startAgent();
    const cond = async (apiVersion: string, kind: string, name: string) => (await statusOf(kind, apiVersion, name)).conditions?.find((c) => c.type === 'Accepted');
    const all: [string, string, string][] = [[sec, 'AuthorizationPolicy', 'typo'], [sec, 'PeerAuthentication', 'strict'], [sec, 'PeerAuthentication', 'typo'], [traffic, 'FaultInjection', 'slow'], [traffic, 'RetryBudget', 'web'], [traffic, 'RetryBudget', 'slow-window'], [traffic, 'EgressNetwork', 'internet'], [traffic, 'EgressNetwork', 'wide']];
    await until(async () => (await Promise.all(all.map(([v, k, n]) => cond(v, k, n)))).every(Boolean) && (await ourParents('g', 'GRPCRoute')).length === 1, 'every object written');
    const typo = (await cond(sec, 'AuthorizationPolicy', 'typo'))!;
    expect(typo).toMatchObject({ status: 'False', reason: 'Invalid', observedGeneration: 1 });
    expect(typo.message).toMatch(/notPrincipal: unknown field/);
    expect(await cond(sec, 'PeerAuthentication', 'strict')).toMatchObject({ status: 'True', reason: 'Accepted', observedGeneration: 1 });
    expect(await cond(sec, 'PeerAuthentication', 'typo')).toMatchObject({ status: 'False', reason: 'Invalid' });
    expect((await cond(sec, 'PeerAuthentication', 'typo'))!.message).toMatch(/spec\.mtls\.mod: unknown field/);
    expect(await cond(traffic, 'FaultInjection', 'slow')).toMatchObject({ status: 'True', observedGeneration: 1 });
    expect(await cond(traffic, 'RetryBudget', 'web')).toMatchObject({ status: 'True', reason: 'Accepted', observedGeneration: 1 });
    expect(await cond(traffic, 'RetryBudget', 'slow-window')).toMatchObject({ status: 'False', reason: 'Invalid', message: 'spec.ttl must be a duration from 1s to 60s such as "10s"', observedGeneration: 1 });
    expect(await cond(traffic, 'EgressNetwork', 'internet')).toMatchObject({ status: 'True', reason: 'Accepted', message: 'valid; in force (Deny)', observedGeneration: 1 });
    expect(await cond(traffic, 'EgressNetwork', 'wide')).toMatchObject({
      status: 'False',
      reason: 'Invalid',
      message: 'spec.networks[0].cidr: "198.18.0.0/40": prefix length must be 0 to 32. Until it is fixed it stands as Allow with no host declared over 0.0.0.0/0, ::/0 (policy never fails open).',
    });
    expect((await ourParents('g', 'GRPCRoute'))[0]!.conditions.map((c) => `${c.type}=${c.status}`)).toEqual(['Accepted=True', 'ResolvedRefs=True']);
    // The status writes changed no spec: generations stay at 1.
    expect((await get('AuthorizationPolicy', sec, 'typo'))!.metadata['generation']).toBe(1);
  });

  it('stays under its rate: six writes at 20/s with a burst of one take at least 250 ms', async () => {
    for (let i = 0; i < 6; i++) await create(route(`r${i}`));
    const agent = await startAgent({ spreadMs: 0, ratePerSecond: 20, burst: 1 });
    const started = Date.now(); // the first write goes out on the next tick, the others one per 50 ms
    await until(async () => (await Promise.all(Array.from({ length: 6 }, (_, i) => accepted(`r${i}`)))).every(Boolean), 'six routes written');
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    await agent.writer.idle();
    expect(await writes(agent, 'written')).toBe(6);
  });

  it('keeps at most four writes in flight: eight writes to a server answering in 150 ms take two rounds', async () => {
    for (let i = 0; i < 8; i++) await create(route(`r${i}`));
    const agent = await startAgent({ spreadMs: 0 });
    // A slow path to the API server: whatever the agent sends arrives 150 ms late (before the first write: it goes
    // out on a later tick).
    cluster.forward.setLatency(150);
    const started = Date.now();
    await until(async () => (await Promise.all(Array.from({ length: 8 }, (_, i) => accepted(`r${i}`)))).every(Boolean), 'eight routes written');
    expect(Date.now() - started).toBeGreaterThanOrEqual(290); // two rounds of 150 ms (timers may fire a millisecond early)
    await agent.writer.idle();
    expect(await writes(agent, 'written')).toBe(8);
  });

  it('a write that fails is counted, logged and retried with backoff once the API server answers again', async () => {
    await create(route('r'));
    const agent = await startAgent({ spreadMs: 300 });
    // The partition starts before the spread delay ends: the write cannot get through.
    cluster.forward.pause();
    await until(() => log.lines().some((l) => l.msg === 'status write failed; retrying later'), 'the failed write logged', 3000);
    expect(await writes(agent, 'error')).toBe(1);
    expect(log.lines().find((l) => l.msg === 'status write failed; retrying later')).toMatchObject({ level: 20, object: `HTTPRoute/${ns}/r`, failures: 1 });
    cluster.forward.resume();
    await until(async () => (await accepted('r'))?.status === 'True', 'the retried write');
    await agent.writer.idle();
    expect(await writes(agent, 'written')).toBe(1);
    expect(await writes(agent, 'error')).toBe(1);
  });
});
