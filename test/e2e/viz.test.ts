// The mesh viewer end to end, as a user runs it: a two-node lab with its own Prometheus (`--prometheus`), a known
// amount of traffic through the mesh (a share of it failing with a known status, some split 75/25 by an HTTPRoute,
// some from outside the mesh, some to a server outside it, some opaque TCP), then the built `trellis stat`, `edges`
// and `routes` asked about it, and their numbers held against what was sent. Also: every agent's /metrics passes
// `promtool check metrics`. Needs root.
//
// Why the numbers are exact or within 12 %: every series is made by a first small round (warm-up) with the same
// mix as the main round, and Prometheus has scraped it before the main round starts. rate() then counts the main
// round whole, and extrapolates each series by the same factor (so shares, such as the success rate, come out
// exact), at most one scrape interval past the last sample at the end of the window: +1 s over the >= 16 s the
// series were sampled for.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectInNetns } from '../../agent/native/index.js';
import { Lab } from '../../lab/cluster/lab.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import type { HttpClientSummary } from '../../lab/tools/http-client.js';
import { PromClient } from '../../viz/prom/client.js';
import { netnsTransport } from '../../viz/prom/transport.js';
import { ALL_RULES } from '../../viz/promql.js';
import type { EdgeRow } from '../../viz/edges.js';
import type { RouteRow } from '../../viz/routes.js';
import type { StatRow } from '../../viz/stat.js';
import { requireRoot } from '../support/root.js';
import { trellis } from '../support/trellis-cli.js';
import { until } from '../support/until.js';

const fixtures = path.join(import.meta.dirname, 'fixtures', 'viz.yaml');
const labName = `ev${Math.random().toString(36).slice(2, 5)}`;
const MiB = 1024 * 1024;
/** Sampled for at least this long before the queries (see the top). */
const SAMPLED_S = 16;
/** rate() over the window against what was sent. */
const TOLERANCE = 0.12;

let lab: Lab;
let prom: PromClient;
const vip = (ns: string, name: string) => lab.services.find((s) => s.namespace === ns && s.name === name)!.clusterIP;

// Each round: the client asks the api for 3 answers of 200 and 1 of 500 in turn (75 % success), the outsider asks
// it in plaintext (all 200), the client calls web (split 75/25) and legacy (outside the mesh), and sends bytes to
// the sink (opaque TCP). The warm-up is the main round divided by 100 (the sink's: by 16 in bytes, 4 in connections).
const API_MIX = JSON.stringify([{ path: '/' }, { path: '/' }, { path: '/' }, { path: '/fail', headers: { 'x-echo-status': '500' } }]);
const MAIN = { api: 400, outsider: 100, web: 400, legacy: 100, sinkStreams: 4, sinkBytes: MiB };
const WARM = { api: 4, outsider: 1, web: 4, legacy: 1, sinkStreams: 1, sinkBytes: 64 * 1024 };

async function tool<T>(pod: string, args: string[], timeoutMs = 60_000): Promise<T> {
  const r = await lab.exec(pod, ['trellis', 'tool', ...args], { timeoutMs });
  const line = r.stdout.trim().split('\n').at(-1) ?? '';
  try {
    return JSON.parse(line) as T;
  } catch {
    throw new Error(`trellis tool ${args.join(' ')} in ${pod} printed no JSON (exit ${r.code}): ${r.stdout.slice(0, 300)} ${r.stderr.slice(0, 300)}`);
  }
}

/** One round of traffic; returns how many requests went to web (the warm-up sends until both versions had some). */
async function round(n: typeof MAIN): Promise<number> {
  const http = (pod: string, url: string, count: number, extra: string[] = []) =>
    tool<HttpClientSummary>(pod, ['http-client', '--url', url, '--count', String(count), ...extra]);
  // A series is born with its first request: one that Prometheus first scrapes after the main round would show no
  // rate at all. So the warm-up calls web until both backends have answered.
  const webRound = async (): Promise<{ sent: number; ok: number }> => {
    const names: Record<string, number> = {};
    let sent = 0;
    let ok = 0;
    for (let i = 0; i < 20; i++) {
      const r = await http('viz/client', `http://${vip('viz', 'web')}/`, n.web, ['--concurrency', '2']);
      sent += r.sent;
      ok += r.ok;
      for (const [k, v] of Object.entries(r.names)) names[k] = (names[k] ?? 0) + v;
      if (n === MAIN || (names['web-v1'] && names['web-v2'])) return { sent, ok };
    }
    throw new Error(`web answered only from ${JSON.stringify(names)} in 20 tries`);
  };
  const [api, outsider, web, legacy, sink] = await Promise.all([
    http('viz/client', `http://${vip('viz', 'api')}/`, n.api, ['--requests', API_MIX]),
    http('outside/outsider', `http://${vip('viz', 'api')}/`, n.outsider),
    webRound(),
    http('viz/client', `http://${vip('outside', 'legacy')}/`, n.legacy),
    tool<{ match: boolean }>('viz/client', ['tcp-send', '--to', `${vip('viz', 'sink')}:9000`, '--bytes', String(n.sinkBytes), '--streams', String(n.sinkStreams)]),
  ]);
  expect(api.statusCounts).toEqual({ 200: (n.api * 3) / 4, 500: n.api / 4 });
  expect(outsider.ok).toBe(n.outsider);
  expect(web.ok).toBe(web.sent);
  expect(legacy.ok).toBe(n.legacy);
  expect(sink.match).toBe(true);
  return web.sent;
}

/** The raw counters in Prometheus, summed: what was sent, exactly, once it has scraped it. */
async function counted(): Promise<Record<string, number>> {
  const one = async (expr: string) => (await prom.query(expr))[0]?.value ?? 0;
  const [api, web, legacy, sinkBytes] = await Promise.all([
    one('sum(trellis_requests_total{reporter="destination",destination_workload="api"})'),
    one('sum(trellis_requests_total{reporter="source",route_name="web-split"})'),
    one('sum(trellis_requests_total{reporter="source",destination_workload="legacy"})'),
    one('sum(trellis_tcp_received_bytes_total{reporter="destination",destination_workload="sink"})'),
  ]);
  return { api, web, legacy, sinkBytes };
}

const expected = (n: typeof MAIN, web: number) => ({ api: n.api + n.outsider, web, legacy: n.legacy, sinkBytes: n.sinkStreams * n.sinkBytes });
const sum = (a: Record<string, number>, b: Record<string, number>) => Object.fromEntries(Object.keys(a).map((k) => [k, a[k]! + b[k]!]));

async function json<T>(args: string[]): Promise<{ recordingRules: boolean; window: string; rows: T[] }> {
  const r = await trellis([...args, '--lab', labName, '-o', 'json']);
  expect(r.code, `trellis ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return JSON.parse(r.stdout) as { recordingRules: boolean; window: string; rows: T[] };
}

/** `count` requests (or bytes, connections) against a rate over the window. */
function near(perSecond: number, windowS: number, count: number): void {
  const seen = perSecond * windowS;
  expect(seen, `${seen.toFixed(1)} counted over the window, ${count} sent`).toBeGreaterThanOrEqual(count * (1 - TOLERANCE));
  expect(seen, `${seen.toFixed(1)} counted over the window, ${count} sent`).toBeLessThanOrEqual(count * (1 + TOLERANCE));
}

const statRow = (rows: StatRow[], ns: string, name: string) => {
  const r = rows.find((x) => x.namespace === ns && x.name === name);
  expect(r, `row ${ns}/${name} in ${JSON.stringify(rows.map((x) => `${x.namespace}/${x.name}`))}`).toBeDefined();
  return r!;
};

describe('trellis stat, edges and routes on the lab\'s Prometheus', () => {
  beforeAll(async () => {
    requireRoot('the viewer end-to-end tests');
    lab = await Lab.up(fixtures, { name: labName, logLevel: 'warn', prometheus: { scrapeInterval: '1s' } });
    prom = new PromClient(netnsTransport(lab.prometheus!.url, lab.prometheus!.netnsPath, 'the test lab'));
    const node = lab.node('node-b');
    const listens = (pod: string, port: number) =>
      until(`${pod} to listen on ${port}`, () =>
        new Promise<boolean>((resolve) => {
          const s = connectInNetns(node.netnsPath, { host: lab.pod(pod).ip, port, timeoutMs: 1000 });
          s.once('connect', () => (s.destroy(), resolve(true)));
          s.once('error', () => resolve(false));
        }), 20_000);
    await Promise.all([listens('viz/api', 8080), listens('viz/web-v1', 8080), listens('viz/web-v2', 8080), listens('viz/sink', 9000), listens('outside/legacy', 8080)]);

    const warm = expected(WARM, await round(WARM));
    // Queries are evaluated at "now": a fresh client per poll.
    const fresh = () => (prom = new PromClient(netnsTransport(lab.prometheus!.url, lab.prometheus!.netnsPath, 'the test lab')));
    await until('Prometheus to scrape the warm-up', async () => (fresh(), JSON.stringify(await counted()) === JSON.stringify(warm)), 15_000);
    const sampledFrom = Date.now();
    const all = sum(warm, expected(MAIN, await round(MAIN)));
    await until('Prometheus to scrape the main round', async () => (fresh(), JSON.stringify(await counted()) === JSON.stringify(all)), 15_000);
    const wait = sampledFrom + SAMPLED_S * 1000 - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }, 150_000);

  afterAll(async () => {
    await lab?.down();
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  it("every agent's /metrics passes promtool check metrics", async () => {
    for (const n of lab.nodes) {
      const text = await lab.metrics(n.name);
      expect(text).toContain('trellis_requests_total{');
      const r = await new Promise<{ code: number; out: string }>((resolve) => {
        const child = execFile('promtool', ['check', 'metrics'], (err, stdout, stderr) =>
          resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, out: `${stdout}${stderr}` }),
        );
        child.stdin!.end(text);
      });
      expect(r, `node ${n.name}`).toEqual({ code: 0, out: '' });
    }
  });

  it('scrapes every agent and has the recording rules of manifests/monitoring/ loaded', async () => {
    const up = await prom.query('up{job="trellis-agent"}');
    expect(up.map((s) => [s.labels.node, s.value]).sort()).toEqual([['node-a', 1], ['node-b', 1]]);
    const rules = await prom.recordingRules();
    expect(ALL_RULES.filter((r) => !rules.has(r))).toEqual([]);
  });

  it('stat: success rate, requests, latency, mTLS share and TCP per workload, as sent', async () => {
    const out = await json<StatRow>(['stat', '-n', 'viz']);
    expect(out).toMatchObject({ recordingRules: true, window: '1m' });
    const api = statRow(out.rows, 'viz', 'api');
    // 300 of the client's 400 and the outsider's 100: 80 %; 400 of the 500 over mTLS.
    expect(api).toMatchObject({ meshed: true, securedBasis: 'requests' });
    expect(api.successRate!).toBeCloseTo(0.8, 3);
    expect(api.secured!).toBeCloseTo(0.8, 2);
    near(api.rps, 60, MAIN.api + MAIN.outsider);
    expect(api.latency.p50!).toBeGreaterThan(0);
    expect(api.latency.p50!).toBeLessThanOrEqual(api.latency.p95!);
    expect(api.latency.p95!).toBeLessThanOrEqual(api.latency.p99!);
    for (const web of ['web-v1', 'web-v2']) expect(statRow(out.rows, 'viz', web)).toMatchObject({ meshed: true, successRate: 1, secured: 1 });
    near(statRow(out.rows, 'viz', 'web-v1').rps + statRow(out.rows, 'viz', 'web-v2').rps, 60, MAIN.web);
    // Opaque TCP: four connections of 1 MiB each, read by the sink.
    const sink = statRow(out.rows, 'viz', 'sink');
    expect(sink).toMatchObject({ meshed: true, successRate: null, rps: 0, securedBasis: 'connections', secured: 1 });
    near(sink.tcp.readBytesPerSecond, 60, MAIN.sinkStreams * MAIN.sinkBytes);
    near(sink.tcp.openedPerSecond, 60, MAIN.sinkStreams);

    // The client's own calls: 75 %, exactly.
    const fromClient = await json<StatRow>(['stat', 'deploy/api', '-n', 'viz', '--from', 'deploy/client']);
    expect(fromClient.rows).toHaveLength(1);
    expect(fromClient.rows[0]!.successRate!).toBeCloseTo(0.75, 3);
    near(fromClient.rows[0]!.rps, 60, MAIN.api);

    // The api's callers, as each saw it: the client (meshed) and the outsider (only the api's agent saw it).
    const callers = await json<StatRow>(['stat', 'deploy', '-A', '--to', 'deploy/api', '--to-namespace', 'viz']);
    expect(statRow(callers.rows, 'viz', 'client')).toMatchObject({ meshed: true, secured: 1 });
    expect(statRow(callers.rows, 'viz', 'client').successRate!).toBeCloseTo(0.75, 3);
    expect(statRow(callers.rows, 'outside', 'outsider')).toMatchObject({ meshed: false, successRate: 1, secured: 0 });

    // A server outside the mesh: only its meshed callers' agents report it.
    const legacy = statRow((await json<StatRow>(['stat', '-n', 'outside'])).rows, 'outside', 'legacy');
    expect(legacy).toMatchObject({ meshed: false, successRate: 1, secured: 0 });
    near(legacy.rps, 60, MAIN.legacy);

    // Another window reads the raw counters (no recording rule for it): the same numbers.
    const raw = await json<StatRow>(['stat', 'deploy/api', '-n', 'viz', '--window', '2m']);
    expect(raw.recordingRules).toBe(false);
    expect(raw.rows[0]!.successRate!).toBeCloseTo(0.8, 3);
    near(raw.rows[0]!.rps, 120, MAIN.api + MAIN.outsider);
  });

  it('stat prints an aligned table, per Service and per namespace too', async () => {
    const r = await trellis(['stat', '-n', 'viz', '--lab', labName]);
    expect(r.code, r.stderr).toBe(0);
    const [header, ...lines] = r.stdout.trimEnd().split('\n');
    expect(header).toMatch(/^NAME +MESHED +SUCCESS +RPS +LATENCY_P50 +LATENCY_P95 +LATENCY_P99 +TCP_CONN +SECURED$/);
    const api = lines.find((l) => l.startsWith('api '))!;
    expect(api).toMatch(/^api +yes +80\.00% +[\d.]+ +[\d.]+ms +[\d.]+ms +[\d.]+ms +0 +80%$/);
    // Numbers right-aligned under their header: every line ends where the header does.
    for (const l of lines) expect(l.length).toBe(header!.length);
    expect(lines.findIndex((l) => l.startsWith('api '))).toBeLessThan(lines.findIndex((l) => l.startsWith('sink ')));

    const svc = await json<StatRow>(['stat', 'svc', '-n', 'viz']);
    expect(svc.rows.map((x) => x.name)).toEqual(expect.arrayContaining(['api', 'web-v1', 'web-v2', 'sink']));
    const ns = await json<StatRow>(['stat', 'ns']);
    expect(statRow(ns.rows, 'viz', 'viz').successRate!).toBeGreaterThan(0.8);
  });

  it('edges: who talks to whom, both identities, and which edges are mTLS', async () => {
    const out = await json<EdgeRow>(['edges', '-A']);
    const edge = (src: string, dst: string) => {
      const e = out.rows.find((x) => `${x.source.namespace}/${x.source.workload}` === src && `${x.destination.namespace}/${x.destination.workload}` === dst);
      expect(e, `edge ${src} -> ${dst} in ${JSON.stringify(out.rows.map((x) => `${x.source.workload}>${x.destination.workload}`))}`).toBeDefined();
      return e!;
    };
    const id = (sa: string, ns = 'viz') => `spiffe://cluster.local/ns/${ns}/sa/${sa}`;
    expect(edge('viz/client', 'viz/api')).toMatchObject({ mtls: true, source: { identity: id('client') }, destination: { identity: id('api') }, reportedBy: ['source', 'destination'] });
    expect(edge('viz/client', 'viz/web-v1')).toMatchObject({ mtls: true, destination: { identity: id('web') } });
    expect(edge('viz/client', 'viz/web-v2')).toMatchObject({ mtls: true, destination: { identity: id('web') } });
    expect(edge('viz/client', 'viz/sink')).toMatchObject({ mtls: true, destination: { identity: id('sink') } });
    expect(edge('outside/outsider', 'viz/api')).toMatchObject({ mtls: false, mtlsShare: 0, source: { identity: null }, reportedBy: ['destination'] });
    expect(edge('viz/client', 'outside/legacy')).toMatchObject({ mtls: false, destination: { identity: null }, reportedBy: ['source'] });
    near(edge('viz/client', 'viz/api').rps, 60, MAIN.api);
    expect(out.rows.filter((e) => e.source.workload === 'client' || e.destination.workload === 'client')).toHaveLength(5);

    const table = await trellis(['edges', '-n', 'viz', '--lab', labName]);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/^SRC +DST +SRC_NS +DST_NS +SECURED +CLIENT_ID +SERVER_ID$/m);
    expect(table.stdout).toMatch(/^client +api +viz +viz +yes +spiffe:\/\/cluster\.local\/ns\/viz\/sa\/client +spiffe:\/\/cluster\.local\/ns\/viz\/sa\/api$/m);
    expect(table.stdout).toMatch(/^outsider +api +outside +viz +no +- +spiffe:\/\/cluster\.local\/ns\/viz\/sa\/api$/m);
  });

  it('routes: per rule and backend, the split observed against the weights', async () => {
    const out = await json<RouteRow>(['routes', 'svc/web', '-n', 'viz']);
    expect(out.rows.map((r) => [r.route, r.rule, r.backend, r.weight])).toEqual([
      ['viz/web-split', 'split', 'web-v1', 0.75],
      ['viz/web-split', 'split', 'web-v2', 0.25],
    ]);
    const [v1, v2] = out.rows as [RouteRow, RouteRow];
    // 400 requests split at random by weight: the share is binomial (sd 2.2 points); 8 points is 3.6 sd.
    expect(Math.abs(v1.split! - 0.75), `observed ${v1.split}`).toBeLessThan(0.08);
    expect(v1.split! + v2.split!).toBeCloseTo(1, 6);
    expect(v1).toMatchObject({ successRate: 1 });
    near(v1.rps + v2.rps, 60, MAIN.web);
    expect(v1.latency.p99!).toBeGreaterThan(0);

    // A Service without routes: the [default] row holds its meshed callers' requests.
    const api = await json<RouteRow>(['routes', 'svc/api', '-n', 'viz']);
    expect(api.rows).toHaveLength(1);
    expect(api.rows[0]).toMatchObject({ route: '[default]', backend: 'api', weight: null, split: 1 });
    expect(api.rows[0]!.successRate!).toBeCloseTo(0.75, 3);

    const table = await trellis(['routes', 'svc/web', '-n', 'viz', '--lab', labName]);
    expect(table.stdout).toMatch(/^ROUTE +RULE +BACKEND +WEIGHT +SPLIT +SUCCESS +RPS +LATENCY_P50 +LATENCY_P95 +LATENCY_P99$/m);
    expect(table.stdout).toMatch(/^viz\/web-split +split +web-v1 +75\.00% +\d+\.\d\d% +100\.00% /m);
  });

  it('says what to do, in one line and with a non-zero exit, when what was asked is not there', async () => {
    const cases: [string[], number, RegExp][] = [
      [['stat', 'deploy/nope', '-n', 'viz'], 1, /^trellis: no traffic to deploy\/nope in namespace viz in the last 1m \(with traffic in namespace viz: api, .*\): check the name/],
      [['stat', '-n', 'nomesh'], 1, /^trellis: no mesh traffic recorded in namespace nomesh \(namespaces with some: outside, viz\): is it in the mesh/],
      [['routes', 'svc/nope', '-n', 'viz'], 1, /^trellis: no Service viz\/nope \(Services in viz: api, sink, web, web-v1, web-v2\)/],
      [['stat', 'pod', '-n', 'viz'], 2, /^trellis: pods: the agents' metrics name workloads/],
      [['stat', '-n', 'viz', '--window', '5x'], 1, /option '--window <duration>' argument '5x' is invalid/],
    ];
    for (const [args, code, message] of cases) {
      const r = await trellis([...args, '--lab', labName]);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(code);
      expect(r.stderr, args.join(' ')).toMatch(message);
      // One line of ours (commander follows a flag's error with the command's help).
      if (!args.includes('--window')) expect(r.stderr.trim().split('\n'), r.stderr).toHaveLength(1);
    }
    const gone = await trellis(['stat', '--lab', 'nolab9']);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/^trellis: lab 'nolab9' is not up/);
  });

  // Last: it stops an agent.
  it('check: every agent up and in sync; a stopped agent fails the check, with its fix', async () => {
    const ok = await trellis(['check', '--lab', labName]);
    expect(ok.code, `${ok.stdout}${ok.stderr}`).toBe(0);
    expect(ok.stdout).toMatch(/^ok +agents +every agent Prometheus knows is up \(2: node node-a, node node-b\)$/m);
    expect(ok.stdout).toMatch(/^ok +recording-rules /m);
    expect(ok.stdout).toMatch(/^ok +objects +no object rejected in the last 5m$/m);
    await lab.stopAgent('node-b');
    await until('Prometheus to see the agent on node-b down', async () => {
      const client = new PromClient(netnsTransport(lab.prometheus!.url, lab.prometheus!.netnsPath, 'the test lab'));
      return (await client.query('up{node="node-b"}'))[0]?.value === 0;
    }, 10_000);
    const down = await trellis(['check', '--lab', labName]);
    expect(down.code).toBe(1);
    expect(down.stdout).toMatch(/^FAIL +agents +the agent on node node-b \(172\.30\.0\.12:15020\) did not answer its last scrape\n +-> see its pod: /m);
    expect(down.stderr).toBe('trellis: 1 check failed: agents\n');
  });
});
