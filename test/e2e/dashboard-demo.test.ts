// The dashboard as a new user meets it: the demo's lab (examples/demo, what `npm run demo` brings up) with its
// Prometheus, the demo's traffic (the client calling the server through its 90/10 route, the outsider calling in
// plaintext), then `trellis dashboard --lab` in Debian's Chromium (playwright-core, /usr/bin/chromium, headless,
// nothing downloaded): the page lists the demo's workloads with requests, shows the client -> server edges as mTLS
// and the outsider's as plaintext, and the route's observed split near 90/10. A screenshot is left in the test's temp
// directory (its path is printed). Needs root (the lab) and the chromium package (scripts/setup-debian.sh).
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab } from '../../lab/cluster/lab.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import type { HttpClientSummary } from '../../lab/tools/http-client.js';
import { PromClient } from '../../viz/prom/client.js';
import { netnsTransport } from '../../viz/prom/transport.js';
import { CHROMIUM, openDashboard, type DashboardInBrowser } from '../support/dashboard.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const labName = `dd${Math.random().toString(36).slice(2, 5)}`;
const out = mkdtempSync(path.join(tmpdir(), 'trellis-dashboard-demo-'));
/** The client's requests through the route: a 90/10 split of 600 has a standard deviation of 1.2 points. */
const CALLS = 600;

let lab: Lab;
let view: DashboardInBrowser | undefined;
let page: Page;
let url: string;

async function http(pod: string, target: string, count: number): Promise<HttpClientSummary> {
  const r = await lab.exec(pod, ['trellis', 'tool', 'http-client', '--url', target, '--count', String(count), '--concurrency', '4'], { timeoutMs: 60_000 });
  return JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '') as HttpClientSummary;
}

const cell = (row: string, col: string) => page.locator(`${row} [data-col="${col}"]`).textContent();
const percentOf = (text: string | null) => Number(/^([\d.]+)%$/.exec(text ?? '')?.[1]) / 100;

describe('the dashboard on the demo lab, in Chromium', () => {
  beforeAll(async () => {
    requireRoot('the dashboard end-to-end test on the demo lab');
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: \`apt-get install --no-install-recommends chromium\` (scripts/setup-debian.sh)`);
    lab = await Lab.up(path.join(ROOT, 'examples', 'demo'), { name: labName, logLevel: 'warn', prometheus: { scrapeInterval: '1s' } });
    const server = lab.services.find((s) => s.namespace === 'demo' && s.name === 'server')!.clusterIP;
    await until('the demo server to answer through the mesh', async () => (await http('demo/client', `http://${server}/warm`, 1)).ok === 1, 20_000);
    // A client evaluates its queries at the instant it was made: a new one each time.
    const count = async (expr: string) => {
      const prom = new PromClient(netnsTransport(lab.prometheus!.url, lab.prometheus!.netnsPath, 'the demo lab'));
      return (await prom.query(expr))[0]?.value ?? 0;
    };
    const clientSent = 'sum(trellis_requests_total{reporter="source",source_workload="client"})';
    const outsiderSeen = 'sum(trellis_requests_total{reporter="destination",destination_workload_namespace="demo",source_principal="unknown"})';
    // Warm-up until both versions and the outsider have answered (every series exists) and Prometheus has scraped
    // that: a series whose first sample already held the measured round would show no rate.
    await until('both versions to answer', async () => Object.keys((await http('demo/client', `http://${server}/warm`, 20)).names).length === 2, 20_000);
    await http('plain/outsider', `http://${server}/warm`, 1);
    await until('Prometheus to scrape the warm-up', async () => (await count(clientSent)) > 0 && (await count(outsiderSeen)) > 0, 30_000);
    const before = await count(clientSent);
    const [meshed, plain] = await Promise.all([http('demo/client', `http://${server}/`, CALLS), http('plain/outsider', `http://${server}/`, 100)]);
    expect(meshed.ok).toBe(CALLS);
    expect(plain.ok).toBe(100);
    await until('Prometheus to scrape the round', async () => (await count(clientSent)) >= before + CALLS, 20_000);
    view = await openDashboard(['--lab', labName, '--listen', '127.0.0.1:0', '--refresh', '2s']);
    url = view.dashboard.url;
    page = view.page;
  }, 120_000);

  afterAll(async () => {
    await view?.close();
    await lab?.down();
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  it('lists the demo’s workloads with requests, the client’s edges over mTLS, and the 90/10 split', async () => {
    await page.goto(`${url}?namespace=demo`);
    await page.locator('#workloads tbody tr').first().waitFor({ timeout: 15_000 });
    // Every workload the page lists was called, and the server's both versions are among them.
    const names = await page.locator('#workloads tbody tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-workload')));
    // (The page refreshes every 2 s; a rate the recording rules had not evaluated yet shows on the next refresh.)
    for (const n of names) await expect.poll(async () => Number(await cell(`[data-workload="${n}"]`, 'rps')), { message: n ?? '', timeout: 15_000 }).toBeGreaterThan(0);
    const servers = names.filter((n) => n?.startsWith('server'));
    expect(servers.length, `workloads shown: ${names.join(', ')}`).toBeGreaterThanOrEqual(1);
    // The measured round was all answered; the warm-up's first tries, before the mesh was up, may have failed.
    for (const n of servers) expect(percentOf(await cell(`[data-workload="${n}"]`, 'success')), n ?? '').toBeGreaterThan(0.95);

    // The edges from the client to the server's workloads are mTLS; the outsider's are plaintext.
    // (Each part of the page fills in as its queries answer: wait for the edges and route rows to be drawn.)
    await expect.poll(() => page.locator('[data-edge^="plain/outsider->demo/server"]').count(), { timeout: 15_000 }).toBeGreaterThan(0);
    await expect.poll(() => page.locator('[data-route-row$="|server-v2"]').count(), { timeout: 15_000 }).toBeGreaterThan(0);
    const edges = await page.locator('[data-edge]').evaluateAll((els) => els.map((e) => [e.getAttribute('data-edge'), e.getAttribute('data-mtls')]));
    const fromClient = edges.filter(([id]) => id?.startsWith('demo/client->demo/server'));
    const fromOutsider = edges.filter(([id]) => id?.startsWith('plain/outsider->demo/server'));
    expect(fromClient.length, JSON.stringify(edges)).toBeGreaterThanOrEqual(1);
    expect(fromOutsider.length, JSON.stringify(edges)).toBeGreaterThanOrEqual(1);
    for (const [id, mtls] of fromClient) expect(mtls, id ?? '').toBe('true');
    for (const [id, mtls] of fromOutsider) expect(mtls, id ?? '').toBe('false');

    // The route: 90/10 configured; the observed split within 6 points (5 standard deviations) of it.
    const rows = await page.locator('[data-route-row]').evaluateAll((els) => els.map((e) => e.getAttribute('data-route-row')));
    const v1 = rows.find((r) => r?.endsWith('|server-v1'));
    const v2 = rows.find((r) => r?.endsWith('|server-v2'));
    expect(v1 && v2, `route rows: ${rows.join(', ')}`).toBeTruthy();
    expect([await cell(`[data-route-row="${v1}"]`, 'weight'), await cell(`[data-route-row="${v2}"]`, 'weight')]).toEqual(['90.00%', '10.00%']);
    // The observed split shows once the route's rates are recorded (a refresh or two after the rows are drawn).
    await expect.poll(async () => percentOf(await cell(`[data-route-row="${v1}"]`, 'split')), { message: 'server-v1 split', timeout: 20_000 }).not.toBeNaN();
    const split = percentOf(await cell(`[data-route-row="${v1}"]`, 'split'));
    expect(Math.abs(split - 0.9), `server-v1 got ${split}`).toBeLessThan(0.06);

    const shot = path.join(out, 'dashboard-demo.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`dashboard screenshot (demo lab): ${shot}`);
  });
});
