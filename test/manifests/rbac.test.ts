// Least privilege, checked against the code: the kube source, the status writer and the identity service run against
// a real control plane with manifests/ installed, each with its service account's real token, so the real RBAC
// authorizer decides. The API server's audit log is the list of requests they made: every one must be allowed (by the
// real server and by the Roles and bindings in manifests/, read by the matcher below), every permission there must be
// used by at least one request ("nothing more"), and `kubectl auth can-i --list` for each account must name exactly
// what the code used.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCa } from '../../agent/identity/ca.js';
import { generateKey, makeCsr } from '../../agent/identity/certs.js';
import { KubeIdentityCluster } from '../../agent/identity-service/cluster.js';
import { RemoteSigner } from '../../agent/identity/remote.js';
import { startIdentityService, type IdentityServiceInputs } from '../../agent/identity-service/service.js';
import { KubeSource } from '../../agent/sources/kube.js';
import { KubeTapReviewer } from '../../agent/tap/kube-review.js';
import { TAP_CLUSTER_ROLE } from '../../agent/tap/authorize.js';
import { StatusWriter } from '../../agent/sources/status-writer.js';
import { Store } from '../../agent/state/store.js';
import { createPod, ensure } from '../../lab/cluster/kubelet.js';
import type { ApiObject } from '../../lab/controlplane/client.js';
import { AGENT_USER, IDENTITY_USER, resignToken, startTestCluster, type AuditedRequest, type TestCluster } from '../support/control-plane.js';
import { until } from '../support/until.js';
import { installObjects, type KubeObject } from './load.js';
import { allowedBy, grantsFor, permissions, ruleAllows, suggestRule, uses, type ApiRequest, type Grant } from './rbac-match.js';

const NS = 'trellis-system';
const TD = 'cluster.local';
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const HOUR = 3_600_000;
const silent = pino({ level: 'silent' });

const objects = installObjects().map(({ obj }) => obj);
const users = { agent: AGENT_USER, identity: IDENTITY_USER } as const;

function describeRequest(r: ApiRequest): string {
  const res = r.subresource ? `${r.resource}/${r.subresource}` : r.resource;
  return `${r.verb} ${r.group || 'core'}/${res}${r.namespace ? ` in ${r.namespace}` : ''}${r.name ? ` name=${r.name}` : ''}`;
}

/**
 * An audited request as RBAC sees it: the audit log names the object of a create (from its body), but the
 * authorizer gets no name on a create, so resourceNames never allow one.
 */
function asRbacRequest(r: AuditedRequest): ApiRequest {
  return {
    verb: r.verb,
    group: r.group,
    resource: r.resource,
    ...(r.subresource && { subresource: r.subresource }),
    ...(r.namespace && { namespace: r.namespace }),
    ...(r.name && r.verb !== 'create' && { name: r.name }),
    user: r.user,
  };
}

/** One row of `kubectl auth can-i --list`, as (resource[.group][/subresource], resource name or '', verb) triples. */
interface CanI {
  resource: string;
  name: string;
  verb: string;
}

function parseCanIList(text: string): CanI[] {
  const out: CanI[] = [];
  for (const line of text.trim().split('\n').slice(1)) {
    const m = /^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$/.exec(line);
    if (!m || !m[1]) continue; // non-resource URLs
    const names = m[3]!.split(' ').filter(Boolean);
    for (const verb of m[4]!.split(' ').filter(Boolean)) for (const name of names.length ? names : ['']) out.push({ resource: m[1], name, verb });
  }
  return out;
}

/** How kubectl names the resource of a request: plural[.group][/subresource]. */
function canIResource(r: ApiRequest): string {
  return `${r.resource}${r.group ? `.${r.group}` : ''}${r.subresource ? `/${r.subresource}` : ''}`;
}

describe('the RBAC matcher', () => {
  const rule = { apiGroups: [''], resources: ['configmaps'], verbs: ['get', 'list', 'watch'], resourceNames: ['root'] };
  it('matches group, resource, verb and name, and never a create or an unnamed list through resourceNames', () => {
    expect(ruleAllows(rule, { verb: 'get', group: '', resource: 'configmaps', name: 'root' })).toBe(true);
    expect(ruleAllows(rule, { verb: 'get', group: '', resource: 'configmaps', name: 'other' })).toBe(false);
    expect(ruleAllows(rule, { verb: 'list', group: '', resource: 'configmaps' })).toBe(false);
    expect(ruleAllows(rule, { verb: 'watch', group: '', resource: 'configmaps', name: 'root' })).toBe(true);
    expect(ruleAllows({ ...rule, verbs: ['create'] }, { verb: 'create', group: '', resource: 'configmaps', name: 'root' })).toBe(false);
    expect(ruleAllows(rule, { verb: 'get', group: 'apps', resource: 'configmaps', name: 'root' })).toBe(false);
  });

  it('keeps subresources apart and a Role to its namespace', () => {
    const pods = { apiGroups: [''], resources: ['pods'], verbs: ['update'] };
    expect(ruleAllows(pods, { verb: 'update', group: '', resource: 'pods', subresource: 'status', name: 'p' })).toBe(false);
    expect(ruleAllows({ ...pods, resources: ['pods/status'] }, { verb: 'update', group: '', resource: 'pods', subresource: 'status', name: 'p' })).toBe(true);
    const role: Grant = { via: 'Role/x', namespace: 'a', rules: [{ apiGroups: [''], resources: ['pods', 'namespaces'], verbs: ['get'] }] };
    expect(allowedBy([role], { verb: 'get', group: '', resource: 'pods', namespace: 'a', name: 'p' })).toHaveLength(1);
    expect(allowedBy([role], { verb: 'get', group: '', resource: 'pods', namespace: 'b', name: 'p' })).toHaveLength(0);
    expect(allowedBy([role], { verb: 'get', group: '', resource: 'namespaces', name: 'a' })).toHaveLength(0);
    expect(allowedBy([{ ...role, namespace: undefined }], { verb: 'get', group: '', resource: 'pods', namespace: 'b', name: 'p' })).toHaveLength(1);
  });

  it('finds the grants of each service account in manifests/', () => {
    expect(grantsFor(objects, AGENT_USER).map((g) => g.via)).toContain('ClusterRole/trellis-agent via ClusterRoleBinding/trellis-agent');
    expect(grantsFor(objects, IDENTITY_USER).map((g) => g.via).sort()).toEqual([
      'ClusterRole/trellis-identity via ClusterRoleBinding/trellis-identity',
      'Role/trellis-identity via RoleBinding/trellis-identity',
    ]);
    expect(grantsFor(objects, 'system:serviceaccount:default:default')).toEqual([]);
  });
});

describe('RBAC against the code, on a real API server', () => {
  let cluster: TestCluster;
  let requests: AuditedRequest[] = [];
  const canI: Record<string, CanI[]> = {};
  /** Everything each account may do, what every authenticated user may do included. */
  const canIAll: Record<string, CanI[]> = {};

  beforeAll(async () => {
    cluster = await startTestCluster({ audit: true });
    const api = cluster.api;
    // A small cluster: the mesh namespace with one workload on node-a, the agent's own pod, the CA Secret.
    await ensure(api, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop', annotations: { 'trellis.dev/mesh': 'enabled' } } });
    await ensure(api, { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'web', namespace: 'shop' } });
    const web = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'web-1', namespace: 'shop', labels: { app: 'web' } },
      spec: { nodeName: 'node-a', serviceAccountName: 'web', containers: [{ name: 'web', image: 'web', ports: [{ containerPort: 8080 }] }] },
    };
    await cluster.node('node-a');
    await createPod(api, { object: web as never, ip: '10.244.1.5', hostIp: '172.30.0.11', ready: true });
    await api.create({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'shop' }, spec: { selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } });
    // One object of every kind whose status the agent writes.
    const parentRefs = [{ group: '', kind: 'Service', name: 'web' }];
    const statusObjects = [
      { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', spec: { parentRefs, rules: [{ backendRefs: [{ name: 'web', port: 80 }] }] } },
      { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GRPCRoute', spec: { parentRefs: [{ ...parentRefs[0], port: 80 }], rules: [{ backendRefs: [{ name: 'web', port: 80 }] }] } },
      { apiVersion: 'traffic.trellis.dev/v1alpha1', kind: 'FaultInjection', spec: { delay: { fixedDelay: '1s', percentage: { value: 10 } } } },
      { apiVersion: 'traffic.trellis.dev/v1alpha1', kind: 'RetryBudget', spec: { targetRef: { group: '', kind: 'Service', name: 'web' } } },
      { apiVersion: 'traffic.trellis.dev/v1alpha1', kind: 'EgressNetwork', spec: { trafficPolicy: 'Deny' } },
      { apiVersion: 'security.trellis.dev/v1alpha1', kind: 'AuthorizationPolicy', spec: { action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin'] } }] }] } },
      { apiVersion: 'security.trellis.dev/v1alpha1', kind: 'PeerAuthentication', spec: { mtls: { mode: 'STRICT' } } },
    ];
    const ref = (o: (typeof statusObjects)[number]) => ({ apiVersion: o.apiVersion, kind: o.kind, namespace: 'shop', name: `web-${o.kind.toLowerCase()}` });
    for (const o of statusObjects) await api.create({ ...o, metadata: { name: ref(o).name, namespace: 'shop' } } as ApiObject);
    const caDir = fs.mkdtempSync(path.join(os.tmpdir(), 'trellis-rbac-ca-'));
    LocalCa.generate({ trustDomain: TD }).save(caDir);
    await api.create({
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'trellis-ca', namespace: NS },
      type: 'Opaque',
      data: Object.fromEntries(['ca.key.pem', 'ca.cert.pem'].map((f) => [f, fs.readFileSync(path.join(caDir, f)).toString('base64')])),
    });
    fs.rmSync(caDir, { recursive: true, force: true });

    // 1. The agent's kube source, with the agent's token (bound to its pod on node-a): lists, then watches, then
    //    sees a change. Its status writer writes every object's status; handed copies with an old resourceVersion, it
    //    meets 409 Conflict on each and re-reads once, as when another agent wrote first.
    const agentKubeconfig = cluster.kubeconfig('agent', (await cluster.agentToken('node-a')).token);
    const store = new Store({ trustDomain: TD, logger: silent });
    const source = new KubeSource({ kubeconfig: agentKubeconfig, node: 'node-a', logger: silent, onSnapshot: (snap) => store.replace(snap.objects), debounceMs: 10 });
    const writer = new StatusWriter({
      kubeconfig: agentKubeconfig,
      current: (r) => {
        const o = source.cached(r.kind, r.namespace, r.name);
        return o && { ...o, metadata: { ...o.metadata, resourceVersion: '1' } };
      },
      logger: silent,
      spreadMs: 0,
    });
    store.subscribe((next) => writer.update(next));
    try {
      await source.start();
      writer.update(store.current());
      await until('the status of every route and Trellis object', async () =>
        (await Promise.all(statusObjects.map((o) => api.get(ref(o))))).every((o) => o?.['status'] && Object.keys(o['status'] as object).length > 0),
      10_000);
      await writer.idle();
      const mine = (verb: string) => new Set(cluster.audit().filter((r) => r.user === AGENT_USER && r.verb === verb).map((r) => r.resource));
      await until('the kube source to watch every kind it listed', async () => [...mine('list')].every((r) => mine('watch').has(r)));
      await api.patch({ apiVersion: 'v1', kind: 'Pod', namespace: 'shop', name: 'web-1' }, { metadata: { labels: { app: 'web', rev: '2' } } });
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      writer.close();
      source.close();
    }

    // 1b. The agent's tap port asking who a caller is and whether they may tap (TokenReview, SubjectAccessReview).
    const reviewer = new KubeTapReviewer(agentKubeconfig);
    const caller = await reviewer.authenticate((await api.createToken('shop', 'web')).token);
    expect(caller).toMatchObject({ authenticated: true, user: { username: 'system:serviceaccount:shop:web' } });
    if (caller.authenticated) expect(await reviewer.mayWatch(caller.user, 'shop')).toMatchObject({ allowed: false });

    // 2. The identity service, with its own token: starts (reads the CA, creates the bundle ConfigMap) and signs
    //    for an agent whose token names its node, and for one whose node comes from the token's bound pod.
    const kc = new KubeConfig();
    kc.loadFromFile(cluster.kubeconfig('identity', (await api.createToken(NS, 'trellis-identity')).token));
    const inputs: IdentityServiceInputs = {
      listen: { host: '127.0.0.1', port: 0 },
      caSecret: { namespace: NS, name: 'trellis-ca' },
      bundleConfigMap: { namespace: NS, name: 'trellis-ca-root' },
      trustDomain: TD,
      audience: 'trellis-identity',
      agentServiceAccount: AGENT_USER,
      certTtlMs: HOUR,
      cluster: new KubeIdentityCluster(kc),
      logger: silent,
    };
    const withNode = (await cluster.agentToken('node-a', { audiences: ['trellis-identity'] })).token;
    // As API servers before 1.30 issue them: bound to the pod, without its node (re-signed with the cluster's key).
    const podOnly = resignToken(cluster.cp, withNode, (c) => delete (c['kubernetes.io'] as Record<string, unknown>)['node']);
    const service = await startIdentityService(inputs);
    try {
      for (const token of [withNode, podOnly]) {
        const tokenFile = path.join(cluster.dir, `token-${crypto.randomUUID()}`);
        fs.writeFileSync(tokenFile, token);
        const signer = new RemoteSigner({ address: `127.0.0.1:${service.port}`, tokenFile, caPem: service.rootCertPem, logger: silent });
        try {
          await signer.sign(makeCsr(WEB, await generateKey()), { identity: WEB, ttlMs: HOUR });
        } finally {
          signer.close();
        }
      }
    } finally {
      await service.stop(0);
    }
    // 3. A restart that finds an outdated bundle ConfigMap updates it.
    await api.patch({ apiVersion: 'v1', kind: 'ConfigMap', namespace: NS, name: 'trellis-ca-root' }, { data: { 'root-cert.pem': 'outdated' } });
    await (await startIdentityService(inputs)).stop(0);
    const bundle = await api.get({ apiVersion: 'v1', kind: 'ConfigMap', namespace: NS, name: 'trellis-ca-root' });
    expect((bundle!['data'] as Record<string, string>)['root-cert.pem']).toContain('BEGIN CERTIFICATE');

    requests = cluster.audit();
    // What RBAC gives each account, as the API server itself lists it (SelfSubjectRulesReview), less what every
    // service account gets (discovery, self-reviews, tap discovery): an account bound to nothing shows that part.
    const list = async (user: string) => {
      const r = await cluster.cp.kubectl(['auth', 'can-i', '--list', '-n', NS, `--as=${user}`]);
      expect(r.code, r.stderr).toBe(0);
      return parseCanIList(r.stdout);
    };
    const baseline = new Set((await list(`system:serviceaccount:${NS}:nobody`)).map((c) => JSON.stringify(c)));
    for (const user of Object.values(users)) {
      canIAll[user] = await list(user);
      canI[user] = canIAll[user].filter((c) => !baseline.has(JSON.stringify(c)));
    }
  }, 120_000);

  afterAll(async () => {
    await cluster?.close();
  });

  /** The requests of the two accounts (everything else in the audit log is the test's own, as the admin). */
  const of = (user: string) => requests.filter((r) => r.user === user);

  it('the code made requests only as the two service accounts', () => {
    expect(requests.length).toBeGreaterThan(10);
    const others = new Set(requests.map((r) => r.user).filter((u) => u.startsWith('system:serviceaccount:')));
    expect(others).toEqual(new Set(Object.values(users)));
  });

  it.each(Object.entries(users))('every request of the %s was allowed by the real authorizer, and by its Roles in manifests/', (_who, user) => {
    expect(of(user).filter((r) => r.decision !== 'allow').map((r) => `${describeRequest(asRbacRequest(r))}: ${r.decision}`)).toEqual([]);
    const grants = grantsFor(objects, user);
    const refused = of(user)
      .map(asRbacRequest)
      .filter((r) => allowedBy(grants, r).length === 0)
      .map((r) => `${describeRequest(r)} -> add to ${suggestRule(r)}`);
    expect([...new Set(refused)]).toEqual([]);
  });

  it.each(Object.entries(users))('every permission the %s is granted is used by at least one request', (_who, user) => {
    const mine = of(user).map(asRbacRequest);
    const unused = grantsFor(objects, user)
      .flatMap(permissions)
      .filter((p) => !mine.some((r) => uses(r, p)))
      .map((p) => `${p.grant.via}: ${p.verb} ${p.group || 'core'}/${p.resource}${p.name ? ` name=${p.name}` : ''}`);
    expect(unused, 'granted but never used by the code: remove it, or exercise the code that needs it here').toEqual([]);
  });

  it.each(Object.entries(users))('`kubectl auth can-i --list` for the %s is exactly what the code used', (_who, user) => {
    const rows = canI[user]!;
    expect(rows.length).toBeGreaterThan(0);
    const mine = of(user).map(asRbacRequest);
    const matches = (c: CanI, r: ApiRequest) => c.resource === canIResource(r) && c.verb === r.verb && (c.name === '' || c.name === r.name);
    const unused = rows.filter((c) => !mine.some((r) => matches(c, r))).map((c) => `${c.verb} ${c.resource}${c.name ? ` name=${c.name}` : ''}`);
    // Granted by the account's own roles or by what everyone signed in has (trellis-tap-discovery's list pods is the
    // agent's too, and its get on the bundle the identity service's).
    const ungranted = mine.filter((r) => !canIAll[user]!.some((c) => matches(c, r))).map(describeRequest);
    expect({ unused, ungranted }).toEqual({ unused: [], ungranted: [] });
  });

  it('every Role and ClusterRole in manifests/ is bound to one of the service accounts, but those of tap\'s users', () => {
    const bound = new Set(Object.values(users).flatMap((u) => grantsFor(objects, u)).map((g) => g.via.split(' via ')[0]));
    const roles = objects.filter((o: KubeObject) => o.kind === 'Role' || o.kind === 'ClusterRole').map((o) => `${o.kind}/${o.metadata.name}`);
    // trellis-tap for users to bind; trellis-tap-discovery bound to every authenticated user (test/manifests/manifests.test.ts).
    expect(roles.filter((r) => !bound.has(r))).toEqual([`ClusterRole/${TAP_CLUSTER_ROLE}`, 'Role/trellis-tap-discovery']);
  });
});
