// The dashboard in a real browser: the viewer's e2e topology (fixtures/viz.yaml) in a two-node lab with its own
// Prometheus, a known amount of traffic (the api answers 80 % of its requests, the web Service is split 75/25 by an
// HTTPRoute, an outsider calls in plaintext, the client calls a server outside the mesh), then the built
// `trellis dashboard --lab` opened in Debian's Chromium (playwright-core, /usr/bin/chromium, headless, nothing
// downloaded), and what the page shows held against what was sent and against `trellis stat`; its live tap panel while
// known traffic flows, and `trellis top`'s paths tapped from the agents, both held against what was sent. Screenshots
// are left in the test's temp directory (their paths are printed). Needs root (the lab) and the chromium package
// (scripts/setup-debian.sh).
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectInNetns } from '../../agent/native/index.js';
import { Lab } from '../../lab/cluster/lab.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import type { HttpClientSummary } from '../../lab/tools/http-client.js';
import { PromClient } from '../../viz/prom/client.js';
import { netnsTransport } from '../../viz/prom/transport.js';
import type { StatRow } from '../../viz/stat.js';
import type { PathRow } from '../../viz/tap/paths.js';
import type { TopRow } from '../../viz/top.js';
import { CHROMIUM, openDashboard, type DashboardInBrowser } from '../support/dashboard.js';
import { requireRoot } from '../support/root.js';
import { trellis } from '../support/trellis-cli.js';
import { until } from '../support/until.js';

const fixtures = path.join(import.meta.dirname, 'fixtures', 'viz.yaml');
const labName = `ed${Math.random().toString(36).slice(2, 5)}`;
const out = mkdtempSync(path.join(tmpdir(), 'trellis-dashboard-'));

// The client asks the api for 3 answers of 200 and 1 of 500 in turn; the outsider's are all 200: 80 % in all.
const API_MIX = JSON.stringify([{ path: '/' }, { path: '/' }, { path: '/' }, { path: '/fail', headers: { 'x-echo-status': '500' } }]);
const MAIN = { api: 200, outsider: 50, web: 400, legacy: 20 };
const WARM = { api: 4, outsider: 1, web: 4, legacy: 1 };

let lab: Lab;
let view: DashboardInBrowser | undefined;
let url: string;
let page: Page;
const vip = (ns: string, name: string) => lab.services.find((s) => s.namespace === ns && s.name === name)!.clusterIP;

async function http(pod: string, target: string, count: number, extra: string[] = []): Promise<HttpClientSummary> {
  const r = await lab.exec(pod, ['trellis', 'tool', 'http-client', '--url', target, '--count', String(count), ...extra], { timeoutMs: 60_000 });
  const line = r.stdout.trim().split('\n').at(-1) ?? '';
  try {
    return JSON.parse(line) as HttpClientSummary;
  } catch {
    throw new Error(`http-client in ${pod} printed no JSON (exit ${r.code}): ${r.stdout.slice(0, 300)} ${r.stderr.slice(0, 300)}`);
  }
}

/** One round; the warm-up calls web until both versions have answered, so every series exists before the main round. */
async function round(n: typeof MAIN): Promise<void> {
  const web = async () => {
    const names: Record<string, number> = {};
    for (let i = 0; i < 20; i++) {
      const r = await http('viz/client', `http://${vip('viz', 'web')}/`, n.web, ['--concurrency', '4']);
      expect(r.ok).toBe(r.sent);
      for (const [k, v] of Object.entries(r.names)) names[k] = (names[k] ?? 0) + v;
      if (n === MAIN || (names['web-v1'] && names['web-v2'])) return;
    }
    throw new Error(`web answered only from ${JSON.stringify(names)} in 20 tries`);
  };
  const [api, outsider, , legacy] = await Promise.all([
    http('viz/client', `http://${vip('viz', 'api')}/`, n.api, ['--requests', API_MIX]),
    http('outside/outsider', `http://${vip('viz', 'api')}/`, n.outsider),
    web(),
    http('viz/client', `http://${vip('outside', 'legacy')}/`, n.legacy),
  ]);
  expect(api.statusCounts).toEqual({ 200: (n.api * 3) / 4, 500: n.api / 4 });
  expect(outsider.ok).toBe(n.outsider);
  expect(legacy.ok).toBe(n.legacy);
}

/**
 * What the agents counted, once Prometheus has scraped it: the api's requests (node-b's agent) and the legacy server's
 * (node-a's, the client's side). Both agents are scraped apart: a series one of them made in the warm-up and Prometheus
 * had not yet seen before the main round would start with the main round in it, and show no rate.
 */
async function counted(): Promise<string> {
  const prom = new PromClient(netnsTransport(lab.prometheus!.url, lab.prometheus!.netnsPath, 'the test lab'));
  const one = async (expr: string) => (await prom.query(expr))[0]?.value ?? 0;
  const [api, legacy, backends] = await Promise.all([
    one('sum(trellis_requests_total{reporter="destination",destination_workload="api"})'),
    one('sum(trellis_requests_total{reporter="source",destination_workload="legacy"})'),
    one('count(count by (destination_service) (trellis_requests_total{reporter="source",route_name="web-split"}))'),
  ]);
  return `api ${api}, legacy ${legacy}, web backends ${backends}`;
}

/** Taps open on each node's agent (`trellis_tap_streams`). */
const tapStreams = () => Promise.all(['node-a', 'node-b'].map(async (n) => sumOf(parsePrometheus(await lab.metrics(n)), 'trellis_tap_streams')));

const cell = (row: string, col: string) => page.locator(`${row} [data-col="${col}"]`).textContent();
const percentOf = (text: string | null) => Number(/^([\d.]+)%$/.exec(text ?? '')?.[1]) / 100;

describe('the dashboard page in Chromium, and trellis top, on the lab\'s Prometheus', () => {
  beforeAll(async () => {
    requireRoot('the dashboard end-to-end test');
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: \`apt-get install --no-install-recommends chromium\` (scripts/setup-debian.sh)`);
    lab = await Lab.up(fixtures, { name: labName, logLevel: 'warn', prometheus: { scrapeInterval: '1s' } });
    const node = lab.node('node-b');
    const listens = (pod: string) =>
      until(`${pod} to listen`, () =>
        new Promise<boolean>((resolve) => {
          const s = connectInNetns(node.netnsPath, { host: lab.pod(pod).ip, port: 8080, timeoutMs: 1000 });
          s.once('connect', () => (s.destroy(), resolve(true)));
          s.once('error', () => resolve(false));
        }), 20_000);
    await Promise.all(['viz/api', 'viz/web-v1', 'viz/web-v2', 'outside/legacy'].map(listens));
    await round(WARM);
    const scraped = (n: { api: number; outsider: number; legacy: number }) => `api ${n.api + n.outsider}, legacy ${n.legacy}, web backends 2`;
    await until('Prometheus to scrape the warm-up', async () => (await counted()) === scraped(WARM), 15_000);
    await round(MAIN);
    const total = { api: WARM.api + MAIN.api, outsider: WARM.outsider + MAIN.outsider, legacy: WARM.legacy + MAIN.legacy };
    await until('Prometheus to scrape the main round', async () => (await counted()) === scraped(total), 15_000);
    // The recording rules the page reads are evaluated apart from the scrapes: wait for one evaluation after the
    // scrape that saw it all (else a rate may hold part of the round).
    await until('the recording rules to be evaluated after that scrape', async () => {
      const prom = new PromClient(netnsTransport(lab.prometheus!.url, lab.prometheus!.netnsPath, 'the test lab'));
      const when = async (expr: string) => (await prom.query(expr))[0]?.value ?? NaN;
      const [scrape, rule] = await Promise.all([
        when('max(timestamp(trellis_requests_total{reporter="destination",destination_workload="api"}))'),
        when('min(timestamp(edge:trellis_requests:rate1m{reporter="destination",destination_workload="api"}))'),
      ]);
      return rule > scrape;
    }, 10_000);

    view = await openDashboard(['--lab', labName, '--listen', '127.0.0.1:0', '--refresh', '2s']);
    url = view.dashboard.url;
    page = view.page;
  }, 120_000);

  afterAll(async () => {
    await view?.close();
    await lab?.down();
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  it('shows the workloads, their success rate as sent and as `trellis stat` prints it, the edges and the split', async () => {
    await page.goto(`${url}?namespace=viz`);
    await page.locator('[data-workload="api"]').waitFor({ timeout: 15_000 });

    // The workloads that were called, each with requests.
    const names = await page.locator('#workloads tbody tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-workload')));
    expect(names).toEqual(['api', 'web-v1', 'web-v2']);
    for (const n of names) expect(Number(await cell(`[data-workload="${n}"]`, 'rps'))).toBeGreaterThan(0);
    // 300 of the client's 200 x 3/4 and the outsider's 50: 80 %, exactly (every series was warm before).
    expect(await cell('[data-workload="api"]', 'success')).toBe('80.00%');
    expect(await cell('[data-workload="api"]', 'meshed')).toBe('yes');
    expect(await cell('[data-workload="web-v1"]', 'success')).toBe('100.00%');
    const stat = await trellis(['stat', '-n', 'viz', '--lab', labName, '-o', 'json']);
    const api = (JSON.parse(stat.stdout) as { rows: StatRow[] }).rows.find((r) => r.name === 'api')!;
    expect(api.successRate).toBeCloseTo(0.8, 6);
    // Sparklines drawn by uPlot (a canvas each).
    await expect.poll(() => page.locator('[data-workload="api"] [data-col="rps-spark"] canvas').count()).toBe(1);

    // Edges: the client's calls over mTLS, the outsider's in plaintext, the legacy server outside the mesh.
    const edge = (id: string) => page.locator(`[data-edge="${id}"]`);
    expect(await edge('viz/client->viz/api').getAttribute('data-mtls')).toBe('true');
    expect(await edge('viz/client->viz/web-v1').getAttribute('data-mtls')).toBe('true');
    expect(await edge('viz/client->viz/web-v2').getAttribute('data-mtls')).toBe('true');
    expect(await edge('outside/outsider->viz/api').getAttribute('data-mtls')).toBe('false');
    expect(await page.locator('[data-node="outside/legacy"]').getAttribute('data-meshed')).toBe('false');
    expect(await page.locator('[data-node="viz/client"] text').textContent()).toBe('client');
    // Drawn left to right: the client before the api.
    const box = async (id: string) => (await page.locator(`[data-node="${id}"] rect`).boundingBox())!;
    expect((await box('viz/client')).x).toBeLessThan((await box('viz/api')).x);

    // The route: 75/25 configured, and 400 requests split at random by weight (sd 2.2 points; 8 points is 3.6 sd).
    const v1 = '[data-route-row="viz/web-split|split|web-v1"]';
    const v2 = '[data-route-row="viz/web-split|split|web-v2"]';
    expect([await cell(v1, 'weight'), await cell(v2, 'weight')]).toEqual(['75.00%', '25.00%']);
    const [s1, s2] = [percentOf(await cell(v1, 'split')), percentOf(await cell(v2, 'split'))];
    expect(Math.abs(s1 - 0.75), `web-v1 got ${s1}`).toBeLessThan(0.08);
    expect(s1 + s2).toBeCloseTo(1, 3);
    await expect.poll(() => page.locator('[data-service="web"] .split-chart canvas').count()).toBe(1);

    const shot = path.join(out, 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`dashboard screenshot: ${shot}`);
  });

  it('refreshes by itself, and switches namespace from its list', async () => {
    const at = await page.locator('body').getAttribute('data-at');
    await expect.poll(() => page.locator('body').getAttribute('data-at'), { timeout: 10_000 }).not.toBe(at);
    await page.locator('#namespace').selectOption('outside');
    await page.locator('[data-workload="legacy"]').waitFor({ timeout: 10_000 });
    expect(await cell('[data-workload="legacy"]', 'meshed')).toBe('no');
    expect(page.url()).toMatch(/\?namespace=outside$/);
  });

  it('live tap: a workload\'s requests stream into the page as they flow, both agents\' views; closing the panel closes the agents\' taps', async () => {
    await page.locator('#namespace').selectOption('viz');
    await page.locator('[data-workload="api"]').waitFor({ timeout: 10_000 });
    await expect.poll(() => page.locator('#tap-workload option').evaluateAll((os) => os.map((o) => o.getAttribute('value')))).toContain('client');
    await page.locator('#tap-workload').selectOption('client');
    expect(await tapStreams()).toEqual([0, 0]);
    await page.locator('#tap-toggle').click();
    await until('the page\'s tap to be open on both agents', async () => (await tapStreams()).every((n) => n === 1), 10_000);
    await expect.poll(() => page.locator('#tap-status').textContent()).toMatch(/^tapping viz\/client on node-a, node-b, at most 20\/s per agent, for 120 s$/);
    // 8 calls in the api mix: 6 answered 200 on /, 2 asked for a 500 on /fail; each seen by the client's agent (out)
    // and the api's (in). Under the page's bound (20/s, a burst of 20): none dropped.
    const sent = await http('viz/client', `http://${vip('viz', 'api')}/`, 8, ['--requests', API_MIX]);
    expect(sent.statusCounts).toEqual({ 200: 6, 500: 2 });
    const rows = (sel: string) => page.locator(`#tap-rows tbody tr${sel}`).count();
    await expect.poll(() => rows('[data-path="/fail"][data-status="500"]'), { timeout: 10_000 }).toBe(4);
    await expect.poll(() => rows('[data-path="/"][data-status="200"]')).toBe(12);
    expect(await rows('')).toBe(16);
    for (const dir of ['out', 'in']) expect(await rows(`[data-direction="${dir}"][data-source="viz/client"][data-destination="viz/api"][data-method="GET"]`)).toBe(8);
    const first = (row: string, col: string) => page.locator(`#tap-rows ${row} [data-col="${col}"]`).first().textContent();
    expect(await first('[data-direction="out"][data-path="/fail"]', 'status')).toBe('500');
    // Headers as tap gives them: the caller's identity that the api's agent hands the app, redacted.
    expect(await first('[data-direction="in"][data-path="/"]', 'headers')).toContain('x-forwarded-client-cert: [REDACTED]');
    const shot = path.join(out, 'dashboard-tap.png');
    await page.locator('#tap-section').screenshot({ path: shot });
    console.log(`live tap screenshot: ${shot}`);

    await page.locator('#tap-toggle').click();
    expect(await page.locator('#tap-status').textContent()).toBe('stopped');
    await until('the agents\' taps to close with the panel', async () => (await tapStreams()).every((n) => n === 0), 10_000);
    expect(await tapStreams()).toEqual([0, 0]);
  });

  it('top: a workload\'s busiest edges and routes both ways, as its own agent saw them, redrawn --iterations times', async () => {
    const json = async (target: string) => {
      const r = await trellis(['top', target, '--lab', labName, '--iterations', '1', '-o', 'json']);
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { rows: TopRow[] }).rows;
    };
    const row = (rows: TopRow[], peer: string) => {
      const r = rows.find((x) => `${x.peer.namespace}/${x.peer.workload}` === peer);
      expect(r, `${peer} in ${JSON.stringify(rows.map((x) => x.peer.workload))}`).toBeDefined();
      return r!;
    };
    // What the client calls: the api (75 % of its own calls ok), web through the route, legacy in plaintext.
    const client = await json('viz/client');
    expect(client.every((r) => r.direction === 'outbound' && r.reporter === 'source')).toBe(true);
    expect(row(client, 'viz/api')).toMatchObject({ route: null, secured: 1 });
    expect(row(client, 'viz/api').successRate).toBeCloseTo(0.75, 6);
    expect(row(client, 'viz/web-v1')).toMatchObject({ route: { name: 'viz/web-split', rule: 'split' }, service: 'viz/web-v1', successRate: 1 });
    expect(row(client, 'viz/web-v2')).toMatchObject({ route: { name: 'viz/web-split', rule: 'split' } });
    expect(row(client, 'outside/legacy')).toMatchObject({ secured: 0, successRate: 1 });
    expect(client[0]!.rps).toBeGreaterThanOrEqual(client.at(-1)!.rps);
    // Who calls the api: the client over mTLS, the outsider in plaintext, as the api's agent saw them.
    const api = await json('viz/api');
    expect(api.map((r) => [r.direction, r.peer.workload, r.reporter])).toEqual([
      ['inbound', 'client', 'destination'],
      ['inbound', 'outsider', 'destination'],
    ]);
    expect(row(api, 'outside/outsider')).toMatchObject({ successRate: 1, secured: 0 });

    const table = await trellis(['top', 'viz/client', '--lab', labName, '--iterations', '2', '--interval', '1s']);
    expect(table.code, table.stderr).toBe(0);
    const pictures = table.stdout.split(/\n\n(?=trellis top )/);
    expect(pictures).toHaveLength(2);
    for (const p of pictures) {
      expect(p).toMatch(/^trellis top viz\/client  \d\d:\d\d:\d\d  window 1m, every 1 s, Prometheus http:/);
      expect(p).toMatch(/^FROM +TO +SERVICE +ROUTE +RPS +SUCCESS +LATENCY_P50 +LATENCY_P99 +CONN\/SEC +SECURED$/m);
      expect(p).toMatch(/^client +web-v1 +web-v1 +viz\/web-split:split +[\d.]+ +100\.00% /m);
      expect(p).toMatch(/^client +api +api +- +[\d.]+ +75\.00% /m);
    }
  });

  it('top: the busiest paths, tapped from both agents over the interval, with the counts that were sent', async () => {
    await until('the taps of the runs before to be closed', async () => (await tapStreams()).every((n) => n === 0), 10_000);
    const running = trellis(['top', 'viz/client', '--lab', labName, '--iterations', '1', '--interval', '8s', '-o', 'json']);
    await until('top to tap both agents', async () => (await tapStreams()).every((n) => n === 1), 10_000);
    // 20 calls to the api (15 on /, 5 on /fail with a query: counted without it), 8 through the web route, 6 to the
    // legacy server outside the mesh: 34 requests on the client's agent, under the bound's burst (100): none dropped.
    const mix = JSON.stringify([{ path: '/' }, { path: '/' }, { path: '/' }, { path: '/fail?try=1', headers: { 'x-echo-status': '500' } }]);
    const [api, web, legacy] = await Promise.all([
      http('viz/client', `http://${vip('viz', 'api')}/`, 20, ['--requests', mix]),
      http('viz/client', `http://${vip('viz', 'web')}/`, 8),
      http('viz/client', `http://${vip('outside', 'legacy')}/`, 6),
    ]);
    expect([api.statusCounts, web.ok, legacy.ok]).toEqual([{ 200: 15, 500: 5 }, 8, 6]);
    const r = await running;
    expect(r.code, r.stderr).toBe(0);
    const paths = (JSON.parse(r.stdout) as { paths: { rows: PathRow[]; agents: { node: string; maxRps: number }[]; failed: unknown[]; dropped: number; seconds: number } }).paths;
    expect(paths.agents.map((a) => [a.node, a.maxRps]).sort()).toEqual([['node-a', 100], ['node-b', 100]]);
    expect([paths.failed, paths.dropped]).toEqual([[], 0]);
    const row = (peer: string, p: string) => paths.rows.filter((x) => `${x.peer.namespace}/${x.peer.workload}` === peer && x.path === p);
    // Every row as the client's own agent saw it (the api's agent saw the same requests: not counted twice).
    expect(paths.rows.every((x) => x.direction === 'outbound' && x.reporter === 'source' && x.method === 'GET')).toBe(true);
    expect(row('viz/api', '/')).toMatchObject([{ count: 15, successRate: 1, route: null }]);
    expect(row('viz/api', '/fail')).toMatchObject([{ count: 5, successRate: 0 }]);
    expect(row('outside/legacy', '/')).toMatchObject([{ count: 6, successRate: 1 }]);
    const split = [...row('viz/web-v1', '/'), ...row('viz/web-v2', '/')];
    expect(split.every((x) => x.route?.name === 'viz/web-split' && x.route.rule === 'split' && x.successRate === 1)).toBe(true);
    expect(split.reduce((n, x) => n + x.count, 0)).toBe(8);
    expect(paths.rows.reduce((n, x) => n + x.count, 0)).toBe(34);
    expect(paths.rows[0]).toMatchObject({ path: '/', count: 15 });
    expect(paths.rows[0]!.latency.p50).toBeGreaterThan(0);
    expect(paths.rows[0]!.rps).toBeCloseTo(15 / paths.seconds, 6);
    await until('top\'s taps to close', async () => (await tapStreams()).every((n) => n === 0), 10_000);

    // The table: the paths below the edges.
    const table = await trellis(['top', 'viz/client', '--lab', labName, '--iterations', '1', '--interval', '1s']);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/^paths from tap over [\d.]+ s \(2 agents, at most 100\/s each, none dropped\)$/m);
  });
});
