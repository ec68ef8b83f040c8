// The Gateway API mesh conformance tests that concern matching and routing data, ported to the compiled
// tables: same manifests, same expectations, checked without a network.
import { parseAllDocuments } from 'yaml';
import { mulberry32 } from '../../support/prng.js';
import { describe, expect, it } from 'vitest';
import {
  applyHeaderModifier,
  applyRewrite,
  compileRoutes,
  matchRequest,
  matchGrpc,
  pickBackend,
  redirectLocation,
  routeFor,
  type CompiledRoutes,
  type MatchedRule,
} from '../../../agent/model/routes/index.js';
import { validateObject } from '../../../agent/model/validate.js';
import { compile } from '../../../agent/state/store.js';
import type { KubeObject } from '../../../agent/model/objects.js';

const MESH = 'gateway-conformance-mesh';

// The conformance suite's mesh apps: echo (the front Service) and echo-v1..v3, each on 80, 8080 and 7070.
const APPS = ['echo', 'echo-v1', 'echo-v2', 'echo-v3']
  .map((name, i) => `apiVersion: v1
kind: Service
metadata: {name: ${name}, namespace: ${MESH}}
spec:
  clusterIP: 10.96.0.${10 + i}
  ports: [{name: http, port: 80}, {name: http-alt, port: 8080}, {name: grpc, port: 7070, appProtocol: kubernetes.io/h2c}]
`)
  .join('---\n');

function load(yamlText: string) {
  const objects: KubeObject[] = [];
  for (const doc of parseAllDocuments(yamlText)) {
    const v = validateObject(doc.toJS());
    if (!v.ok) throw new Error(v.reason);
    objects.push(v.object);
  }
  const state = compile(objects, 'cluster.local', 1);
  return compileRoutes(objects, state.services);
}

function routesOf(yamlText: string, service = `${MESH}/echo`, port = 80, callerNamespace = MESH): CompiledRoutes {
  const result = load(`${APPS}---\n${yamlText}`);
  expect(result.errors).toEqual([]);
  const routes = routeFor(result.table, { service, port, callerNamespace });
  if (!routes) throw new Error(`no routes for ${service}:${port}`);
  return routes;
}

function request(target: string, headers: Record<string, string> = {}, method = 'GET') {
  const url = new URL(target, 'http://echo');
  const h = new Map(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  return { method, path: url.pathname, query: url.searchParams, headers: (n: string) => h.get(n) };
}

/** The backend Service name a request is routed to, or 404 when no rule matches. */
function backendFor(routes: CompiledRoutes, target: string, headers: Record<string, string> = {}): string | 404 {
  const m = matchRequest(routes, request(target, headers));
  if (!m) return 404;
  const b = pickBackend(m, () => 0);
  return b.kind === 'Service' ? b.name : `error ${b.status}`;
}

const seeded = mulberry32;

function distribution(m: MatchedRule, picks: number, seed: number): Record<string, number> {
  const random = seeded(seed);
  const seen: Record<string, number> = {};
  for (let i = 0; i < picks; i++) {
    const b = pickBackend(m, random);
    const name = b.kind === 'Service' ? b.name : 'error';
    seen[name] = (seen[name] ?? 0) + 1;
  }
  return seen;
}

describe('MeshHTTPRouteMatching', () => {
  const routes = routesOf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-matching, namespace: ${MESH}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /}
    - headers: [{name: version, value: one}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches:
    - path: {type: PathPrefix, value: /v2}
    - headers: [{name: version, value: two}]
    backendRefs: [{name: echo-v2, port: 8080}]
`);
  it.each([
    ['/', {}, 'echo-v1'],
    ['/example', {}, 'echo-v1'],
    ['/', { Version: 'one' }, 'echo-v1'],
    ['/v2', {}, 'echo-v2'],
    ['/v2/example', {}, 'echo-v2'],
    ['/', { Version: 'two' }, 'echo-v2'],
    ['/v2/', {}, 'echo-v2'],
    // Not a path segment prefix, so /v2 does not match.
    ['/v2example', {}, 'echo-v1'],
    ['/foo/v2/example', {}, 'echo-v1'],
  ] as const)('%s %o -> %s', (path, headers, want) => {
    expect(backendFor(routes, path, headers)).toBe(want);
  });
});

describe('MeshHTTPRouteQueryParamMatching', () => {
  const routes = routesOf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-query-param-matching, namespace: ${MESH}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{queryParams: [{name: animal, value: dolphin}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path1}, queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{headers: [{name: version, value: one}], queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches:
    - {path: {type: PathPrefix, value: /path3}, queryParams: [{name: animal, value: shark}]}
    - {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], queryParams: [{name: animal, value: kraken}]}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path5}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{queryParams: [{name: animal, value: hydra}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
`);
  it.each([
    ['/?animal=whale', {}, 'echo-v1'],
    ['/?animal=dolphin', {}, 'echo-v2'],
    ['/?animal=whale&otherparam=irrelevant', {}, 'echo-v1'],
    ['/?animal=dolphin&color=yellow', {}, 'echo-v2'],
    ['/?color=blue', {}, 404],
    ['/?animal=dog', {}, 404],
    ['/?animal=whaledolphin', {}, 404],
    ['/', {}, 404],
    ['/path1?animal=whale', {}, 'echo-v1'],
    ['/?animal=whale', { version: 'one' }, 'echo-v2'],
    ['/path3?animal=shark', {}, 'echo-v1'],
    ['/path4?animal=kraken', { version: 'three' }, 'echo-v1'],
    ['/?animal=shark', {}, 404],
    ['/path4?animal=kraken', {}, 404],
    // Precedence: the longer path beats a query match.
    ['/path5?animal=hydra', {}, 'echo-v1'],
  ] as const)('%s %o -> %s', (path, headers, want) => {
    expect(backendFor(routes, path, headers)).toBe(want);
  });

  it('query parameter names are case-sensitive and the first value of a repeated one counts', () => {
    expect(backendFor(routes, '/?Animal=whale')).toBe(404);
    expect(backendFor(routes, '/?animal=dolphin&animal=whale')).toBe('echo-v2');
    // The plain-object form of the query gives the same answers.
    const m = matchRequest(routes, { method: 'GET', path: '/', query: { animal: ['whale'] }, headers: () => undefined });
    expect(m && pickBackend(m, () => 0)).toMatchObject({ name: 'echo-v1' });
  });
});

describe('HTTPRouteMatchingAcrossRoutes (mesh form: hostnames are not used, GEP-1294)', () => {
  const routes = routesOf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: matching-part1, namespace: ${MESH}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  hostnames: [example.com, example.net]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /}
    - headers: [{name: version, value: one}]
    backendRefs: [{name: echo-v1, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: matching-part2, namespace: ${MESH}}
spec:
  hostnames: ["*.com"]
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /v2}
    - headers: [{name: version, value: two}]
    backendRefs: [{name: echo-v2, port: 8080}]
`);
  it.each([
    ['/', {}, 'echo-v1'],
    ['/example', {}, 'echo-v1'],
    ['/example', { Version: 'one' }, 'echo-v1'],
    ['/v2', {}, 'echo-v2'],
    ['/v2/example', {}, 'echo-v2'],
    ['/', { Version: 'two' }, 'echo-v2'],
  ] as const)('%s %o -> %s', (path, headers, want) => {
    expect(backendFor(routes, path, headers)).toBe(want);
  });

  it('merges both routes into one table', () => {
    expect([...routes.routes].sort()).toEqual([`${MESH}/matching-part1`, `${MESH}/matching-part2`]);
  });
});

describe('HTTPRoutePathMatchOrder', () => {
  const routes = routesOf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: path-matching-order, namespace: ${MESH}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: Exact, value: /match}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: Exact, value: /match/exact}}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches: [{path: {type: Exact, value: /match/exact/one}}]
    backendRefs: [{name: echo-v3, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /match/}}]
    backendRefs: [{name: echo-v3, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /match/prefix/}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /match/prefix/one}}]
    backendRefs: [{name: echo-v2, port: 8080}]
`);
  it.each([
    ['/match', 'echo-v1'],
    ['/match/exact', 'echo-v2'],
    ['/match/exact/one', 'echo-v3'],
    ['/match/', 'echo-v3'],
    ['/match/exact/two', 'echo-v3'],
    ['/match/prefix/one', 'echo-v2'],
    ['/match/prefix/one/two', 'echo-v2'],
    ['/match/prefix/two', 'echo-v1'],
    ['/match/prefixone', 'echo-v3'],
    ['/matchx', 404],
  ] as const)('%s -> %s', (path, want) => {
    expect(backendFor(routes, path)).toBe(want);
  });
});

describe('MeshHTTPRouteRewritePath', () => {
  const routes = routesOf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-rewrite-path, namespace: ${MESH}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full/rewrite-path-and-modify-headers}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /test}}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
        remove: [X-Header-Remove]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /prefix/rewrite-path-and-modify-headers}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /prefix}}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
        remove: [X-Header-Remove]
    backendRefs: [{name: echo-v1, port: 80}]
`);
  it.each([
    ['/prefix/one/two', '/one/two'],
    ['/strip-prefix/three', '/three'],
    ['/strip-prefix', '/'],
    ['/full/one/two', '/one'],
    ['/full/rewrite-path-and-modify-headers/test', '/test'],
    ['/prefix/rewrite-path-and-modify-headers/one', '/prefix/one'],
  ])('%s is sent upstream as %s', (path, want) => {
    const m = matchRequest(routes, request(path))!;
    expect(applyRewrite(m, path)).toBe(want);
  });

  it('modifies headers as the test expects', () => {
    for (const path of ['/full/rewrite-path-and-modify-headers/test', '/prefix/rewrite-path-and-modify-headers/one']) {
      const m = matchRequest(routes, request(path))!;
      const headers: Record<string, string | string[] | undefined> = {
        'x-header-remove': 'remove-val',
        'x-header-add-append': 'append-val-1',
        'x-header-set': 'set-val',
      };
      applyHeaderModifier(m.rule.requestHeaders!, headers);
      expect(headers).toEqual({
        'x-header-add': 'header-val-1',
        'x-header-add-append': 'append-val-1,header-val-2',
        'x-header-set': 'set-overwrites-values',
      });
    }
  });
});

const redirect = (routes: CompiledRoutes, path: string) => {
  const m = matchRequest(routes, request(path))!;
  return redirectLocation(m, { scheme: 'http', host: 'echo', path, port: 80 });
};

describe('MeshHTTPRouteRedirectPath', () => {
  const routes = routesOf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-redirect-path, namespace: ${MESH}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /original-prefix}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}}]
  - matches: [{path: {type: PathPrefix, value: /path-and-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
  - matches: [{path: {type: PathPrefix, value: /path-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /full-path-and-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}}]
  - matches: [{path: {type: PathPrefix, value: /full-path-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}, statusCode: 301}}]
`);
  it.each([
    ['/original-prefix/lemon', 302, 'http://echo/replacement-prefix/lemon'],
    ['/full/path/original', 302, 'http://echo/full-path-replacement'],
    ['/path-and-host', 302, 'http://example.org/replacement-prefix'],
    ['/path-and-status', 301, 'http://echo/replacement-prefix'],
    ['/full-path-and-host', 302, 'http://example.org/replacement-full'],
    ['/full-path-and-status', 301, 'http://echo/replacement-full'],
  ])('%s -> %d %s', (path, status, location) => {
    expect(redirect(routes, path)).toEqual({ statusCode: status, location });
  });

  it('redirect rules have no backends', () => {
    const m = matchRequest(routes, request('/full/x'))!;
    expect(m.rule.backends).toEqual([]);
    expect(m.rule.redirect).toBeDefined();
  });
});

describe('MeshHTTPRouteRedirectHostAndStatus, 303/307/308', () => {
  const routes = routesOf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-redirect-host-and-status, namespace: ${MESH}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /hostname-redirect}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /host-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /s303}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 303}}]
  - matches: [{path: {type: PathPrefix, value: /s307}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]
  - matches: [{path: {type: PathPrefix, value: /s308}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 308, hostname: example.org}}]
`);
  it.each([
    ['/hostname-redirect', 302, 'http://example.org/hostname-redirect'],
    ['/host-and-status', 301, 'http://example.org/host-and-status'],
    ['/s303', 303, 'http://echo/s303'],
    ['/s307', 307, 'http://echo/s307'],
    ['/s308', 308, 'http://example.org/s308'],
  ])('%s -> %d %s', (path, status, location) => {
    expect(redirect(routes, path)).toEqual({ statusCode: status, location });
  });
});

describe('MeshHTTPRouteRedirectPort', () => {
  const routes = routesOf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-redirect-port, namespace: ${MESH}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /port}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]
  - matches: [{path: {type: PathPrefix, value: /port-and-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, port: 8083}}]
  - matches: [{path: {type: PathPrefix, value: /port-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /port-and-host-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083, hostname: example.org, statusCode: 302}}]
`);
  it.each([
    ['/port', 302, 'http://echo:8083/port'],
    ['/port-and-host', 302, 'http://example.org:8083/port-and-host'],
    ['/port-and-status', 301, 'http://echo:8083/port-and-status'],
    ['/port-and-host-and-status', 302, 'http://example.org:8083/port-and-host-and-status'],
  ])('%s -> %d %s', (path, status, location) => {
    expect(redirect(routes, path)).toEqual({ statusCode: status, location });
  });
});

describe('MeshHTTPRouteSchemeRedirect', () => {
  const routes = routesOf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-redirect-scheme, namespace: ${MESH}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-and-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-and-host-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 302, hostname: example.org}}]
`);
  it.each([
    ['/scheme', 302, 'https://echo/scheme'],
    ['/scheme-and-host', 302, 'https://example.org/scheme-and-host'],
    ['/scheme-and-status', 301, 'https://echo/scheme-and-status'],
    ['/scheme-and-host-and-status', 302, 'https://example.org/scheme-and-host-and-status'],
  ])('%s -> %d %s', (path, status, location) => {
    expect(redirect(routes, path)).toEqual({ statusCode: status, location });
  });
});

describe('MeshHTTPRouteWeight', () => {
  const routes = routesOf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-weighted-backends, namespace: ${MESH}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - backendRefs:
    - {name: echo-v1, port: 8080, weight: 70}
    - {name: echo-v2, port: 8080, weight: 30}
`);
  it('500 requests split within 5 % of 70/30, for several seeds', () => {
    const m = matchRequest(routes, request('/'))!;
    for (const seed of [1, 2, 3, 42, 2026]) {
      const seen = distribution(m, 500, seed);
      expect(Object.keys(seen).sort()).toEqual(['echo-v1', 'echo-v2']);
      expect(Math.abs(seen['echo-v1']! / 500 - 0.7)).toBeLessThanOrEqual(0.05);
      expect(Math.abs(seen['echo-v2']! / 500 - 0.3)).toBeLessThanOrEqual(0.05);
    }
  });
});

describe('MeshGRPCRouteWeight', () => {
  const routes = routesOf(`apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: mesh-grpc-weighted-backends, namespace: ${MESH}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
  rules:
  - backendRefs:
    - {name: echo-v1, port: 7070, weight: 70}
    - {name: echo-v2, port: 7070, weight: 30}
    - {name: echo-v3, port: 7070, weight: 0}
`, `${MESH}/echo`, 7070);
  it('splits 70/30 and never picks the weight-0 backend', () => {
    expect(routes.kind).toBe('GRPCRoute');
    const m = matchGrpc(routes, { service: 'grpc.testing.TestService', method: 'UnaryCall', headers: () => undefined })!;
    for (const seed of [7, 8, 9]) {
      const seen = distribution(m, 500, seed);
      expect(seen['echo-v3']).toBeUndefined();
      expect(Math.abs(seen['echo-v1']! / 500 - 0.7)).toBeLessThanOrEqual(0.05);
      expect(Math.abs(seen['echo-v2']! / 500 - 0.3)).toBeLessThanOrEqual(0.05);
    }
  });
});

describe('MeshConsumerRoute', () => {
  const result = load(`${APPS}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-echo-add-header, namespace: gateway-conformance-mesh-consumer}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1, namespace: ${MESH}}]
  rules:
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]
    backendRefs: [{name: echo-v1, namespace: ${MESH}, port: 80}]
`);
  it('applies to callers in the route namespace', () => {
    expect(result.errors).toEqual([]);
    const routes = routeFor(result.table, { service: `${MESH}/echo-v1`, port: 80, callerNamespace: 'gateway-conformance-mesh-consumer' })!;
    expect(routes.scope).toBe('consumer');
    const m = matchRequest(routes, request('/'))!;
    expect(m.rule.responseHeaders).toEqual({ set: [{ name: 'x-header-set', value: 'set' }], add: [], remove: [] });
    // The backendRef crosses namespaces, but to the route's own parent Service: allowed without a ReferenceGrant.
    expect(pickBackend(m, () => 0)).toMatchObject({ kind: 'Service', service: `${MESH}/echo-v1`, port: 80 });
    expect(result.statuses[0]!.parents[0]!.conditions.map((c) => `${c.type}=${c.status}`)).toEqual(['Accepted=True', 'ResolvedRefs=True']);
  });

  it('does not apply to callers in other namespaces', () => {
    expect(routeFor(result.table, { service: `${MESH}/echo-v1`, port: 80, callerNamespace: MESH })).toBeUndefined();
  });
});

describe('MeshPorts', () => {
  const result = load(`${APPS}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-split-v1, namespace: ${MESH}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1, port: 80}]
  rules:
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v1}]}}]
    backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-split-v2, namespace: ${MESH}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v2}]
  rules:
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v2}]}}]
    backendRefs: [{name: echo-v2, port: 80}]
`);
  const header = (service: string, port: number) => {
    const routes = routeFor(result.table, { service: `${MESH}/${service}`, port, callerNamespace: MESH });
    return routes && matchRequest(routes, request('/'))?.rule.responseHeaders?.set[0]?.value;
  };
  it('a parentRef with a port applies to that port only', () => {
    expect(header('echo-v1', 80)).toBe('v1');
    expect(header('echo-v1', 8080)).toBeUndefined();
  });
  it('a parentRef without a port applies to every port', () => {
    expect(header('echo-v2', 80)).toBe('v2');
    expect(header('echo-v2', 8080)).toBe('v2');
    expect(header('echo-v2', 7070)).toBe('v2');
  });
});
