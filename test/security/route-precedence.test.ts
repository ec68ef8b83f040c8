// HTTPRoute matching precedence (agent/model/routes/compile.ts and match.ts) against a reference ordering written
// from the Gateway API spec (apis/v1 httproute_types.go, HTTPRouteRule.Matches): random routes on one Service and
// random requests; the rule the compiled table picks must be the rule the spec picks. In-process, seeded.
//
// The spec: "MUST prioritize matches based on the following criteria, continuing on ties. Across all rules specified
// on applicable Routes, precedence must be given to the match having: "Exact" path match; "Prefix" path match with
// largest number of characters; Method match; Largest number of header matches; Largest number of query param
// matches. [...] If ties still exist across multiple Routes [...]: The oldest Route based on creation timestamp; The
// Route appearing first in alphabetical order by "{namespace}/{name}". If ties still exist within an HTTPRoute,
// matching precedence MUST be granted to the FIRST matching rule (in list order) [...]. When no rules matching a
// request have been successfully attached [...], a HTTP 404 status code MUST be returned."
// Readings the spec leaves open, taken here as Trellis documents them: a PathPrefix's trailing "/" is ignored for
// matching and so for its length ("/api/" and "/api" match the same requests); a route without creationTimestamp
// (objects from files) counts as the newest; of header matches with one name only the first counts (the spec's
// rule for matching). Regular-expression paths (implementation-specific precedence) are not generated.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { KubeObject } from '../../agent/model/objects.js';
import { compileRoutes, matchRequest, routeFor, type CompiledRoutes } from '../../agent/model/routes/index.js';
import { validateObject } from '../../agent/model/validate.js';
import { compile } from '../../agent/state/store.js';
import { fuzz, fuzzTimeout } from '../support/fuzz.js';

interface Match {
  path?: { type: 'Exact' | 'PathPrefix'; value: string };
  method?: string;
  headers?: { name: string; value: string }[];
  queryParams?: { name: string; value: string }[];
}
interface Rule {
  matches?: Match[];
}
interface Route {
  name: string;
  created?: string;
  rules: Rule[];
}
interface Req {
  method: string;
  path: string;
  headers: Record<string, string>; // lowercase names
  query: Record<string, string>;
}

const PATH_VALUES = ['/', '/api', '/api/', '/api/v1', '/api/v1/', '/api/v1/items', '/apiv', '/admin'];
const REQUEST_PATHS = ['/', '/api', '/api/', '/api/v1', '/api/v1/items', '/api/v1/items/7', '/api/v2', '/apiv', '/admin/x'];
// Timestamps from a small pool so that ties are common (the API server's resolution is one second).
const CREATED = ['2025-01-01T00:00:00Z', '2025-01-01T00:00:01Z', '2025-06-01T00:00:00Z'];

const opt = <T>(a: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> => fc.oneof({ arbitrary: fc.constant(undefined), weight: 1 }, { arbitrary: a, weight: 1 });

const match: fc.Arbitrary<Match> = fc
  .record({
    path: opt(fc.record({ type: fc.constantFrom<'Exact' | 'PathPrefix'>('Exact', 'PathPrefix'), value: fc.constantFrom(...PATH_VALUES) })),
    method: opt(fc.constantFrom('GET', 'POST')),
    headers: opt(fc.array(fc.record({ name: fc.constantFrom('x-a', 'X-A', 'x-b'), value: fc.constantFrom('1', '2') }), { minLength: 1, maxLength: 3 })),
    queryParams: opt(fc.array(fc.record({ name: fc.constantFrom('q', 'r'), value: fc.constantFrom('1', '2') }), { minLength: 1, maxLength: 2 })),
  })
  .map(clean);

const rule: fc.Arbitrary<Rule> = fc.record({ matches: opt(fc.array(match, { minLength: 1, maxLength: 3 })) }).map(clean);

const routes: fc.Arbitrary<Route[]> = fc
  .uniqueArray(
    fc.record({
      name: fc.constantFrom('alpha', 'bravo', 'charlie', 'delta'),
      created: opt(fc.constantFrom(...CREATED)),
      rules: fc.array(rule, { minLength: 1, maxLength: 3 }),
    }),
    { minLength: 1, maxLength: 4, selector: (r) => r.name },
  )
  .map((rs) => rs.map(clean));

const request: fc.Arbitrary<Req> = fc.record({
  method: fc.constantFrom('GET', 'POST', 'PUT'),
  path: fc.constantFrom(...REQUEST_PATHS),
  headers: fc.record({ 'x-a': fc.constantFrom('1', '2'), 'x-b': fc.constantFrom('1', '2') }, { requiredKeys: [] }),
  query: fc.record({ q: fc.constantFrom('1', '2'), r: fc.constantFrom('1', '2') }, { requiredKeys: [] }),
});

function clean<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

// ---- the reference ----

const trimSlash = (p: string) => p.replace(/\/+$/, '');

function pathMatches(m: Match, path: string): boolean {
  const p = m.path ?? { type: 'PathPrefix', value: '/' };
  if (p.type === 'Exact') return path === p.value;
  // Element by element: "/api" matches "/api", "/api/" and "/api/x", never "/apiv".
  const want = trimSlash(p.value).split('/').filter(Boolean);
  const got = path.split('/').filter(Boolean);
  return want.every((seg, i) => got[i] === seg);
}

/** Header matches that count: the first of each (case-insensitive) name. */
function distinctHeaders(m: Match): { name: string; value: string }[] {
  const seen = new Set<string>();
  return (m.headers ?? []).filter((h) => !seen.has(h.name.toLowerCase()) && seen.add(h.name.toLowerCase())).map((h) => ({ ...h, name: h.name.toLowerCase() }));
}
function distinctQuery(m: Match): { name: string; value: string }[] {
  const seen = new Set<string>();
  return (m.queryParams ?? []).filter((q) => !seen.has(q.name) && seen.add(q.name));
}

function matches(m: Match, req: Req): boolean {
  return (
    pathMatches(m, req.path) &&
    (m.method === undefined || m.method === req.method) &&
    distinctHeaders(m).every((h) => req.headers[h.name] === h.value) &&
    distinctQuery(m).every((q) => req.query[q.name] === q.value)
  );
}

interface Candidate {
  route: Route;
  ruleIndex: number;
  match: Match;
}

/** Negative when a has precedence over b. */
function precedence(a: Candidate, b: Candidate): number {
  const exact = (c: Candidate) => (c.match.path?.type === 'Exact' ? 1 : 0);
  const prefixChars = (c: Candidate) => (c.match.path?.type === 'Exact' ? 0 : trimSlash(c.match.path?.value ?? '/').length);
  const created = (c: Candidate) => (c.route.created ? Date.parse(c.route.created) : Number.POSITIVE_INFINITY);
  const keys: ((c: Candidate) => number)[] = [
    (c) => -exact(c),
    (c) => -prefixChars(c),
    (c) => -(c.match.method ? 1 : 0),
    (c) => -distinctHeaders(c.match).length,
    (c) => -distinctQuery(c.match).length,
  ];
  for (const k of keys) if (k(a) !== k(b)) return k(a) - k(b);
  const ca = created(a);
  const cb = created(b);
  if (ca !== cb) return ca < cb ? -1 : 1;
  if (a.route.name !== b.route.name) return `demo/${a.route.name}` < `demo/${b.route.name}` ? -1 : 1;
  return a.ruleIndex - b.ruleIndex;
}

/** "demo/NAME#RULE" of the rule the spec picks, or 404. */
function reference(rs: readonly Route[], req: Req): string {
  const candidates: Candidate[] = [];
  for (const route of rs) {
    route.rules.forEach((r, ruleIndex) => {
      for (const m of r.matches ?? [{}]) if (matches(m, req)) candidates.push({ route, ruleIndex, match: m });
    });
  }
  if (candidates.length === 0) return '404';
  candidates.sort(precedence);
  return `demo/${candidates[0]!.route.name}#${candidates[0]!.ruleIndex}`;
}

// ---- the agent ----

const SERVICE: KubeObject = validated({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'demo' }, spec: { clusterIP: '10.96.1.1', ports: [{ name: 'http', port: 80 }] } });

function validated(o: unknown): KubeObject {
  const v = validateObject(o);
  if (!v.ok) throw new Error(v.reason);
  return v.object;
}

function table(rs: readonly Route[]): CompiledRoutes | undefined {
  const objects = [
    SERVICE,
    ...rs.map((r) =>
      validated({
        apiVersion: 'gateway.networking.k8s.io/v1',
        kind: 'HTTPRoute',
        metadata: { name: r.name, namespace: 'demo', ...(r.created && { creationTimestamp: r.created }) },
        spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web' }], rules: r.rules.map((rule) => ({ ...rule, backendRefs: [{ name: 'web', port: 80 }] })) },
      }),
    ),
  ];
  const result = compileRoutes(objects, compile(objects, 'cluster.local', 1).services);
  if (result.errors.length > 0) throw new Error(`generator wrote an invalid route:\n${result.errors.join('\n')}`);
  return routeFor(result.table, { service: 'demo/web', port: 80, callerNamespace: 'demo' });
}

function agent(t: CompiledRoutes | undefined, req: Req): string {
  const headers = new Map(Object.entries(req.headers));
  const m = t && matchRequest(t, { method: req.method, path: req.path, query: new URLSearchParams(req.query), headers: (n) => headers.get(n) });
  return m ? `${m.rule.route}#${m.rule.index}` : '404';
}

describe('HTTPRoute matching precedence against the Gateway API spec (property, seeded)', () => {
  it('picks the rule the spec picks, for random routes and requests', () => {
    let routed = 0;
    let contested = 0;
    fc.assert(
      fc.property(routes, fc.array(request, { minLength: 1, maxLength: 8 }), (rs, reqs) => {
        const t = table(rs);
        for (const req of reqs) {
          const want = reference(rs, req);
          const got = agent(t, req);
          if (got !== want) throw new Error(`picked ${got}, the spec picks ${want}\nrequest: ${JSON.stringify(req)}\nroutes: ${JSON.stringify(rs)}`);
          if (want !== '404') routed++;
          // A request more than one route's rules match: precedence decided it.
          const ruleSets = rs.filter((r) => r.rules.some((rule) => (rule.matches ?? [{}]).some((m) => matches(m, req))));
          if (ruleSets.length > 1) contested++;
        }
      }),
      fuzz(3000, 2207),
    );
    expect(routed).toBeGreaterThan(3000);
    expect(contested).toBeGreaterThan(1000);
  }, fuzzTimeout());
});
