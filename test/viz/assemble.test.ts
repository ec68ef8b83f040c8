// How the viewer turns Prometheus's answers into rows: which agent's view a row takes, success and mTLS shares,
// the observed split against the weights. Canned answers stand in for Prometheus (the e2e test has the real one).
import { describe, expect, it } from 'vitest';
import { DEFAULT_TRUST_DOMAIN } from '../../agent/constants.js';
import type { KubeObject } from '../../agent/model/objects.js';
import { compile } from '../../agent/state/store.js';
import { assembleEdges } from '../../viz/edges.js';
import type { VectorSample } from '../../viz/prom/client.js';
import { assembleRoutes, configuredRules, routesQueries } from '../../viz/routes.js';
import { stat, statQueries } from '../../viz/stat.js';
import type { Query } from '../../viz/query.js';
import type { Source } from '../../viz/promql.js';

const SRC: Source = { window: '1m', rules: false };
const v = (labels: Record<string, string>, value: number): VectorSample => ({ labels, value });

/** A Prometheus that answers each of the given queries with its samples, and anything else with nothing. */
function fake(answers: Record<string, VectorSample[]>): Query {
  return async (expr) => answers[expr] ?? [];
}

describe('stat rows', () => {
  const req = { kind: 'workload' as const, namespace: 'viz' };
  const q = statQueries(req, { source: SRC });
  const dst = (wl: string, reporter: string, extra: Record<string, string> = {}) => ({
    destination_workload_namespace: 'viz',
    destination_workload: wl,
    reporter,
    ...extra,
  });
  const ok = { response_code: '200', grpc_response_status: '', request_protocol: 'http', connection_security_policy: 'mutual_tls' };

  it("takes the destination's own agent's view, with success, mTLS share and latency", async () => {
    const rows = await stat(req, {
      source: SRC,
      query: fake({
        [q.requests]: [
          v(dst('api', 'destination', ok), 3),
          v(dst('api', 'destination', { ...ok, response_code: '503' }), 1),
          v(dst('api', 'destination', { ...ok, connection_security_policy: 'none' }), 1),
          // The source agent's view of the same requests: not added.
          v(dst('api', 'source', ok), 3),
          // gRPC: HTTP 200 with a failing status is a failure.
          v(dst('grpc', 'destination', { ...ok, request_protocol: 'grpc', grpc_response_status: '14' }), 1),
          v(dst('grpc', 'destination', { ...ok, request_protocol: 'grpc', grpc_response_status: '0' }), 3),
        ],
        [q.p50]: [v(dst('api', 'destination'), 0.002), v(dst('api', 'source'), 0.004), v(dst('grpc', 'destination'), NaN)],
        [q.p99]: [v(dst('api', 'destination'), 0.02)],
      }),
    });
    expect(rows.map((r) => r.name)).toEqual(['api', 'grpc']);
    const [api, grpc] = rows as [(typeof rows)[0], (typeof rows)[0]];
    expect(api).toMatchObject({ meshed: true, rps: 5, successRate: 0.8, secured: 0.8, securedBasis: 'requests', latency: { p50: 0.002, p95: null, p99: 0.02 } });
    expect(grpc).toMatchObject({ successRate: 0.75, latency: { p50: null } });
  });

  it('marks a destination only the callers report as outside the mesh, and keeps its callers\' numbers', async () => {
    const rows = await stat(req, {
      source: SRC,
      query: fake({ [q.requests]: [v(dst('legacy', 'source', { ...ok, connection_security_policy: 'none' }), 2)] }),
    });
    expect(rows).toMatchObject([{ name: 'legacy', meshed: false, rps: 2, successRate: 1, secured: 0 }]);
  });

  it('measures TCP-only workloads by their connections, and reads and writes from the row\'s side', async () => {
    const rows = await stat(req, {
      source: SRC,
      query: fake({
        [q.opened]: [v(dst('db', 'destination', { connection_security_policy: 'mutual_tls' }), 3), v(dst('db', 'destination', { connection_security_policy: 'none' }), 1)],
        [q.received]: [v(dst('db', 'destination'), 1000)],
        [q.sent]: [v(dst('db', 'destination'), 10)],
        [q.open]: [v(dst('db', 'destination', { connection_security_policy: 'mutual_tls' }), 2)],
      }),
    });
    expect(rows).toMatchObject([
      { name: 'db', successRate: null, secured: 0.75, securedBasis: 'connections', tcp: { open: 2, openedPerSecond: 4, readBytesPerSecond: 1000, writeBytesPerSecond: 10 } },
    ]);
  });

  it('leaves out destinations that are no workload (addresses outside the cluster)', async () => {
    const rows = await stat(req, { source: SRC, query: fake({ [q.requests]: [v(dst('unknown', 'source', ok), 1)] }) });
    expect(rows).toEqual([]);
  });

  it('keys svc rows by the Service of destination_service', async () => {
    const sreq = { kind: 'service' as const, namespace: 'viz' };
    const sq = statQueries(sreq, { source: SRC });
    const rows = await stat(sreq, {
      source: SRC,
      query: fake({ [sq.requests]: [v({ destination_service: 'web-v1.viz.svc.cluster.local', reporter: 'destination', ...ok }, 2)] }),
    });
    expect(rows).toMatchObject([{ namespace: 'viz', name: 'web-v1', rps: 2 }]);
  });
});

describe('edges', () => {
  const labels = (reporter: string, src: string, dst: string, extra: Record<string, string> = {}) => ({
    reporter,
    source_workload: src,
    source_workload_namespace: 'viz',
    source_principal: src === 'unknown' ? 'unknown' : `spiffe://cluster.local/ns/viz/sa/${src}`,
    destination_workload: dst,
    destination_workload_namespace: 'viz',
    destination_principal: `spiffe://cluster.local/ns/viz/sa/${dst}`,
    connection_security_policy: 'mutual_tls',
    ...extra,
  });

  it('merges both agents\' views of an edge, and keeps edges one side alone saw', () => {
    const rows = assembleEdges('viz', {
      requests: [
        v(labels('source', 'client', 'api'), 5),
        v(labels('destination', 'client', 'api'), 5),
        v(labels('destination', 'unknown', 'api', { connection_security_policy: 'none' }), 1),
        v(labels('source', 'client', 'legacy', { destination_principal: 'unknown', connection_security_policy: 'none' }), 2),
      ],
      opened: [v(labels('source', 'client', 'db'), 0.5), v(labels('source', 'client', 'idle'), 0)],
      open: [],
    });
    expect(rows.map((e) => `${e.source.workload}>${e.destination.workload}`)).toEqual(['client>api', 'client>db', 'client>legacy', 'unknown>api']);
    expect(rows[0]).toMatchObject({ mtls: true, rps: 5, reportedBy: ['source', 'destination'], source: { identity: 'spiffe://cluster.local/ns/viz/sa/client' } });
    expect(rows[2]).toMatchObject({ mtls: false, mtlsShare: 0, destination: { identity: null }, reportedBy: ['source'] });
    expect(rows[3]).toMatchObject({ mtls: false, source: { identity: null }, reportedBy: ['destination'] });
    expect(rows[1]).toMatchObject({ mtls: true, connectionsPerSecond: 0.5, rps: 0 });
    expect(assembleEdges('other', { requests: [v(labels('source', 'client', 'api'), 1)], opened: [], open: [] })).toEqual([]);
  });
});

describe('routes', () => {
  const objects: KubeObject[] = [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'viz' } },
    // Routes apply to calls to a ClusterIP: the Services have one.
    ...['web', 'web-v1', 'web-v2'].map(
      (name, i) =>
        ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'viz' }, spec: { clusterIP: `10.96.0.${10 + i}`, selector: { app: name }, ports: [{ name: 'http', port: 80 }] } }) as KubeObject,
    ),
    {
      apiVersion: 'gateway.networking.k8s.io/v1',
      kind: 'HTTPRoute',
      metadata: { name: 'web-split', namespace: 'viz' },
      spec: {
        parentRefs: [{ group: '', kind: 'Service', name: 'web', port: 80 }],
        rules: [
          { matches: [{ path: { type: 'PathPrefix', value: '/v2' } }], backendRefs: [{ name: 'web-v2', port: 80 }] },
          { name: 'split', backendRefs: [{ name: 'web-v1', port: 80, weight: 3 }, { name: 'web-v2', port: 80, weight: 1 }] },
        ],
      },
    } as unknown as KubeObject,
  ];
  const state = compile(objects, DEFAULT_TRUST_DOMAIN, 1);

  it("lists every rule of the Service's routes with its backends' configured shares, named as the metrics name rules", () => {
    const rules = configuredRules(state, 'viz', 'web');
    expect(rules.map((r) => [r.route, r.rule, r.backends.map((b) => [b.name, b.host, b.share])])).toEqual([
      ['viz/web-split', '0', [['web-v2', 'web-v2.viz.svc.cluster.local', 1]]],
      ['viz/web-split', 'split', [['web-v1', 'web-v1.viz.svc.cluster.local', 0.75], ['web-v2', 'web-v2.viz.svc.cluster.local', 0.25]]],
    ]);
    expect(configuredRules(state, 'viz', 'web-v1')).toEqual([]);
    expect(() => configuredRules(state, 'viz', 'nope')).toThrow('no Service viz/nope (Services in viz: web, web-v1, web-v2): check the name and -n');
  });

  it('sets the observed split beside the weights, and shows what the metrics hold beyond the configuration', () => {
    const rules = configuredRules(state, 'viz', 'web');
    const q = routesQueries('viz', 'web', rules, { source: SRC });
    const r = (rule: string, backend: string, extra: Record<string, string> = {}) => ({
      route_namespace: 'viz',
      route_name: 'web-split',
      route_rule: rule,
      destination_service: `${backend}.viz.svc.cluster.local`,
      response_code: '200',
      request_protocol: 'http',
      ...extra,
    });
    const rows = assembleRoutes('viz', rules, {
      routed_requests: [v(r('split', 'web-v1'), 7), v(r('split', 'web-v2'), 3), v(r('split', 'web-v2', { response_code: '500' }), 0), v(r('old', 'web-v3'), 1)],
      routed_p50: [v(r('split', 'web-v1'), 0.001)],
      default_requests: [v({ route_name: '', destination_service: 'web.viz.svc.cluster.local', response_code: '503' }, 2)],
    });
    expect(Object.keys(q)).toEqual(expect.arrayContaining(['routed_requests', 'routed_p99', 'default_requests', 'default_p95']));
    expect(rows.map((x) => [x.route, x.rule, x.backend, x.weight, x.split, x.rps, x.successRate])).toEqual([
      ['viz/web-split', '0', 'web-v2', 1, null, 0, null],
      ['viz/web-split', 'split', 'web-v1', 0.75, 0.7, 7, 1],
      ['viz/web-split', 'split', 'web-v2', 0.25, 0.3, 3, 1],
      ['[default]', '-', 'web', null, 1, 2, 0],
      ['viz/web-split', 'old', 'web-v3', null, 1, 1, 1],
    ]);
    expect(rows[1]!.latency.p50).toBe(0.001);
  });
});
