// Source validation: the fast checks of the common kinds against the schemas they stand in for. Wherever
// validateObject answers, it must give what the schemas alone give (the same object, the same error), and
// it must take the fast path for the objects a large directory is made of.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { probeObjects, scaleObjects } from '../../lab/bench/scale.js';
import { loadManifests } from '../../lab/cluster/manifests.js';
import { planLab } from '../../lab/cluster/plan.js';
import { clusterObjects } from '../../lab/cluster/realized.js';
import { validateBySchema, validateObject } from '../../agent/model/validate.js';
import { mulberry32 } from '../support/prng.js';

const root = path.resolve(import.meta.dirname, '../..');

/** Every document of the repository's manifests and fixtures, list items included. */
function repositoryDocuments(): unknown[] {
  const files = [
    'examples/demo/mesh.yaml',
    'manifests/examples/authorizationpolicy.yaml',
    'manifests/examples/faultinjection.yaml',
    'manifests/examples/peerauthentication.yaml',
    'manifests/examples/retrybudget.yaml',
    'manifests/examples/egressnetwork.yaml',
    'manifests/identity/deployment.yaml',
    'manifests/identity/service.yaml',
    'manifests/namespace.yaml',
    'manifests/agent/daemonset.yaml',
    'test/e2e/fixtures/l7.yaml',
    'test/e2e/fixtures/mesh.yaml',
    'test/e2e/fixtures/security.yaml',
    'test/lab/cluster/fixtures/two-nodes.yaml',
  ];
  const docs: unknown[] = [];
  for (const f of files) {
    for (const d of parseAllDocuments(readFileSync(path.join(root, f), 'utf8')) as ReturnType<typeof parseAllDocuments> & unknown[]) {
      const js = d.toJS() as { kind?: string; items?: unknown[] } | null;
      if (js && typeof js.kind === 'string' && js.kind.endsWith('List') && Array.isArray(js.items)) docs.push(...js.items);
      else if (js) docs.push(js);
    }
  }
  return docs;
}

/** A deep copy that keeps undefined values, own "__proto__" keys and prototypes of plain data. */
function copy(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(copy);
  if (typeof v !== 'object' || v === null) return v;
  const out = Object.create(Object.getPrototypeOf(v) as object | null) as Record<string, unknown>;
  for (const k of Object.keys(v)) Object.defineProperty(out, k, { value: copy((v as Record<string, unknown>)[k]), enumerable: true, writable: true, configurable: true });
  return out;
}

/** validateObject agrees with the schemas and leaves its input as it was; returns whether the input itself was taken. */
function agrees(doc: unknown): boolean {
  const before = copy(doc);
  const fast = validateObject(doc);
  expect(doc, 'validateObject changed its input').toStrictEqual(before);
  const reference = validateBySchema(copy(doc));
  expect(fast, JSON.stringify(doc)).toStrictEqual(reference);
  return fast.ok && fast.object === doc;
}

describe('validateObject', () => {
  it('takes the bench batch as it is (the fast path), equal to what the schemas make of it', () => {
    const objects = [...scaleObjects({ services: 50, endpointsPerService: 5 }), ...probeObjects(0, '10.0.0.9').objects];
    for (const o of objects) expect(agrees(JSON.parse(JSON.stringify(o))), `${o.kind} ${o.metadata.name}`).toBe(true);
  });

  it('agrees with the schemas on every manifest and fixture of the repository, and on a lab realized from them', async () => {
    const docs = repositoryDocuments();
    expect(docs.length).toBeGreaterThan(20);
    const plan = planLab('val1', await loadManifests(path.join(root, 'test/lab/cluster/fixtures/two-nodes.yaml')), { uid: () => 'u' });
    const realized = clusterObjects(plan).map((o) => JSON.parse(JSON.stringify(o)) as unknown);
    let taken = 0;
    for (const d of [...docs, ...realized]) if (agrees(d)) taken++;
    // Pods with status, Services, EndpointSlices, routes and policies all went the fast way.
    expect(taken).toBeGreaterThan(docs.length / 2);
    for (const kind of ['Namespace', 'Pod', 'Service', 'EndpointSlice']) {
      const o = realized.find((r) => (r as { kind: string }).kind === kind);
      expect(validateObject(o), kind).toMatchObject({ ok: true, object: o });
    }
  });

  it('defaults the namespace on a copy, as the schemas do, without touching the input', () => {
    const svc = { apiVersion: 'v1', kind: 'Service', metadata: { name: 's' }, spec: { ports: [{ port: 80 }] } };
    const v = validateObject(svc);
    expect(v).toStrictEqual(validateBySchema(copy(svc)));
    expect(v).toMatchObject({ ok: true, object: { metadata: { name: 's', namespace: 'default' } } });
    expect(svc.metadata).toStrictEqual({ name: 's' });
  });

  it('takes an EndpointSlice with no endpoints as the real controller writes it (endpoints and ports null)', () => {
    const placeholder = { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'web-x2b9c', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'web' } }, addressType: 'IPv4', endpoints: null, ports: null };
    const v = validateObject(placeholder);
    expect(v.ok && v.object).toMatchObject({ kind: 'EndpointSlice', endpoints: [] });
  });

  it('leaves to the schemas what only they can word or reshape, with their answer', () => {
    const slice = (extra: Record<string, unknown>) => ({
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name: 'e', namespace: 'n' },
      addressType: 'IPv4',
      endpoints: [{ addresses: ['10.0.0.1'] }],
      ...extra,
    });
    const cases: unknown[] = [
      slice({ endpoints: null }), // read as []
      slice({ endpoints: null, ports: null }), // as the EndpointSlice controller writes a Service with no endpoints
      slice({ endpoints: [{ addresses: [] }] }),
      slice({ addressType: 'IPv5' }),
      slice({ ports: [{ port: 0 }] }),
      { apiVersion: 'security.trellis.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-all', namespace: 'n' } }, // spec read as {}
      { apiVersion: 'security.trellis.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'p', namespace: 'n' }, spec: null },
      { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r' }, spec: null },
      { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p' }, spec: { containers: [{ name: 'c' }] }, status: { podIPs: [{ ip: '10.0.0.1', extra: 1 }] } }, // stripped
      { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p' }, spec: { containers: [{ name: 'c' }] }, status: { podIPs: [{ ip: 'fd00::1' }] } },
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'S' }, spec: { ports: [{ port: 80 }] } },
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 's' }, spec: { clusterIP: 'fd00::10', clusterIPs: ['fd00::10', 'None'], ports: [{ port: 80 }] } },
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 's' }, spec: { clusterIP: '10.0.0.256', ports: [{ port: 80 }] } },
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 's', labels: Object.create(null) as object }, spec: { ports: [{ port: 80 }] } },
      { apiVersion: 'v1', kind: 'Service', metadata: JSON.parse('{"name":"s","__proto__":{"x":1}}') as object, spec: { ports: [{ port: 80 }] } },
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'n', namespace: '' } },
      { apiVersion: 'v1', kind: 'Namespace' },
    ];
    const service = (port: Record<string, unknown>) => ({ apiVersion: 'v1', kind: 'Service', metadata: { name: 's' }, spec: { ports: [{ port: 80, ...port }] } });
    for (const targetPort of ['', 'http', 0, 8080, 65536, 1.5, null]) cases.push(service({ targetPort }));
    for (const protocol of ['TCP', 'UDP', 'SCTP', 'tcp', 'HTTP', '', null]) cases.push(service({ protocol }));
    for (const c of cases) agrees(c);
  });

  it('never accepts what the schemas reject, nor reads it differently, under random edits (seeded)', async () => {
    const random = mulberry32(20250301);
    const plan = planLab('val2', await loadManifests(path.join(root, 'test/lab/cluster/fixtures/two-nodes.yaml')), { uid: () => 'u' });
    const seeds = [
      ...repositoryDocuments(),
      ...clusterObjects(plan),
      ...scaleObjects({ services: 3, endpointsPerService: 2 }),
    ].map((o) => JSON.parse(JSON.stringify(o)) as unknown);
    const values: (() => unknown)[] = [
      () => undefined, () => null, () => '', () => 'None', () => 'TCP', () => 'UDP', () => 'HTTP', () => 'IPv6', () => 'FQDN',
      () => 'x', () => 'UPPER', () => '-a', () => 'a.b-c', () => 'a'.repeat(254), () => '10.0.0.1', () => '10.0.0.01', () => '::1',
      () => 'fe80::1%eth0', () => '1.2.3', () => 0, () => 1, () => 80, () => 65535, () => 65536, () => -1, () => 1.5, () => NaN,
      () => Infinity, () => true, () => false, () => [], () => ['a'], () => [1], () => [{}], () => [{ ip: '10.0.0.2' }],
      () => ({}), () => ({ a: 'b' }), () => ({ a: 1 }), () => Object.create(null) as object, () => JSON.parse('{"__proto__":"x"}') as object,
      () => [undefined], () => [null],
    ];
    let taken = 0;
    let checked = 0;
    for (let n = 0; n < 8000; n++) {
      const doc = copy(seeds[Math.floor(random() * seeds.length)]);
      for (let k = 1 + Math.floor(random() * 3); k > 0; k--) mutate(doc, random, values);
      checked++;
      if (agrees(doc)) taken++;
    }
    // Many edited objects are still valid and were taken by the fast path: the comparison was not vacuous.
    expect(checked).toBe(8000);
    expect(taken).toBeGreaterThan(800);
  });
});

/** Every field the schemas name, and one they do not. */
const FIELDS = [
  'metadata', 'name', 'namespace', 'uid', 'labels', 'annotations', 'ownerReferences', 'kind', 'spec', 'nodeName', 'serviceAccountName',
  'containers', 'image', 'command', 'args', 'ports', 'containerPort', 'protocol', 'status', 'podIP', 'podIPs', 'ip', 'phase', 'clusterIP',
  'clusterIPs', 'selector', 'appProtocol', 'port', 'targetPort', 'addressType', 'endpoints', 'addresses', 'conditions', 'ready', 'targetRef',
  'extra',
];

/** Replaces, deletes or adds one value somewhere in `doc` (never its kind or apiVersion: those are checked first). */
function mutate(doc: unknown, random: () => number, values: (() => unknown)[]): void {
  const containers: (Record<string, unknown> | unknown[])[] = [];
  const walk = (v: unknown): void => {
    if (typeof v !== 'object' || v === null) return;
    containers.push(v as Record<string, unknown>);
    for (const c of Object.values(v)) walk(c);
  };
  walk(doc);
  const target = containers[Math.floor(random() * containers.length)]!;
  const value = values[Math.floor(random() * values.length)]!();
  const keys = Object.keys(target);
  const r = random();
  if (Array.isArray(target)) {
    if (r < 0.3 && target.length) target.splice(Math.floor(random() * target.length), 1);
    else if (r < 0.5) target.push(value);
    else if (target.length) target[Math.floor(random() * target.length)] = value;
    return;
  }
  const key = keys[Math.floor(random() * keys.length)];
  if (target === doc && (key === 'kind' || key === 'apiVersion')) return;
  if (r < 0.25 && key !== undefined) delete target[key];
  else if (r < 0.45) target[FIELDS[Math.floor(random() * FIELDS.length)]!] = value;
  else if (key !== undefined) target[key] = value;
}
