// `trellis top`: which agent's view a row takes, rows per caller and per callee, Service and route rule, the order
// (busiest first), the live loop (cleared and redrawn on a terminal, pictures one after another otherwise, a
// failure after the first picture shown in its place), and the built command against a stand-in Prometheus.
// Against a real one: test/e2e/dashboard.test.ts.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fit, parseTarget, runTop } from '../../viz/cli/top.js';
import type { VectorSample } from '../../viz/prom/client.js';
import { assembleTop, top, topQueries, topTable } from '../../viz/top.js';
import { trellis } from '../support/trellis-cli.js';

const SRC = { source: { window: '1m', rules: false } };
const T = { namespace: 'shop', workload: 'cart' };
const q = topQueries(T, SRC);
const v = (labels: Record<string, string>, value: number): VectorSample => ({ labels, value });
const ok = { response_code: '200', request_protocol: 'http', connection_security_policy: 'mutual_tls' };
const caller = (wl: string, reporter: string, extra: Record<string, string> = {}) => ({ reporter, source_workload_namespace: 'shop', source_workload: wl, ...extra });
const callee = (wl: string, reporter: string, extra: Record<string, string> = {}) => ({
  reporter,
  destination_workload_namespace: 'shop',
  destination_workload: wl,
  destination_service: `${wl}.shop.svc.cluster.local`,
  ...extra,
});

function answers(a: Partial<Record<keyof typeof q, VectorSample[]>>): Record<keyof typeof q, VectorSample[]> {
  return Object.fromEntries(Object.keys(q).map((k) => [k, a[k as keyof typeof q] ?? []])) as Record<keyof typeof q, VectorSample[]>;
}

describe('top rows', () => {
  it('asks for both ways of the workload, as its own agent and its peers\' saw them', () => {
    expect(q.inbound_requests).toBe(
      'sum by (reporter, source_workload_namespace, source_workload, response_code, grpc_response_status, request_protocol, connection_security_policy) ' +
        '(rate(trellis_requests_total{reporter=~"source|destination",destination_workload_namespace="shop",destination_workload="cart"}[1m]))',
    );
    expect(q.outbound_p99).toContain('sum by (le, reporter, destination_workload_namespace, destination_workload, destination_service, route_namespace, route_name, route_rule)');
    expect(topQueries(T, { source: { window: '1m', rules: true } }).outbound_opened).toContain('edge:trellis_tcp_connections_opened:rate1m{');
  });

  it('takes the workload\'s own agent\'s view of a peer, busiest first, per Service and route rule', () => {
    const rows = assembleTop(
      answers({
        inbound_requests: [
          v(caller('web', 'destination', ok), 6),
          v(caller('web', 'destination', { ...ok, response_code: '503' }), 2),
          // The caller's agent saw the same: not added.
          v(caller('web', 'source', ok), 8),
          v({ reporter: 'destination', source_workload_namespace: 'outside', source_workload: 'bot', ...ok, connection_security_policy: 'none' }, 1),
        ],
        inbound_p99: [v(caller('web', 'destination'), 0.01)],
        outbound_requests: [
          v(callee('db-v1', 'source', { ...ok, route_namespace: 'shop', route_name: 'db-split', route_rule: '0' }), 3),
          v(callee('db-v2', 'source', { ...ok, route_namespace: 'shop', route_name: 'db-split', route_rule: '0' }), 1),
          v(callee('db-v1', 'destination', ok), 3),
        ],
        outbound_opened: [v(callee('cache', 'source', { connection_security_policy: 'mutual_tls' }), 0.5)],
      }),
    );
    expect(rows.map((r) => [r.direction, `${r.peer.namespace}/${r.peer.workload}`, r.route && `${r.route.name}:${r.route.rule}`, r.rps, r.reporter])).toEqual([
      ['inbound', 'shop/web', null, 8, 'destination'],
      ['outbound', 'shop/db-v1', 'shop/db-split:0', 3, 'source'],
      ['inbound', 'outside/bot', null, 1, 'destination'],
      ['outbound', 'shop/db-v2', 'shop/db-split:0', 1, 'source'],
      ['outbound', 'shop/cache', null, 0, 'source'],
    ]);
    expect(rows[0]).toMatchObject({ successRate: 0.75, secured: 1, latency: { p50: null, p99: 0.01 } });
    expect(rows[2]).toMatchObject({ successRate: 1, secured: 0 });
    expect(rows[4]).toMatchObject({ successRate: null, connectionsPerSecond: 0.5, secured: 1, service: 'shop/cache' });

    expect(topTable(T, rows, { wide: false })).toBe(
      [
        'FROM         TO     SERVICE  ROUTE             RPS  SUCCESS  LATENCY_P50  LATENCY_P99  CONN/SEC  SECURED',
        'web          cart   -        -                8.00   75.00%            -       10.0ms      0.00     100%',
        'cart         db-v1  db-v1    shop/db-split:0  3.00  100.00%            -            -      0.00     100%',
        'outside/bot  cart   -        -                1.00  100.00%            -            -      0.00       0%',
        'cart         db-v2  db-v2    shop/db-split:0  1.00  100.00%            -            -      0.00     100%',
        'cart         cache  cache    -                0.00        -            -            -      0.50     100%',
      ].join('\n'),
    );
  });

  it('takes the peers\' view of a workload outside the mesh (its own agent reports nothing)', async () => {
    const rows = await top(T, {
      ...SRC,
      query: async (expr) => (expr === q.inbound_requests ? [v(caller('web', 'source', { ...ok, connection_security_policy: 'none' }), 2)] : []),
    });
    expect(rows).toMatchObject([{ direction: 'inbound', peer: { workload: 'web' }, reporter: 'source', rps: 2, secured: 0 }]);
  });

  it('reads NS/WORKLOAD, or WORKLOAD with -n', () => {
    expect(parseTarget('demo/server', 'default')).toEqual({ namespace: 'demo', workload: 'server' });
    expect(parseTarget('server', 'demo')).toEqual({ namespace: 'demo', workload: 'server' });
    expect(() => parseTarget('a/b/c', 'demo')).toThrow(/name the workload as NAMESPACE\/WORKLOAD/);
    expect(() => parseTarget('deploy/Web', 'demo')).toThrow(/NAMESPACE\/WORKLOAD/);
  });
});

describe('the live loop', () => {
  const noSleep = async () => {};

  it('clears and redraws a terminal, hides its cursor meanwhile, and stops after --iterations', async () => {
    let out = '';
    await runTop({ screen: { isTTY: true, rows: 40, write: (t: string) => (out += t) }, interval: 1000, iterations: 3, picture: async (i) => `picture ${i}\n`, sleep: noSleep });
    expect(out).toBe('\x1b[?25l\x1b[H\x1b[2Jpicture 0\n\x1b[H\x1b[2Jpicture 1\n\x1b[H\x1b[2Jpicture 2\n\x1b[?25h');
  });

  it('prints pictures one after another elsewhere, and shows a later failure in place of its picture', async () => {
    let out = '';
    await runTop({
      screen: { write: (t: string) => (out += t) },
      interval: 2000,
      iterations: 3,
      picture: async (i) => {
        if (i === 1) throw new Error('cannot reach Prometheus at x: ECONNREFUSED');
        return `picture ${i}\n`;
      },
      sleep: noSleep,
    });
    expect(out).toBe('picture 0\n\ntrellis top: cannot reach Prometheus at x: ECONNREFUSED (trying again in 2 s)\n\npicture 2\n');
    // The first picture failing is the command failing.
    await expect(runTop({ screen: { write: () => {} }, interval: 1000, iterations: 2, picture: async () => Promise.reject(new Error('no')), sleep: noSleep })).rejects.toThrow('no');
  });

  it('cuts a picture to the terminal\'s height, saying so', () => {
    expect(fit('a\nb\nc\nd\ne\n', 4)).toBe('a\nb\n(3 more rows: a taller terminal shows them)\n');
    expect(fit('a\nb\n', 4)).toBe('a\nb\n');
  });
});

// A stand-in Prometheus answering top's queries for shop/cart.
let server: http.Server;
let url: string;
beforeAll(async () => {
  server = http.createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    const query = u.searchParams.get('query') ?? '';
    const vector = (result: { metric: Record<string, string>; value: number }[]) => ({
      status: 'success',
      data: { resultType: 'vector', result: result.map((r) => ({ metric: r.metric, value: [1_700_000_000, String(r.value)] })) },
    });
    let body: unknown = vector([]);
    if (u.pathname === '/api/v1/rules') body = { status: 'success', data: { groups: [] } };
    else if (query === q.inbound_requests) body = vector([{ metric: caller('web', 'destination', ok), value: 4 }]);
    else if (query.startsWith('count by (destination_workload)')) body = vector([{ metric: { destination_workload: 'cart' }, value: 1 }]);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

describe('trellis top against --prometheus URL', () => {
  it('draws --iterations pictures, each saying where its rows come from, and in one line why no path was tapped', async () => {
    const r = await trellis(['top', 'shop/cart', '--prometheus', url, '--iterations', '2', '--interval', '1s']);
    expect(r, r.stderr).toMatchObject({ code: 0, stderr: '' });
    const pictures = r.stdout.split(/\n\n(?=trellis top )/);
    expect(pictures).toHaveLength(2);
    for (const p of pictures) {
      expect(p).toMatch(new RegExp(`^trellis top shop/cart  \\d\\d:\\d\\d:\\d\\d  window 1m, every 1 s, Prometheus ${url}\\n`));
      expect(p).toMatch(/^paths: not tapped: tap reaches a lab's agents, or an agent on this node with --socket PATH/m);
      expect(p).toMatch(/^web +cart +- +- +4\.00 +100\.00% +- +- +0\.00 +100%$/m);
    }
    const json = await trellis(['top', 'cart', '-n', 'shop', '--prometheus', url, '--iterations', '1', '-o', 'json']);
    expect(JSON.parse(json.stdout)).toMatchObject({ workload: 'shop/cart', window: '1m', rows: [{ direction: 'inbound', peer: { workload: 'web' }, rps: 4 }], paths: { error: expect.stringMatching(/--socket PATH/) } });
    // An agent's socket that is not there: said in the picture, the Prometheus rows shown as ever.
    const gone = await trellis(['top', 'shop/cart', '--prometheus', url, '--iterations', '1', '--socket', '/nonexistent/tap.sock']);
    expect(gone.code, gone.stderr).toBe(0);
    expect(gone.stdout).toMatch(/^web +cart +- +- +4\.00 /m);
    expect(gone.stdout).toMatch(/^paths: no agent could be tapped \(\/nonexistent\/tap\.sock: cannot reach the tap socket \/nonexistent\/tap\.sock: .*\)$/m);
  });

  it('refuses a workload the metrics never saw, and a wrong name, in one line', async () => {
    const none = await trellis(['top', 'shop/nope', '--prometheus', url, '--iterations', '1']);
    expect(none.code).toBe(1);
    expect(none.stderr).toBe('trellis: no mesh traffic recorded to or from shop/nope (workloads with some in shop: cart): check the name and the namespace\n');
    const bad = await trellis(['top', 'a/b/c', '--prometheus', url]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^trellis: "a\/b\/c": name the workload as NAMESPACE\/WORKLOAD/);
    const zero = await trellis(['top', 'shop/cart', '--prometheus', url, '--iterations', '0']);
    expect(zero.code).toBe(1);
    expect(zero.stderr).toMatch(/option '--iterations <n>' argument '0' is invalid\. a whole number, 1 or more/);
  });
});
