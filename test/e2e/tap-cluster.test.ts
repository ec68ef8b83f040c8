// The live tap in cluster mode, against a real API server and real RBAC: a two-node lab whose agents take the state
// from kube-apiserver (built from source) and their certificates from the identity service serve tap on their TCP port
// over TLS. Callers are service accounts with real tokens: one bound to the trellis-tap ClusterRole in the tapped
// namespace sees both sides of 100 requests (identities, statuses, the route), one without the binding is refused
// PERMISSION_DENIED naming what it lacks, no token or a garbage one UNAUTHENTICATED; `trellis tap --kubeconfig` finds
// the agents through the API and merges their streams; a tap at full request rate leaves the client's success rate
// whole and counts what it dropped. Needs root and the build (dist/).
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, TAP_PORT } from '../../agent/constants.js';
import { connectInNetns } from '../../agent/native/index.js';
import type { TapEvent } from '../../agent/tap/events.js';
import type { ObserveRequest } from '../../agent/tap/proto.js';
import { Lab } from '../../lab/cluster/lab.js';
import { writeKubeconfigFile } from '../../lab/controlplane/controlplane.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import type { HttpClientSummary } from '../../lab/tools/http-client.js';
import { observe, type TapRemote } from '../../viz/tap/client.js';
import { observeRequest } from '../../viz/tap/request.js';
import { ApiForward } from '../support/api-forward.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../..');
const fixtures = path.join(import.meta.dirname, 'fixtures', 'tap.yaml');
const labName = `tq${Math.random().toString(36).slice(2, 5)}`;
const NODES = ['node-a', 'node-b'] as const;
const AGENT_ID = `spiffe://cluster.local/ns/${AGENT_NAMESPACE}/sa/${AGENT_SERVICE_ACCOUNT}`;
/** Callers: service accounts of a namespace of their own; the viewer bound to trellis-tap in `tap`, the stranger not. */
const USERS_NS = 'ops';

let lab: Lab;
let caPem: string;
const forwards = new Map<string, ApiForward>();
const tokens: Record<'viewer' | 'stranger', string> = { viewer: '', stranger: '' };
const vip = (service: string) => lab.services.find((s) => s.namespace === 'tap' && s.name === service)!.clusterIP;

/** Runs `trellis tool ...` in a pod and returns its last JSON line. */
async function tool<T>(pod: string, args: string[], timeoutMs = 60_000): Promise<T> {
  const r = await lab.exec(pod, ['trellis', 'tool', ...args], { timeoutMs });
  const line = r.stdout.trim().split('\n').at(-1) ?? '';
  try {
    return JSON.parse(line) as T;
  } catch {
    throw new Error(`trellis tool ${args.join(' ')} in ${pod} printed no JSON (exit ${r.code}): ${r.stdout.slice(0, 500)} ${r.stderr.slice(0, 500)}`);
  }
}

/** The node's agent's tap port, as `trellis tap --kubeconfig` reaches it: TLS to the agent's SVID, the caller's token. */
function remote(node: string, token: string): TapRemote {
  return { address: `127.0.0.1:${forwards.get(node)!.port}`, caPem, identity: AGENT_ID, token };
}

interface Stream {
  events: TapEvent[];
  accepted: boolean;
  /** Resolves when the stream ends: the error the client saw (a refusal), or undefined. */
  done: Promise<Error | undefined>;
  cancel(): void;
}

function tapAgent(node: string, token: string, request: ObserveRequest): Stream {
  const s: Stream = { events: [], accepted: false, done: Promise.resolve(undefined), cancel: () => undefined };
  s.done = new Promise((resolve) => {
    const stream = observe(`${node}:${TAP_PORT}`, request, { accepted: () => (s.accepted = true), event: (e) => s.events.push(e), end: resolve }, remote(node, token));
    s.cancel = () => stream.cancel();
  });
  return s;
}

async function metric(node: string, name: string): Promise<number> {
  return sumOf(parsePrometheus(await lab.metrics(node)), name, {});
}

async function tapsOpen(n: number): Promise<void> {
  await until(`${n} tap(s) open on every agent`, async () => {
    for (const node of NODES) if ((await metric(node, 'trellis_tap_streams')) !== n) return false;
    return true;
  }, 15_000);
}

const apiTap = (extra: Partial<Parameters<typeof observeRequest>[0]> = {}) =>
  observeRequest({ target: { namespace: 'tap', name: 'api' }, maxRps: 0, limit: 0, durationMs: 0, ...extra });

describe('tap in cluster mode: RBAC decides (real kube-apiserver, two-node lab)', () => {
  beforeAll(async () => {
    requireRoot('the cluster-mode tap end-to-end tests');
    // A cap high enough for 100 requests at once; the full-rate test asks for less.
    // The route's rule has a name (`rule=main` in the events): Gateway API's experimental channel.
    lab = await Lab.up(fixtures, { name: labName, cluster: { gatewayChannel: 'experimental' }, logLevel: 'warn', agentArgs: ['--tap-max-rps', '1000'] });
    const node = lab.node('node-b');
    await until('tap/api-0 to listen on 8080', () =>
      new Promise<boolean>((resolve) => {
        const s = connectInNetns(node.netnsPath, { host: lab.pod('tap/api-0').ip, port: 8080, timeoutMs: 1000 });
        s.once('connect', () => (s.destroy(), resolve(true)));
        s.once('error', () => resolve(false));
      }), 20_000);
    const kube = lab.kube;
    const bundle = await kube.get({ apiVersion: 'v1', kind: 'ConfigMap', namespace: AGENT_NAMESPACE, name: 'trellis-ca-root' });
    caPem = (bundle!['data'] as Record<string, string>)['root-cert.pem']!;
    await kube.create({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: USERS_NS } });
    for (const who of ['viewer', 'stranger'] as const) {
      await kube.create({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: who, namespace: USERS_NS } });
      tokens[who] = (await kube.createToken(USERS_NS, who, { expirationSeconds: 3600 })).token;
    }
    // As docs/architecture.md#live-tap has a user grant it: the ClusterRole, bound in the tapped namespace only.
    await kube.create({
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name: 'viewer-tap', namespace: 'tap' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'trellis-tap' },
      subjects: [{ kind: 'ServiceAccount', name: 'viewer', namespace: USERS_NS }],
    });
    // The port opens once the agent's own certificate is issued, beside its readiness.
    for (const n of NODES) {
      await until(`the tap port of ${n}`, () =>
        new Promise<boolean>((resolve) => {
          const s = connectInNetns(lab.node(n).netnsPath, { host: lab.node(n).fabricIp, port: TAP_PORT, timeoutMs: 1000 });
          s.once('connect', () => (s.destroy(), resolve(true)));
          s.once('error', () => resolve(false));
        }), 20_000);
    }
    // The host has no route into the lab: a forwarder per node to the agent's port, inside the node's netns.
    for (const n of NODES) forwards.set(n, await ApiForward.start(lab.node(n).netnsPath, { host: lab.node(n).fabricIp, port: TAP_PORT }));
  }, 240_000);

  afterAll(async () => {
    for (const f of forwards.values()) await f.close();
    await lab?.down();
    const { stdout } = await run('ip', ['netns', 'list']);
    expect(stdout).not.toContain(`trl-${labName}-`);
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  it('a caller bound to trellis-tap in the namespace sees both sides of 100 requests: identities, statuses, the route', async () => {
    const streams = NODES.map((n) => tapAgent(n, tokens.viewer, apiTap({ limit: 100 })));
    await tapsOpen(1);
    await until('both streams accepted', async () => streams.every((s) => s.accepted), 5_000);
    const load = await tool<HttpClientSummary>('tap/client', ['http-client', '--url', `http://${vip('api')}/items`, '--count', '100']);
    expect(load.statusCounts).toEqual({ 200: 100 });
    // Each agent ends its stream at the limit: 100 requests each.
    expect(await Promise.all(streams.map((s) => s.done))).toEqual([undefined, undefined]);
    const [a, b] = streams.map((s) => s.events) as [TapEvent[], TapEvent[]];
    const ends = (events: TapEvent[]) => events.filter((e) => e.responseEnd);
    const inits = (events: TapEvent[]) => events.filter((e) => e.requestInit);
    expect(ends(a)).toHaveLength(100);
    expect(ends(b)).toHaveLength(100);
    const peers = {
      security: 'mutual_tls',
      source: { workload: 'client', namespace: 'tap', identity: 'spiffe://cluster.local/ns/tap/sa/client' },
      destination: { workload: 'api', namespace: 'tap', pod: 'api-0', identity: 'spiffe://cluster.local/ns/tap/sa/api', port: 8080 },
    };
    for (const e of ends(a)) expect(e).toMatchObject({ ...peers, node: 'node-a', reporter: 'source', route: 'tap/api-route', rule: 'main', responseEnd: { httpStatus: 200 } });
    for (const e of ends(b)) expect(e).toMatchObject({ ...peers, node: 'node-b', reporter: 'destination', authz: { decision: 'allow' }, responseEnd: { httpStatus: 200 } });
    for (const e of [...inits(a), ...inits(b)]) expect(e.requestInit).toMatchObject({ method: 'GET', path: '/items' });
    // The same 100 requests on both sides.
    const ids = (events: TapEvent[]) => inits(events).map((e) => e.requestInit!.requestId).sort();
    expect(ids(a)).toEqual(ids(b));
    expect(new Set(ids(a)).size).toBe(100);
    for (const s of streams) expect(s.events.at(-1)!.summary).toMatchObject({ delivered: 100, end: 'limit' });
    await tapsOpen(0);
  });

  it('a caller without the binding is refused PERMISSION_DENIED, naming the permission it lacks and where', async () => {
    for (const node of NODES) {
      const s = tapAgent(node, tokens.stranger, apiTap());
      const error = await s.done;
      expect(error?.message).toMatch(/^PERMISSION_DENIED: user system:serviceaccount:ops:stranger may not watch tap\.tap\.trellis\.dev in namespace tap/);
      expect(error?.message).toContain('kubectl create rolebinding NAME -n tap --clusterrole=trellis-tap --serviceaccount=ops:stranger');
      expect(s.accepted).toBe(false);
    }
    // The viewer's binding is for `tap` only: a tap over every namespace needs a cluster-wide one.
    const everything = await tapAgent('node-a', tokens.viewer, {}).done;
    expect(everything?.message).toMatch(/^PERMISSION_DENIED: user system:serviceaccount:ops:viewer may not watch tap\.tap\.trellis\.dev in all namespaces/);
    expect(await metric('node-a', 'trellis_tap_streams')).toBe(0);
  });

  it('no token, or one the API server does not know, is UNAUTHENTICATED', async () => {
    expect((await tapAgent('node-b', '', apiTap()).done)?.message).toMatch(/^UNAUTHENTICATED: no bearer token/);
    const garbage = await tapAgent('node-b', 'eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl', apiTap()).done;
    expect(garbage?.message).toMatch(/^UNAUTHENTICATED: the token is not valid/);
    expect(await metric('node-b', 'trellis_tap_streams')).toBe(0);
  });

  it('`trellis tap --kubeconfig`, run on a node: every node\'s agent found through the API, the streams merged; a stranger told why', async () => {
    // The user's kubeconfig: the API server as the nodes reach it, the service account's token.
    const admin = new KubeConfig();
    admin.loadFromFile(lab.adminKubeconfig);
    const apiServer = admin.getCurrentCluster()!;
    const kubeconfig = (who: 'viewer' | 'stranger') => {
      const file = path.join(lab.stateDir, `tap-${who}.kubeconfig`);
      writeKubeconfigFile(file, { server: apiServer.server, caPem: Buffer.from(apiServer.caData!, 'base64').toString('utf8'), user: { token: tokens[who] } });
      return file;
    };
    const trellis = (args: string[]) => lab.execInNode('node-a', [path.join(ROOT, 'node_modules/.bin/node'), path.join(ROOT, 'dist/agent/main.js'), 'tap', ...args], { timeoutMs: 60_000 });
    const load = tool<HttpClientSummary>('tap/client', ['http-client', '--url', `http://${vip('api')}/items`, '--count', '400', '--interval-ms', '10']);
    const r = await trellis(['tap/api', '--kubeconfig', kubeconfig('viewer'), '--limit', '20', '--max-rps', '1000', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^tapping tap\/api on 2 agents of cluster https:\/\/\S+ \(every node: callers can run anywhere\): node-a, node-b$/m);
    const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as TapEvent);
    const ends = events.filter((e) => e.responseEnd);
    expect(ends).toHaveLength(20);
    // Both sides, merged: the caller's agent (with the route) and the callee's.
    expect(new Set(ends.map((e) => `${e.node}/${e.reporter}`))).toEqual(new Set(['node-a/source', 'node-b/destination']));
    expect(ends.filter((e) => e.reporter === 'source').every((e) => e.route === 'tap/api-route')).toBe(true);
    expect(r.stderr).toMatch(/^20 observations from 2 agents, 0 dropped/m);
    expect((await load).failed).toBe(0);

    const refused = await trellis(['tap/api', '--kubeconfig', kubeconfig('stranger'), '--limit', '1']);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/node-a: PERMISSION_DENIED: user system:serviceaccount:ops:stranger may not watch tap\.tap\.trellis\.dev in namespace tap/);
    expect(refused.stderr).toMatch(/no agent could be tapped/);
    await tapsOpen(0);
  });

  it('a tap at full request rate leaves the client\'s success rate whole, and counts every request it did not send', async () => {
    const N = 1000;
    const load = () => tool<HttpClientSummary>('tap/client', ['http-client', '--url', `http://${vip('api')}/items`, '--count', String(N), '--concurrency', '8'], 120_000);
    const untapped = await load();
    expect(untapped.statusCounts).toEqual({ [200]: N });
    // Every request of the workload, at 20/s per agent at most: the rest dropped, and the count said in the stream.
    const streams = NODES.map((n) => tapAgent(n, tokens.viewer, apiTap({ maxRps: 20 })));
    await tapsOpen(1);
    const tapped = await load();
    expect(tapped.statusCounts).toEqual({ [200]: N });
    expect(tapped.failed).toBe(0);
    const delivered = (s: Stream) => s.events.filter((e) => e.responseEnd).length;
    const dropped = (s: Stream) => s.events.reduce((n, e) => n + (e.dropped ?? 0), 0);
    // A drop is told within a second (a summary when no event carries it): then every request is sent or counted.
    await until('every request sent or counted as dropped', async () => streams.every((s) => delivered(s) + dropped(s) >= N), 15_000);
    for (const s of streams) {
      expect(delivered(s) + dropped(s)).toBe(N);
      expect(dropped(s)).toBeGreaterThan(0);
      s.cancel();
    }
    await tapsOpen(0);
  }, 180_000);
});
