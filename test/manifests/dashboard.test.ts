// The Grafana dashboard: valid JSON whose PromQL uses only the metric and label names the agent exports and the
// recording rules of manifests/monitoring/prometheusrule.yaml record (each with the labels it keeps), reads those
// rules for every 1m rate they record, passes promtool's parser, and has the golden-metric panels per workload and
// per route.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { parse, stringify } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { Metrics, TCP_LABELS } from '../../agent/telemetry/metrics.js';
import { MANIFESTS } from './load.js';

// What the agent exports: TCP metrics read from its registry; HTTP metrics are named ahead of the L7 work.
const TCP_METRICS = new Metrics({ defaultMetrics: false }).registry
  .getMetricsAsArray()
  .map((m) => m.name)
  .filter((n) => n.startsWith('trellis_tcp_'));
const HTTP_METRICS = [
  'trellis_requests_total',
  'trellis_request_duration_seconds_bucket',
  'trellis_request_duration_seconds_sum',
  'trellis_request_duration_seconds_count',
];
const HTTP_LABELS = [...TCP_LABELS, 'response_code', 'grpc_response_status', 'route_name', 'route_namespace', 'route_rule'];
const LABELS = new Set([...HTTP_LABELS, 'le']);

/** The recording rules: name -> the labels its series keep (its `sum by`), and the raw counter it is a 1m rate of. */
const RULES = new Map(
  (parse(fs.readFileSync(path.join(MANIFESTS, 'monitoring', 'prometheusrule.yaml'), 'utf8')) as { spec: { groups: { rules: { record: string; expr: string }[] }[] } }).spec.groups
    .flatMap((g) => g.rules)
    .map((r) => {
      const by = /^sum by \(([^)]*)\)/.exec(r.expr)![1]!.split(',').map((l) => l.trim());
      const rate = /rate\(([a-z_]+)\[1m\]\)/.exec(r.expr)?.[1];
      return [r.record, { labels: new Set(by), rateOf: rate }] as const;
    }),
);
const METRICS = new Set([...TCP_METRICS, ...HTTP_METRICS, ...RULES.keys()]);

const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset']);

/** Metric and label names an expression uses. A loose reading of PromQL, enough for the expressions we write. */
function promqlNames(expr: string): { metrics: string[]; labels: string[] } {
  const labels: string[] = [];
  const named: string[] = [];
  let rest = expr.replace(/\{([^}]*)\}/g, (_m, inner: string) => {
    for (const m of inner.matchAll(/([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"/g)) {
      // {__name__=~"a|b"}: the series of a and b.
      if (m[1] === '__name__') named.push(...m[3]!.split('|'));
      else labels.push(m[1]!);
    }
    return ' ';
  });
  rest = rest.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g, (_m, _kw: string, inner: string) => {
    labels.push(...inner.split(',').map((s) => s.trim()).filter(Boolean));
    return ' ';
  });
  rest = rest
    .replace(/"(?:[^"\\]|\\.)*"/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\$[A-Za-z_][A-Za-z0-9_]*/g, ' ');
  const metrics: string[] = [...named];
  for (const m of rest.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const after = rest.slice(m.index + m[0].length).trimStart();
    if (after.startsWith('(') || KEYWORDS.has(m[0])) continue;
    metrics.push(m[0]);
  }
  return { metrics, labels };
}

interface Panel {
  id: number;
  type: string;
  title: string;
  targets?: { expr: string; legendFormat?: string }[];
  gridPos: { x: number; y: number; w: number; h: number };
}

const dir = fs.mkdtempSync(path.join(tmpdir(), 'trellis-dashboard-rules-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const file = path.join(MANIFESTS, 'dashboards', 'trellis.json');
const dashboard = JSON.parse(fs.readFileSync(file, 'utf8')) as {
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; definition?: string; query?: unknown }[] };
};

/** The panels under each row, by row title. */
function rows(): Map<string, Panel[]> {
  const out = new Map<string, Panel[]>();
  let current: Panel[] = [];
  for (const p of dashboard.panels) {
    if (p.type === 'row') out.set(p.title, (current = []));
    else current.push(p);
  }
  return out;
}

function exprs(): { where: string; expr: string }[] {
  const fromPanels = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel "${p.title}"`, expr: t.expr })));
  const fromVars = dashboard.templating.list
    .filter((v) => v.type === 'query')
    // label_values(SERIES, LABEL) asks what `count by (LABEL) (SERIES)` would.
    .map((v) => ({ where: `variable $${v.name}`, expr: (v.definition ?? '').replace(/^label_values\((.*),\s*([A-Za-z_]+)\s*\)$/, 'count by ($2) ($1)') }));
  return [...fromPanels, ...fromVars];
}

describe('Grafana dashboard', () => {
  it('is JSON with a stable uid, unique panel ids and a Prometheus data source variable', () => {
    expect(dashboard.uid).toBe('trellis-golden');
    const ids = dashboard.panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(dashboard.templating.list.find((v) => v.name === 'datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
  });

  it('has namespace and workload (and route) variables that the queries use', () => {
    const names = dashboard.templating.list.map((v) => v.name);
    expect(names).toEqual(expect.arrayContaining(['namespace', 'workload', 'route']));
    const all = exprs().map((e) => e.expr).join('\n');
    for (const v of ['$namespace', '$workload', '$route']) expect(all).toContain(v);
  });

  it('every query uses only metric and label names the agent exports, and recording rules with the labels they keep', () => {
    const found = exprs();
    expect(found.length).toBeGreaterThan(20);
    for (const { where, expr } of found) {
      const { metrics, labels } = promqlNames(expr);
      expect(metrics.length, `${where}: no metric in ${expr}`).toBeGreaterThan(0);
      for (const m of metrics) expect(METRICS.has(m), `${where}: unknown metric ${m} in ${expr}`).toBe(true);
      for (const l of labels) expect(LABELS.has(l), `${where}: unknown label ${l} in ${expr}`).toBe(true);
      // TCP series carry no HTTP labels: a selector on them would match nothing.
      if (metrics.every((m) => TCP_METRICS.includes(m) || (RULES.has(m) && !RULES.get(m)!.labels.has('response_code') && !RULES.get(m)!.labels.has('le')))) {
        for (const l of labels) expect((TCP_LABELS as readonly string[]).includes(l), `${where}: TCP metrics have no label ${l}`).toBe(true);
      }
      // A recording rule keeps only the labels it sums by: a selector or grouping on another matches nothing.
      for (const m of metrics.filter((x) => RULES.has(x))) {
        for (const l of labels) expect(RULES.get(m)!.labels.has(l), `${where}: ${m} has no label ${l} (it keeps ${[...RULES.get(m)!.labels].join(', ')})`).toBe(true);
      }
    }
  });

  it('reads the recording rules for every 1m rate they record (raw counters only over $__range or where no rule records it)', () => {
    const recorded = [...RULES.values()].map((r) => r.rateOf).filter((x): x is string => x !== undefined);
    expect(recorded).toEqual(expect.arrayContaining(['trellis_requests_total', 'trellis_request_duration_seconds_bucket', 'trellis_tcp_connections_opened_total']));
    const panels = exprs().filter((e) => e.where.startsWith('panel'));
    for (const { where, expr } of panels) {
      for (const raw of recorded) expect(expr, `${where}: rate() of ${raw} instead of its recording rule`).not.toMatch(new RegExp(`\\brate\\(${raw}\\b`));
    }
    // The raw counters left: a share over the dashboard's whole range, and connections closed (no rule records them).
    const raw = panels.filter((e) => !promqlNames(e.expr).metrics.some((m) => RULES.has(m)));
    expect(raw.map((e) => e.where)).toEqual(['panel "mTLS share of connections"', 'panel "TCP connections"']);
    expect(raw[0]!.expr).toMatch(/^sum\(increase\(trellis_tcp_connections_opened_total\{.*\}\[\$__range\]\)\)/);
    expect(raw[1]!.expr).toContain('rate(trellis_tcp_connections_closed_total{');
  });

  it('passes promtool check rules, every expression as a rule of a temporary rules file', async () => {
    // Grafana's variables as Prometheus would receive them.
    const concrete = (e: string) => e.replace(/\$__rate_interval|\$__range/g, '5m').replace(/\$[A-Za-z_]+/g, '.*');
    const rules = exprs().map((e, i) => ({ record: `dashboard:expr_${i}`, expr: concrete(e.expr) }));
    const file = path.join(dir, 'dashboard-rules.yml');
    fs.writeFileSync(file, stringify({ groups: [{ name: 'dashboard', rules }] }));
    let out: string;
    try {
      const r = await promisify(execFile)('promtool', ['check', 'rules', file]);
      out = `${r.stdout}${r.stderr}`;
    } catch (err) {
      const e = err as { code?: number | string; stdout?: string; stderr?: string };
      if (e.code === 'ENOENT') throw new Error('promtool is not installed: `apt-get install --no-install-recommends prometheus` (scripts/setup-debian.sh)');
      throw new Error(`promtool check rules failed:\n${e.stdout ?? ''}${e.stderr ?? ''}`);
    }
    expect(out).toContain(`SUCCESS: ${rules.length} rules found`);
  });

  it('the name reader sees through functions, selectors, ranges and grouping', () => {
    expect(promqlNames('histogram_quantile(0.9, sum by (le, route_name) (rate(trellis_request_duration_seconds_bucket{reporter="source", route_name=~"$route"}[$__rate_interval])))')).toEqual({
      metrics: ['trellis_request_duration_seconds_bucket'],
      labels: ['reporter', 'route_name', 'le', 'route_name'],
    });
    expect(promqlNames('sum(rate(up[5m])) / sum(rate(nope_total{a!~"5.."}[1m]))').metrics).toEqual(['up', 'nope_total']);
  });

  it('shows request rate, success rate, p50/p90/p99, TCP bytes and mTLS share per workload, and the L7 ones per route', () => {
    const byRow = rows();
    const workloads = [...byRow.entries()].find(([t]) => t.startsWith('Workloads'))?.[1] ?? [];
    const routes = [...byRow.entries()].find(([t]) => t.startsWith('Routes'))?.[1] ?? [];
    const titles = (ps: Panel[]) => ps.map((p) => p.title);
    expect(titles(workloads)).toEqual(expect.arrayContaining(['Request rate', 'Success rate', 'Latency p50 / p90 / p99', 'TCP bytes', 'mTLS share']));
    expect(titles(routes)).toEqual(expect.arrayContaining(['Request rate', 'Success rate', 'Latency p50 / p90 / p99']));
    for (const [ps, by] of [[workloads, 'destination_workload'], [routes, 'route_name']] as const) {
      const latency = ps.find((p) => p.title.startsWith('Latency'))!;
      expect(latency.targets!.map((t) => /histogram_quantile\(([\d.]+),/.exec(t.expr)?.[1])).toEqual(['0.5', '0.9', '0.99']);
      for (const p of ps.filter((x) => ['Request rate', 'Success rate'].includes(x.title))) expect(p.targets![0]!.expr).toContain(by);
    }
    // Success as the viewer counts it (viz/query.ts failed()): answered, not 5xx, gRPC OK.
    const success = workloads.find((p) => p.title === 'Success rate')!.targets![0]!.expr;
    expect(success).toContain('response_code!~"5..|0", grpc_response_status=~"|0"');
    const mtls = workloads.find((p) => p.title === 'mTLS share')!.targets![0]!.expr;
    expect(mtls).toMatch(/connection_security_policy="mutual_tls".*\/.*edge:trellis_tcp_connections_opened:rate1m/);
  });

  it('panels do not overlap', () => {
    const cells = new Set<string>();
    for (const p of dashboard.panels) {
      for (let x = p.gridPos.x; x < p.gridPos.x + p.gridPos.w; x++) {
        for (let y = p.gridPos.y; y < p.gridPos.y + p.gridPos.h; y++) {
          const key = `${x},${y}`;
          expect(cells.has(key), `panel "${p.title}" overlaps at ${key}`).toBe(false);
          cells.add(key);
        }
      }
      expect(p.gridPos.x + p.gridPos.w).toBeLessThanOrEqual(24);
    }
  });
});
