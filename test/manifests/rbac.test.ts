// Least privilege, checked against the code: the kube source and the identity service run against the fake API
// server, each with its service account's token, and every request they make must be allowed by the Roles and
// bindings in manifests/, while every permission there must be used by at least one request ("nothing more").
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
import { StatusWriter } from '../../agent/sources/status-writer.js';
import { Store } from '../../agent/state/store.js';
import { FAKE_API_AUDIENCE, FakeApiServer, type RecordedRequest } from '../support/fake-apiserver.js';
import { installObjects, type KubeObject } from './load.js';
import { allowedBy, grantsFor, permissions, ruleAllows, suggestRule, uses, type Grant } from './rbac-match.js';

const NS = 'trellis-system';
const AGENT_USER = `system:serviceaccount:${NS}:trellis-agent`;
const IDENTITY_USER = `system:serviceaccount:${NS}:trellis-identity`;
const TD = 'cluster.local';
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const HOUR = 3_600_000;
const silent = pino({ level: 'silent' });

const objects = installObjects().map(({ obj }) => obj);
const users = { agent: AGENT_USER, identity: IDENTITY_USER } as const;

function describeRequest(r: RecordedRequest): string {
  const res = r.subresource ? `${r.resource}/${r.subresource}` : r.resource;
  return `${r.verb} ${r.group || 'core'}/${res}${r.namespace ? ` in ${r.namespace}` : ''}${r.name ? ` name=${r.name}` : ''}`;
}

async function until(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
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

describe('RBAC against the code', () => {
  let server: FakeApiServer;
  let dir: string;
  let requests: RecordedRequest[] = [];

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trellis-rbac-'));
    server = await FakeApiServer.start({ bookmarkIntervalMs: 200 });
    const agentApiToken = `agent-${crypto.randomUUID()}`;
    const identityApiToken = `identity-${crypto.randomUUID()}`;
    server.addToken(agentApiToken, { username: AGENT_USER, audiences: [FAKE_API_AUDIENCE] });
    server.addToken(identityApiToken, { username: IDENTITY_USER, audiences: [FAKE_API_AUDIENCE] });

    // A small cluster: the mesh namespace with one workload on node-a, the agent's own pod, the CA Secret.
    server.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS } });
    server.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop', annotations: { 'trellis.dev/mesh': 'enabled' } } });
    const web = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'web-1', namespace: 'shop', labels: { app: 'web' } },
      spec: { nodeName: 'node-a', serviceAccountName: 'web', containers: [{ name: 'web', image: 'web', ports: [{ containerPort: 8080 }] }] },
      status: { phase: 'Running', podIP: '10.244.1.5', podIPs: [{ ip: '10.244.1.5' }] },
    };
    server.apply(web);
    const agentPod = server.apply({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'trellis-agent-abcde', namespace: NS, labels: { 'app.kubernetes.io/name': 'trellis-agent' } },
      spec: { nodeName: 'node-a', serviceAccountName: 'trellis-agent', containers: [{ name: 'agent', image: 'trellis' }] },
      status: { phase: 'Running', podIP: '192.168.0.10' },
    }) as unknown as { metadata: { uid: string } };
    server.apply({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'web', namespace: 'shop' },
      spec: { clusterIP: '10.96.0.20', selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] },
    });
    server.apply({
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name: 'web-abc', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'web' } },
      addressType: 'IPv4',
      endpoints: [{ addresses: ['10.244.1.5'], conditions: { ready: true }, nodeName: 'node-a', targetRef: { kind: 'Pod', name: 'web-1', namespace: 'shop' } }],
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    });
    // One object of every kind whose status the agent writes.
    const parentRefs = [{ group: '', kind: 'Service', name: 'web' }];
    const statusObjects = [
      { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', spec: { parentRefs, rules: [{ backendRefs: [{ name: 'web', port: 80 }] }] } },
      { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GRPCRoute', spec: { parentRefs: [{ ...parentRefs[0], port: 80 }], rules: [{ backendRefs: [{ name: 'web', port: 80 }] }] } },
      { apiVersion: 'traffic.trellis.dev/v1alpha1', kind: 'FaultInjection', spec: { delay: { fixedDelay: '1s', percentage: { value: 10 } } } },
      { apiVersion: 'traffic.trellis.dev/v1alpha1', kind: 'RetryBudget', spec: { targetRef: { group: '', kind: 'Service', name: 'web' } } },
      { apiVersion: 'security.trellis.dev/v1alpha1', kind: 'AuthorizationPolicy', spec: { action: 'CUSTOM' } },
      { apiVersion: 'security.trellis.dev/v1alpha1', kind: 'PeerAuthentication', spec: { mtls: { mode: 'STRICT' } } },
    ];
    for (const o of statusObjects) server.apply({ ...o, metadata: { name: `web-${o.kind.toLowerCase()}`, namespace: 'shop' } });
    const caDir = path.join(dir, 'ca');
    LocalCa.generate({ trustDomain: TD }).save(caDir);
    server.apply({
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'trellis-ca', namespace: NS },
      type: 'Opaque',
      data: Object.fromEntries(['ca.key.pem', 'ca.cert.pem'].map((f) => [f, fs.readFileSync(path.join(caDir, f)).toString('base64')])),
    });

    // 1. The agent's kube source, with the agent's token: lists, then watches, then sees a change. Its status
    //    writer writes every object's status; handed copies with an old resourceVersion, it meets 409 Conflict
    //    on each and re-reads once, as when another agent wrote first.
    const agentKubeconfig = server.writeKubeconfig(path.join(dir, 'agent.kubeconfig'), { token: agentApiToken });
    const store = new Store({ trustDomain: TD, logger: silent });
    const source = new KubeSource({ kubeconfig: agentKubeconfig, node: 'node-a', logger: silent, onSnapshot: (snap) => store.replace(snap.objects), debounceMs: 10 });
    const writer = new StatusWriter({
      kubeconfig: agentKubeconfig,
      current: (ref) => {
        const o = source.cached(ref.kind, ref.namespace, ref.name);
        return o && { ...o, metadata: { ...o.metadata, resourceVersion: '1' } };
      },
      logger: silent,
      spreadMs: 0,
    });
    store.subscribe((next) => writer.update(next));
    try {
      await source.start();
      writer.update(store.current());
      const written = () => statusObjects.every((o) => (server.get(o.apiVersion, o.kind, 'shop', `web-${o.kind.toLowerCase()}`) as { status?: object }).status);
      await until(written, 'the status of every route and Trellis object');
      await writer.idle();
      const listed = () => new Set(server.requests().filter((r) => r.user === AGENT_USER && r.verb === 'list').map((r) => r.resource));
      await until(() => {
        const watched = new Set(server.requests().filter((r) => r.user === AGENT_USER && r.verb === 'watch').map((r) => r.resource));
        return [...listed()].every((r) => watched.has(r));
      }, 'the kube source to watch every kind it listed');
      server.apply({ ...web, metadata: { ...web.metadata, labels: { app: 'web', rev: '2' } } });
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      writer.close();
      source.close();
    }

    // 2. The identity service, with its own token: starts (reads the CA, creates the bundle ConfigMap) and signs
    //    for an agent whose token names its node, and for one whose node comes from the token's bound pod.
    const kc = new KubeConfig();
    kc.loadFromFile(server.writeKubeconfig(path.join(dir, 'identity.kubeconfig'), { token: identityApiToken }));
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
    const boundPod = { name: 'trellis-agent-abcde', namespace: NS, uid: agentPod.metadata.uid };
    const tokens = { withNode: `projected-node-${crypto.randomUUID()}`, podOnly: `projected-pod-${crypto.randomUUID()}` };
    server.addToken(tokens.withNode, { username: AGENT_USER, audiences: ['trellis-identity'], pod: boundPod, node: 'node-a' });
    server.addToken(tokens.podOnly, { username: AGENT_USER, audiences: ['trellis-identity'], pod: boundPod });
    const service = await startIdentityService(inputs);
    try {
      for (const token of Object.values(tokens)) {
        const tokenFile = path.join(dir, `token-${token}`);
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
    server.apply({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'trellis-ca-root', namespace: NS }, data: { 'root-cert.pem': 'outdated' } });
    await (await startIdentityService(inputs)).stop(0);
    expect((server.get('v1', 'ConfigMap', NS, 'trellis-ca-root') as { data: Record<string, string> }).data['root-cert.pem']).toContain('BEGIN CERTIFICATE');

    requests = server.requests();
  }, 60_000);

  afterAll(async () => {
    await server?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the code made requests only as the two service accounts', () => {
    expect(requests.length).toBeGreaterThan(10);
    expect(new Set(requests.map((r) => r.user))).toEqual(new Set(Object.values(users)));
  });

  it.each(Object.entries(users))('every request of the %s is allowed by its Roles', (_who, user) => {
    const grants = grantsFor(objects, user);
    const refused = requests
      .filter((r) => r.user === user)
      .filter((r) => allowedBy(grants, r).length === 0)
      .map((r) => `${describeRequest(r)} -> add to ${suggestRule(r)}`);
    expect([...new Set(refused)]).toEqual([]);
  });

  it.each(Object.entries(users))('every permission the %s is granted is used by at least one request', (_who, user) => {
    const mine = requests.filter((r) => r.user === user);
    const unused = grantsFor(objects, user)
      .flatMap(permissions)
      .filter((p) => !mine.some((r) => uses(r, p)))
      .map((p) => `${p.grant.via}: ${p.verb} ${p.group || 'core'}/${p.resource}${p.name ? ` name=${p.name}` : ''}`);
    expect(unused, 'granted but never used by the code: remove it, or exercise the code that needs it here').toEqual([]);
  });

  it('every Role and ClusterRole in manifests/ is bound to one of the service accounts', () => {
    const bound = new Set(Object.values(users).flatMap((u) => grantsFor(objects, u)).map((g) => g.via.split(' via ')[0]));
    const roles = objects.filter((o: KubeObject) => o.kind === 'Role' || o.kind === 'ClusterRole').map((o) => `${o.kind}/${o.metadata.name}`);
    expect(roles.filter((r) => !bound.has(r))).toEqual([]);
  });
});
