// `trellis top`'s paths (viz/tap/paths.ts) from canned tap events: per direction, peer, route rule, method and path
// without its query; the workload's own agent's view of a peer (the peer's only when its own saw nothing); counts,
// rate over the interval, success as the metrics count it, exact p50/p99; the picture with its tables, and the one
// line when no agent can be tapped. Against a lab's agents: test/e2e/dashboard.test.ts.
import { describe, expect, it } from 'vitest';
import type { TapEvent, TapPeerInfo } from '../../agent/tap/events.js';
import { picture, tapReach } from '../../viz/cli/top.js';
import type { TapStreamHandlers } from '../../viz/tap/client.js';
import { PathTally, pathsHeading, tapPaths, type PathsPicture } from '../../viz/tap/paths.js';
import type { TopRow } from '../../viz/top.js';

const T = { namespace: 'shop', workload: 'cart' };
const me: TapPeerInfo = { namespace: 'shop', workload: 'cart', pod: 'cart-7f', ip: '10.244.1.2' };
const wl = (ns: string, name: string): TapPeerInfo => ({ namespace: ns, workload: name, pod: `${name}-0`, ip: '10.244.2.9' });

let ids = 0;
/** One request's events as an agent streams them: init, response head, end. */
function request(o: {
  node?: string;
  reporter: 'source' | 'destination';
  src: TapPeerInfo;
  dst: TapPeerInfo;
  method?: string;
  path: string;
  status: number;
  ms: number;
  route?: [string, string];
  protocol?: string;
  grpcStatus?: string;
}): TapEvent[] {
  const id = ++ids;
  const node = o.node ?? (o.reporter === 'source' ? 'node-a' : 'node-b');
  const base = { node, reporter: o.reporter, timestampMs: 0, id, source: o.src, destination: o.dst, security: 'mutual_tls', ...(o.route && { route: o.route[0], rule: o.route[1] }) };
  return [
    { ...base, requestInit: { method: o.method ?? 'GET', authority: 'x', path: o.path, headers: [], requestId: `r${id}`, protocol: o.protocol ?? 'http1' } },
    { ...base, responseInit: { sinceRequestInitMs: o.ms / 2, httpStatus: o.status, headers: [] } },
    { ...base, responseEnd: { sinceRequestInitMs: o.ms, httpStatus: o.status, requestBytes: 0, responseBytes: 10, ...(o.grpcStatus !== undefined && { grpcStatus: o.grpcStatus }) } },
  ];
}

describe('top: paths from tap', () => {
  it('groups per direction, peer, route rule, method and path without its query; the own agent\'s view of a peer', () => {
    const tally = new PathTally(T);
    const events: TapEvent[] = [];
    // cart calls the api: 3 GET /items (one with a query) and 1 failing POST /orders, seen by both agents.
    for (const reporter of ['source', 'destination'] as const) {
      events.push(...request({ reporter, src: me, dst: wl('shop', 'api'), path: '/items?page=2', status: 200, ms: 1 }));
      events.push(...request({ reporter, src: me, dst: wl('shop', 'api'), path: '/items', status: 200, ms: 3 }));
      events.push(...request({ reporter, src: me, dst: wl('shop', 'api'), path: '/items', status: 404, ms: 2 }));
      events.push(...request({ reporter, src: me, dst: wl('shop', 'api'), method: 'POST', path: '/orders', status: 503, ms: 40 }));
    }
    // Through a route: two backends, the rule on the caller's side.
    events.push(...request({ reporter: 'source', src: me, dst: wl('shop', 'db-v1'), path: '/q', status: 200, ms: 1, route: ['shop/db-split', 'main'] }));
    events.push(...request({ reporter: 'source', src: me, dst: wl('shop', 'db-v2'), path: '/q', status: 200, ms: 1, route: ['shop/db-split', 'main'] }));
    // A caller outside the mesh: only cart's agent (destination) reports it.
    events.push(...request({ reporter: 'destination', src: { ip: '10.244.3.3', namespace: 'outside', workload: 'bot' }, dst: me, path: '/', status: 200, ms: 5 }));
    // gRPC: OK only with grpc-status 0.
    events.push(...request({ reporter: 'source', src: me, dst: wl('shop', 'grpc'), method: 'POST', path: '/pkg.Svc/Get', status: 200, ms: 1, protocol: 'grpc', grpcStatus: '0' }));
    events.push(...request({ reporter: 'source', src: me, dst: wl('shop', 'grpc'), method: 'POST', path: '/pkg.Svc/Get', status: 200, ms: 1, protocol: 'grpc', grpcStatus: '14' }));
    // Neither end is cart (a pod-name match elsewhere), an opaque connection, a summary with drops.
    events.push(...request({ reporter: 'source', src: wl('shop', 'web'), dst: wl('shop', 'api'), path: '/x', status: 200, ms: 1 }));
    events.push({ node: 'node-a', reporter: 'source', timestampMs: 0, id: 999, source: me, destination: wl('shop', 'redis'), tcpClose: { bytesReceived: 1, bytesSent: 2, durationMs: 3 } });
    events.push({ node: 'node-b', reporter: '', timestampMs: 0, dropped: 4, summary: { delivered: 9, droppedTotal: 4 } });
    for (const e of events) tally.add(e);

    const rows = tally.rows(2);
    expect(rows.map((r) => [r.direction, `${r.peer.namespace}/${r.peer.workload}`, r.route && `${r.route.name}:${r.route.rule}`, r.method, r.path, r.count, r.reporter])).toEqual([
      ['outbound', 'shop/api', null, 'GET', '/items', 3, 'source'],
      ['outbound', 'shop/grpc', null, 'POST', '/pkg.Svc/Get', 2, 'source'],
      ['inbound', 'outside/bot', null, 'GET', '/', 1, 'destination'],
      ['outbound', 'shop/api', null, 'POST', '/orders', 1, 'source'],
      ['outbound', 'shop/db-v1', 'shop/db-split:main', 'GET', '/q', 1, 'source'],
      ['outbound', 'shop/db-v2', 'shop/db-split:main', 'GET', '/q', 1, 'source'],
    ]);
    // A 404 is a success (the metrics count 5xx); latencies in seconds, nearest rank.
    expect(rows[0]).toMatchObject({ rps: 1.5, successRate: 1, latency: { p50: 0.002, p99: 0.003 } });
    expect(rows[1]!.successRate).toBe(0.5);
    expect(rows[3]).toMatchObject({ successRate: 0, latency: { p50: 0.04, p99: 0.04 } });
    expect(tally.dropped).toBe(4);
  });

  it('takes the peer\'s agent\'s view of a workload outside the mesh', () => {
    const tally = new PathTally({ namespace: 'outside', workload: 'bot' });
    for (const e of request({ reporter: 'destination', src: { namespace: 'outside', workload: 'bot', ip: '10.244.3.3' }, dst: wl('shop', 'cart'), path: '/', status: 200, ms: 1 })) tally.add(e);
    expect(tally.rows(1)).toMatchObject([{ direction: 'outbound', peer: { workload: 'cart' }, reporter: 'destination', count: 1 }]);
  });

  it('taps every agent for the interval, with the bound, and prints the paths below the Prometheus rows', async () => {
    const asked: unknown[] = [];
    const observe = (socket: string, req: unknown, h: TapStreamHandlers) => {
      asked.push(req);
      h.accepted(100);
      queueMicrotask(() => {
        if (socket === 'B') return h.end(new Error('cannot reach the tap socket B'));
        for (const e of request({ reporter: 'source', src: me, dst: wl('shop', 'api'), path: '/items', status: 200, ms: 2 })) h.event(e);
        h.event({ node: 'node-a', reporter: '', timestampMs: 0, summary: { delivered: 1, droppedTotal: 0, end: 'duration' } });
        h.end(undefined);
      });
      return { cancel: () => undefined };
    };
    const p = await tapPaths({ agents: [{ node: 'node-a', socket: 'A' }, { node: 'node-b', socket: 'B' }], target: T, maxRps: 100, durationMs: 2000, observe });
    expect(asked[0]).toMatchObject({ durationMs: 2000, maxRps: 100, limit: 0 });
    expect(p).toMatchObject({ agents: [{ node: 'node-a', maxRps: 100 }, { node: 'node-b', maxRps: 100 }], failed: [{ node: 'node-b' }], dropped: 0 });
    expect(p.rows).toHaveLength(1);

    const fixed: PathsPicture = { ...p, seconds: 2, agents: [{ node: 'node-a', maxRps: 100 }], rows: p.rows.map((r) => ({ ...r, rps: 0.5 })) };
    const session = { output: 'table' as const, window: '1m', provenance: { prometheus: 'http://p', window: '1m', recordingRules: false, at: '' }, client: { at: 0, where: 'http://p' } };
    const prom: TopRow[] = [];
    const text = picture(T, session, prom, { interval: 2000 }, fixed);
    expect(text.split('\n').slice(1)).toEqual([
      '',
      'no traffic to or from shop/cart in the last 1m',
      '',
      'paths from tap over 2.0 s (1 agent, at most 100/s each, none dropped; not tapped: node-b)',
      'FROM  TO   ROUTE  METHOD  PATH    COUNT   RPS  SUCCESS  LATENCY_P50  LATENCY_P99',
      'cart  api  -      GET     /items      1  0.50  100.00%       2.00ms       2.00ms',
      '',
    ]);
    expect(pathsHeading({ ...fixed, dropped: 12 })).toMatch(/, 12 dropped: counts are short/);
    // Tap not reachable: one line, the rest as before; in JSON, the reason.
    const none = picture(T, session, prom, { interval: 2000 }, 'no lab with agents is up');
    expect(none.trim().split('\n').at(-1)).toBe('paths: not tapped: no lab with agents is up');
    expect(JSON.parse(picture(T, { ...session, output: 'json' }, prom, { interval: 2000 }, 'x')).paths).toEqual({ error: 'x' });
    expect(JSON.parse(picture(T, { ...session, output: 'json' }, prom, { interval: 2000 }, fixed)).paths.rows[0]).toMatchObject({ method: 'GET', path: '/items', count: 1 });
  });

  it('finds the agents: --socket, else the lab whose Prometheus it reads; a --prometheus URL alone says why not', () => {
    expect(tapReach({ socket: ['/run/trellis/tap.sock'] }, { lab: undefined })).toEqual({ agents: [{ node: '/run/trellis/tap.sock', socket: '/run/trellis/tap.sock' }] });
    expect(tapReach({}, { lab: undefined })).toMatchObject({ problem: expect.stringMatching(/--socket PATH/) });
    expect(tapReach({}, { lab: 'nope' }, '/nonexistent-root')).toMatchObject({ problem: expect.stringMatching(/lab 'nope' is not up/) });
  });
});
