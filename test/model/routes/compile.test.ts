// Route compilation: validation with field paths, reference resolution, precedence tie-breaks, producer vs
// consumer routes, status conditions, last-good fallback and frozen output.
import { parseAllDocuments } from 'yaml';
import { describe, expect, it } from 'vitest';
import {
  compileRoutes,
  matchGrpc,
  matchRequest,
  pickBackend,
  redirectLocation,
  replacePath,
  routeFor,
  type CompileOptions,
  type CompileResult,
  type CompiledRoutes,
} from '../../../agent/model/routes/index.js';
import { validateObject } from '../../../agent/model/validate.js';
import { compile } from '../../../agent/state/store.js';
import type { KubeObject } from '../../../agent/model/objects.js';

const SERVICES = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 10.96.1.1, ports: [{name: http, port: 80}, {name: admin, port: 9000}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: demo}
spec: {clusterIP: 10.96.1.2, ports: [{name: http, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: demo}
spec: {clusterIP: 10.96.1.3, ports: [{name: http, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: demo}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: data}
spec: {clusterIP: 10.96.2.1, ports: [{port: 5432}]}
`;

function objectsOf(yamlText: string): KubeObject[] {
  return parseAllDocuments(yamlText).map((d) => d.toJS()).filter((doc) => doc !== null).map((doc) => {
    const v = validateObject(doc);
    if (!v.ok) throw new Error(v.reason);
    return v.object;
  });
}

function load(yamlText: string, opts?: CompileOptions): CompileResult {
  const objects = objectsOf(`${SERVICES}---\n${yamlText}`);
  return compileRoutes(objects, compile(objects, 'cluster.local', 1).services, opts);
}

const web = (r: CompileResult, callerNamespace = 'demo', port = 80) => routeFor(r.table, { service: 'demo/web', port, callerNamespace });

function request(target: string, headers: Record<string, string> = {}, method = 'GET') {
  const url = new URL(target, 'http://web');
  const h = new Map(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  return { method, path: url.pathname, query: url.searchParams, headers: (n: string) => h.get(n) };
}

const backendName = (routes: CompiledRoutes | undefined, target: string, headers: Record<string, string> = {}, method = 'GET') => {
  const m = routes && matchRequest(routes, request(target, headers, method));
  if (!m) return 404;
  const b = pickBackend(m, () => 0);
  return b.kind === 'Service' ? b.name : b.status;
};

const route = (name: string, rules: string, extra = '', parent = '{group: "", kind: Service, name: web}') => `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ${name}, namespace: demo${extra}}
spec:
  parentRefs: [${parent}]
  rules:
${rules}`;

describe('validation', () => {
  it('rejects an invalid route naming the object and field, and compiles the others', () => {
    const r = load(`${route('split', `  - backendRefs: [{name: web-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: v2}}]
    backendRefs: [{name: web-v2, port: 8080}]`)}
---
${route('good', `  - matches: [{path: {type: Exact, value: /ok}}]
    backendRefs: [{name: web-v2, port: 8080}]`)}`);
    expect(r.errors).toEqual(['HTTPRoute demo/split: spec.rules[1].matches[0].path.value: must start with "/"']);
    const split = r.statuses.find((s) => s.name === 'split')!;
    expect(split.parents).toHaveLength(1);
    expect(split.parents[0]!.conditions).toEqual([
      { type: 'Accepted', status: 'False', reason: 'UnsupportedValue', message: 'spec.rules[1].matches[0].path.value: must start with "/"' },
    ]);
    expect(split.fellBack).toBe(false);
    // The good route is in force; nothing of the invalid one is.
    expect(backendName(web(r), '/ok')).toBe('web-v2');
    expect(backendName(web(r), '/')).toBe(404);
  });

  it.each([
    ['an invalid regex', '  - matches: [{path: {type: RegularExpression, value: "/a(b"}}]', 'spec.rules[0].matches[0].path.value: invalid regular expression'],
    ['a lookahead (not RE2)', '  - matches: [{headers: [{name: x, type: RegularExpression, value: "(?=a)a"}]}]', 'spec.rules[0].matches[0].headers[0].value: lookahead and lookbehind are not supported'],
    ['a path with //', '  - matches: [{path: {type: Exact, value: "/a//b"}}]', 'spec.rules[0].matches[0].path.value: must not contain "//"'],
    ['an unknown method', '  - matches: [{method: FETCH}]', 'spec.rules[0].matches[0].method: must be one of GET'],
    ['an invalid header name', '  - matches: [{headers: [{name: "x y", value: a}]}]', 'spec.rules[0].matches[0].headers[0].name: must match an HTTP token'],
    ['a weight over 1000000', '  - backendRefs: [{name: web-v1, port: 8080, weight: 1000001}]', 'spec.rules[0].backendRefs[0].weight: must be between 0 and 1000000'],
    ['a Service backendRef without port', '  - backendRefs: [{name: web-v1}]', 'spec.rules[0].backendRefs[0].port: is required for a Service reference'],
    ['an unknown field', '  - backendRef: [{name: web-v1, port: 8080}]', 'spec.rules[0].backendRef: unknown field'],
    ['a CORS filter', '  - filters: [{type: CORS, cors: {allowOrigins: ["http://a"]}}]', 'spec.rules[0].filters[0]: the CORS filter is not supported by Trellis'],
    ['session persistence', '  - sessionPersistence: {sessionName: s}', 'spec.rules[0].sessionPersistence: session persistence is not supported'],
    ['a filter with the wrong field', '  - filters: [{type: RequestHeaderModifier, responseHeaderModifier: {set: [{name: a, value: b}]}}]', 'spec.rules[0].filters[0].responseHeaderModifier: must not be set when type is RequestHeaderModifier'],
    ['two actions on one header', '  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-A, value: b}], remove: [x-a]}}]', 'spec.rules[0].filters[0].requestHeaderModifier.remove[0]: header "x-a" already has an action (set)'],
    ['a duplicate rule name', '  - name: same\n  - name: same', 'spec.rules[1].name: rule name "same" is used by another rule'],
    ['a mirror with percent and fraction', '  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web-v2, port: 8080}, percent: 5, fraction: {numerator: 1}}}]\n    backendRefs: [{name: web-v1, port: 8080}]', 'spec.rules[0].filters[0].requestMirror: only one of percent and fraction may be set'],
    ['a backend-level redirect', '  - backendRefs: [{name: web-v1, port: 8080, filters: [{type: RequestRedirect, requestRedirect: {hostname: a.b}}]}]', 'spec.rules[0].backendRefs[0].filters[0]: a RequestRedirect filter is supported on the rule, not on a backendRef'],
  ])('rejects %s', (_what, rules, message) => {
    const r = load(route('bad', rules));
    expect(r.errors.some((e) => e.startsWith(`HTTPRoute demo/bad: ${message}`))).toBe(true);
    expect(web(r)).toBeUndefined();
    expect(r.statuses[0]!.parents[0]!.conditions[0]).toMatchObject({ type: 'Accepted', status: 'False', reason: 'UnsupportedValue' });
  });

  it.each([
    ['RequestRedirect with URLRewrite', `  - filters:
    - {type: RequestRedirect, requestRedirect: {hostname: a.example}}
    - {type: URLRewrite, urlRewrite: {hostname: b.example}}`, 'spec.rules[0].filters: RequestRedirect and URLRewrite cannot be used in the same rule'],
    ['RequestRedirect with backendRefs', `  - filters: [{type: RequestRedirect, requestRedirect: {hostname: a.example}}]
    backendRefs: [{name: web-v1, port: 8080}]`, 'spec.rules[0].backendRefs: must be empty when the rule has a RequestRedirect filter'],
    ['two RequestHeaderModifiers', `  - filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: c, value: d}]}}`, 'spec.rules[0].filters: the RequestHeaderModifier filter cannot be repeated'],
    ['ReplacePrefixMatch with an Exact match', `  - matches: [{path: {type: Exact, value: /a}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]`, 'spec.rules[0].matches: a ReplacePrefixMatch path modifier needs exactly one match, with a PathPrefix path'],
    ['ReplacePrefixMatch with two matches', `  - matches: [{path: {value: /a}}, {path: {value: /b}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /c}}}]`, 'spec.rules[0].matches: a ReplacePrefixMatch path modifier needs exactly one match'],
  ])('rejects %s as IncompatibleFilters', (_what, rules, message) => {
    const r = load(route('bad', rules));
    expect(r.errors.some((e) => e.startsWith(`HTTPRoute demo/bad: ${message}`))).toBe(true);
    expect(r.statuses[0]!.parents[0]!.conditions[0]).toMatchObject({ status: 'False', reason: 'IncompatibleFilters' });
  });

  it('a rule without matches matches PathPrefix "/"', () => {
    const r = load(route('all', '  - backendRefs: [{name: web-v1, port: 8080}]'));
    expect(backendName(web(r), '/anything/at/all?x=1')).toBe('web-v1');
    expect(matchRequest(web(r)!, request('/x'))!.match).toBe('PathPrefix /');
  });
});

describe('timeouts and retry', () => {
  it('parses GEP-2257 durations into milliseconds', () => {
    const r = load(route('t', `  - timeouts: {request: 10s, backendRequest: 1s500ms}
    retry: {codes: [500, 503], attempts: 3, backoff: 100ms}
    backendRefs: [{name: web-v1, port: 8080}]
  - matches: [{path: {value: /b}}]
    timeouts: {request: 0s, backendRequest: 1h}
    retry: {codes: [502]}
    backendRefs: [{name: web-v1, port: 8080}]`));
    expect(r.errors).toEqual([]);
    const a = matchRequest(web(r)!, request('/'))!.rule;
    expect(a.timeouts).toEqual({ requestMs: 10_000, backendRequestMs: 1_500 });
    expect(a.retry).toEqual({ codes: [500, 503], attempts: 3, backoffMs: 100 });
    const b = matchRequest(web(r)!, request('/b'))!.rule;
    // request 0s disables the overall timeout, so any backendRequest is allowed.
    expect(b.timeouts).toEqual({ requestMs: 0, backendRequestMs: 3_600_000 });
    expect(b.retry).toEqual({ codes: [502], attempts: 1 });
  });

  it.each([
    ['{request: 10s, backendRequest: 20s}', 'spec.rules[0].timeouts.backendRequest: must not be longer than the request timeout (10s)'],
    ['{request: 10s, backendRequest: 0s}', 'spec.rules[0].timeouts.backendRequest: must not be longer than the request timeout (10s)'],
    ['{request: 1.5s}', 'spec.rules[0].timeouts.request: must be a Gateway API duration'],
    ['{request: 1d}', 'spec.rules[0].timeouts.request: must be a Gateway API duration'],
    ['{request: 100000s}', 'spec.rules[0].timeouts.request: must be a Gateway API duration'],
  ])('rejects timeouts %s', (timeouts, message) => {
    const r = load(route('t', `  - timeouts: ${timeouts}\n    backendRefs: [{name: web-v1, port: 8080}]`));
    expect(r.errors.some((e) => e.startsWith(`HTTPRoute demo/t: ${message}`))).toBe(true);
  });

  it.each([
    ['{codes: [200]}', 'spec.rules[0].retry.codes[0]: must be an HTTP status code between 400 and 599'],
    ['{codes: [503, 503]}', 'spec.rules[0].retry.codes[1]: 503 is listed twice'],
    ['{attempts: -1}', 'spec.rules[0].retry.attempts: must be between 0 and 100'],
    ['{backoff: fast}', 'spec.rules[0].retry.backoff: must be a Gateway API duration'],
  ])('rejects retry %s', (retry, message) => {
    const r = load(route('t', `  - retry: ${retry}\n    backendRefs: [{name: web-v1, port: 8080}]`));
    expect(r.errors.some((e) => e.startsWith(`HTTPRoute demo/t: ${message}`))).toBe(true);
  });
});

describe('precedence', () => {
  it('PathPrefix matches whole segments', () => {
    const r = load(route('p', `  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: web-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /api/}}]
    backendRefs: [{name: web-v1, port: 8080}]`));
    const routes = web(r);
    expect(backendName(routes, '/v2')).toBe('web-v2');
    expect(backendName(routes, '/v2/')).toBe('web-v2');
    expect(backendName(routes, '/v2/x')).toBe('web-v2');
    expect(backendName(routes, '/v2example')).toBe(404);
    expect(backendName(routes, '/V2')).toBe(404);
    // A trailing "/" on the prefix is ignored.
    expect(backendName(routes, '/api')).toBe('web-v1');
    expect(backendName(routes, '/apix')).toBe(404);
  });

  it('exact > longest prefix > regex; then method, headers, query params', () => {
    const r = load(route('p', `  - name: regex
    matches: [{path: {type: RegularExpression, value: "/items/[0-9]+"}}]
    backendRefs: [{name: web-v1, port: 8080}]
  - name: prefix
    matches: [{path: {type: PathPrefix, value: /items}}]
    backendRefs: [{name: web-v2, port: 8080}]
  - name: exact
    matches: [{path: {type: Exact, value: /items/7}}]
    backendRefs: [{name: web-v1, port: 8080}]
  - name: two-headers
    matches: [{path: {value: /orders}, headers: [{name: a, value: "1"}, {name: b, value: "2"}]}]
    backendRefs: [{name: web-v1, port: 8080}]
  - name: method
    matches: [{path: {value: /orders}, method: POST}]
    backendRefs: [{name: web-v2, port: 8080}]
  - name: query
    matches: [{path: {value: /orders}, headers: [{name: a, value: "1"}, {name: b, value: "2"}], queryParams: [{name: q, value: x}]}]
    backendRefs: [{name: web-v2, port: 8080}]`));
    const routes = web(r)!;
    const ruleName = (target: string, headers: Record<string, string> = {}, method = 'GET') => matchRequest(routes, request(target, headers, method))?.rule.name;
    expect(ruleName('/items/7')).toBe('exact');
    expect(ruleName('/items/8')).toBe('prefix'); // a prefix outranks a regex
    expect(ruleName('/orders', { a: '1', b: '2' }, 'POST')).toBe('method'); // method outranks header count
    expect(ruleName('/orders', { a: '1', b: '2' })).toBe('two-headers');
    expect(ruleName('/orders?q=x', { a: '1', b: '2' })).toBe('query'); // more query matches on a tie
    expect(ruleName('/orders', { A: '1' })).toBeUndefined(); // header values are exact: b is missing
  });

  it('header names are case-insensitive, values case-sensitive; regex values are anchored', () => {
    const r = load(route('h', `  - matches: [{headers: [{name: X-Env, value: Prod}]}]
    backendRefs: [{name: web-v1, port: 8080}]
  - matches: [{headers: [{name: x-user, type: RegularExpression, value: "(?i)admin-[0-9]+"}]}]
    backendRefs: [{name: web-v2, port: 8080}]`));
    const routes = web(r);
    expect(backendName(routes, '/', { 'x-env': 'Prod' })).toBe('web-v1');
    expect(backendName(routes, '/', { 'x-env': 'prod' })).toBe(404);
    expect(backendName(routes, '/', { 'x-user': 'ADMIN-12' })).toBe('web-v2');
    expect(backendName(routes, '/', { 'x-user': 'admin-12x' })).toBe(404);
  });

  const tie = (name: string, ts: string | undefined, backend: string, ns = 'demo') => `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ${name}, namespace: ${ns}${ts ? `, creationTimestamp: "${ts}"` : ''}}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: demo}]
  rules:
  - matches: [{path: {value: /same}}]
    backendRefs: [{name: ${backend}, port: 8080, namespace: demo}]
`;

  it('ties across routes go to the oldest route', () => {
    const r = load(`${tie('a-new', '2026-01-02T00:00:00Z', 'web-v1')}---\n${tie('z-old', '2026-01-01T00:00:00Z', 'web-v2')}`);
    expect(backendName(web(r), '/same')).toBe('web-v2');
    expect(web(r)!.routes).toEqual(['demo/z-old', 'demo/a-new']);
  });

  it('then to namespace/name in alphabetical order; a route without a timestamp counts as newest', () => {
    const same = '2026-01-01T00:00:00Z';
    expect(backendName(web(load(`${tie('b', same, 'web-v1')}---\n${tie('a', same, 'web-v2')}`)), '/same')).toBe('web-v2');
    expect(backendName(web(load(`${tie('b', undefined, 'web-v1')}---\n${tie('a', undefined, 'web-v2')}`)), '/same')).toBe('web-v2');
    expect(backendName(web(load(`${tie('a', undefined, 'web-v1')}---\n${tie('b', same, 'web-v2')}`)), '/same')).toBe('web-v2');
  });

  it('then to the first rule of the route', () => {
    const r = load(route('first', `  - matches: [{path: {value: /same}}]
    backendRefs: [{name: web-v1, port: 8080}]
  - matches: [{path: {value: /same}}]
    backendRefs: [{name: web-v2, port: 8080}]`));
    expect(backendName(web(r), '/same')).toBe('web-v1');
  });

  it('returns the same MatchedRule object every time (nothing allocated per request)', () => {
    const routes = web(load(route('m', '  - backendRefs: [{name: web-v1, port: 8080}]')))!;
    expect(matchRequest(routes, request('/a'))).toBe(matchRequest(routes, request('/b')));
  });
});

describe('backends', () => {
  it('a backendRef to a missing Service answers 500 for its share', () => {
    const r = load(route('s', `  - backendRefs:
    - {name: web-v1, port: 8080, weight: 1}
    - {name: gone, port: 8080, weight: 1}
    - {name: web-v2, port: 9999, weight: 2}`));
    const m = matchRequest(web(r)!, request('/'))!;
    expect(m.rule.backends.map((b) => b.kind)).toEqual(['Service', 'Error', 'Error']);
    expect(m.rule.cumulativeWeights).toEqual([1, 2, 4]);
    expect(pickBackend(m, () => 0.1)).toMatchObject({ kind: 'Service', name: 'web-v1' });
    expect(pickBackend(m, () => 0.3)).toMatchObject({ kind: 'Error', status: 500, grpcStatus: 14 });
    expect(pickBackend(m, () => 0.9)).toMatchObject({ kind: 'Error', status: 500 });
    const st = r.statuses[0]!;
    expect(st.parents[0]!.conditions).toEqual([
      expect.objectContaining({ type: 'Accepted', status: 'True', reason: 'Accepted' }),
      expect.objectContaining({ type: 'ResolvedRefs', status: 'False', reason: 'BackendNotFound' }),
    ]);
    expect(st.unresolved).toEqual([
      'HTTPRoute demo/s: spec.rules[0].backendRefs[1]: Service demo/gone not found (its share, weight 1, is answered 500)',
      'HTTPRoute demo/s: spec.rules[0].backendRefs[2]: Service demo/web-v2 has no TCP port 9999 (its share, weight 2, is answered 500)',
    ]);
  });

  it('no backendRefs, or all weights 0, answer 500', () => {
    const r = load(route('s', `  - matches: [{path: {value: /none}}]
  - matches: [{path: {value: /zero}}]
    backendRefs: [{name: web-v1, port: 8080, weight: 0}, {name: web-v2, port: 8080, weight: 0}]`));
    expect(pickBackend(matchRequest(web(r)!, request('/none'))!, Math.random)).toMatchObject({ kind: 'Error', status: 500, reason: 'the rule has no backendRefs' });
    expect(pickBackend(matchRequest(web(r)!, request('/zero'))!, Math.random)).toMatchObject({ kind: 'Error', status: 500, reason: 'every backendRef of the rule has weight 0' });
  });

  it('a cross-namespace backendRef without a ReferenceGrant is refused (RefNotPermitted), unless allowed', () => {
    const yaml = route('x', '  - backendRefs: [{name: db, namespace: data, port: 5432}]');
    const denied = load(yaml);
    const m = matchRequest(web(denied)!, request('/'))!;
    expect(pickBackend(m, () => 0)).toMatchObject({ kind: 'Error', status: 500 });
    expect(denied.statuses[0]!.parents[0]!.conditions[1]).toMatchObject({ type: 'ResolvedRefs', status: 'False', reason: 'RefNotPermitted' });
    expect(denied.unresolved[0]).toContain('spec.rules[0].backendRefs[0]: Service data/db is in another namespace; a cross-namespace backendRef needs a ReferenceGrant');
    const allowed = load(yaml, { crossNamespaceBackends: 'allow' });
    expect(pickBackend(matchRequest(web(allowed)!, request('/'))!, () => 0)).toMatchObject({ kind: 'Service', service: 'data/db', port: 5432, host: 'db.data.svc.cluster.local' });
  });

  it('a backendRef to another kind is InvalidKind', () => {
    const r = load(route('k', '  - backendRefs: [{group: example.com, kind: Bucket, name: b}]'));
    expect(r.statuses[0]!.parents[0]!.conditions[1]).toMatchObject({ reason: 'InvalidKind' });
    expect(pickBackend(matchRequest(web(r)!, request('/'))!, () => 0)).toMatchObject({ kind: 'Error' });
  });

  it('compiles backend-level header filters and mirrors (percent or fraction)', () => {
    const r = load(route('f', `  - filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: web-v2, port: 8080}, fraction: {numerator: 1, denominator: 8}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: web-v1, port: 8080}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: missing, port: 1}, percent: 10}}
    backendRefs:
    - name: web-v1
      port: 8080
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-Canary, value: "no"}]}}]`));
    const rule = matchRequest(web(r)!, request('/'))!.rule;
    expect(rule.mirrors.map((m) => [m.backend.name, m.percent])).toEqual([['web-v2', 12.5], ['web-v1', 100]]);
    expect(r.statuses[0]!.unresolved[0]).toContain('spec.rules[0].filters[2].requestMirror.backendRef: Service demo/missing not found (the mirror is not sent)');
    const b = pickBackend(matchRequest(web(r)!, request('/'))!, () => 0);
    expect(b.kind === 'Service' && b.requestHeaders).toEqual({ set: [], add: [{ name: 'x-canary', value: 'no' }], remove: [] });
  });
});

describe('FaultInjection', () => {
  const fault = (name: string, spec: string) => `apiVersion: traffic.trellis.dev/v1alpha1
kind: FaultInjection
metadata: {name: ${name}, namespace: demo}
spec: ${spec}
`;
  const withFault = (name: string) => route('chaos', `  - filters: [{type: ExtensionRef, extensionRef: {group: traffic.trellis.dev, kind: FaultInjection, name: ${name}}}]
    backendRefs: [{name: web-v1, port: 8080}]`);

  it('resolves the referenced FaultInjection into the rule', () => {
    const r = load(`${fault('slow', '{delay: {fixedDelay: 1.5s, percentage: {value: 10}}, abort: {httpStatus: 503, percentage: {value: 5}}}')}---\n${withFault('slow')}`);
    const rule = matchRequest(web(r)!, request('/'))!.rule;
    expect(rule.fault).toEqual({ source: 'demo/slow', delayMs: 1500, delayPercent: 10, abort: { httpStatus: 503 }, abortPercent: 5 });
    expect(rule.filters).toEqual([{ type: 'FaultInjection', fault: rule.fault }]);
    expect(rule.error).toBeUndefined();
    expect(r.faults).toEqual([expect.objectContaining({ name: 'slow', condition: expect.objectContaining({ status: 'True' }) })]);
  });

  it('maps a gRPC abort status name to its code; no percentage means all requests', () => {
    const r = load(`${fault('grpc', '{abort: {grpcStatus: UNAVAILABLE}}')}---\n${withFault('grpc')}`);
    expect(matchRequest(web(r)!, request('/'))!.rule.fault).toEqual({ source: 'demo/grpc', delayPercent: 100, abort: { grpcStatus: 14, grpcStatusName: 'UNAVAILABLE' }, abortPercent: 100 });
  });

  it('a missing FaultInjection makes the rule answer 500 (the filter is never skipped)', () => {
    const r = load(withFault('nowhere'));
    const rule = matchRequest(web(r)!, request('/'))!.rule;
    expect(rule.error).toMatchObject({ status: 500 });
    expect(rule.error!.reason).toContain('FaultInjection demo/nowhere not found');
    expect(r.statuses[0]!.parents[0]!.conditions[1]).toMatchObject({ type: 'ResolvedRefs', status: 'False', reason: 'BackendNotFound' });
  });

  it('an invalid FaultInjection is reported and the rule answers 500', () => {
    const r = load(`${fault('bad', '{abort: {httpStatus: 503, grpcStatus: INTERNAL}, delay: {fixedDelay: soon}}')}---\n${withFault('bad')}`);
    expect(r.errors).toEqual([
      'FaultInjection demo/bad: spec.delay.fixedDelay: must be a duration like "1.5s", "100ms" or "2m", got "soon"',
      'FaultInjection demo/bad: spec.abort: must set exactly one of httpStatus and grpcStatus',
    ]);
    expect(r.faults[0]!.condition).toMatchObject({ status: 'False', reason: 'Invalid' });
    expect(matchRequest(web(r)!, request('/'))!.rule.error).toMatchObject({ status: 500 });
  });

  it('an ExtensionRef to an unknown kind answers 500 with InvalidKind', () => {
    const r = load(route('ext', `  - filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Magic, name: m}}]
    backendRefs: [{name: web-v1, port: 8080}]`));
    expect(matchRequest(web(r)!, request('/'))!.rule.error).toMatchObject({ status: 500 });
    expect(r.statuses[0]!.parents[0]!.conditions[1]).toMatchObject({ reason: 'InvalidKind' });
  });
});

describe('parents, producer and consumer routes', () => {
  it('consumer routes of the caller namespace win over producer routes', () => {
    const r = load(`${route('producer', '  - backendRefs: [{name: web-v1, port: 8080}]')}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: demo, port: 80}]
  rules:
  - matches: [{path: {value: /only}}]
    backendRefs: [{name: web, namespace: demo, port: 80}]`);
    expect(web(r, 'shop')!.scope).toBe('consumer');
    expect(web(r, 'other')!.scope).toBe('producer');
    expect(web(r, 'demo')!.scope).toBe('producer');
    // The consumer table replaces the producer one for shop: /x does not fall through to the producer route.
    expect(backendName(web(r, 'shop'), '/x')).toBe(404);
    expect(backendName(web(r, 'other'), '/x')).toBe('web-v1');
    // Per port: the consumer route names port 80 only, so shop still gets the producer route on 9000.
    expect(web(r, 'shop', 9000)!.scope).toBe('producer');
  });

  it('reports parents: missing Service, missing port, headless, and non-Service parents ignored', () => {
    const r = load(route('parents', '  - backendRefs: [{name: web-v1, port: 8080}]', '', [
      '{group: "", kind: Service, name: nope}',
      '{group: "", kind: Service, name: web, port: 81}',
      '{group: "", kind: Service, name: web, sectionName: admin}',
      '{group: "", kind: Service, name: headless}',
      '{name: my-gateway}',
    ].join(', ')));
    const st = r.statuses[0]!;
    expect(st.parents.map((p) => [p.parentRef.name, p.controllerName, p.conditions[0]!.status, p.conditions[0]!.reason])).toEqual([
      ['nope', 'trellis.dev/mesh', 'False', 'NoMatchingParent'],
      ['web', 'trellis.dev/mesh', 'False', 'NoMatchingParent'],
      ['web', 'trellis.dev/mesh', 'True', 'Accepted'],
      ['headless', 'trellis.dev/mesh', 'False', 'NoMatchingParent'],
    ]);
    expect(st.parents[1]!.conditions[0]!.message).toBe('spec.parentRefs[1]: Service demo/web has no TCP port port 81');
    expect(st.parents[2]!.parentRef).toEqual({ group: '', kind: 'Service', name: 'web', sectionName: 'admin' });
    expect(st.ignoredParents).toEqual([{
      parentRef: { group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'my-gateway' },
      reason: expect.stringContaining('not handled by Trellis'),
    }]);
    // sectionName selects the Service port by name: only 9000 gets the route.
    expect(web(r, 'demo', 80)).toBeUndefined();
    expect(web(r, 'demo', 9000)).toBeDefined();
  });

  it('carries observedGeneration and the controller name given', () => {
    const r = load(route('g', '  - backendRefs: [{name: web-v1, port: 8080}]', ', generation: 4'), { controllerName: 'example.com/mesh' });
    expect(r.statuses[0]!.parents[0]).toEqual({
      parentRef: { group: '', kind: 'Service', name: 'web' },
      controllerName: 'example.com/mesh',
      conditions: [
        { type: 'Accepted', status: 'True', reason: 'Accepted', message: 'applies to every caller of Service demo/web port 80, 9000', observedGeneration: 4 },
        { type: 'ResolvedRefs', status: 'True', reason: 'ResolvedRefs', message: 'all references resolved', observedGeneration: 4 },
      ],
    });
  });

  it('a GRPCRoute on a Service port displaces HTTPRoutes there (GEP-1294)', () => {
    const r = load(`${route('http', '  - backendRefs: [{name: web-v1, port: 8080}]', '', '{group: "", kind: Service, name: web, port: 80}')}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - backendRefs: [{name: web-v2, port: 8080}]`);
    expect(web(r)!.kind).toBe('GRPCRoute');
    const http = r.statuses.find((s) => s.kind === 'HTTPRoute')!;
    expect(http.parents[0]!.conditions[0]).toMatchObject({ status: 'False', reason: 'Conflicted' });
    expect(r.statuses.find((s) => s.kind === 'GRPCRoute')!.parents[0]!.conditions[0]).toMatchObject({ status: 'True' });
  });
});

describe('GRPCRoute matching', () => {
  const r = load(`apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - name: service
    matches: [{method: {service: shop.Cart}}]
    backendRefs: [{name: web-v1, port: 8080}]
  - name: method
    matches: [{method: {service: shop.Cart, method: Checkout}}]
    backendRefs: [{name: web-v2, port: 8080}]
  - name: header
    matches: [{method: {service: shop.Cart}, headers: [{name: X-Tenant, value: big}]}]
    backendRefs: [{name: web-v2, port: 8080}]
  - name: regex
    matches: [{method: {type: RegularExpression, service: "shop\\\\..*", method: "Get.*"}}]
    backendRefs: [{name: web-v1, port: 8080}]`);
  const rule = (service: string, method: string, headers: Record<string, string> = {}) =>
    matchGrpc(web(r)!, { service, method, headers: (n) => headers[n] })?.rule.name;
  it('orders by service characters, method characters, then header matches', () => {
    expect(r.errors).toEqual([]);
    expect(rule('shop.Cart', 'Checkout')).toBe('method');
    expect(rule('shop.Cart', 'Add')).toBe('service');
    expect(rule('shop.Cart', 'Add', { 'x-tenant': 'big' })).toBe('header');
    expect(rule('shop.Orders', 'GetOrder')).toBe('regex');
    expect(rule('shop.Orders', 'ListOrders')).toBeUndefined();
    expect(rule('other.Cart', 'GetX')).toBeUndefined();
  });

  it('validates gRPC names and rejects HTTP-only fields', () => {
    const bad = load(`apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{method: {service: "shop/Cart"}}, {method: {}}]
    timeouts: {request: 1s}
    filters: [{type: URLRewrite, urlRewrite: {hostname: a}}]`);
    expect(bad.errors).toEqual([
      'GRPCRoute demo/g: spec.rules[0].timeouts: GRPCRoute rules have no timeouts in gateway.networking.k8s.io/v1; use an HTTPRoute for this port to set them',
      'GRPCRoute demo/g: spec.rules[0].matches[0].method.service: must match a gRPC service name like "pkg.Service" (got "shop/Cart")',
      'GRPCRoute demo/g: spec.rules[0].matches[1].method: one or both of service and method must be set',
      'GRPCRoute demo/g: spec.rules[0].filters[0].urlRewrite: unknown field (known here: type, requestHeaderModifier, responseHeaderModifier, requestMirror, extensionRef)',
      'GRPCRoute demo/g: spec.rules[0].filters[0].type: must be one of RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, ExtensionRef (got "URLRewrite")',
    ]);
  });
});

describe('last good version and frozen output', () => {
  it('an invalid edit keeps the last valid version in force', () => {
    const v1 = route('r', '  - backendRefs: [{name: web-v1, port: 8080}]');
    const first = load(v1);
    const v2 = route('r', '  - matches: [{path: {type: Exact, value: nope}}]\n    backendRefs: [{name: web-v2, port: 8080}]');
    const second = load(v2, { previous: first });
    expect(second.errors).toEqual(['HTTPRoute demo/r: spec.rules[0].matches[0].path.value: must start with "/"']);
    expect(backendName(web(second), '/anything')).toBe('web-v1');
    const st = second.statuses[0]!;
    expect(st.fellBack).toBe(true);
    expect(st.parents[0]!.conditions[0]!.message).toMatch(/last valid version of this route stays in force/);
    // Still in force one compile later, and gone once the route is deleted.
    expect(backendName(web(load(v2, { previous: second })), '/x')).toBe('web-v1');
    expect(web(load('', { previous: second }))).toBeUndefined();
  });

  it('does not fall back to a previous object of another uid', () => {
    const first = load(route('r', '  - backendRefs: [{name: web-v1, port: 8080}]', ', uid: aaa'));
    const second = load(route('r', '  - matches: [{path: {value: nope}}]', ', uid: bbb'), { previous: first });
    expect(web(second)).toBeUndefined();
    expect(second.statuses[0]!.fellBack).toBe(false);
  });

  it('freezes the table, its maps, routes, rules and backends', () => {
    const r = load(route('f', `  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}]
    backendRefs: [{name: web-v1, port: 8080}]`));
    const routes = web(r)!;
    const rule = matchRequest(routes, request('/'))!.rule;
    for (const o of [r.table, routes, routes.http, routes.http[0], routes.http[0]!.matched, rule, rule.backends, rule.backends[0], rule.filters, rule.requestHeaders, rule.requestHeaders!.set, rule.timeouts, r.statuses, r.statuses[0]!.parents[0]!.conditions]) {
      expect(Object.isFrozen(o)).toBe(true);
    }
    expect(() => (r.table.services as Map<string, unknown>).set('x', 1)).toThrow();
    expect(() => (routes.http as unknown[]).push(1)).toThrow();
    expect(() => { (rule as { name: string }).name = 'x'; }).toThrow();
  });
});

describe('path helpers', () => {
  // The ReplacePrefixMatch table of the Gateway API spec (HTTPPathModifier).
  it.each([
    ['/foo/bar', '/foo', '/xyz', '/xyz/bar'],
    ['/foo/bar', '/foo', '/xyz/', '/xyz/bar'],
    ['/foo/bar', '/foo/', '/xyz', '/xyz/bar'],
    ['/foo/bar', '/foo/', '/xyz/', '/xyz/bar'],
    ['/foo', '/foo', '/xyz', '/xyz'],
    ['/foo/', '/foo', '/xyz', '/xyz/'],
    ['/foo/bar', '/foo', '', '/bar'],
    ['/foo/', '/foo', '', '/'],
    ['/foo', '/foo', '', '/'],
    ['/foo/', '/foo', '/', '/'],
    ['/foo', '/foo', '/', '/'],
    ['/a/b', '/', '/x', '/x/a/b'],
  ])('%s with prefix %s replaced by "%s" -> %s', (path, prefix, replacement, want) => {
    expect(replacePath({ type: 'ReplacePrefixMatch', replacePrefixMatch: replacement }, prefix, path)).toBe(want);
  });

  it('redirectLocation keeps the query, brackets IPv6 hosts and drops default ports', () => {
    const r = load(route('redir', `  - matches: [{path: {value: /r}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /s}}}]`));
    const m = matchRequest(web(r)!, request('/r/x'))!;
    expect(redirectLocation(m, { scheme: 'http', host: 'web.demo:8080', path: '/r/x', query: 'a=1&b=2', port: 8080 }))
      .toEqual({ statusCode: 302, location: 'http://web.demo:8080/s/x?a=1&b=2' });
    expect(redirectLocation(m, { scheme: 'http', host: '[fd00::1]:80', path: '/r', port: 80 }))
      .toEqual({ statusCode: 302, location: 'http://[fd00::1]/s' });
    expect(redirectLocation(matchRequest(web(load(route('n', '  - backendRefs: [{name: web-v1, port: 8080}]')))!, request('/'))!, { scheme: 'http', host: 'x', path: '/', port: 80 })).toBeUndefined();
  });
});
