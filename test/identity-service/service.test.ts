// The identity service over real gRPC with TLS on 127.0.0.1: token review, node binding, CSR checks and
// every refusal, first against an in-memory cluster, then through client-node against a real control plane with
// real service-account tokens (TokenRequest), the real TokenReview and the identity service's own RBAC.
// Certificates use the system clock: TLS checks validity against the real date.

import crypto, { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { KubeConfig } from '@kubernetes/client-node';
import { Command } from 'commander';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { identityConfig, registerIdentityCommands } from '../../agent/cli/identity.js';
import { ManualClock, systemClock } from '../../agent/clock.js';
import { TrellisError } from '../../agent/errors.js';
import { LocalCa } from '../../agent/identity/ca.js';
import { generateKey, makeCsr, WorkloadCerts } from '../../agent/identity/certs.js';
import { API_FORBIDDEN, API_UNAVAILABLE, KubeIdentityCluster, type IdentityCluster, type PodSummary, type TokenReview } from '../../agent/identity-service/cluster.js';
import { identityServiceDefinition, type CreateCertificateRequest, type CreateCertificateResponse } from '../../agent/identity/proto.js';
import { RemoteSigner } from '../../agent/identity/remote.js';
import { startIdentityService, type IdentityService, type IdentityServiceInputs } from '../../agent/identity-service/service.js';
import { createPod, ensure } from '../../lab/cluster/kubelet.js';
import { IDENTITY_USER, resignToken, startTestCluster, type TestCluster } from '../support/control-plane.js';
import { captureLogger } from '../support/logger.js';

const TD = 'cluster.local';
const AUDIENCE = 'trellis-identity';
const AGENT_SA = 'system:serviceaccount:trellis-system:trellis-agent';
const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const DB = 'spiffe://cluster.local/ns/shop/sa/db';
const HOUR = 3_600_000;
const CERT_TTL = 24 * HOUR;

/** What a test seeds; the same shape as the fake API server's TokenInfo. */
interface TokenInfo {
  username: string;
  audiences: string[];
  expiresAt?: number;
  pod?: { name: string; namespace: string; uid: string };
  node?: string;
}

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; uid?: string; resourceVersion?: string };
  [k: string]: unknown;
}

type TokenName = keyof typeof TOKENS;
type Tokens = Record<TokenName, string>;

/** A cluster the service can be pointed at, and the handles a test needs to seed and break it. */
interface World {
  readonly real: boolean;
  cluster: IdentityCluster;
  /** The scenario's pods and the CA Secret; returns the tokens of the scenario (made up, or real). */
  seed(): Promise<Tokens>;
  /** Creates or replaces a ConfigMap or Secret. */
  put(obj: K8sObject): Promise<void>;
  get(kind: 'ConfigMap' | 'Secret', namespace: string, name: string): Promise<K8sObject | undefined>;
  remove(kind: 'Secret' | 'ConfigMap', namespace: string, name: string): Promise<void>;
  pause(): void;
  resume(): void;
  close(): Promise<void>;
}

/** An in-memory cluster with the API server's TokenReview semantics (messages as kube-apiserver words them). */
class StubWorld implements World {
  readonly real = false;
  private readonly tokens = new Map<string, TokenInfo>();
  private readonly objects = new Map<string, K8sObject>();
  private down = false;
  forbidden = false;

  readonly cluster: IdentityCluster = {
    review: async (token, audience) => {
      this.check();
      const info = this.tokens.get(token);
      const none: TokenReview = { authenticated: false, extra: {} };
      if (!info) return { ...none, error: '[invalid bearer token, token lookup failed]' };
      if (!info.audiences.includes(audience)) {
        return { ...none, error: `[invalid bearer token, token audiences ${JSON.stringify(info.audiences)} is invalid for the target audiences ["${audience}"]]` };
      }
      if (info.expiresAt !== undefined && info.expiresAt <= Date.now()) {
        return { ...none, error: '[invalid bearer token, service account token has expired]' };
      }
      const extra: Record<string, string[]> = {};
      if (info.pod) {
        extra['authentication.kubernetes.io/pod-name'] = [info.pod.name];
        extra['authentication.kubernetes.io/pod-uid'] = [info.pod.uid];
      }
      if (info.node) extra['authentication.kubernetes.io/node-name'] = [info.node];
      return { authenticated: true, username: info.username, audiences: [audience], extra };
    },
    getPod: async (namespace, name) => {
      this.check();
      const pod = this.objects.get(`Pod/${namespace}/${name}`);
      return pod ? summary(pod) : undefined;
    },
    podsOnNode: async (namespace, node) => {
      this.check();
      return [...this.objects.values()]
        .filter((o) => o.kind === 'Pod' && o.metadata.namespace === namespace)
        .map(summary)
        .filter((p) => p.nodeName === node);
    },
    readSecret: async (namespace, name) => {
      this.check();
      const secret = this.objects.get(`Secret/${namespace}/${name}`);
      if (!secret) return undefined;
      const data = (secret['data'] ?? {}) as Record<string, string>;
      return Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));
    },
    publishConfigMap: async (namespace, name, data) => {
      this.check();
      const existing = this.objects.get(`ConfigMap/${namespace}/${name}`);
      const current = (existing?.['data'] ?? {}) as Record<string, string>;
      if (existing && Object.entries(data).every(([k, v]) => current[k] === v)) return 'unchanged';
      this.apply({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace }, data: { ...current, ...data } });
      return existing ? 'updated' : 'created';
    },
  };

  async seed(): Promise<Tokens> {
    seed(this);
    return { ...TOKENS };
  }
  addToken(token: string, info: TokenInfo): void {
    this.tokens.set(token, info);
  }
  apply<T extends K8sObject>(obj: T): T {
    const stored = { ...obj, metadata: { ...obj.metadata, uid: obj.metadata.uid ?? crypto.randomUUID() } };
    this.objects.set(`${obj.kind}/${obj.metadata.namespace}/${obj.metadata.name}`, stored);
    return stored;
  }
  async put(obj: K8sObject): Promise<void> {
    this.apply(obj);
  }
  async get(kind: string, namespace: string, name: string): Promise<K8sObject | undefined> {
    return this.objects.get(`${kind}/${namespace}/${name}`);
  }
  async remove(kind: string, namespace: string, name: string): Promise<void> {
    this.objects.delete(`${kind}/${namespace}/${name}`);
  }
  pause(): void {
    this.down = true;
  }
  resume(): void {
    this.down = false;
  }
  async close(): Promise<void> {}

  private check(): void {
    if (this.down) throw new TrellisError(API_UNAVAILABLE, 'reviewing the caller token: the API server is unreachable (connect ECONNREFUSED 127.0.0.1:6443); retry later');
    if (this.forbidden) throw new TrellisError(API_FORBIDDEN, "reviewing the caller token: the API server answered 403 (forbidden); the identity service's ClusterRole must allow create tokenreviews.authentication.k8s.io");
  }
}

/**
 * A real control plane, reached through client-node as the service is in a cluster: with the trellis-identity
 * service account's token (so only what manifests/rbac/identity.yaml grants), and real tokens for every caller.
 */
class RealWorld implements World {
  readonly real = true;
  readonly cluster: IdentityCluster;
  constructor(readonly test: TestCluster, identityToken: string) {
    const kc = new KubeConfig();
    kc.loadFromFile(test.kubeconfig('identity', identityToken));
    this.cluster = new KubeIdentityCluster(kc, { timeoutMs: 2_000 });
  }
  static async start(test: TestCluster): Promise<RealWorld> {
    return new RealWorld(test, (await test.api.createToken('trellis-system', 'trellis-identity')).token);
  }
  /** Seeds once per control plane; later calls get the same tokens. */
  seed(): Promise<Tokens> {
    let seeded = RealWorld.seeded.get(this.test);
    if (!seeded) RealWorld.seeded.set(this.test, (seeded = this.seedOnce()));
    return seeded;
  }
  private static readonly seeded = new WeakMap<TestCluster, Promise<Tokens>>();
  private async seedOnce(): Promise<Tokens> {
    const { api } = this.test;
    await this.put(caSecret(rootCa));
    await this.test.node('node-a');
    await this.test.node('node-b');
    await ensure(api, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop' } });
    for (const sa of ['web', 'db', 'batch']) await ensure(api, { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: sa, namespace: 'shop' } });
    const run = (p: K8sObject, node: string) => createPod(api, { object: p as never, ip: node === 'node-a' ? '10.244.1.5' : '10.244.2.5', hostIp: node === 'node-a' ? '172.30.0.11' : '172.30.0.12', ready: true });
    const webUid = await run(pod('shop', 'web-1', 'node-a', 'web'), 'node-a');
    await run(pod('shop', 'db-1', 'node-b', 'db'), 'node-b');
    // A finished job that ran as shop/batch on node-a vouches for nothing.
    await run(pod('shop', 'batch-1', 'node-a', 'batch'), 'node-a');
    await api.patch({ apiVersion: 'v1', kind: 'Pod', namespace: 'shop', name: 'batch-1' }, { status: { phase: 'Succeeded' } }, 'merge', 'status');
    const agentA = await this.test.agentToken('node-a', { audiences: [AUDIENCE] });
    const agentB = await this.test.agentToken('node-b', { audiences: [AUDIENCE] });
    // A token bound to a pod that is then replaced (same name, another uid).
    const old = pod('trellis-system', 'trellis-agent-old', 'node-b', 'trellis-agent');
    const oldUid = await run(old, 'node-b');
    const stale = await api.createToken('trellis-system', 'trellis-agent', { audiences: [AUDIENCE], boundPod: { name: 'trellis-agent-old', uid: oldUid } });
    await api.delete({ apiVersion: 'v1', kind: 'Pod', namespace: 'trellis-system', name: 'trellis-agent-old' }, { gracePeriodSeconds: 0 });
    await run(old, 'node-b');
    return {
      agentA: agentA.token,
      // As API servers before 1.30 issue them: bound to the pod, without the node (re-signed with the cluster's
      // key: 1.37 always adds the node, and the feature gate is locked).
      agentB: resignToken(this.test.cp, agentB.token, (c) => delete (c['kubernetes.io'] as Record<string, unknown>)['node']),
      wrongAudience: (await this.test.agentToken('node-a')).token,
      // Expired an hour ago: a real token moved back in time and re-signed (TokenRequest's shortest life is 10 min).
      expired: resignToken(this.test.cp, agentA.token, (c) => {
        for (const k of ['iat', 'nbf', 'exp']) c[k] = Number(c[k]) - 2 * 3600;
      }),
      otherSa: (await api.createToken('shop', 'web', { audiences: [AUDIENCE], boundPod: { name: 'web-1', uid: webUid } })).token,
      stalePod: stale.token,
    };
  }
  async put(obj: K8sObject): Promise<void> {
    await this.test.api.apply(obj as never);
  }
  get(kind: string, namespace: string, name: string): Promise<K8sObject | undefined> {
    return this.test.api.get({ apiVersion: 'v1', kind, namespace, name }) as Promise<K8sObject | undefined>;
  }
  async remove(kind: string, namespace: string, name: string): Promise<void> {
    await this.test.api.delete({ apiVersion: 'v1', kind, namespace, name });
  }
  pause(): void {
    this.test.forward.pause();
  }
  resume(): void {
    this.test.forward.resume();
  }
  async close(): Promise<void> {}
}

function summary(pod: K8sObject): PodSummary {
  const spec = (pod['spec'] ?? {}) as { nodeName?: string; serviceAccountName?: string };
  const status = (pod['status'] ?? {}) as { phase?: string };
  return {
    namespace: pod.metadata.namespace ?? '',
    name: pod.metadata.name,
    uid: pod.metadata.uid ?? '',
    nodeName: spec.nodeName,
    serviceAccount: spec.serviceAccountName ?? 'default',
    phase: status.phase,
  };
}

function pod(namespace: string, name: string, node: string, serviceAccount: string, phase = 'Running'): K8sObject {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace },
    spec: { nodeName: node, serviceAccountName: serviceAccount, containers: [{ name: 'app', image: 'app' }] },
    status: { phase },
  };
}

function caSecret(ca: { keyPem: string; certPem: string }, name = 'trellis-ca', trustedRoots?: string): K8sObject {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name, namespace: 'trellis-system' },
    type: 'Opaque',
    data: { 'ca.key.pem': b64(ca.keyPem), 'ca.cert.pem': b64(ca.certPem), ...(trustedRoots !== undefined && { 'trusted-roots.pem': b64(trustedRoots) }) },
  };
}

/** A CA as `trellis ca create` writes it. */
function makeCa(trustDomain = TD): { keyPem: string; certPem: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trl-t-idca-'));
  try {
    LocalCa.generate({ trustDomain }).save(dir);
    return { keyPem: fs.readFileSync(path.join(dir, 'ca.key.pem'), 'utf8'), certPem: fs.readFileSync(path.join(dir, 'ca.cert.pem'), 'utf8') };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const TOKENS = {
  agentA: 'tok-agent-node-a',
  agentB: 'tok-agent-node-b-bound-pod',
  wrongAudience: 'tok-wrong-audience',
  expired: 'tok-expired',
  otherSa: 'tok-other-sa',
  stalePod: 'tok-stale-pod',
};

/** node-a runs shop/web, node-b runs shop/db; the two agents; and every kind of token the tests need. */
function seed(world: StubWorld): void {
  world.apply(caSecret(rootCa));
  world.apply(pod('shop', 'web-1', 'node-a', 'web'));
  world.apply(pod('shop', 'db-1', 'node-b', 'db'));
  // A finished job that ran as shop/batch on node-a vouches for nothing.
  world.apply(pod('shop', 'batch-1', 'node-a', 'batch', 'Succeeded'));
  const agentA = world.apply(pod('trellis-system', 'trellis-agent-a', 'node-a', 'trellis-agent'));
  const agentB = world.apply(pod('trellis-system', 'trellis-agent-b', 'node-b', 'trellis-agent'));
  const boundA = { name: agentA.metadata.name, namespace: 'trellis-system', uid: agentA.metadata.uid! };
  const boundB = { name: agentB.metadata.name, namespace: 'trellis-system', uid: agentB.metadata.uid! };
  world.addToken(TOKENS.agentA, { username: AGENT_SA, audiences: [AUDIENCE], pod: boundA, node: 'node-a' });
  // No node-name extra: the service must find the node through the bound pod.
  world.addToken(TOKENS.agentB, { username: AGENT_SA, audiences: [AUDIENCE], pod: boundB });
  world.addToken(TOKENS.wrongAudience, { username: AGENT_SA, audiences: ['https://kubernetes.default.svc'], pod: boundA, node: 'node-a' });
  world.addToken(TOKENS.expired, { username: AGENT_SA, audiences: [AUDIENCE], pod: boundA, node: 'node-a', expiresAt: Date.now() - 60_000 });
  world.addToken(TOKENS.otherSa, { username: 'system:serviceaccount:shop:web', audiences: [AUDIENCE], pod: { name: 'web-1', namespace: 'shop', uid: 'x' } });
  // Bound to a pod of that name that has since been replaced (another uid).
  world.addToken(TOKENS.stalePod, { username: AGENT_SA, audiences: [AUDIENCE], pod: { ...boundB, uid: 'deleted-pod-uid' } });
}

const rootCa = makeCa();
const definition = identityServiceDefinition();

interface Call {
  token?: string;
  identity: string;
  csrPem?: string;
  ttlSeconds?: number;
}

/** A raw CreateCertificate call: the gRPC status and details exactly as the service sent them. */
async function call(service: IdentityService, req: Call): Promise<{ ok: CreateCertificateResponse } | { code: grpc.status; details: string }> {
  const client = new grpc.Client(`127.0.0.1:${service.port}`, grpc.credentials.createSsl(Buffer.from(service.rootCertPem)));
  const metadata = new grpc.Metadata();
  if (req.token) metadata.set('authorization', `Bearer ${req.token}`);
  const csrPem = req.csrPem ?? makeCsr(req.identity, await generateKey());
  const method = definition.CreateCertificate;
  try {
    return await new Promise((resolve) => {
      client.makeUnaryRequest<CreateCertificateRequest, CreateCertificateResponse>(
        method.path,
        method.requestSerialize,
        method.responseDeserialize,
        { csrPem, identity: req.identity, ttlSeconds: req.ttlSeconds ?? 0 },
        metadata,
        { deadline: Date.now() + 10_000 },
        (err, res) => resolve(err ? { code: err.code, details: err.details } : { ok: res! }),
      );
    });
  } finally {
    client.close();
  }
}

function tokenFile(token: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trl-t-idtok-'));
  tmpDirs.push(dir);
  const file = path.join(dir, 'token');
  fs.writeFileSync(file, token);
  return file;
}

const tmpDirs: string[] = [];
afterAll(() => {
  for (const dir of tmpDirs) fs.rmSync(dir, { recursive: true, force: true });
});

function inputs(world: World, logger: pino.Logger, more: Partial<IdentityServiceInputs> = {}): IdentityServiceInputs {
  return {
    listen: { host: '127.0.0.1', port: 0 },
    caSecret: { namespace: 'trellis-system', name: 'trellis-ca' },
    bundleConfigMap: { namespace: 'trellis-system', name: 'trellis-ca-root' },
    trustDomain: TD,
    audience: AUDIENCE,
    agentServiceAccount: AGENT_SA,
    certTtlMs: CERT_TTL,
    cluster: world.cluster,
    clock: systemClock,
    logger,
    ...more,
  };
}

/** The scenarios of the issue, run against one kind of world. */
function scenarios(name: string, makeWorld: () => Promise<World>): void {
  describe(`identity service (${name})`, () => {
    let world: World;
    let tokens: Tokens;
    let service: IdentityService;
    let logs: () => Record<string, unknown>[];

    beforeAll(async () => {
      world = await makeWorld();
      tokens = await world.seed();
      const captured = captureLogger();
      logs = captured.lines;
      service = await startIdentityService(inputs(world, captured.logger));
    });

    afterAll(async () => {
      await service?.stop(1_000);
      await world?.close();
    });

    afterEach(() => world.resume());

    it('signs for a pod on the caller node: chains to the root, exactly the identity, the requested lifetime', async () => {
      const before = Date.now();
      const res = await call(service, { token: tokens.agentA, identity: WEB, ttlSeconds: 2 * 3600 });
      if (!('ok' in res)) throw new Error(`refused: ${res.details}`);
      const root = new X509Certificate(rootCa.certPem);
      const leaf = new X509Certificate(res.ok.certPem);
      expect(res.ok.rootCertPem).toBe(rootCa.certPem);
      expect(leaf.checkIssued(root) && leaf.verify(root.publicKey)).toBe(true);
      expect(leaf.subjectAltName).toBe(`URI:${WEB}`);
      const lifetime = leaf.validToDate.getTime() - before;
      expect(lifetime).toBeGreaterThan(2 * HOUR - 5_000);
      expect(lifetime).toBeLessThanOrEqual(2 * HOUR + 1_000);
      expect(logs()).toContainEqual(expect.objectContaining({ msg: 'certificate issued', identity: WEB, node: 'node-a', caller: AGENT_SA }));
    });

    it('caps the lifetime at --cert-ttl, and grants it when none is asked', async () => {
      for (const ttlSeconds of [100 * 3600, 0]) {
        const before = Date.now();
        const res = await call(service, { token: tokens.agentA, identity: WEB, ttlSeconds });
        if (!('ok' in res)) throw new Error(`refused: ${res.details}`);
        const lifetime = new X509Certificate(res.ok.certPem).validToDate.getTime() - before;
        expect(lifetime).toBeGreaterThan(CERT_TTL - 5_000);
        expect(lifetime).toBeLessThanOrEqual(CERT_TTL + 1_000);
      }
    });

    it('publishes the root in the bundle ConfigMap', async () => {
      const cm = await world.get('ConfigMap', 'trellis-system', 'trellis-ca-root');
      expect((cm?.['data'] as Record<string, string>)['root-cert.pem']).toBe(rootCa.certPem);
    });

    it('finds the node of a token without a node-name through its bound pod', async () => {
      const res = await call(service, { token: tokens.agentB, identity: DB });
      expect('ok' in res).toBe(true);
      const refused = await call(service, { token: tokens.agentB, identity: WEB });
      expect(refused).toEqual({
        code: grpc.status.PERMISSION_DENIED,
        details: expect.stringContaining('no pod with service account shop/web is scheduled on node node-b'),
      });
    });

    it('a RemoteSigner behind WorkloadCerts issues an SVID end to end', async () => {
      const signer = new RemoteSigner({
        address: `127.0.0.1:${service.port}`,
        tokenFile: tokenFile(tokens.agentA),
        caPem: () => rootCa.certPem,
        logger: pino({ level: 'silent' }),
      });
      const certs = new WorkloadCerts({ signer, trustBundle: rootCa.certPem, ttlMs: 6 * HOUR, clock: systemClock, logger: pino({ level: 'silent' }) });
      try {
        const svid = await certs.get(WEB);
        expect(svid.identity).toBe(WEB);
        expect(new X509Certificate(svid.certPem).subjectAltName).toBe(`URI:${WEB}`);
        expect(svid.notAfter - Date.now()).toBeGreaterThan(6 * HOUR - 5_000);
        // Refusals keep the service's reason and map to the agent's codes.
        await expect(certs.get(DB)).rejects.toMatchObject({
          code: 'EPERMISSION',
          message: expect.stringContaining('no pod with service account shop/db is scheduled on node node-a'),
        });
      } finally {
        certs.close();
        signer.close();
      }
    });

    it.each([
      ['no token', { identity: WEB }, grpc.status.UNAUTHENTICATED, /no service-account token.*authorization: Bearer/],
      ['an unknown token', { raw: 'not-a-token', identity: WEB }, grpc.status.UNAUTHENTICATED, /invalid service-account token/],
      ['a token for another audience', { token: 'wrongAudience', identity: WEB }, grpc.status.UNAUTHENTICATED, /token audience .*expected trellis-identity/],
      ['an expired token', { token: 'expired', identity: WEB }, grpc.status.UNAUTHENTICATED, /token expired/],
      ['another service account', { token: 'otherSa', identity: WEB }, grpc.status.PERMISSION_DENIED, /caller system:serviceaccount:shop:web is not the agent service account/],
      ['an identity on another node', { token: 'agentA', identity: DB }, grpc.status.PERMISSION_DENIED, /no pod with service account shop\/db is scheduled on node node-a/],
      ['an identity whose only pod finished', { token: 'agentA', identity: 'spiffe://cluster.local/ns/shop/sa/batch' }, grpc.status.PERMISSION_DENIED, /no pod with service account shop\/batch is scheduled on node node-a \(batch-1 finished\)/],
      ['a malformed CSR', { token: 'agentA', identity: WEB, csrPem: '-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n' }, grpc.status.INVALID_ARGUMENT, /cannot parse the CSR/],
      ['an empty CSR', { token: 'agentA', identity: WEB, csrPem: ' ' }, grpc.status.INVALID_ARGUMENT, /csr_pem is empty/],
      ['a CSR for another identity', { token: 'agentA', identity: WEB, csrPem: 'db' }, grpc.status.INVALID_ARGUMENT, /the CSR asks for spiffe:\/\/cluster.local\/ns\/shop\/sa\/db/],
      ['an identity that is not a SPIFFE ID', { token: 'agentA', identity: 'web', csrPem: 'x' }, grpc.status.INVALID_ARGUMENT, /"web" is not a workload SPIFFE ID/],
      ['another trust domain', { token: 'agentA', identity: 'spiffe://other.example/ns/shop/sa/web', csrPem: 'x' }, grpc.status.INVALID_ARGUMENT, /signs only for cluster.local/],
    ] as const)('refuses %s with the right status and reason, and logs it', async (_what, req, status, reason) => {
      const given = req as { token?: TokenName; raw?: string; identity: string; csrPem?: string };
      const csrPem = given.csrPem === 'db' ? makeCsr(DB, await generateKey()) : given.csrPem;
      const token = given.token ? tokens[given.token] : given.raw;
      const res = await call(service, { identity: given.identity, ...(token !== undefined && { token }), ...(csrPem !== undefined && { csrPem }) });
      expect(res).toEqual({ code: status, details: expect.stringMatching(reason) });
      const details = (res as { details: string }).details;
      expect(logs()).toContainEqual(
        expect.objectContaining({ msg: 'certificate refused', status: grpc.status[status], reason: details, identity: req.identity }),
      );
    });

    // The service checks that the token's pod is still the one it was bound to. A real API server checks it first:
    // its TokenReview refuses a token whose pod was deleted or replaced, so only the in-memory cluster reaches the
    // service's own check.
    it('refuses a token bound to a replaced pod', async () => {
      const res = await call(service, { token: tokens.stalePod, identity: DB });
      if (world.real) {
        expect(res).toEqual({ code: grpc.status.UNAUTHENTICATED, details: expect.stringMatching(/invalid service-account token \(API server: .*(not found|does not match|uid)/) });
      } else {
        expect(res).toEqual({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/uid deleted-pod-uid.*belongs to a deleted pod/) });
      }
    });

    it('answers UNAVAILABLE while the API server is unreachable, and recovers', async () => {
      world.pause();
      const res = await call(service, { token: tokens.agentA, identity: WEB });
      expect(res).toEqual({ code: grpc.status.UNAVAILABLE, details: expect.stringMatching(/unreachable|answered 5/) });
      expect(logs()).toContainEqual(expect.objectContaining({ msg: 'certificate refused', status: 'UNAVAILABLE' }));
      world.resume();
      expect('ok' in (await call(service, { token: tokens.agentA, identity: WEB }))).toBe(true);
    });

    // These replace the CA Secret and the bundle ConfigMap the service is allowed to read and write (its Role names
    // them), then put them back.
    it('updates a stale bundle ConfigMap at start and keeps its other keys', async () => {
      await world.put({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'trellis-ca-root', namespace: 'trellis-system' }, data: { 'root-cert.pem': 'old', note: 'keep' } });
      const second = await startIdentityService(inputs(world, pino({ level: 'silent' })));
      await second.stop(1_000);
      expect((await world.get('ConfigMap', 'trellis-system', 'trellis-ca-root'))?.['data']).toEqual({ 'root-cert.pem': rootCa.certPem, note: 'keep' });
    });

    it('refuses to start without the CA Secret and says how to create it', async () => {
      await world.remove('Secret', 'trellis-system', 'trellis-ca');
      try {
        const start = startIdentityService(inputs(world, pino({ level: 'silent' })));
        await expect(start).rejects.toMatchObject({ code: 'ECANOTFOUND' });
        const msg = ((await start.catch((e: unknown) => e)) as Error).message;
        expect(msg).toContain('the CA Secret trellis-system/trellis-ca does not exist');
        expect(msg).toContain('trellis ca create --trust-domain cluster.local --out DIR');
        expect(msg).toContain('kubectl -n trellis-system create secret generic trellis-ca --from-file=DIR/ca.key.pem --from-file=DIR/ca.cert.pem');
      } finally {
        await world.put(caSecret(rootCa));
      }
    });

    it('refuses to start on a CA of another trust domain, or a key that does not match', async () => {
      try {
        await world.put(caSecret(makeCa('other.example')));
        await expect(startIdentityService(inputs(world, pino({ level: 'silent' })))).rejects.toMatchObject({
          code: 'ECATRUSTDOMAIN',
          message: expect.stringContaining('is for trust domain other.example, not cluster.local'),
        });
        await world.put(caSecret({ keyPem: makeCa().keyPem, certPem: rootCa.certPem }));
        await expect(startIdentityService(inputs(world, pino({ level: 'silent' })))).rejects.toMatchObject({
          code: 'ECAMISMATCH',
          message: expect.stringMatching(/^the CA Secret trellis-system\/trellis-ca is unusable: .*Secret trellis-system\/trellis-ca/),
        });
      } finally {
        await world.put(caSecret(rootCa));
      }
    });

    it('the agent refuses a server whose TLS certificate is not from its bundle', async () => {
      const signer = new RemoteSigner({
        address: `127.0.0.1:${service.port}`,
        tokenFile: tokenFile(tokens.agentA),
        caPem: makeCa().certPem,
        logger: pino({ level: 'silent' }),
      });
      try {
        const err = await signer.sign(makeCsr(WEB, await generateKey()), { identity: WEB, ttlMs: HOUR }).catch((e: unknown) => e);
        expect(err).toMatchObject({ code: 'EUNAVAILABLE', message: expect.stringContaining('does not verify against the trust bundle') });
      } finally {
        signer.close();
      }
    });
  });
}

/** One real control plane for the file, with Trellis installed (the identity service's RBAC among it). */
let testCluster: TestCluster | undefined;
const realCluster = async (): Promise<TestCluster> => (testCluster ??= await startTestCluster({ audit: true }));
afterAll(async () => {
  await testCluster?.close();
});

scenarios('in-memory cluster', async () => new StubWorld());
scenarios('real API server through client-node', async () => RealWorld.start(await realCluster()));

describe('identity service: the Kubernetes API calls it makes', () => {
  it('are exactly the ones its RBAC grants, and all are allowed', async () => {
    const test = await realCluster();
    const world = await RealWorld.start(test);
    const tokens = await world.seed();
    // A fresh start creates the bundle ConfigMap.
    await world.remove('ConfigMap', 'trellis-system', 'trellis-ca-root');
    const mark = test.audit().length;
    const service = await startIdentityService(inputs(world, pino({ level: 'silent' })));
    try {
      expect('ok' in (await call(service, { token: tokens.agentA, identity: WEB }))).toBe(true);
      expect('ok' in (await call(service, { token: tokens.agentB, identity: DB }))).toBe(true);
      const mine = test.audit().slice(mark).filter((r) => r.user === IDENTITY_USER);
      const calls = new Set(mine.map((r) => [r.verb, r.group || 'core', r.resource, r.namespace ?? '*', r.name ?? ''].join(' ')));
      expect([...calls].sort()).toEqual(
        [
          'create authentication.k8s.io tokenreviews * ',
          // The audit log names the object of a create (from its body); RBAC sees no name on a create.
          'create core configmaps trellis-system trellis-ca-root',
          'get core configmaps trellis-system trellis-ca-root',
          'get core pods trellis-system trellis-agent-node-b',
          'get core secrets trellis-system trellis-ca',
          'list core pods shop ',
        ].sort(),
      );
      expect(mine.filter((r) => r.decision !== 'allow')).toEqual([]);
      expect(mine.filter((r) => r.verb === 'list')).toHaveLength(2);
    } finally {
      await service.stop(1_000);
    }
  });

  it('two replicas starting at once both publish the bundle: one creates it, the other finds it (or meets the 409)', async () => {
    const test = await realCluster();
    const world = await RealWorld.start(test);
    await world.seed();
    await world.remove('ConfigMap', 'trellis-system', 'trellis-ca-root');
    const mark = test.audit().length;
    const replicas = await Promise.all([0, 1].map(() => startIdentityService(inputs(world, pino({ level: 'silent' })))));
    try {
      expect(((await world.get('ConfigMap', 'trellis-system', 'trellis-ca-root'))?.['data'] as Record<string, string>)['root-cert.pem']).toBe(rootCa.certPem);
      const creates = test.audit().slice(mark).filter((r) => r.user === IDENTITY_USER && r.verb === 'create' && r.resource === 'configmaps');
      expect(creates.filter((r) => r.code === 201)).toHaveLength(1);
    } finally {
      await Promise.all(replicas.map((r) => r.stop(1_000)));
    }
  });

  it('a hung API server (kube-apiserver stopped with SIGSTOP) costs a caller the client timeout, then UNAVAILABLE', async () => {
    const test = await realCluster();
    const kc = new KubeConfig();
    kc.loadFromFile(test.kubeconfig('hung', (await test.api.createToken('trellis-system', 'trellis-identity')).token));
    const cluster = new KubeIdentityCluster(kc, { timeoutMs: 300 });
    test.cp.freezeApiServer(true);
    try {
      const started = Date.now();
      await expect(cluster.review('t', AUDIENCE)).rejects.toMatchObject({ code: API_UNAVAILABLE, message: expect.stringContaining('unreachable') });
      expect(Date.now() - started).toBeLessThan(2_000);
    } finally {
      test.cp.freezeApiServer(false);
    }
  });
});

describe('identity service: what only an in-memory cluster can show', () => {
  it('an API server that forbids the review is the service misconfigured: INTERNAL, logged as an error', async () => {
    const world = new StubWorld();
    seed(world);
    const { logger, lines } = captureLogger();
    const service = await startIdentityService(inputs(world, logger));
    try {
      world.forbidden = true;
      const res = await call(service, { token: TOKENS.agentA, identity: WEB });
      expect(res).toEqual({ code: grpc.status.INTERNAL, details: expect.stringContaining('must allow create tokenreviews') });
      expect(lines()).toContainEqual(expect.objectContaining({ level: 50, msg: 'certificate refused', status: 'INTERNAL' }));
    } finally {
      await service.stop(1_000);
    }
  });

  it('explains a refusal of a JWT from its own claims (audience, expiry)', async () => {
    const world = new StubWorld();
    seed(world);
    const jwt = (claims: object) => `e30.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.sig`;
    const service = await startIdentityService(inputs(world, pino({ level: 'silent' })));
    try {
      expect(await call(service, { token: jwt({ aud: ['vault'], exp: Date.now() / 1000 + 600 }), identity: WEB })).toEqual({
        code: grpc.status.UNAUTHENTICATED,
        details: expect.stringContaining('token audience ["vault"], expected trellis-identity'),
      });
      expect(await call(service, { token: jwt({ aud: [AUDIENCE], exp: 1_700_000_000 }), identity: WEB })).toEqual({
        code: grpc.status.UNAUTHENTICATED,
        details: expect.stringContaining('token expired at 2023-11-14T22:13:20.000Z'),
      });
    } finally {
      await service.stop(1_000);
    }
  });

  it('RemoteSigner: a missing token file, an unreachable service and a new bundle', async () => {
    const logger = pino({ level: 'silent' });
    const missing = new RemoteSigner({ address: '127.0.0.1:1', tokenFile: '/nonexistent/token', caPem: rootCa.certPem, logger });
    await expect(missing.sign('x', { identity: WEB, ttlMs: HOUR })).rejects.toMatchObject({
      code: 'EUNAUTHENTICATED',
      message: expect.stringContaining('cannot read the service-account token at /nonexistent/token'),
    });
    const unreachable = new RemoteSigner({ address: '127.0.0.1:1', tokenFile: tokenFile('t'), caPem: rootCa.certPem, logger, timeoutMs: 2_000 });
    await expect(unreachable.sign('x', { identity: WEB, ttlMs: HOUR })).rejects.toMatchObject({ code: 'EUNAVAILABLE' });
    unreachable.close();

    // The bundle function is asked on every call: a signer that starts with the wrong root recovers once
    // the right one is published, without being rebuilt.
    const world = new StubWorld();
    seed(world);
    const service = await startIdentityService(inputs(world, pino({ level: 'silent' })));
    let bundle = makeCa().certPem;
    const signer = new RemoteSigner({ address: `127.0.0.1:${service.port}`, tokenFile: tokenFile(TOKENS.agentA), caPem: () => bundle, logger });
    try {
      await expect(signer.sign(makeCsr(WEB, await generateKey()), { identity: WEB, ttlMs: HOUR })).rejects.toMatchObject({ code: 'EUNAVAILABLE' });
      bundle = rootCa.certPem;
      const cert = await signer.sign(makeCsr(WEB, await generateKey()), { identity: WEB, ttlMs: HOUR });
      expect(new X509Certificate(cert).subjectAltName).toBe(`URI:${WEB}`);
    } finally {
      signer.close();
      await service.stop(1_000);
    }
  });

  it('follows its CA Secret without a restart: a root added to the bundle, the signing CA switched, the old root removed', async () => {
    const world = new StubWorld();
    seed(world);
    const { logger, lines } = captureLogger();
    const service = await startIdentityService(inputs(world, logger, { caPollMs: 50 }));
    const next = makeCa();
    const published = async () => ((await world.get('ConfigMap', 'trellis-system', 'trellis-ca-root'))?.['data'] as Record<string, string>)['root-cert.pem'];
    const issuer = async () => {
      const res = await call(service, { token: TOKENS.agentA, identity: WEB });
      if (!('ok' in res)) throw new Error(`refused: ${res.details}`);
      return [rootCa, next].find((ca) => new X509Certificate(res.ok.certPem).checkIssued(new X509Certificate(ca.certPem)));
    };
    try {
      expect(await published()).toBe(rootCa.certPem);

      // 1. The new root beside the signing one: published after it; still signed by the old CA.
      world.apply(caSecret(rootCa, 'trellis-ca', next.certPem));
      await vi.waitFor(async () => expect(await published()).toBe(`${rootCa.certPem}${next.certPem}`));
      expect(await issuer()).toBe(rootCa);
      expect(service.bundlePem).toBe(`${rootCa.certPem}${next.certPem}`);

      // 2. The switch: signs with the new CA, which comes first in the bundle; the old root stays. The serving
      //    certificate is the new CA's too (`call` verifies it against service.rootCertPem, now the new root).
      world.apply(caSecret(next, 'trellis-ca', rootCa.certPem));
      await vi.waitFor(async () => expect(await published()).toBe(`${next.certPem}${rootCa.certPem}`));
      expect(service.rootCertPem).toBe(next.certPem);
      await vi.waitFor(async () => expect(await issuer()).toBe(next));
      expect(lines()).toContainEqual(expect.objectContaining({ msg: 'CA Secret changed: signing with a new CA; agents renew the certificates of the previous one when they read the bundle' }));

      // A broken edit changes nothing (logged once), and a bundle someone else overwrote is put back.
      world.apply(caSecret(next, 'trellis-ca', makeCa('other.example').certPem));
      await vi.waitFor(() => expect(lines()).toContainEqual(expect.objectContaining({ level: 50, msg: 'cannot use the CA Secret as it is now; the CA and bundle in force stay', err: expect.stringContaining('not cluster.local') })));
      expect(lines().filter((l) => l['msg'] === 'cannot use the CA Secret as it is now; the CA and bundle in force stay')).toHaveLength(1);
      expect(await issuer()).toBe(next);
      await world.put({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'trellis-ca-root', namespace: 'trellis-system' }, data: { 'root-cert.pem': 'x' } });
      await vi.waitFor(async () => expect(await published()).toBe(`${next.certPem}${rootCa.certPem}`));

      // 3. The old root leaves.
      world.apply(caSecret(next));
      await vi.waitFor(async () => expect(await published()).toBe(next.certPem));
      expect(await issuer()).toBe(next);
    } finally {
      await service.stop(1_000);
    }
  });

  it('serves a certificate for the service names, localhost and loopback, from the root', async () => {
    const world = new StubWorld();
    seed(world);
    const service = await startIdentityService(inputs(world, pino({ level: 'silent' }), { extraDnsNames: ['identity.example.org'] }));
    const tls = await import('node:tls');
    try {
      const socket = tls.connect({ host: '127.0.0.1', port: service.port, ca: rootCa.certPem, ALPNProtocols: ['h2'], servername: 'localhost' });
      await new Promise<void>((resolve, reject) => socket.once('secureConnect', () => resolve()).once('error', reject));
      const cert = socket.getPeerX509Certificate()!;
      expect(socket.getProtocol()).toBe('TLSv1.3');
      socket.destroy();
      for (const name of ['trellis-identity', 'trellis-identity.trellis-system', 'trellis-identity.trellis-system.svc', 'identity.example.org', 'localhost']) {
        expect(cert.checkHost(name)).toBe(name);
      }
      expect(cert.checkIP('127.0.0.1')).toBe('127.0.0.1');
      expect(cert.checkIssued(new X509Certificate(rootCa.certPem))).toBe(true);
    } finally {
      await service.stop(1_000);
    }
  });
});

describe('identity service: serving certificate', () => {
  /** The serial of the certificate the service presents now (chain not checked: only which one it is). */
  async function servedSerial(port: number): Promise<string> {
    const tls = await import('node:tls');
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['h2'], servername: 'localhost' });
    await new Promise<void>((resolve, reject) => socket.once('secureConnect', () => resolve()).once('error', reject));
    const serial = socket.getPeerX509Certificate()!.serialNumber;
    socket.destroy();
    return serial;
  }

  it('is renewed at half-life and served without a restart', async () => {
    const world = new StubWorld();
    seed(world);
    const clock = new ManualClock(Date.now());
    const { logger, lines } = captureLogger();
    const service = await startIdentityService(inputs(world, logger, { clock }));
    try {
      const first = await servedSerial(service.port);
      clock.advance(12 * HOUR + 1_000);
      await vi.waitFor(() => expect(lines()).toContainEqual(expect.objectContaining({ msg: 'serving certificate renewed' })));
      const second = await servedSerial(service.port);
      expect(second).not.toBe(first);
    } finally {
      await service.stop(1_000);
    }
  });
});

describe('trellis identity / trellis ca create: flags', () => {
  it('defaults to the documented names, ports and lifetime', () => {
    expect(identityConfig({})).toEqual({
      listen: { host: '0.0.0.0', port: 15012 },
      caSecret: { namespace: 'trellis-system', name: 'trellis-ca' },
      bundleConfigMap: { namespace: 'trellis-system', name: 'trellis-ca-root' },
      trustDomain: 'cluster.local',
      audience: 'trellis-identity',
      agentServiceAccount: 'system:serviceaccount:trellis-system:trellis-agent',
      certTtlMs: 24 * HOUR,
      caPollMs: 10_000,
      extraDnsNames: [],
      kubeconfig: undefined,
      logLevel: 'info',
    });
    expect(Object.isFrozen(identityConfig({}))).toBe(true);
  });

  it.each([
    [{ certTtl: '49h' }, /--cert-ttl 49h: must be between 1m and 48h/],
    [{ certTtl: '30s' }, /--cert-ttl 30s/],
    [{ caPoll: '10ms' }, /--ca-poll 10ms: at least 100ms/],
    [{ caSecret: 'trellis-ca' }, /--ca-secret: "trellis-ca" must be NAMESPACE\/NAME/],
    [{ bundleConfigmap: 'a/b/c' }, /--bundle-configmap/],
    [{ listen: 'localhost:15012' }, /--listen: "localhost:15012" must be IP:PORT/],
    [{ trustDomain: 'Cluster.Local' }, /--trust-domain: "Cluster.Local" is not a trust domain/],
    [{ agentServiceAccount: 'trellis-agent' }, /system:serviceaccount:NAMESPACE:NAME/],
    [{ audience: ' ' }, /--audience must not be empty/],
    [{ logLevel: 'loud' }, /--log-level loud/],
  ])('refuses %o', (flags, message) => {
    expect(() => identityConfig(flags)).toThrow(expect.objectContaining({ code: 'ECONFIG', message: expect.stringMatching(message) }));
  });

  it('ca create writes a CA the service accepts, prints the kubectl command, and never overwrites one', async () => {
    const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'trl-t-idcli-')), 'ca');
    tmpDirs.push(path.dirname(dir));
    const program = () => {
      const p = new Command('trellis').exitOverride();
      registerIdentityCommands(p);
      return p;
    };
    const out = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    try {
      await program().parseAsync(['node', 'trellis', 'ca', 'create', '--trust-domain', 'mesh.example', '--out', dir]);
      expect(String(out.mock.calls.at(-1)?.[0])).toContain(
        `kubectl -n trellis-system create secret generic trellis-ca --from-file=${dir}/ca.key.pem --from-file=${dir}/ca.cert.pem`,
      );
    } finally {
      out.mockRestore();
    }
    expect(fs.statSync(path.join(dir, 'ca.key.pem')).mode & 0o777).toBe(0o600);
    expect(LocalCa.load(dir).trustDomain).toBe('mesh.example');
    const before = fs.readFileSync(path.join(dir, 'ca.key.pem'), 'utf8');
    await expect(program().parseAsync(['node', 'trellis', 'ca', 'create', '--out', dir])).rejects.toMatchObject({
      code: 'ECONFIG',
      message: expect.stringContaining('already exists'),
    });
    expect(fs.readFileSync(path.join(dir, 'ca.key.pem'), 'utf8')).toBe(before);
  });
});
