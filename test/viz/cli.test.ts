// `trellis stat|edges|routes` as a user runs them against a cluster's Prometheus (--prometheus URL): the built
// command against a stand-in Prometheus on 127.0.0.1 that answers the viewer's queries from a table. What a real
// Prometheus computes is the e2e test's business (test/e2e/viz.test.ts); here: flags, printing, and every refusal
// in one line with the right exit code.
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { statQueries } from '../../viz/stat.js';
import { trellis } from '../support/trellis-cli.js';

type Answer = { status?: number; body: unknown } | undefined;
let answer: (query: string) => Answer = () => undefined;
let rulesBody: unknown = { status: 'success', data: { groups: [] } };
let server: http.Server;
let url: string;

const vector = (result: { metric: Record<string, string>; value: number }[]) => ({
  status: 'success',
  data: { resultType: 'vector', result: result.map((r) => ({ metric: r.metric, value: [1_700_000_000, String(r.value)] })) },
});

beforeAll(async () => {
  server = http.createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    let status = 200;
    let body: unknown;
    if (u.pathname === '/api/v1/rules') body = rulesBody;
    else if (u.pathname === '/api/v1/query') {
      const a = answer(u.searchParams.get('query') ?? '');
      status = a?.status ?? 200;
      body = a?.body ?? vector([]);
    } else {
      res.writeHead(404, { 'content-type': 'text/html' }).end('<html>not found</html>');
      return;
    }
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

describe('the viewer against --prometheus URL', () => {
  it('prints stat as a table, and as JSON saying where the numbers come from', async () => {
    const q = statQueries({ kind: 'workload', namespace: 'shop' }, { source: { window: '1m', rules: false } });
    const labels = { destination_workload_namespace: 'shop', destination_workload: 'cart', reporter: 'destination' };
    answer = (query) =>
      query === q.requests
        ? { body: vector([{ metric: { ...labels, response_code: '200', connection_security_policy: 'mutual_tls' }, value: 9 }, { metric: { ...labels, response_code: '500', connection_security_policy: 'mutual_tls' }, value: 1 }]) }
        : query === q.p99
          ? { body: vector([{ metric: labels, value: 0.0042 }]) }
          : undefined;
    const table = await trellis(['stat', '-n', 'shop', '--prometheus', url]);
    expect(table, table.stderr).toMatchObject({ code: 0 });
    expect(table.stdout).toBe(
      'NAME  MESHED  SUCCESS    RPS  LATENCY_P50  LATENCY_P95  LATENCY_P99  TCP_CONN  SECURED\n' +
        'cart  yes      90.00%  10.00            -            -       4.20ms         0     100%\n',
    );
    const json = await trellis(['stat', '-n', 'shop', '--prometheus', `${url}/`, '-o', 'json']);
    expect(JSON.parse(json.stdout)).toMatchObject({ prometheus: url, window: '1m', recordingRules: false, rows: [{ name: 'cart', successRate: 0.9, rps: 10 }] });
  });

  it('says in one line what to do when there is nothing to show, exit 1', async () => {
    answer = () => undefined;
    const none = await trellis(['stat', '-n', 'shop', '--prometheus', url]);
    expect(none.code).toBe(1);
    expect(none.stderr).toBe(`trellis: Prometheus at ${url} holds no Trellis metrics: it does not scrape the agents (every node's :15020/metrics; manifests/monitoring/podmonitor.yaml), or no meshed pod has had traffic yet\n`);
    // Trellis metrics, but none for this namespace.
    answer = (query) =>
      query.startsWith('count(') ? { body: vector([{ metric: {}, value: 3 }]) } : query.startsWith('count by (destination_workload_namespace)') ? { body: vector([{ metric: { destination_workload_namespace: 'shop' }, value: 3 }]) } : undefined;
    const other = await trellis(['edges', '-n', 'nomesh', '--prometheus', url]);
    expect(other.code).toBe(1);
    expect(other.stderr).toMatch(/^trellis: no mesh traffic recorded in namespace nomesh \(namespaces with some: shop\): is it in the mesh .*\n$/);
    // The namespace had traffic, not in this window: not an error.
    const idle = await trellis(['edges', '-n', 'shop', '--prometheus', url]);
    expect(idle).toMatchObject({ code: 0, stdout: '', stderr: 'no traffic in namespace shop in the last 1m: widen --window, or send some\n' });
  });

  it('refuses what is not a Prometheus, or is not there, in one line', async () => {
    const notProm = await trellis(['stat', '--prometheus', `${url}/nothing`]);
    expect(notProm.code).toBe(1);
    expect(notProm.stderr).toMatch(/^trellis: http:\/\/127\.0\.0\.1:\d+\/nothing is not a Prometheus API \(rules: HTTP 404, not JSON: "<html>not found<\/html>"\); check --prometheus/);
    answer = () => ({ status: 400, body: { status: 'error', errorType: 'bad_data', error: 'parse error' } });
    const bad = await trellis(['stat', '--prometheus', url]);
    expect(bad.stderr).toMatch(/^trellis: Prometheus at http:\/\/127\.0\.0\.1:\d+ refused the query sum by .*: bad_data: parse error\n$/);
    // A port nothing listens on any more.
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const down = await trellis(['edges', '--prometheus', `http://127.0.0.1:${port}`]);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(new RegExp(`^trellis: cannot reach Prometheus at http://127\\.0\\.0\\.1:${port}: ECONNREFUSED; check --prometheus \\(e\\.g\\. \`kubectl -n monitoring port-forward`));
  });

  it('refuses wrong arguments with exit 2', async () => {
    for (const [args, message] of [
      [['stat', 'pod/x'], /^trellis: pods: the agents' metrics name workloads/],
      [['stat', 'rs'], /^trellis: unknown resource "rs": use ns, deploy \(any workload\) or svc/],
      [['stat', 'deploy/a', 'b'], /^trellis: "deploy\/a" already names one; drop "b"/],
      [['routes', 'web'], /^trellis: "web": name the Service as svc\/NAME/],
      [['routes', 'svc/web'], /^trellis: which routes belong to a Service is in the route objects, not in the metrics: pass --dir/],
      [['edges', 'svc'], /^trellis: edges are between workloads/],
      [['stat', '--prometheus', 'localhost:9090'], /^trellis: --prometheus localhost:9090: use an http:\/\/ or https:\/\/ URL/],
    ] as [string[], RegExp][]) {
      const r = await trellis([...args, ...(args.includes('--prometheus') ? [] : ['--prometheus', url])]);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(message);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
    }
  });

  it('routes reads the route objects of --dir, and prints the split against the weights', async () => {
    // The e2e fixture as written: its Services have no ClusterIP yet, as manifests before `kubectl apply`.
    const dir = mkdtempSync(path.join(tmpdir(), 'trellis-routes-'));
    copyFileSync(path.join(import.meta.dirname, '..', 'e2e', 'fixtures', 'viz.yaml'), path.join(dir, 'viz.yaml'));
    answer = (query) =>
      query.startsWith('sum by (route_namespace, route_name, route_rule, destination_service, response_code')
        ? query.includes('route_name=~')
          ? {
              body: vector([
                { metric: { route_namespace: 'viz', route_name: 'web-split', route_rule: 'split', destination_service: 'web-v1.viz.svc.cluster.local', response_code: '200' }, value: 3 },
                { metric: { route_namespace: 'viz', route_name: 'web-split', route_rule: 'split', destination_service: 'web-v2.viz.svc.cluster.local', response_code: '200' }, value: 1 },
              ]),
            }
          : undefined
        : undefined;
    const r = await trellis(['routes', 'svc/web', '-n', 'viz', '--dir', dir, '--prometheus', url]);
    rmSync(dir, { recursive: true, force: true });
    expect(r, r.stderr).toMatchObject({ code: 0 });
    expect(r.stdout).toBe(
      'ROUTE          RULE   BACKEND  WEIGHT   SPLIT  SUCCESS   RPS  LATENCY_P50  LATENCY_P95  LATENCY_P99\n' +
        'viz/web-split  split  web-v1   75.00%  75.00%  100.00%  3.00            -            -            -\n' +
        'viz/web-split  split  web-v2   25.00%  25.00%  100.00%  1.00            -            -            -\n',
    );
  });

  it('documents every flag in docs/cli.md, and each command in the README', async () => {
    const { readFileSync } = await import('node:fs');
    const doc = readFileSync(new URL('../../docs/cli.md', import.meta.url), 'utf8');
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    for (const command of [['stat'], ['edges'], ['routes'], ['top'], ['check'], ['dashboard'], ['tap'], ['lab', 'up']]) {
      const help = await trellis([...command, '--help']);
      expect(help.code).toBe(0);
      const flags = [...help.stdout.matchAll(/^\s+(?:-\w, )?(--[a-z0-9-]+)/gm)].map((m) => m[1]!).filter((f) => f !== '--help');
      expect(flags.length).toBeGreaterThan(3);
      expect(flags.filter((f) => !doc.includes(`\`${f}`)), `trellis ${command.join(' ')} flags missing from docs/cli.md`).toEqual([]);
      expect(readme).toMatch(new RegExp(`^trellis ${command.join(' ')} `, 'm'));
    }
  });
});
