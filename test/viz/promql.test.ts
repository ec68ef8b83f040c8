// The viewer's PromQL builders: the exact queries each command sends, through the recording rules and without.
import { describe, expect, it } from 'vitest';
import { edgesQueries } from '../../viz/edges.js';
import { latencyQuantile, literal, openConnections, parseWindow, quote, rateOf, selector, sumRate, type Source } from '../../viz/promql.js';
import { routesQueries } from '../../viz/routes.js';
import { statQueries } from '../../viz/stat.js';

const RULES: Source = { window: '1m', rules: true };
const RAW: Source = { window: '1m', rules: false };

describe('PromQL parts', () => {
  it('quotes values and escapes regular expressions', () => {
    expect(quote('a"b\\c\nd')).toBe('"a\\"b\\\\c\\nd"');
    expect(literal('web.v1+(x)')).toBe('web\\.v1\\+\\(x\\)');
    expect(selector({ a: 'x', b: { re: 'y|z' }, c: { ne: '' }, d: undefined })).toBe('{a="x",b=~"y|z",c!=""}');
    expect(selector({})).toBe('');
  });

  it('takes windows Prometheus takes, at least a second', () => {
    expect(parseWindow('1m')).toBe('1m');
    expect(parseWindow('030s')).toBe('30s');
    expect(parseWindow(' 2h ')).toBe('2h');
    for (const bad of ['0s', '1', 'm', '1.5m', '5x', '-1m', '1m30s']) expect(parseWindow(bad), bad).toBeUndefined();
  });

  it('reads the recording rules at their window when the server has them, the raw counters otherwise', () => {
    const m = { reporter: 'source' };
    expect(rateOf('requests', m, RULES)).toBe('edge:trellis_requests:rate1m{reporter="source"}');
    expect(rateOf('requests', m, RAW)).toBe('rate(trellis_requests_total{reporter="source"}[1m])');
    expect(rateOf('tcpSent', m, { window: '5m', rules: true })).toBe('rate(trellis_tcp_sent_bytes_total{reporter="source"}[5m])');
    expect(sumRate('tcpOpened', ['a', 'b'], {}, RULES)).toBe('sum by (a, b) (edge:trellis_tcp_connections_opened:rate1m)');
    expect(latencyQuantile(0.99, ['a'], m, { window: '30s', rules: true })).toBe(
      'histogram_quantile(0.99, sum by (le, a) (rate(trellis_request_duration_seconds_bucket{reporter="source"}[30s])))',
    );
    // Open connections are not a rate: the rule serves every window.
    expect(openConnections(['a'], m, { window: '5m', rules: true })).toBe('sum by (a) (edge:trellis_tcp_connections_open:sum{reporter="source"})');
    expect(openConnections(['a'], m, RAW)).toBe(
      'sum by (a) (trellis_tcp_connections_opened_total{reporter="source"}) - sum by (a) (trellis_tcp_connections_closed_total{reporter="source"})',
    );
  });
});

describe('the commands\' queries', () => {
  it('stat: rows keyed by the destination workload, both reporters, the namespace and name as matchers', () => {
    const q = statQueries({ kind: 'workload', name: 'api', namespace: 'viz' }, { source: RULES });
    const m = '{reporter=~"source|destination",destination_workload_namespace="viz",destination_workload="api"}';
    const by = 'destination_workload_namespace, destination_workload, reporter';
    expect(q.requests).toBe(`sum by (${by}, response_code, grpc_response_status, request_protocol, connection_security_policy) (edge:trellis_requests:rate1m${m})`);
    expect(q.p95).toBe(`histogram_quantile(0.95, sum by (le, ${by}) (edge:trellis_request_duration_seconds_bucket:rate1m${m}))`);
    expect(q.received).toBe(`sum by (${by}) (edge:trellis_tcp_received_bytes:rate1m${m})`);
  });

  it('stat --from filters the callers; --to makes rows of the callers of a target', () => {
    const from = statQueries({ kind: 'workload', namespace: 'viz', from: { kind: 'workload', name: 'client', namespace: 'viz' } }, { source: RAW });
    expect(from.requests).toContain('{reporter=~"source|destination",destination_workload_namespace="viz",source_workload_namespace="viz",source_workload="client"}');
    const to = statQueries({ kind: 'workload', namespace: undefined, to: { kind: 'service', name: 'api', namespace: 'viz' } }, { source: RAW });
    expect(to.requests).toMatch(/^sum by \(source_workload_namespace, source_workload, reporter, /);
    expect(to.requests).toContain('{reporter=~"source|destination",destination_service=~"api\\\\.viz\\\\.svc\\\\..+"}');
    expect(() => statQueries({ kind: 'service', namespace: 'viz', to: { kind: 'workload', name: 'x', namespace: 'viz' } }, { source: RAW })).toThrow(/svc rows are destinations/);
    expect(() => statQueries({ kind: 'workload', namespace: 'viz', to: { kind: 'workload', name: 'x', namespace: 'viz' }, from: { kind: 'workload', name: 'y', namespace: 'viz' } }, { source: RAW })).toThrow(/give one of them/);
  });

  it('stat svc and ns: keyed by the Service, by the namespace', () => {
    expect(statQueries({ kind: 'service', namespace: 'viz' }, { source: RAW }).sent).toBe(
      'sum by (destination_service, reporter) (rate(trellis_tcp_sent_bytes_total{reporter=~"source|destination",destination_service=~"[^.]+\\\\.viz\\\\.svc\\\\..+"}[1m]))',
    );
    expect(statQueries({ kind: 'namespace', namespace: 'ignored' }, { source: RAW }).sent).toBe(
      'sum by (destination_workload_namespace, reporter) (rate(trellis_tcp_sent_bytes_total{reporter=~"source|destination"}[1m]))',
    );
  });

  it('edges: both identities and the security per edge, from both reporters', () => {
    expect(edgesQueries({ source: RULES }).requests).toBe(
      'sum by (reporter, source_workload, source_workload_namespace, source_principal, destination_workload, destination_workload_namespace, destination_principal, connection_security_policy) (edge:trellis_requests:rate1m{reporter=~"source|destination"})',
    );
  });

  it("routes: the Service's routes as the callers' agents saw them, and the calls no route took", () => {
    const q = routesQueries('viz', 'web', [{ route: 'viz/web-split', rule: 'split', match: '', backends: [] }, { route: 'other/canary', rule: '0', match: '', backends: [] }], { source: RAW });
    expect(q.routed_requests).toBe(
      'sum by (route_namespace, route_name, route_rule, destination_service, response_code, grpc_response_status, request_protocol) (rate(trellis_requests_total{reporter="source",route_namespace=~"viz|other",route_name=~"web-split|canary"}[1m]))',
    );
    expect(q.default_p50).toBe(
      'histogram_quantile(0.5, sum by (le, route_namespace, route_name, route_rule, destination_service) (rate(trellis_request_duration_seconds_bucket{reporter="source",route_name="",destination_service=~"web\\\\.viz\\\\.svc\\\\..+"}[1m])))',
    );
    expect(Object.keys(routesQueries('viz', 'web', [], { source: RAW })).every((k) => k.startsWith('default_'))).toBe(true);
  });
});
