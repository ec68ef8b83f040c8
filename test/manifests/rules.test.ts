// The recording rules of manifests/monitoring/prometheusrule.yaml (what `trellis stat|edges|routes` read, and what
// the lab's Prometheus loads): valid for Prometheus (`promtool check rules`), and, on series shaped like the agents'
// (two nodes), recording what the viewer expects: one series per edge without the node, equal to the raw query the
// viewer makes over any other window. Runs Debian's promtool (scripts/setup-debian.sh installs it).
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { parse, stringify } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { REQUEST_LABELS, TCP_LABELS } from '../../agent/telemetry/metrics.js';
import { rulesFile } from '../../lab/cluster/prometheus.js';
import { ALL_RULES, latencyQuantile, openConnections, sumRate, type Source } from '../../viz/promql.js';
import { MANIFESTS } from './load.js';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../..');
const dir = mkdtempSync(path.join(tmpdir(), 'trellis-rules-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const rule = parse(readFileSync(path.join(MANIFESTS, 'monitoring', 'prometheusrule.yaml'), 'utf8')) as {
  kind: string;
  spec: { groups: { name: string; rules: { record: string; expr: string }[] }[] };
};
const recorded = rule.spec.groups.flatMap((g) => g.rules.map((r) => r.record));

async function promtool(args: string[]): Promise<{ code: number; out: string }> {
  try {
    const r = await run('promtool', args, { cwd: dir });
    return { code: 0, out: `${r.stdout}${r.stderr}` };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string };
    if (e.code === 'ENOENT') throw new Error('promtool is not installed: `apt-get install --no-install-recommends prometheus` (scripts/setup-debian.sh)');
    return { code: typeof e.code === 'number' ? e.code : -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

/** A series as promtool's input_series writes it. */
function series(name: string, labels: Record<string, string>): string {
  return `${name}{${Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(',')}}`;
}

describe('recording rules (manifests/monitoring/prometheusrule.yaml)', () => {
  writeFileSync(path.join(dir, 'rules.yml'), rulesFile(ROOT));

  it('is a PrometheusRule whose groups record every rule the viewer reads, and nothing it does not', () => {
    expect(rule.kind).toBe('PrometheusRule');
    expect([...recorded].sort()).toEqual([...ALL_RULES].sort());
  });

  it('passes promtool check rules (the lab loads the same groups)', async () => {
    const r = await promtool(['check', 'rules', 'rules.yml']);
    expect(r.out).toMatch(new RegExp(`SUCCESS: ${ALL_RULES.length} rules found`));
    expect(r.code, r.out).toBe(0);
  });

  it('records per edge over both nodes, as the viewer’s raw queries compute them (promtool test rules)', async () => {
    const edge = Object.fromEntries(REQUEST_LABELS.map((l) => [l, 'x'])) as Record<string, string>;
    Object.assign(edge, {
      reporter: 'destination',
      source_workload: 'client',
      destination_workload: 'api',
      destination_service: 'api.viz.svc.cluster.local',
      connection_security_policy: 'mutual_tls',
      request_protocol: 'http',
      response_code: '200',
      grpc_response_status: '',
      route_name: '',
    });
    const tcp = Object.fromEntries(TCP_LABELS.map((l) => [l, edge[l]!]));
    const node = (n: string) => ({ instance: `10.0.0.${n}:15020`, job: 'trellis-agent', node: `node-${n}` });
    // 15 s scrapes: node 1 counts 60 requests per scrape (4/s), node 2 30 (2/s); latency all in the 10 ms bucket;
    // each node opens 15 connections per scrape (1/s), and closes as many until the 10th scrape, then none.
    const input: { series: string; values: string }[] = [];
    for (const [n, per] of [['1', 60], ['2', 30]] as const) {
      input.push({ series: series('trellis_requests_total', { ...edge, ...node(n) }), values: `0+${per}x20` });
      for (const le of ['0.005', '0.01', '+Inf']) {
        input.push({ series: series('trellis_request_duration_seconds_bucket', { ...edge, ...node(n), le }), values: le === '0.005' ? '0x20' : `0+${per}x20` });
      }
      input.push({ series: series('trellis_tcp_connections_opened_total', { ...tcp, ...node(n) }), values: '0+15x20' });
      input.push({ series: series('trellis_tcp_connections_closed_total', { ...tcp, ...node(n) }), values: '0+15x10 150+0x10' });
      input.push({ series: series('trellis_tcp_received_bytes_total', { ...tcp, ...node(n) }), values: '0+1500x20' });
      input.push({ series: series('trellis_tcp_sent_bytes_total', { ...tcp, ...node(n) }), values: '0+150x20' });
    }
    const by = ['reporter', 'destination_workload'];
    const m = { reporter: 'destination' };
    const rules: Source = { window: '1m', rules: true };
    const raw: Source = { window: '1m', rules: false };
    const at = '4m';
    const expect1 = (expr: string, value: number) => ({ expr, eval_time: at, exp_samples: [{ labels: '{destination_workload="api", reporter="destination"}', value }] });
    const tests = [
      // What the rules record: the node and instance gone, every label of the edge kept.
      {
        expr: 'edge:trellis_requests:rate1m',
        eval_time: at,
        exp_samples: [{ labels: series('edge:trellis_requests:rate1m', edge), value: 6 }],
      },
      { expr: 'edge:trellis_tcp_connections_open:sum', eval_time: at, exp_samples: [{ labels: series('edge:trellis_tcp_connections_open:sum', tcp), value: 2 * (16 * 15 - 150) }] },
      // The viewer's queries read the same through the rules and through the raw counters.
      ...[rules, raw].flatMap((src) => [
        expect1(sumRate('requests', by, m, src), 6),
        expect1(sumRate('tcpOpened', by, m, src), 2),
        expect1(sumRate('tcpReceived', by, m, src), 200),
        expect1(sumRate('tcpSent', by, m, src), 20),
        expect1(openConnections(by, m, src), 2 * (16 * 15 - 150)),
        expect1(latencyQuantile(0.5, by, m, src), 0.0075),
      ]),
    ];
    writeFileSync(
      path.join(dir, 'rules.test.yml'),
      stringify({ rule_files: ['rules.yml'], evaluation_interval: '15s', tests: [{ interval: '15s', input_series: input, promql_expr_test: tests }] }),
    );
    const r = await promtool(['test', 'rules', 'rules.test.yml']);
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/SUCCESS/);
  });
});
