// The live tap end to end, as a user runs it: `trellis tap` (the built command) against a two-node lab whose agents
// run two threads each, while known traffic flows from a meshed client on node-a to node-b: HTTP through an
// HTTPRoute, a request an AuthorizationPolicy denies, an opaque TCP connection. Both reporters, statuses, the denied
// request's policy, redacted headers, the TCP close's bytes, --limit and --max-rps with the drops counted exactly, and
// the agents' hubs idle again once the taps are closed. Needs root.
import { execFile, spawn } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectInNetns } from '../../agent/native/index.js';
import type { TapEvent } from '../../agent/tap/events.js';
import { Lab } from '../../lab/cluster/lab.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import type { HttpClientSummary } from '../../lab/tools/http-client.js';
import type { TcpSendReport } from '../../lab/tools/tcp-send.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../..');
const fixtures = path.join(import.meta.dirname, 'fixtures', 'tap.yaml');
const labName = `tp${Math.random().toString(36).slice(2, 5)}`;
const NODES = ['node-a', 'node-b'];
const THREADS = 2;

let lab: Lab;
const vip = (service: string) => lab.services.find((s) => s.namespace === 'tap' && s.name === service)!.clusterIP;

/** Runs `trellis tool ...` in a pod and returns its last JSON line. */
async function tool<T>(pod: string, args: string[], timeoutMs = 30_000): Promise<T> {
  const r = await lab.exec(pod, ['trellis', 'tool', ...args], { timeoutMs });
  const line = r.stdout.trim().split('\n').at(-1) ?? '';
  try {
    return JSON.parse(line) as T;
  } catch {
    throw new Error(`trellis tool ${args.join(' ')} in ${pod} printed no JSON (exit ${r.code}): ${r.stdout.slice(0, 500)} ${r.stderr.slice(0, 500)}`);
  }
}

/** `trellis tap ... --lab` as a user runs it, in the background. */
function tap(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(path.join(ROOT, 'node_modules/.bin/node'), [path.join(ROOT, 'dist/agent/main.js'), 'tap', ...args, '--lab', labName], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  return new Promise((resolve) => child.on('close', (code) => (clearTimeout(timer), resolve({ code, stdout, stderr }))));
}

async function metric(node: string, name: string, match: Record<string, string> = {}): Promise<number> {
  return sumOf(parsePrometheus(await lab.metrics(node)), name, match);
}

/** Every agent serves `streams` taps, and every thread of each matches records (or none, at 0). */
async function tapsOpen(streams: number): Promise<void> {
  await until(`${streams} tap(s) open on every agent`, async () => {
    for (const node of NODES) {
      if ((await metric(node, 'trellis_tap_streams')) !== streams) return false;
      if ((await metric(node, 'trellis_tap_active_threads')) !== (streams > 0 ? THREADS : 0)) return false;
    }
    return true;
  }, 10_000);
}

const events = (stdout: string) => stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as TapEvent);
const header = (e: TapEvent | undefined, name: string) => e?.requestInit?.headers.filter((h) => h.name === name).map((h) => h.value);

describe('trellis tap (two-node lab, two threads per agent)', () => {
  beforeAll(async () => {
    requireRoot('the live tap end-to-end tests');
    lab = await Lab.up(fixtures, { name: labName, logLevel: 'warn', agentArgs: ['--workers', String(THREADS), '--tap-redact-headers', 'x-api-key'] });
    const node = lab.node('node-b');
    for (const [pod, port] of [['tap/api-0', 8080], ['tap/sink', 9000]] as const) {
      await until(`${pod} to listen on ${port}`, () =>
        new Promise<boolean>((resolve) => {
          const s = connectInNetns(node.netnsPath, { host: lab.pod(pod).ip, port, timeoutMs: 1000 });
          s.once('connect', () => (s.destroy(), resolve(true)));
          s.once('error', () => resolve(false));
        }), 20_000);
    }
    // Nobody taps yet: every hub idle.
    await tapsOpen(0);
  });

  afterAll(async () => {
    await lab?.down();
    const { stdout } = await run('ip', ['netns', 'list']);
    expect(stdout).not.toContain(`trl-${labName}-`);
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  it('shows both sides of HTTP through a route, the denied request with its policy, redacted headers, the TCP close with its bytes', async () => {
    const tapped = tap(['tap/client', '-o', 'json', '--duration', '6s']);
    await tapsOpen(1);
    const ok = await tool<HttpClientSummary>('tap/client', [
      'http-client', '--url', `http://${vip('api')}/items`, '--count', '5',
      '-H', 'authorization: Bearer s3cret', '-H', 'cookie: session=abc', '-H', 'x-api-key: k123', '-H', 'x-visible: shown',
    ]);
    expect(ok.statusCounts).toEqual({ 200: 5 });
    const denied = await tool<HttpClientSummary>('tap/client', ['http-client', '--url', `http://${vip('api')}/admin`, '--count', '1']);
    expect(denied.statusCounts).toEqual({ 403: 1 });
    const sent = await tool<TcpSendReport>('tap/client', ['tcp-send', '--to', `${vip('sink')}:9000`, '--bytes', '10000']);
    expect(sent.match).toBe(true);
    const r = await tapped;
    expect(r.code, r.stderr).toBe(0);
    const all = events(r.stdout);
    const requests = all.filter((e) => e.requestInit);

    // HTTP through the route: each request seen by both agents, the caller's with the route and rule.
    const items = requests.filter((e) => e.requestInit!.path === '/items');
    const bySide = (side: string) => items.filter((e) => e.reporter === side);
    expect(bySide('source')).toHaveLength(5);
    expect(bySide('destination')).toHaveLength(5);
    expect(bySide('source').every((e) => e.node === 'node-a' && e.route === 'tap/api-route' && e.rule === 'main')).toBe(true);
    expect(bySide('destination').every((e) => e.node === 'node-b' && e.route === undefined)).toBe(true);
    for (const e of items) {
      expect(e).toMatchObject({
        security: 'mutual_tls',
        source: { workload: 'client', namespace: 'tap', identity: 'spiffe://cluster.local/ns/tap/sa/client' },
        destination: { workload: 'api', pod: 'api-0', identity: 'spiffe://cluster.local/ns/tap/sa/api', port: 8080, service: 'api.tap.svc.cluster.local' },
        requestInit: { method: 'GET' },
      });
      // Redacted: the defaults and --tap-redact-headers; names kept, other values shown.
      expect(header(e, 'authorization')).toEqual(['[REDACTED]']);
      expect(header(e, 'cookie')).toEqual(['[REDACTED]']);
      expect(header(e, 'x-api-key')).toEqual(['[REDACTED]']);
      expect(header(e, 'x-visible')).toEqual(['shown']);
    }
    // The caller's identity reaches the app in x-forwarded-client-cert: redacted too.
    expect(bySide('destination').every((e) => header(e, 'x-forwarded-client-cert')?.[0] === '[REDACTED]')).toBe(true);
    expect(r.stdout).not.toMatch(/s3cret|session=abc|k123|By=spiffe/);
    // The same request on both sides: one request id; status, time to first byte and bytes at the end.
    const same = (e: TapEvent, kind: 'responseInit' | 'responseEnd') => all.find((x) => x.node === e.node && x.id === e.id && x[kind]);
    for (const e of items) {
      expect(items.filter((x) => x.requestInit!.requestId === e.requestInit!.requestId)).toHaveLength(2);
      expect(same(e, 'responseInit')!.responseInit).toMatchObject({ httpStatus: 200 });
      expect(same(e, 'responseInit')!.responseInit!.sinceRequestInitMs).toBeGreaterThan(0);
      expect(same(e, 'responseEnd')!.responseEnd!.responseBytes).toBeGreaterThan(0);
    }

    // The denied request: the destination agent's end carries the decision and the policy; the caller's sees the 403.
    const admin = requests.filter((e) => e.requestInit!.path === '/admin');
    expect(admin.map((e) => e.reporter).sort()).toEqual(['destination', 'source']);
    const deniedEnd = same(admin.find((e) => e.reporter === 'destination')!, 'responseEnd')!;
    expect(deniedEnd).toMatchObject({ authz: { decision: 'deny', code: 'denied', action: 'DENY', policy: 'tap/deny-admin', rule: 0 }, responseEnd: { httpStatus: 403, error: 'RBAC: access denied' } });
    expect(same(admin.find((e) => e.reporter === 'source')!, 'responseEnd')!.responseEnd).toMatchObject({ httpStatus: 403 });

    // The opaque connection: opened and closed on both agents, the bytes both ways at the close.
    const tcp = all.filter((e) => e.destination?.workload === 'sink');
    for (const side of ['source', 'destination']) {
      expect(tcp.filter((e) => e.reporter === side && e.tcpOpen)).toHaveLength(1);
      const close = tcp.filter((e) => e.reporter === side && e.tcpClose);
      expect(close).toHaveLength(1);
      expect(close[0]!.tcpClose).toMatchObject({ bytesReceived: 10000, bytesSent: Buffer.byteLength(`${sent.reply}\n`) });
      expect(close[0]!.tcpClose!.durationMs).toBeGreaterThan(0);
    }
    expect(tcp.find((e) => e.reporter === 'destination' && e.tcpClose)!.authz).toMatchObject({ decision: 'allow' });
    // Each agent ended its stream at the duration, having dropped nothing.
    const ends = all.filter((e) => e.summary?.end);
    expect(ends.map((e) => [e.node, e.summary!.end, e.summary!.droppedTotal ?? 0]).sort()).toEqual([['node-a', 'duration', 0], ['node-b', 'duration', 0]]);
    await tapsOpen(0);
  });

  it('--limit: the tap ends by itself after N observations, over both agents', async () => {
    const load = tool<HttpClientSummary>('tap/client', ['http-client', '--url', `http://${vip('api')}/items`, '--count', '400', '--interval-ms', '5']);
    const r = await tap(['tap/api', '--limit', '7']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.filter((l) => l.startsWith('end '))).toHaveLength(7);
    expect(lines.every((l) => /^(req|rsp|end) id=node-[ab]:\d+ proxy=(out|in) src=10\.244\.1\.2:\d+ dst=10\.244\.2\.2:8080 src_wl=tap\/client dst_wl=tap\/api tls=true /.test(l))).toBe(true);
    expect(r.stderr).toMatch(/^7 observations from 2 agents, 0 dropped/m);
    expect((await load).failed).toBe(0);
    await tapsOpen(0);
  });

  it('--max-rps: at most the bound per agent, and every request beyond it counted as dropped, exactly', async () => {
    const workerBefore = await metric('node-a', 'trellis_worker_connections_total', { worker: '1' });
    const droppedBefore = (await metric('node-a', 'trellis_tap_dropped_total')) + (await metric('node-b', 'trellis_tap_dropped_total'));
    const tapped = tap(['tap/api', '--max-rps', '5', '--duration', '6s', '-o', 'json']);
    await tapsOpen(1);
    // 16 connections: the client's agent spreads them over both of its threads.
    const load = await tool<HttpClientSummary>('tap/client', ['http-client', '--url', `http://${vip('api')}/items`, '--count', '400', '--concurrency', '16']);
    expect(load.statusCounts).toEqual({ 200: 400 });
    expect(await metric('node-a', 'trellis_worker_connections_total', { worker: '1' })).toBeGreaterThan(workerBefore);
    const r = await tapped;
    expect(r.code, r.stderr).toBe(0);
    const all = events(r.stdout);
    const dropped = all.reduce((n, e) => n + (e.dropped ?? 0), 0);
    for (const node of NODES) {
      const delivered = all.filter((e) => e.node === node && e.responseEnd).length;
      // The bucket's burst plus its refill over the duration.
      expect(delivered).toBeGreaterThan(0);
      expect(delivered).toBeLessThanOrEqual(5 + 5 * 6);
      const last = all.filter((e) => e.node === node && e.summary?.end).at(-1)!;
      expect(last.summary).toMatchObject({ delivered, end: 'duration' });
      // Every request the agent carried: sent, or dropped and counted.
      expect(delivered + (last.summary!.droppedTotal ?? 0)).toBe(400);
    }
    expect(all.filter((e) => e.responseEnd).length + dropped).toBe(2 * 400);
    expect(r.stderr).toMatch(new RegExp(`observations from 2 agents, ${dropped} dropped \\(at most 5/s per agent\\)`));
    const droppedAfter = (await metric('node-a', 'trellis_tap_dropped_total')) + (await metric('node-b', 'trellis_tap_dropped_total'));
    expect(droppedAfter - droppedBefore).toBe(dropped);
  });

  it('with the taps closed, every agent thread is idle again: requests reach no hub', async () => {
    await tapsOpen(0);
    const ok = await tool<HttpClientSummary>('tap/client', ['http-client', '--url', `http://${vip('api')}/items`, '--count', '20']);
    expect(ok.statusCounts).toEqual({ 200: 20 });
    for (const node of NODES) {
      expect(await metric(node, 'trellis_tap_streams')).toBe(0);
      expect(await metric(node, 'trellis_tap_active_threads')).toBe(0);
    }
  });
});
