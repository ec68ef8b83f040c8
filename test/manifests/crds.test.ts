// The Trellis CRDs: structural schemas the API server accepts, that take every example object the docs show and
// refuse broken ones (a wrong enum, a percentage of 150, a missing required field, an unknown field). Each verdict is
// asked twice: of ajv (the schemas turned into JSON Schema, no root needed) and of a real kube-apiserver with the
// CRDs installed (a server-side dry run with strict field validation, as kubectl sends it), so the CEL rules and
// the server's own structural checks are run, not only read.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { KubeApiError, resourcePath, type ApiObject } from '../../lab/controlplane/client.js';
import { ensure } from '../../lab/cluster/kubelet.js';
import { startTestCluster, type TestCluster } from '../support/control-plane.js';
import { compilePolicies, modeFor } from '../../agent/security/index.js';
import {
  ROOT,
  crdValidators,
  crdVersions,
  defaults,
  exampleObjects,
  makeAjv,
  markdownYamlBlocks,
  parseYamlDocs,
  structuralProblems,
  toJsonSchema,
  type KubeObject,
  type Schema,
} from './load.js';

const validators = crdValidators();
const TRELLIS_GROUPS = ['traffic.trellis.dev', 'security.trellis.dev'];

/** One control plane for the file, started by the first test that asks a real server. */
let cluster: TestCluster | undefined;
async function real(): Promise<TestCluster> {
  cluster ??= await startTestCluster();
  return cluster;
}
afterAll(async () => {
  await cluster?.close();
});

/** What the real API server says of creating the object: a dry run (nothing is stored), unknown fields an error. */
async function serverVerdict(obj: unknown): Promise<{ ok: boolean; errors: string }> {
  const c = await real();
  const o = obj as ApiObject;
  const namespace = o.metadata.namespace ?? 'default';
  await ensure(c.api, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace } });
  try {
    await c.api.request('POST', resourcePath({ apiVersion: String(o.apiVersion), kind: String(o.kind), namespace }), {
      body: { ...o, metadata: { ...o.metadata, namespace } },
      query: { dryRun: 'All', fieldValidation: 'Strict' },
    });
    return { ok: true, errors: '' };
  } catch (err) {
    if (err instanceof KubeApiError && (err.status === 422 || err.status === 400)) return { ok: false, errors: err.message };
    throw err;
  }
}

function verdict(obj: unknown): { ok: boolean; errors: string } {
  const o = obj as KubeObject;
  const validate = validators.get(`${o.apiVersion}/${o.kind}`);
  if (!validate) throw new Error(`no CRD in manifests/crds for ${o.apiVersion} ${o.kind}`);
  const ok = validate(o);
  return { ok, errors: JSON.stringify(validate.errors ?? []) };
}

function example(kind: string, name: string): KubeObject {
  const found = exampleObjects().find(({ obj }) => obj.kind === kind && obj.metadata.name === name);
  if (!found) throw new Error(`manifests/examples has no ${kind} ${name}`);
  return structuredClone(found.obj);
}

/** Sets `value` at a dotted path (creating objects on the way); undefined deletes the last key. */
function withField(obj: KubeObject, dotted: string, value: unknown): KubeObject {
  const copy = structuredClone(obj) as Record<string, unknown>;
  const keys = dotted.split('.');
  let at = copy;
  for (const k of keys.slice(0, -1)) at = (at[k] ??= {}) as Record<string, unknown>;
  const last = keys[keys.length - 1]!;
  if (value === undefined) delete at[last];
  else at[last] = value;
  return copy as KubeObject;
}

describe('CRD definitions', () => {
  const versions = crdVersions();

  it('define FaultInjection, RetryBudget, EgressNetwork, AuthorizationPolicy and PeerAuthentication in v1alpha1', () => {
    expect(versions.map((v) => `${v.apiVersion}/${v.kind}`).sort()).toEqual([
      'security.trellis.dev/v1alpha1/AuthorizationPolicy',
      'security.trellis.dev/v1alpha1/PeerAuthentication',
      'traffic.trellis.dev/v1alpha1/EgressNetwork',
      'traffic.trellis.dev/v1alpha1/FaultInjection',
      'traffic.trellis.dev/v1alpha1/RetryBudget',
    ]);
  });

  it.each(versions.map((v) => [v.kind, v] as const))('%s: names, scope and one served storage version', (_kind, v) => {
    const spec = v.crd['spec'] as { names: { plural: string; singular: string; kind: string; listKind: string }; scope: string; versions: { served: boolean; storage: boolean; subresources?: { status?: object } }[] };
    expect(v.crd.metadata.name).toBe(`${spec.names.plural}.${v.group}`);
    expect(spec.names.singular).toBe(v.kind.toLowerCase());
    expect(spec.names.listKind).toBe(`${v.kind}List`);
    expect(spec.scope).toBe('Namespaced');
    expect(spec.versions.filter((x) => x.storage)).toHaveLength(1);
    expect(spec.versions.every((x) => x.served && x.subresources?.status)).toBe(true);
  });

  it.each(versions.map((v) => [v.kind, v] as const))('%s: the schema is structural', (_kind, v) => {
    expect(structuralProblems(v.schema)).toEqual([]);
  });

  it.each(versions.map((v) => [v.kind, v] as const))('%s: every default validates against its own schema', (_kind, v) => {
    const ajv = makeAjv();
    for (const { at, node } of defaults(v.schema)) {
      const validate = ajv.compile(toJsonSchema(node));
      expect(validate(node['default']), `${v.kind}${at}: default ${JSON.stringify(node['default'])}`).toBe(true);
    }
  });

  it.each(versions.map((v) => [v.kind, v] as const))('%s: printer columns point at fields of the schema', (_kind, v) => {
    const spec = v.crd['spec'] as { versions: { name: string; additionalPrinterColumns?: { name: string; jsonPath: string }[] }[] };
    const columns = spec.versions.find((x) => x.name === v.version)!.additionalPrinterColumns ?? [];
    expect(columns.length).toBeGreaterThan(0);
    for (const col of columns) {
      if (col.jsonPath === '.metadata.creationTimestamp') continue;
      let node: Schema | undefined = v.schema;
      // `.status.conditions[?(@.type=="Accepted")].status` (and `.spec.networks[*].cidr`) walk into the items.
      for (const step of col.jsonPath.replace(/\[\?\(.*?\)\]|\[\*\]/g, '[]').split('.').filter(Boolean)) {
        const name = step.replace(/\[\]$/, '');
        node = (node?.['properties'] as Record<string, Schema> | undefined)?.[name];
        if (step.endsWith('[]')) node = node?.['items'] as Schema | undefined;
      }
      expect(node, `${v.kind} column ${col.name}: ${col.jsonPath}`).toBeDefined();
    }
  });

  it('the structural check itself catches what the API server refuses', () => {
    expect(structuralProblems({ type: 'object', properties: { a: {} } })).toEqual(['.properties.a: type is required']);
    expect(structuralProblems({ type: 'object', properties: { a: { type: 'string' } }, anyOf: [{ type: 'object' }] })).toEqual([
      '.anyOf[0]: type is not allowed inside allOf/anyOf/oneOf/not',
    ]);
    expect(structuralProblems({ type: 'object', properties: { a: { type: 'string', maxlength: 3 } } })).toEqual(['.properties.a: unknown keyword maxlength']);
    expect(structuralProblems({ type: 'object', properties: { a: { type: 'object', patternProperties: {} } } })).toContain(
      '.properties.a: patternProperties is not allowed in CRD schemas',
    );
  });

  it('every kind has the same status: observedGeneration and standard conditions', () => {
    const statuses = versions.map((v) => (v.schema['properties'] as Record<string, Schema>)['status']);
    for (const s of statuses) expect(s).toEqual(statuses[0]);
    const conditions = ((statuses[0]!['properties'] as Record<string, Schema>)['conditions']!) as Schema;
    expect(conditions['x-kubernetes-list-type']).toBe('map');
    expect((conditions['items'] as Schema)['required']).toEqual(['type', 'status', 'lastTransitionTime', 'reason', 'message']);
  });
});

describe('the example objects', () => {
  const examples = exampleObjects();

  it('cover every Trellis kind', () => {
    const kinds = new Set(examples.map(({ obj }) => `${obj.apiVersion}/${obj.kind}`));
    for (const v of crdVersions()) expect(kinds, v.kind).toContain(`${v.apiVersion}/${v.kind}`);
  });

  it.each(examples.map(({ file, obj }) => [`${file}: ${obj.kind} ${obj.metadata.name}`, obj] as const))('%s is accepted, by ajv and by the API server', async (_name, obj) => {
    expect(verdict(obj)).toEqual({ ok: true, errors: '[]' });
    expect(await serverVerdict(obj)).toEqual({ ok: true, errors: '' });
  });

  it('a status as the agents write it is accepted', async () => {
    const obj = {
      ...example('FaultInjection', 'ratings-chaos'),
      status: {
        observedGeneration: 3,
        conditions: [{ type: 'Accepted', status: 'True', observedGeneration: 3, lastTransitionTime: '2025-01-02T03:04:05Z', reason: 'Accepted', message: 'compiled by 3 agents' }],
      },
    };
    expect(verdict(obj).ok).toBe(true);
    expect(verdict(withField(obj, 'status.conditions', [{ type: 'Accepted', status: 'Maybe', lastTransitionTime: 'yesterday', reason: 'x', message: '' }])).ok).toBe(false);
    // The real server: the status through its own subresource, on a stored object.
    const c = await real();
    const stored = { ...example('FaultInjection', 'ratings-chaos'), metadata: { name: 'status-probe', namespace: 'shop' } };
    await ensure(c.api, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop' } });
    await c.api.create(stored as ApiObject);
    const ref = { apiVersion: stored.apiVersion, kind: stored.kind, namespace: 'shop', name: 'status-probe' };
    await c.api.patch(ref, { status: obj.status }, 'merge', 'status');
    await expect(c.api.patch(ref, { status: { conditions: [{ type: 'Accepted', status: 'Maybe', lastTransitionTime: 'yesterday', reason: 'x', message: '' }] } }, 'merge', 'status')).rejects.toMatchObject({ status: 422 });
    await c.api.delete(ref);
  });
});

describe('broken objects are refused', () => {
  const cases: [string, KubeObject][] = [
    // FaultInjection
    ['FaultInjection: delay percentage 150', withField(example('FaultInjection', 'ratings-chaos'), 'spec.delay.percentage.value', 150)],
    ['FaultInjection: abort percentage -1', withField(example('FaultInjection', 'ratings-chaos'), 'spec.abort.percentage.value', -1)],
    ['FaultInjection: grpcStatus not a gRPC code', withField(example('FaultInjection', 'inventory-unavailable'), 'spec.abort.grpcStatus', 'NOT_AVAILABLE')],
    ['FaultInjection: httpStatus 600', withField(example('FaultInjection', 'ratings-chaos'), 'spec.abort.httpStatus', 600)],
    ['FaultInjection: both httpStatus and grpcStatus', withField(example('FaultInjection', 'ratings-chaos'), 'spec.abort.grpcStatus', 'INTERNAL')],
    ['FaultInjection: abort with neither status', withField(example('FaultInjection', 'ratings-chaos'), 'spec.abort.httpStatus', undefined)],
    ['FaultInjection: neither delay nor abort', withField(example('FaultInjection', 'ratings-chaos'), 'spec', {})],
    ['FaultInjection: fixedDelay missing', withField(example('FaultInjection', 'slow-everything'), 'spec.delay.fixedDelay', undefined)],
    ['FaultInjection: fixedDelay not a duration', withField(example('FaultInjection', 'slow-everything'), 'spec.delay.fixedDelay', '1.5 seconds')],
    ['FaultInjection: no spec', withField(example('FaultInjection', 'slow-everything'), 'spec', undefined)],
    ['FaultInjection: unknown field', withField(example('FaultInjection', 'slow-everything'), 'spec.delay.fixed_delay', '1s')],
    // RetryBudget
    ['RetryBudget: retryRatio 1.5', withField(example('RetryBudget', 'ratings'), 'spec.retryRatio', 1.5)],
    ['RetryBudget: targetRef kind Deployment', withField(example('RetryBudget', 'ratings'), 'spec.targetRef.kind', 'Deployment')],
    ['RetryBudget: targetRef group apps', withField(example('RetryBudget', 'ratings'), 'spec.targetRef.group', 'apps')],
    ['RetryBudget: targetRef missing', withField(example('RetryBudget', 'ratings'), 'spec.targetRef', undefined)],
    ['RetryBudget: targetRef name missing', withField(example('RetryBudget', 'ratings'), 'spec.targetRef.name', undefined)],
    ['RetryBudget: minRetriesPerSecond -1', withField(example('RetryBudget', 'ratings'), 'spec.minRetriesPerSecond', -1)],
    ['RetryBudget: minRetriesPerSecond 2.5', withField(example('RetryBudget', 'ratings'), 'spec.minRetriesPerSecond', 2.5)],
    ['RetryBudget: ttl without a unit', withField(example('RetryBudget', 'ratings'), 'spec.ttl', '10')],
    // EgressNetwork
    ['EgressNetwork: trafficPolicy in lower case', withField(example('EgressNetwork', 'internet'), 'spec.trafficPolicy', 'deny')],
    ['EgressNetwork: trafficPolicy missing', withField(example('EgressNetwork', 'internet'), 'spec.trafficPolicy', undefined)],
    ['EgressNetwork: a network without cidr', withField(example('EgressNetwork', 'internet'), 'spec.networks', [{ except: ['10.0.0.0/8'] }])],
    ['EgressNetwork: a cidr that is a name', withField(example('EgressNetwork', 'internet'), 'spec.networks', [{ cidr: 'example.com/32' }])],
    ['EgressNetwork: an empty networks list', withField(example('EgressNetwork', 'internet'), 'spec.networks', [])],
    ['EgressNetwork: a host name in upper case', withField(example('EgressNetwork', 'internet'), 'spec.hosts', [{ name: 'API.example.com' }])],
    ['EgressNetwork: a host with no addresses listed', withField(example('EgressNetwork', 'internet'), 'spec.hosts', [{ name: 'a.example.com', addresses: [] }])],
    ['EgressNetwork: unknown field', withField(example('EgressNetwork', 'internet'), 'spec.hosts', [{ name: 'a.example.com', port: 443 }])],
    // AuthorizationPolicy
    ['AuthorizationPolicy: action PERMIT', withField(example('AuthorizationPolicy', 'ratings-readers'), 'spec.action', 'PERMIT')],
    ['AuthorizationPolicy: action CUSTOM (not supported)', withField(example('AuthorizationPolicy', 'ratings-readers'), 'spec.action', 'CUSTOM')],
    ['AuthorizationPolicy: when without key', withField(example('AuthorizationPolicy', 'audit-tenant-b'), 'spec.rules', [{ when: [{ values: ['tenant-b'] }] }])],
    ['AuthorizationPolicy: ports as a name', withField(example('AuthorizationPolicy', 'ratings-readers'), 'spec.rules', [{ to: [{ operation: { ports: ['http'] } }] }])],
    ['AuthorizationPolicy: ports as numbers', withField(example('AuthorizationPolicy', 'ratings-readers'), 'spec.rules', [{ to: [{ operation: { ports: [8080] } }] }])],
    ['AuthorizationPolicy: principals as a string', withField(example('AuthorizationPolicy', 'ratings-readers'), 'spec.rules', [{ from: [{ source: { principals: 'cluster.local/ns/shop/sa/frontend' } }] }])],
    ['AuthorizationPolicy: selector label not a string', withField(example('AuthorizationPolicy', 'ratings-readers'), 'spec.selector.matchLabels', { app: 5 })],
    // PeerAuthentication
    ['PeerAuthentication: mode in lower case', withField(example('PeerAuthentication', 'default'), 'spec.mtls.mode', 'strict')],
    ['PeerAuthentication: port-level mode wrong', withField(example('PeerAuthentication', 'legacy-metrics-port'), 'spec.portLevelMtls', { '9102': { mode: 'OPEN' } })],
    ['PeerAuthentication: port-level mode in lower case', withField(example('PeerAuthentication', 'legacy-metrics-port'), 'spec.portLevelMtls', { '9102': { mode: 'disable' } })],
  ];

  it.each(cases)('%s', async (_name, obj) => {
    expect(verdict(obj).ok).toBe(false);
    expect((await serverVerdict(obj)).ok).toBe(false);
  });

  it('every kind has broken cases', () => {
    const kinds = new Set(cases.map(([name]) => name.split(':')[0]));
    for (const v of crdVersions()) expect(kinds).toContain(v.kind);
  });
});

// Policies keep unknown fields (x-kubernetes-preserve-unknown-fields) instead of letting the API server prune
// them: a pruned typo changes what a rule matches without anyone being told. The agents refuse the object and
// name the field instead.
describe('unknown fields in policies reach the agents, which refuse them', () => {
  const cases: [string, KubeObject, RegExp][] = [
    ['a typo in a source (pruned, an ALLOW would widen)', withField(example('AuthorizationPolicy', 'ratings-readers'), 'spec.rules', [{ from: [{ source: { namespaces: ['shop'], notPrincipal: ['cluster.local/ns/shop/sa/old'] } }] }]), /spec.rules\[0\].from\[0\].source.notPrincipal: unknown field/],
    ['a typo in an operation', withField(example('AuthorizationPolicy', 'ratings-readers'), 'spec.rules', [{ to: [{ operation: { paths: ['/api/*'], method: ['GET'] } }] }]), /spec.rules\[0\].to\[0\].operation.method: unknown field/],
    ['a typo in a rule', withField(example('AuthorizationPolicy', 'ratings-readers'), 'spec.rules', [{ form: [{ source: { namespaces: ['shop'] } }] }]), /spec.rules\[0\].form: unknown field/],
    ['a typo in a condition', withField(example('AuthorizationPolicy', 'audit-tenant-b'), 'spec.rules', [{ when: [{ key: 'source.ip', values: ['10.0.0.1'], notValue: ['10.0.0.2'] }] }]), /spec.rules\[0\].when\[0\].notValue: unknown field/],
    ['a typo of action (pruned, DENY would become the default ALLOW)', withField(withField(example('AuthorizationPolicy', 'no-admin-from-outside'), 'spec.action', undefined), 'spec.acton', 'DENY'), /spec.acton: unknown field/],
    ['a typo in the selector (pruned, the policy would select the whole namespace)', withField(example('AuthorizationPolicy', 'ratings-readers'), 'spec.selector', { matchLabel: { app: 'ratings' } }), /spec.selector.matchLabel: unknown field/],
    ['JWT fields Trellis does not implement', withField(example('AuthorizationPolicy', 'ratings-readers'), 'spec.rules', [{ from: [{ source: { requestPrincipals: ['*'] } }] }]), /source.requestPrincipals: needs request authentication/],
    ['PeerAuthentication: a typo in mtls (pruned, STRICT would read as UNSET)', withField(example('PeerAuthentication', 'default'), 'spec.mtls', { mod: 'STRICT' }), /spec.mtls.mod: unknown field/],
    ['PeerAuthentication: a typo in the spec', withField(example('PeerAuthentication', 'default'), 'spec.mTLS', { mode: 'STRICT' }), /spec.mTLS: unknown field/],
    ['PeerAuthentication: a typo in a port', withField(example('PeerAuthentication', 'legacy-metrics-port'), 'spec.portLevelMtls', { '9102': { mode: 'PERMISSIVE', mod: 'STRICT' } }), /spec.portLevelMtls.9102.mod: unknown field/],
  ];

  it.each(cases)('%s', async (_name, obj, error) => {
    // Accepted by the schema (kept, not pruned), on the real server too...
    expect(verdict(obj)).toEqual({ ok: true, errors: '[]' });
    expect(await serverVerdict(obj)).toEqual({ ok: true, errors: '' });
    // ...and refused by the agent, the field named.
    const set = compilePolicies([obj as unknown as Parameters<typeof compilePolicies>[0][number]], { trustDomain: 'cluster.local' });
    expect(set.errors.some((e) => error.test(e)), set.errors.join('\n')).toBe(true);
    expect(set.statuses[0]).toMatchObject({ accepted: false, reason: 'Invalid' });
  });

  it('every object of a policy spec keeps unknown fields, so a field added later cannot be pruned either', () => {
    for (const v of crdVersions().filter((x) => x.group === 'security.trellis.dev')) {
      const missing: string[] = [];
      const visit = (node: Schema, at: string) => {
        if (node['type'] === 'object' && (node['properties'] || typeof node['additionalProperties'] !== 'object') && node['x-kubernetes-preserve-unknown-fields'] !== true) missing.push(at);
        for (const [k, child] of Object.entries((node['properties'] ?? {}) as Record<string, Schema>)) visit(child, `${at}.${k}`);
        if (typeof node['items'] === 'object') visit(node['items'] as Schema, `${at}[]`);
        if (typeof node['additionalProperties'] === 'object') visit(node['additionalProperties'] as Schema, `${at}.*`);
      };
      visit((v.schema['properties'] as Record<string, Schema>)['spec']!, 'spec');
      expect(missing, v.kind).toEqual([]);
    }
  });

  it('DISABLE is accepted at both levels, and compiles (plaintext accepted, as PERMISSIVE)', async () => {
    const ns = withField(example('PeerAuthentication', 'default'), 'spec.mtls.mode', 'DISABLE');
    const port = withField(example('PeerAuthentication', 'legacy-metrics-port'), 'spec.portLevelMtls', { '9102': { mode: 'DISABLE' } });
    expect(verdict(ns)).toEqual({ ok: true, errors: '[]' });
    expect(verdict(port)).toEqual({ ok: true, errors: '[]' });
    expect(await serverVerdict(ns)).toEqual({ ok: true, errors: '' });
    expect(await serverVerdict(port)).toEqual({ ok: true, errors: '' });
    const set = compilePolicies([ns, port] as unknown as Parameters<typeof compilePolicies>[0], { trustDomain: 'cluster.local' });
    expect(set.errors).toEqual([]);
    expect(modeFor(set, { namespace: 'shop', labels: {} }, 8080)).toBe('DISABLE');
    expect(modeFor(set, { namespace: 'shop', labels: { app: 'legacy' } }, 9102)).toBe('DISABLE');
    expect(modeFor(set, { namespace: 'shop', labels: { app: 'legacy' } }, 8080)).toBe('STRICT');
  });
});

/** The prose right before a code block (up to the previous block or heading). */
function blockIntro(doc: string, line: number): string {
  const lines = readFileSync(path.join(ROOT, doc), 'utf8').split('\n').slice(0, line - 1);
  const start = Math.max(...['```', '#'].map((m) => lines.findLastIndex((l, i) => i < lines.length - 1 && l.startsWith(m))));
  return lines.slice(start + 1).join('\n');
}

describe('YAML in the docs', () => {
  const docs = ['docs/install.md', 'manifests/README.md', 'docs/security.md', 'docs/gateway-api.md', 'docs/architecture.md'];

  it.each(docs)('%s: every yaml block parses, and Trellis and Gateway API objects in it are accepted by the API server', async (doc) => {
    const blocks = markdownYamlBlocks(path.join(ROOT, doc));
    expect(blocks.length).toBeGreaterThan(0);
    for (const block of blocks) {
      const objects = parseYamlDocs(block.text, `${doc}:${block.line}`) as KubeObject[];
      for (const obj of objects) {
        const group = String(obj.apiVersion ?? '').split('/')[0]!;
        const where = `${doc}:${block.line} ${obj.kind} ${obj.metadata?.name}`;
        if (group === 'gateway.networking.k8s.io') {
          // The lab installs the standard channel (docs/install.md); in v1.2 a rule's `name` and `retry` exist only in
          // the experimental one, and a block that uses them must say so.
          const v = await serverVerdict(obj);
          if (!v.ok) {
            expect(v.errors, where).toMatch(/strict decoding error: (unknown field "spec\.rules\[\d+\]\.(name|retry)"(, )?)+$/);
            expect(blockIntro(doc, block.line), `${where}: say that the example needs the experimental channel`).toMatch(/experimental channel/);
          }
          continue;
        }
        if (!TRELLIS_GROUPS.includes(group)) continue;
        expect(await serverVerdict(obj), where).toEqual({ ok: true, errors: '' });
        expect(verdict(obj), where).toEqual({ ok: true, errors: '[]' });
        // Policies shown in the docs also compile, as the agents would read them.
        if (group === 'security.trellis.dev') {
          const set = compilePolicies([obj as unknown as Parameters<typeof compilePolicies>[0][number]], { trustDomain: 'cluster.local' });
          expect(set.errors, `${doc}:${block.line} ${obj.kind} ${obj.metadata?.name}`).toEqual([]);
        }
      }
    }
  });
});
