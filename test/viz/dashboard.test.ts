// `trellis dashboard` without a browser: the graph layout, the view the page is given (the same rows as `stat`,
// sparklines from a range query assembled as `stat` assembles an instant one, routes with their split over time),
// and the built command against a stand-in Prometheus on 127.0.0.1: what it serves, what it refuses, and the one
// line it answers when Prometheus fails. The page in a real browser against a real Prometheus: test/e2e/dashboard.test.ts.
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layoutGraph } from '../../viz/dashboard/graph.js';
import { hostAllowed } from '../../viz/dashboard/server.js';
import { byStep, type DashboardView } from '../../viz/dashboard/view.js';
import type { EdgeRow } from '../../viz/edges.js';
import { edgesQueries } from '../../viz/edges.js';
import { statQueries } from '../../viz/stat.js';
import { trellis } from '../support/trellis-cli.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const SRC = { source: { window: '1m', rules: false } };

const edge = (src: string, dst: string, o: Partial<EdgeRow> = {}): EdgeRow => {
  const [sn, sw] = src.split('/') as [string, string];
  const [dn, dw] = dst.split('/') as [string, string];
  return {
    source: { namespace: sn, workload: sw, identity: null },
    destination: { namespace: dn, workload: dw, identity: null },
    mtlsShare: 1,
    mtls: true,
    rps: 2,
    connectionsPerSecond: 0,
    open: 0,
    reportedBy: ['source', 'destination'],
    ...o,
  };
};

describe('the topology graph', () => {
  const edges = [
    edge('shop/web', 'shop/cart'),
    edge('shop/cart', 'shop/db', { rps: 0, open: 3, connectionsPerSecond: 0.5 }),
    edge('outside/bot', 'shop/web', { mtls: false, mtlsShare: 0, reportedBy: ['destination'] }),
    edge('shop/web', 'pay/api', { mtls: false, mtlsShare: 0.5 }),
  ];

  it('has a box per end and a path per edge, callers left of the called, the same every time', () => {
    const g = layoutGraph('shop', edges);
    expect(g.nodes.map((n) => [n.id, n.label, n.local, n.meshed])).toEqual([
      ['outside/bot', 'outside/bot', false, false],
      ['pay/api', 'pay/api', false, true],
      ['shop/cart', 'cart', true, true],
      ['shop/db', 'db', true, true],
      ['shop/web', 'web', true, true],
    ]);
    const x = (id: string) => g.nodes.find((n) => n.id === id)!.x;
    expect(x('outside/bot')).toBeLessThan(x('shop/web'));
    expect(x('shop/web')).toBeLessThan(x('shop/cart'));
    expect(x('shop/cart')).toBeLessThan(x('shop/db'));
    expect(g.edges.map((e) => [e.id, e.mtls, e.label])).toEqual([
      ['outside/bot->shop/web', false, '2.00 rps, mTLS 0%'],
      ['shop/cart->shop/db', true, '3 open, mTLS 100%'],
      ['shop/web->pay/api', false, '2.00 rps, mTLS 50%'],
      ['shop/web->shop/cart', true, '2.00 rps, mTLS 100%'],
    ]);
    for (const e of g.edges) expect(e.points.length).toBeGreaterThanOrEqual(2);
    for (const n of g.nodes) {
      expect(n.x - n.width / 2).toBeGreaterThanOrEqual(0);
      expect(n.x + n.width / 2).toBeLessThanOrEqual(g.width);
      expect(n.y + n.height / 2).toBeLessThanOrEqual(g.height);
    }
    expect(layoutGraph('shop', [...edges].reverse())).toEqual(g);
  });

  it('shows a workload with traffic but no edge as a lone box, and nothing for no traffic', () => {
    expect(layoutGraph('shop', [], [{ namespace: 'shop', name: 'cron', meshed: true }]).nodes.map((n) => n.id)).toEqual(['shop/cron']);
    expect(layoutGraph('shop', [])).toMatchObject({ nodes: [], edges: [] });
  });
});

describe('range answers per step', () => {
  it('turns a matrix into the instant vector each step would have given', () => {
    const steps = byStep(
      [
        { labels: { a: '1' }, points: [[100, 1], [120, 3]] },
        { labels: { a: '2' }, points: [[110, 2]] },
      ],
      [100, 110, 120],
    );
    expect(steps).toEqual([[{ labels: { a: '1' }, value: 1 }], [{ labels: { a: '2' }, value: 2 }], [{ labels: { a: '1' }, value: 3 }]]);
  });
});

describe('the Host a request names', () => {
  it('is this server on loopback, nothing else (no DNS rebinding)', () => {
    expect(hostAllowed('127.0.0.1:8080', 8080)).toBe(true);
    expect(hostAllowed('localhost:8080', 8080)).toBe(true);
    expect(hostAllowed('[::1]:8080', 8080)).toBe(true);
    expect(hostAllowed('127.0.0.1:8081', 8080)).toBe(false);
    expect(hostAllowed('evil.example:8080', 8080)).toBe(false);
    expect(hostAllowed(undefined, 8080)).toBe(false);
  });
});

// A stand-in Prometheus: the viewer's queries for namespace shop, answered from a table.
type Answer = { status?: number; body: unknown } | undefined;
let answer: (query: string, range: boolean) => Answer = () => undefined;
let prom: http.Server;
let promUrl: string;

const vector = (result: { metric: Record<string, string>; value: number }[]) => ({
  status: 'success',
  data: { resultType: 'vector', result: result.map((r) => ({ metric: r.metric, value: [1_700_000_000, String(r.value)] })) },
});
const matrix = (result: { metric: Record<string, string>; values: [number, number][] }[]) => ({
  status: 'success',
  data: { resultType: 'matrix', result: result.map((r) => ({ metric: r.metric, values: r.values.map(([t, v]) => [t, String(v)]) })) },
});

const cart = { destination_workload_namespace: 'shop', destination_workload: 'cart', reporter: 'destination' };
const wl = statQueries({ kind: 'workload', namespace: 'shop' }, SRC);
const ns = statQueries({ kind: 'namespace', namespace: undefined }, SRC);
const eq = edgesQueries(SRC);
let rangeStart = 0;

function shopAnswers(query: string, range: boolean): Answer {
  const ok = { ...cart, response_code: '200', request_protocol: 'http', connection_security_policy: 'mutual_tls' };
  const failed = { ...ok, response_code: '503' };
  if (range && query === wl.requests) {
    // Two steps: 4/s all ok, then 9 ok and 1 failed.
    const t0 = rangeStart;
    return { body: matrix([{ metric: ok, values: [[t0, 4], [t0 + 10, 9]] }, { metric: failed, values: [[t0 + 10, 1]] }]) };
  }
  if (query === wl.requests) return { body: vector([{ metric: ok, value: 9 }, { metric: failed, value: 1 }]) };
  if (query === wl.p99) return { body: vector([{ metric: cart, value: 0.0042 }]) };
  if (query === ns.requests) return { body: vector([{ metric: { destination_workload_namespace: 'shop', reporter: 'destination', response_code: '200' }, value: 10 }]) };
  // explainEmpty's questions: Trellis metrics exist, for namespace shop only.
  if (query.startsWith('count(')) return { body: vector([{ metric: {}, value: 3 }]) };
  if (query.startsWith('count by (destination_workload_namespace)')) return { body: vector([{ metric: { destination_workload_namespace: 'shop' }, value: 3 }]) };
  if (query === eq.requests) {
    const e = { reporter: 'destination', source_workload: 'web', source_workload_namespace: 'shop', source_principal: 'spiffe://cluster.local/ns/shop/sa/web', destination_workload: 'cart', destination_workload_namespace: 'shop', destination_principal: 'spiffe://cluster.local/ns/shop/sa/cart', connection_security_policy: 'mutual_tls' };
    return { body: vector([{ metric: e, value: 10 }]) };
  }
  return undefined;
}

beforeAll(async () => {
  prom = http.createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    let status = 200;
    let body: unknown;
    if (u.pathname === '/api/v1/rules') body = { status: 'success', data: { groups: [] } };
    else if (u.pathname === '/api/v1/query' || u.pathname === '/api/v1/query_range') {
      const range = u.pathname.endsWith('_range');
      if (range) rangeStart = Number(u.searchParams.get('start'));
      const a = answer(u.searchParams.get('query') ?? '', range);
      status = a?.status ?? 200;
      body = a?.body ?? (range ? matrix([]) : vector([]));
    } else {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  });
  await new Promise<void>((resolve) => prom.listen(0, '127.0.0.1', resolve));
  promUrl = `http://127.0.0.1:${(prom.address() as AddressInfo).port}`;
});

afterAll(() => new Promise<void>((resolve) => prom.close(() => resolve())));

/** The built command, running until stopped; resolves with the URL it printed. */
async function dashboard(args: string[]): Promise<{ url: string; child: ChildProcess; stop: () => Promise<number | null> }> {
  const child = spawn(path.join(ROOT, 'node_modules/.bin/node'), [path.join(ROOT, 'dist/agent/main.js'), 'dashboard', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no URL printed in 10 s: ${out} ${err}`)), 10_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /on (http:\/\/\S+\/) /.exec(out);
      if (m) (clearTimeout(timer), resolve(m[1]!));
    });
    child.once('exit', (code) => (clearTimeout(timer), reject(new Error(`exited ${code}: ${out} ${err}`))));
  });
  const stop = () =>
    new Promise<number | null>((resolve) => {
      if (child.exitCode !== null) return resolve(child.exitCode);
      child.once('exit', (code) => resolve(code));
      child.kill('SIGINT');
    });
  return { url, child, stop };
}

async function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; type: string; body: string }> {
  const res = await fetch(url, { headers });
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: await res.text() };
}

describe('trellis dashboard against --prometheus URL', () => {
  it('serves the page, uPlot from node_modules, and the view of a namespace computed as stat and edges compute it', async () => {
    answer = shopAnswers;
    const d = await dashboard(['--prometheus', promUrl, '--listen', '127.0.0.1:0', '--refresh', '2s']);
    try {
      expect(d.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
      const page = await get(d.url);
      expect(page).toMatchObject({ status: 200, type: 'text/html; charset=utf-8' });
      expect(page.body).toContain('<script src="/vendor/uPlot.iife.min.js"></script>');
      const uplot = await get(`${d.url}vendor/uPlot.iife.min.js`);
      expect(uplot.status).toBe(200);
      expect(uplot.body).toContain('uPlot');
      expect((await get(`${d.url}app.js`)).body).toContain('/api/view');
      expect((await get(`${d.url}vendor/../../package.json`)).status).toBe(404);

      // No namespace asked: the busiest one.
      const view = JSON.parse((await get(`${d.url}api/view`)).body) as DashboardView & { refreshMs: number };
      expect(view).toMatchObject({ refreshMs: 2000, namespace: 'shop', namespaces: ['shop'], message: null, provenance: { prometheus: promUrl, window: '1m', recordingRules: false } });
      expect(view.workloads).toHaveLength(1);
      expect(view.workloads[0]).toMatchObject({
        name: 'cart',
        meshed: true,
        successRate: 0.9,
        display: { success: '90.00%', rps: '10.00', p50: '-', p99: '4.20ms', tcpConn: '0', secured: '100%' },
      });
      // The same text `trellis stat` prints for it.
      const stat = await trellis(['stat', '-n', 'shop', '--prometheus', promUrl]);
      expect(stat.stdout).toMatch(/^cart +yes +90\.00% +10\.00 +- +- +4\.20ms +0 +100%$/m);
      // Sparklines: one point per 10 s over 10 minutes, the last two steps from the range answer.
      expect(view.history).toMatchObject({ step: 10 });
      expect(view.history.times).toHaveLength(61);
      const { rps, success } = view.workloads[0]!.spark;
      expect([rps[0], rps[1], rps.at(-1)]).toEqual([4, 10, null]);
      expect([success[0], success[1]]).toEqual([1, 0.9]);
      expect(view.graph.nodes.map((n) => n.id)).toEqual(['shop/cart', 'shop/web']);
      expect(view.graph.edges).toMatchObject([{ id: 'shop/web->shop/cart', mtls: true, label: '10.00 rps, mTLS 100%' }]);
      expect(view.routes).toEqual({ note: expect.stringMatching(/^Which routes belong to a Service is in the route objects/), services: [] });

      // A namespace without traffic: the one line stat would print.
      const idle = JSON.parse((await get(`${d.url}api/view?namespace=nomesh`)).body) as DashboardView;
      expect(idle.message).toMatch(/^no mesh traffic recorded in namespace nomesh \(namespaces with some: shop\)/);
      expect(idle.namespaces).toEqual(['nomesh', 'shop']);
      expect((await get(`${d.url}api/view?namespace=Bad!`)).status).toBe(400);

      // Another site's page that resolved a name to 127.0.0.1, a method that changes things: refused.
      const port = new URL(d.url).port;
      expect((await rawGet(Number(port), { host: `rebind.example:${port}` })).status).toBe(421);
      expect((await fetch(`${d.url}api/view`, { method: 'POST' })).status).toBe(405);

      // Prometheus failing: the page is told why, in one line, and keeps asking.
      answer = () => ({ status: 503, body: { status: 'error', errorType: 'unavailable', error: 'shutting down' } });
      const down = await get(`${d.url}api/view?namespace=shop`);
      expect(down.status).toBe(502);
      expect(JSON.parse(down.body)).toMatchObject({ refreshMs: 2000, code: 'EPROMETHEUS', error: expect.stringMatching(/^Prometheus at http:\/\/127\.0\.0\.1:\d+ .*unavailable: shutting down$/) });
    } finally {
      expect(await d.stop()).toBe(0);
    }
  });

  it('shows the routes of --dir with the split over time against the weights', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'trellis-dash-'));
    copyFileSync(path.join(import.meta.dirname, '..', 'e2e', 'fixtures', 'viz.yaml'), path.join(dir, 'viz.yaml'));
    const routed = (host: string) => ({ route_namespace: 'viz', route_name: 'web-split', route_rule: 'split', destination_service: `${host}.viz.svc.cluster.local`, response_code: '200' });
    answer = (query, range) => {
      if (!query.includes('route_name=~')) return undefined;
      if (query.startsWith('histogram_quantile')) return undefined;
      if (range) return { body: matrix([{ metric: routed('web-v1'), values: [[rangeStart, 3], [rangeStart + 10, 1]] }, { metric: routed('web-v2'), values: [[rangeStart, 1], [rangeStart + 10, 1]] }]) };
      return { body: vector([{ metric: routed('web-v1'), value: 3 }, { metric: routed('web-v2'), value: 1 }]) };
    };
    const d = await dashboard(['--prometheus', promUrl, '--listen', '127.0.0.1:0', '--dir', dir, '-n', 'viz']);
    try {
      const view = JSON.parse((await get(`${d.url}api/view`)).body) as DashboardView;
      expect(view.namespace).toBe('viz');
      expect(view.routes.note).toBeNull();
      expect(view.routes.services.map((s) => s.service)).toEqual(['web']);
      const web = view.routes.services[0]!;
      expect(web.rows.map((r) => [r.backend, r.display.weight, r.display.split, r.display.success])).toEqual([
        ['web-v1', '75.00%', '75.00%', '100.00%'],
        ['web-v2', '25.00%', '25.00%', '100.00%'],
      ]);
      expect(web.split.map((s) => [s.label, s.weight, s.values.slice(0, 3)])).toEqual([
        ['viz/web-split split -> web-v1', 0.75, [0.75, 0.5, null]],
        ['viz/web-split split -> web-v2', 0.25, [0.25, 0.5, null]],
      ]);
    } finally {
      await d.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses, in one line, what it cannot serve', async () => {
    const remote = await trellis(['dashboard', '--prometheus', promUrl, '--listen', '0.0.0.0:0']);
    expect(remote.code).toBe(2);
    expect(remote.stderr).toMatch(/^trellis: --listen 0\.0\.0\.0: not a loopback address; the page has no login.*--allow-remote/);
    const bad = await trellis(['dashboard', '--prometheus', promUrl, '--listen', 'nowhere']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/option '--listen <ip:port>' argument 'nowhere' is invalid\. write IP:PORT/);
    // Prometheus not there at start: said before anything is served.
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const down = await trellis(['dashboard', '--prometheus', `http://127.0.0.1:${port}`, '--listen', '127.0.0.1:0']);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(new RegExp(`^trellis: cannot reach Prometheus at http://127\\.0\\.0\\.1:${port}: ECONNREFUSED; check --prometheus`));
    expect(down.stderr.trim().split('\n')).toHaveLength(1);
  });
});

/** A GET with a Host header of our choosing (fetch does not let one set it). */
function rawGet(port: number, headers: Record<string, string>): Promise<{ status: number }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/', headers }, (res) => (res.resume(), resolve({ status: res.statusCode ?? 0 }))).on('error', reject);
  });
}
