// The tap hub and its streams (agent/tap/): free while nobody taps (asserted on structure: no hub call and no event
// built, never on timing), events built only for matching taps and once for all of them, headers redacted, and the
// rate bound's drops counted exactly, wherever they happen (this thread, a worker, a slow reader).
import { describe, expect, it, vi } from 'vitest';
import { ManualClock } from '../../agent/clock.js';
import { Body } from '../../agent/l7/body.js';
import type { L7Request } from '../../agent/l7/exchange.js';
import { RequestRecord } from '../../agent/l7/record.js';
import type { CompiledRule } from '../../agent/model/routes/index.js';
import { ConnectionRecord } from '../../agent/proxy/connection.js';
import { Drain } from '../../agent/proxy/drain.js';
import type { Workload } from '../../agent/state/workload.js';
import { DEFAULT_REDACTED_HEADERS, eventBuilders, REDACTED, redactHeaders, type EventBuilders, type TapEvent } from '../../agent/tap/events.js';
import { TapHub } from '../../agent/tap/hub.js';
import { TapService } from '../../agent/tap/service.js';
import { MAX_BACKLOG, SUMMARY_MS, type TapSink } from '../../agent/tap/session.js';
import type { AccessLog } from '../../agent/telemetry/audit.js';
import { Metrics } from '../../agent/telemetry/metrics.js';

const workload = (ns: string, name: string): Workload =>
  ({ key: `${ns}/${name}-0`, namespace: ns, pod: `${name}-0`, name, identity: `spiffe://cluster.local/ns/${ns}/sa/${name}`, meshed: true, labels: {} }) as unknown as Workload;
const client = workload('mesh', 'client');
const server = workload('mesh', 'server');

const accessLog: AccessLog = { info: () => undefined, line: () => undefined } as unknown as AccessLog;

function request(over: Partial<L7Request> = {}): L7Request {
  return {
    protocol: 'http1',
    grpc: false,
    method: 'GET',
    authority: 'server.mesh:80',
    path: '/items/1',
    query: '',
    headers: { authorization: 'Bearer secret', cookie: ['a=1', 'b=2'], 'x-api-key': 'k', accept: '*/*' },
    body: Body.EMPTY,
    requestId: 'rid-1',
    startedAt: performance.now(),
    ...over,
  };
}

/** Builders that count their calls and build the real events. */
function spiedBuilders(): EventBuilders & { calls: () => number } {
  const b = {
    request: vi.fn(eventBuilders.request),
    connection: vi.fn(eventBuilders.connection),
    rejected: vi.fn(eventBuilders.rejected),
  };
  return { ...b, calls: () => b.request.mock.calls.length + b.connection.mock.calls.length + b.rejected.mock.calls.length };
}

/** A sink that keeps what the stream sends; `backlog` is what a slow reader left unread. */
function sink(): TapSink & { events: TapEvent[]; ended: boolean; held: number } {
  const s = { events: [] as TapEvent[], ended: false, held: 0, write: (e: TapEvent) => void s.events.push(e), backlog: () => s.held, end: () => void (s.ended = true) };
  return s;
}

function service(opts: { builders?: EventBuilders; maxRps?: number; redact?: string[] } = {}) {
  const clock = new ManualClock();
  const metrics = new Metrics({ defaultMetrics: false });
  const tap = new TapService({
    node: 'node-a',
    redact: new Set(opts.redact ?? DEFAULT_REDACTED_HEADERS),
    maxRps: opts.maxRps ?? 100,
    clock,
    metrics,
    ...(opts.builders && { builders: opts.builders }),
  });
  return { tap, clock, metrics };
}

/** One finished request through a real RequestRecord, as the router (outbound) records it. */
function finishRequest(hub: TapHub | undefined, over: Partial<L7Request> = {}, fill?: (r: RequestRecord) => void): RequestRecord {
  const rec = new RequestRecord(request(over), { metrics: new Metrics({ defaultMetrics: false }), accessLog, tap: hub }, 'outbound', { workload: client, principal: client.identity, ip: '10.244.1.2', port: 40000 }, {}, 'none');
  rec.destinationService = 'server.mesh.svc.cluster.local';
  rec.setEndpoint({ ip: '10.244.2.2', port: 8080, workload: server });
  rec.status = 200;
  fill?.(rec);
  rec.finish();
  return rec;
}

function finishConnection(hub: TapHub | undefined, src = client): void {
  const rec = new ConnectionRecord(
    {
      direction: 'inbound',
      src: { ip: '10.244.1.2', port: 40001, workload: src, principal: src.identity },
      dst: { ip: '10.244.2.2', port: 6379, workload: server, principal: server.identity, service: 'redis.mesh.svc.cluster.local' },
      security: 'mutual_tls',
      authz: { authz: { decision: 'allow', code: 'allowed_no_policy', action: 'NONE' } },
    },
    { metrics: new Metrics({ defaultMetrics: false }), accessLog, drain: new Drain(), tap: hub },
  );
  rec.downToUp(11);
  rec.upToDown(22);
  rec.finish();
}

describe('tap hub: free while nobody taps', () => {
  it('a request or connection with no tap open calls nothing of tap and builds no event', () => {
    const builders = spiedBuilders();
    const { tap } = service({ builders });
    const request = vi.spyOn(tap.hub, 'request');
    const connection = vi.spyOn(tap.hub, 'connection');
    expect(tap.hub.active).toBe(false);
    for (let i = 0; i < 100; i++) {
      finishRequest(tap.hub);
      finishConnection(tap.hub);
    }
    expect(request).not.toHaveBeenCalled();
    expect(connection).not.toHaveBeenCalled();
    expect(builders.calls()).toBe(0);
  });

  it('with taps open, a record no tap matches is matched and nothing is built', () => {
    const builders = spiedBuilders();
    const { tap } = service({ builders });
    const s = sink();
    tap.open({ limit: 0, durationMs: 0, maxRps: 0, match: { source: { workload: 'other' } } }, s);
    const request = vi.spyOn(tap.hub, 'request');
    finishRequest(tap.hub);
    finishConnection(tap.hub);
    expect(request).toHaveBeenCalledTimes(1);
    expect(builders.calls()).toBe(0);
    expect(s.events).toEqual([]);
  });

  it('idle again once the last tap ends, and says so in trellis_tap_active_threads', async () => {
    const builders = spiedBuilders();
    const { tap, metrics } = service({ builders });
    const gauge = async (name: string) => (await metrics.registry.getSingleMetric(name)!.get()).values[0]?.value;
    const a = tap.open({ limit: 1, durationMs: 0, maxRps: 0 }, sink());
    const b = tap.open({ limit: 0, durationMs: 0, maxRps: 0 }, sink());
    expect(tap.hub.active).toBe(true);
    expect(await gauge('trellis_tap_active_threads')).toBe(1);
    expect(await gauge('trellis_tap_streams')).toBe(2);
    finishRequest(tap.hub);
    expect(a.closed).toBe(true);
    expect(tap.hub.active).toBe(true);
    b.end();
    expect(tap.hub.active).toBe(false);
    expect(await gauge('trellis_tap_active_threads')).toBe(0);
    expect(await gauge('trellis_tap_streams')).toBe(0);
    const built = builders.calls();
    finishRequest(tap.hub);
    expect(builders.calls()).toBe(built);
  });
});

describe('tap events', () => {
  it('a request: request init, response init with the time to first byte, end; one build for every tap that matched', () => {
    const builders = spiedBuilders();
    const { tap } = service({ builders });
    const [one, two, none] = [sink(), sink(), sink()];
    tap.open({ limit: 0, durationMs: 0, maxRps: 0, match: { source: { workload: 'client' } } }, one);
    tap.open({ limit: 0, durationMs: 0, maxRps: 0, match: { destination: { workload: 'server' } } }, two);
    tap.open({ limit: 0, durationMs: 0, maxRps: 0, match: { http: { method: 'POST' } } }, none);
    finishRequest(tap.hub, {}, (r) => {
      r.route = { route: 'mesh/split', name: 'canary' } as CompiledRule;
      r.responseHeaders = { 'set-cookie': 's=1', 'content-type': 'text/plain' };
      r.firstByteUs = 1500;
      r.responseBytes = 42;
      r.requestBytes = 7;
    });
    expect(builders.request).toHaveBeenCalledTimes(1);
    expect(none.events).toEqual([]);
    expect(two.events).toEqual(one.events);
    const [init, rsp, end] = one.events;
    expect(one.events.map((e) => Object.keys(e).find((k) => k.endsWith('Init') || k.endsWith('End')))).toEqual(['requestInit', 'responseInit', 'responseEnd']);
    expect(new Set(one.events.map((e) => e.id))).toEqual(new Set([1]));
    expect(init).toMatchObject({
      node: 'node-a',
      reporter: 'source',
      source: { workload: 'client', namespace: 'mesh', pod: 'client-0', identity: client.identity, ip: '10.244.1.2', port: 40000 },
      destination: { workload: 'server', identity: server.identity, ip: '10.244.2.2', port: 8080, service: 'server.mesh.svc.cluster.local' },
      security: 'mutual_tls',
      route: 'mesh/split',
      rule: 'canary',
      requestInit: { method: 'GET', authority: 'server.mesh:80', path: '/items/1', requestId: 'rid-1', protocol: 'http1' },
    });
    expect(rsp!.responseInit).toMatchObject({ sinceRequestInitMs: 1.5, httpStatus: 200 });
    expect(end!.responseEnd).toMatchObject({ httpStatus: 200, requestBytes: 7, responseBytes: 42 });
    expect(end!.responseEnd!.sinceRequestInitMs).toBeGreaterThanOrEqual(0);
  });

  it('redacts the default headers and the configured ones: values replaced, names kept, each value of a repeated field', () => {
    const { tap } = service({ redact: [...DEFAULT_REDACTED_HEADERS, 'x-api-key'] });
    const s = sink();
    tap.open({ limit: 0, durationMs: 0, maxRps: 0 }, s);
    finishRequest(tap.hub, {}, (r) => (r.responseHeaders = { 'set-cookie': ['s=1', 't=2'], 'content-type': 'text/plain' }));
    expect(s.events[0]!.requestInit!.headers).toEqual([
      { name: 'authorization', value: REDACTED },
      { name: 'cookie', value: REDACTED },
      { name: 'cookie', value: REDACTED },
      { name: 'x-api-key', value: REDACTED },
      { name: 'accept', value: '*/*' },
    ]);
    expect(s.events[1]!.responseInit!.headers).toEqual([
      { name: 'set-cookie', value: REDACTED },
      { name: 'set-cookie', value: REDACTED },
      { name: 'content-type', value: 'text/plain' },
    ]);
    expect(JSON.stringify(s.events)).not.toMatch(/secret|a=1|s=1/);
    // Without the extra name, its value shows.
    expect(redactHeaders({ 'x-api-key': 'k', 'X-Forwarded-Client-Cert': 'By=x' }, new Set(DEFAULT_REDACTED_HEADERS))).toEqual([
      { name: 'x-api-key', value: 'k' },
      { name: 'X-Forwarded-Client-Cert', value: REDACTED },
    ]);
  });

  it('a denied request carries the decision and the policy; an opaque connection opens and closes with its bytes', () => {
    const { tap } = service();
    const s = sink();
    tap.open({ limit: 0, durationMs: 0, maxRps: 0 }, s);
    finishRequest(tap.hub, {}, (r) => {
      r.status = 403;
      r.error = 'RBAC: access denied';
      Object.assign(r.extra, { authz: { decision: 'deny', code: 'denied', action: 'DENY', policy: 'mesh/no-admin', rule: 0, reason: 'denied by DENY policy mesh/no-admin rule 0' } });
    });
    expect(s.events.at(-1)).toMatchObject({
      authz: { decision: 'deny', code: 'denied', action: 'DENY', policy: 'mesh/no-admin', rule: 0 },
      responseEnd: { httpStatus: 403, error: 'RBAC: access denied' },
    });
    s.events.length = 0;
    finishConnection(tap.hub);
    expect(s.events.map((e) => (e.tcpOpen ? 'open' : e.tcpClose ? 'close' : '?'))).toEqual(['open', 'close']);
    expect(s.events[1]).toMatchObject({
      reporter: 'destination',
      destination: { service: 'redis.mesh.svc.cluster.local', port: 6379 },
      authz: { decision: 'allow', code: 'allowed_no_policy' },
      tcpClose: { bytesReceived: 11, bytesSent: 22 },
    });
    s.events.length = 0;
    tap.hub.deniedConnection({
      direction: 'inbound',
      src: { ip: '10.244.1.2', principal: client.identity, workload: client },
      dst: { ip: '10.244.2.2', port: 6379, workload: server, principal: server.identity },
      security: 'mutual_tls',
      authz: { authz: { decision: 'deny', code: 'denied', action: 'DENY', policy: 'mesh/no-redis', rule: 0, reason: 'r' } },
    });
    expect(s.events).toMatchObject([{ authz: { decision: 'deny', policy: 'mesh/no-redis' }, tcpClose: { bytesReceived: 0, bytesSent: 0, error: 'denied by policy' } }]);
  });
});

describe('tap rate bound and limit', () => {
  it('admits max_rps per second and counts every drop exactly, on the next event or in a summary within a second', () => {
    const { tap, clock, metrics } = service();
    const s = sink();
    const session = tap.open({ limit: 0, durationMs: 0, maxRps: 5 }, s);
    for (let i = 0; i < 25; i++) finishRequest(tap.hub);
    const requests = () => s.events.filter((e) => e.requestInit).length;
    expect(requests()).toBe(5);
    expect(session.droppedTotal).toBe(20);
    // No event carried the count yet: a summary within a second does.
    clock.advance(SUMMARY_MS);
    const summary = s.events.at(-1)!;
    expect(summary).toMatchObject({ dropped: 20, summary: { delivered: 5, droppedTotal: 20 } });
    // A second later the bound has refilled: 5 more, then 3 dropped, told on the next event.
    clock.advance(1000);
    for (let i = 0; i < 8; i++) finishRequest(tap.hub);
    clock.advance(200);
    finishRequest(tap.hub);
    const carried = s.events.filter((e) => e.dropped).map((e) => e.dropped);
    expect(carried).toEqual([20, 3]);
    expect(requests()).toBe(11);
    expect(session.droppedTotal).toBe(23);
    expect(s.events.reduce((n, e) => n + (e.dropped ?? 0), 0)).toBe(session.droppedTotal);
    expect((metrics.registry.getSingleMetric('trellis_tap_dropped_total') as unknown as { hashMap: Record<string, { value: number }> }).hashMap['']!.value).toBe(23);
  });

  it('a tap asks for at most the agent cap', () => {
    const { tap } = service({ maxRps: 50 });
    expect(tap.open({ limit: 0, durationMs: 0, maxRps: 1000 }, sink()).maxRps).toBe(50);
    expect(tap.open({ limit: 0, durationMs: 0, maxRps: 0 }, sink()).maxRps).toBe(50);
    expect(tap.open({ limit: 0, durationMs: 0, maxRps: 7 }, sink()).maxRps).toBe(7);
  });

  it('worker threads: their bound drops and their batches reach the stream, which bounds them again; all drops counted', () => {
    const { tap } = service();
    const s = sink();
    const session = tap.open({ limit: 0, durationMs: 0, maxRps: 4 }, s);
    const specs: unknown[] = [];
    tap.subscribe((x) => specs.push(x));
    expect(specs).toEqual([[{ id: session.id, match: undefined, maxRps: 4 }]]);
    // A worker's hub, as workers/worker.ts builds it, with the same spec.
    const events: [number, TapEvent[]][] = [];
    let workerDrops = 0;
    const worker = new TapHub({ node: 'node-a', redact: new Set(), now: () => 0, emit: (id, obs) => events.push([id, [...obs]]), onDrop: () => workerDrops++ });
    worker.set(tap.current());
    for (let i = 0; i < 10; i++) finishRequest(worker);
    expect(events.length).toBe(4);
    expect(workerDrops).toBe(6);
    // The main thread saw 2 of its own first: of the worker's 4, 2 fit the stream's bound.
    finishRequest(tap.hub);
    finishRequest(tap.hub);
    tap.fromWorker({ events, dropped: [[session.id, workerDrops]] });
    expect(s.events.filter((e) => e.requestInit).length).toBe(4);
    expect(session.droppedTotal).toBe(6 + 2);
  });

  it('a reader too slow for the events: observations are dropped and counted, not queued without bound', () => {
    const { tap } = service();
    const s = sink();
    const session = tap.open({ limit: 0, durationMs: 0, maxRps: 0 }, s);
    finishRequest(tap.hub);
    s.held = MAX_BACKLOG + 1;
    finishRequest(tap.hub);
    finishRequest(tap.hub);
    s.held = 0;
    finishRequest(tap.hub);
    expect(session.delivered).toBe(2);
    expect(session.droppedTotal).toBe(2);
    expect(s.events.filter((e) => e.requestInit).at(-1)!.dropped).toBe(2);
  });

  it('ends at its limit and at its duration, with a last summary', () => {
    const { tap, clock } = service();
    const s = sink();
    tap.open({ limit: 3, durationMs: 0, maxRps: 0 }, s);
    for (let i = 0; i < 5; i++) finishRequest(tap.hub);
    expect(s.events.filter((e) => e.requestInit).map((e) => e.id)).toEqual([1, 2, 3]);
    expect(s.events.at(-1)!.summary).toEqual({ delivered: 3, droppedTotal: 0, end: 'limit' });
    expect(s.ended).toBe(true);
    const t = sink();
    tap.open({ limit: 0, durationMs: 5000, maxRps: 0 }, t);
    clock.advance(4999);
    expect(t.ended).toBe(false);
    clock.advance(1);
    expect(t.ended).toBe(true);
    expect(t.events.at(-1)!.summary).toMatchObject({ end: 'duration' });
    expect(tap.hub.active).toBe(false);
  });

  it('refuses what it cannot serve, saying what to change', () => {
    const { tap } = service();
    expect(() => tap.open({ limit: 0, durationMs: 0, maxRps: 0, match: {} }, sink())).toThrow(/set exactly one of/);
    for (let i = 0; i < 16; i++) tap.open({ limit: 0, durationMs: 0, maxRps: 0 }, sink());
    expect(() => tap.open({ limit: 0, durationMs: 0, maxRps: 0 }, sink())).toThrow(/16 taps are open on node node-a: close one/);
    tap.stop();
    expect(tap.size).toBe(0);
    expect(() => tap.open({ limit: 0, durationMs: 0, maxRps: 0 }, sink())).toThrow(/stopping/);
  });
});
