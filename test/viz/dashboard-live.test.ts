// The dashboard's live tap (viz/dashboard/live.ts) in process, with stand-in agents: a request's events joined into
// one row (headers as the agent redacted them), the server-sent events the page reads, the agents' streams cancelled
// when the page goes away, and a refusal in one event when no agent can be tapped. In a browser against a lab's
// agents: test/e2e/dashboard.test.ts.
import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import type { TapEvent } from '../../agent/tap/events.js';
import { VizError } from '../../viz/errors.js';
import { LiveRows, liveTapHandler, type LiveTapInputs } from '../../viz/dashboard/live.js';
import { startDashboard, type DashboardServer } from '../../viz/dashboard/server.js';
import type { DashboardView } from '../../viz/dashboard/view.js';
import type { TapStreamHandlers } from '../../viz/tap/client.js';
import { until } from '../support/until.js';

const base = {
  node: 'node-a',
  reporter: 'source' as const,
  timestampMs: 1_700_000_000_000,
  id: 3,
  source: { ip: '10.244.1.2', workload: 'client', namespace: 'demo' },
  destination: { ip: '10.244.2.2', port: 8080, workload: 'server', namespace: 'demo' },
  security: 'mutual_tls',
  route: 'demo/split',
  rule: 'canary',
};
const requestEvents = (id: number, path: string, status: number): TapEvent[] => [
  { ...base, id, requestInit: { method: 'GET', authority: 'server', path, headers: [{ name: 'authorization', value: '[REDACTED]' }], requestId: 'r', protocol: 'http1' } },
  { ...base, id, responseInit: { sinceRequestInitMs: 1.5, httpStatus: status, headers: [] } },
  { ...base, id, timestampMs: base.timestampMs + 2, responseEnd: { sinceRequestInitMs: 2, httpStatus: status, requestBytes: 0, responseBytes: 5 } },
];

describe('live tap rows', () => {
  it('joins a request\'s three events into one row; a connection\'s close is one too', () => {
    const rows = new LiveRows();
    const [init, head, end] = requestEvents(3, '/items', 200);
    expect(rows.add(init!)).toBeUndefined();
    expect(rows.add(head!)).toBeUndefined();
    expect(rows.add(end!)).toEqual({
      id: 'node-a:3', node: 'node-a', time: base.timestampMs, direction: 'out', source: 'demo/client', destination: 'demo/server', kind: 'http',
      method: 'GET', path: '/items', authority: 'server', status: 200, grpcStatus: '', latencyMs: 1.5, durationMs: 2, tls: true,
      route: 'demo/split:canary', denied: null, error: '', headers: [{ name: 'authorization', value: '[REDACTED]' }],
    });
    const denied = rows.add({ ...base, id: 4, reporter: 'destination', authz: { decision: 'deny', policy: 'demo/no-admin' }, responseEnd: { sinceRequestInitMs: 0.3, httpStatus: 403, requestBytes: 0, responseBytes: 0, error: 'RBAC: access denied' } });
    expect(denied).toMatchObject({ direction: 'in', method: '-', path: '-', status: 403, denied: 'demo/no-admin', latencyMs: null });
    expect(rows.add({ ...base, id: 5, tcpOpen: {} })).toBeUndefined();
    expect(rows.add({ ...base, id: 6, destination: { ip: '10.244.2.3' }, tcpClose: { bytesReceived: 10, bytesSent: 2, durationMs: 4 } })).toMatchObject({ kind: 'tcp', method: 'TCP', destination: '10.244.2.3', path: '10B in, 2B out' });
  });
});

/** Reads a server-sent event stream until `stop` says enough; returns the events and the response. */
function sse(url: string, stop: (events: { event: string; data: any }[]) => boolean): Promise<{ events: { event: string; data: any }[]; type: string; close: () => void }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, (res) => {
      const events: { event: string; data: any }[] = [];
      let buf = '';
      const done = () => resolve({ events, type: res.headers['content-type'] ?? '', close: () => req.destroy() });
      res.on('data', (d: Buffer) => {
        buf += d.toString();
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (event && data) events.push({ event, data: JSON.parse(data) });
        }
        if (stop(events)) done();
      });
      res.on('end', done);
    });
    req.on('error', reject);
  });
}

describe('GET /api/tap on the dashboard', () => {
  let server: DashboardServer | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });
  const view = async (): Promise<DashboardView> => Promise.reject(new Error('unused'));

  async function serve(inputs: LiveTapInputs): Promise<string> {
    server = await startDashboard({ host: '127.0.0.1', port: 0, refreshMs: 5000, view, liveTap: liveTapHandler(inputs) });
    return server.url;
  }

  it('streams the rows of every agent, and cancels the agents\' streams when the page goes away', async () => {
    const streams = new Map<string, TapStreamHandlers>();
    const asked: unknown[] = [];
    const cancelled: string[] = [];
    const observe = (socket: string, request: unknown, h: TapStreamHandlers) => {
      streams.set(socket, h);
      asked.push(request);
      h.accepted(20);
      return { cancel: () => void cancelled.push(socket) };
    };
    const url = await serve({ agents: () => [{ node: 'node-a', socket: 'A' }, { node: 'node-b', socket: 'B' }], maxRps: 20, durationMs: 60_000, observe });
    const reading = sse(`${url}api/tap?namespace=demo&workload=client`, (ev) => ev.filter((e) => e.event === 'row').length >= 2);
    await until('both streams to open', async () => streams.size === 2, 5000);
    expect(asked[0]).toMatchObject({ durationMs: 60_000, maxRps: 20, match: expect.anything() });
    for (const e of requestEvents(1, '/items', 200)) streams.get('A')!.event(e);
    for (const e of requestEvents(1, '/fail', 500)) streams.get('B')!.event({ ...e, node: 'node-b', reporter: 'destination', dropped: e.requestInit ? 3 : undefined });
    const r = await reading;
    expect(r.type).toBe('text/event-stream; charset=utf-8');
    expect(r.events[0]).toEqual({ event: 'tapping', data: { namespace: 'demo', workload: 'client', agents: ['node-a', 'node-b'], maxRps: 20, durationMs: 60_000 } });
    expect(r.events.filter((e) => e.event === 'row').map((e) => [e.data.id, e.data.direction, e.data.path, e.data.status])).toEqual([
      ['node-a:1', 'out', '/items', 200],
      ['node-b:1', 'in', '/fail', 500],
    ]);
    expect(r.events.find((e) => e.event === 'drop')!.data).toEqual({ node: 'node-b', dropped: 3 });
    // The page closes the panel: the agents' streams are cancelled.
    r.close();
    await until('the agents\' streams to be cancelled', async () => cancelled.length === 2, 5000);
  });

  it('ends with a summary at the duration; refuses in one event what it cannot tap', async () => {
    const observe = (_socket: string, _request: unknown, h: TapStreamHandlers) => {
      queueMicrotask(() => h.end(new Error('cannot reach the tap socket A: ENOENT')));
      return { cancel: () => undefined };
    };
    let reachable = true;
    const url = await serve({
      agents: () => {
        if (!reachable) throw new VizError('ENOLAB', 'no lab with agents is up');
        return [{ node: 'node-a', socket: 'A' }];
      },
      maxRps: 20,
      durationMs: 1000,
      observe,
    });
    const failed = await sse(`${url}api/tap?namespace=demo&workload=client`, () => false);
    expect(failed.events.map((e) => e.event)).toEqual(['tapping', 'note', 'end']);
    expect(failed.events.at(-1)!.data).toMatchObject({ reason: 'no agent could be tapped', failed: [{ node: 'node-a', error: 'cannot reach the tap socket A: ENOENT' }] });
    reachable = false;
    const refused = await sse(`${url}api/tap?namespace=demo&workload=client`, () => false);
    expect(refused.events).toEqual([{ event: 'problem', data: { problem: 'cannot tap: no lab with agents is up' } }]);
    const bad = await sse(`${url}api/tap?namespace=demo&workload=Bad!`, () => false);
    expect(bad.events[0]!.data.problem).toMatch(/choose a workload/);
  });
});
