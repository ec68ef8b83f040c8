// The tracer on its own: the sampling decision (parent-based, a ratio for new traces), the context the next hop gets,
// the span's parent and attributes; and the OTLP exporter against a receiver on loopback, over gRPC and HTTP
// (protobuf and JSON), with its bounded queue and a collector that is down.
import { describe, expect, it } from 'vitest';
import type { L7Request } from '../../agent/l7/exchange.js';
import { Body } from '../../agent/l7/body.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { OtlpExporter, type OtlpProtocol } from '../../agent/tracing/otlp.js';
import { FinishedSpan, Tracer, type SpanEnd } from '../../agent/tracing/tracer.js';
import { captureLogger } from '../support/logger.js';
import { OtlpReceiver } from '../support/otlp-receiver.js';
import { until } from '../support/until.js';

const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const S = '00f067aa0ba902b7';

function request(headers: Record<string, string> = {}, extra: Partial<L7Request> = {}): L7Request {
  return { protocol: 'http1', grpc: false, method: 'GET', authority: 'web.ns.svc.cluster.local:80', path: '/a', query: '', headers, body: Body.EMPTY, requestId: 'r1', startedAt: performance.now(), ...extra };
}

function ending(req: L7Request, over: Partial<SpanEnd> = {}): SpanEnd {
  return { req, status: 200, grpcStatus: '', error: undefined, srcPrincipal: 'spiffe://cluster.local/ns/a/sa/client', dstPrincipal: 'spiffe://cluster.local/ns/b/sa/web', srcIp: '10.0.0.1', destinationService: 'web.ns.svc.cluster.local', route: 'ns/r', rule: 'main', retries: 0, authz: undefined, ...over };
}

function tracer(ratio: number, random: () => number = Math.random) {
  const spans: FinishedSpan[] = [];
  return { spans, tracer: new Tracer({ sampleRatio: ratio, sink: { push: (s) => spans.push(s) }, node: 'node-a', random }) };
}

describe('Tracer', () => {
  it("keeps the caller's decision and makes its own span the next hop's parent", () => {
    const { tracer: t, spans } = tracer(0);
    const req = request({ traceparent: `00-${T}-${S}-01`, tracestate: 'a=1' });
    const span = t.start(req, 'client')!;
    expect(span).toMatchObject({ traceId: T, parentSpanId: S, traceState: 'a=1' });
    expect(req.headers.traceparent).toBe(`00-${T}-${span.spanId}-01`);
    expect(req.headers.tracestate).toBe('a=1');
    t.end(span, ending(req));
    const s = spans[0]!;
    expect(s.kind).toBe(2);
    expect(s.spanContext()).toMatchObject({ traceId: T, spanId: span.spanId });
    expect(s.parentSpanContext).toMatchObject({ spanId: S });
    expect(s.attributes).toMatchObject({ 'http.request.method': 'GET', 'url.path': '/a', 'http.response.status_code': 200, 'server.address': 'web.ns.svc.cluster.local', 'server.port': 80, 'trellis.route': 'ns/r', 'trellis.route.rule': 'main' });
    // Unsampled by the caller: no span even at ratio 1, the flag passed on.
    const { tracer: all } = tracer(1);
    const no = request({ traceparent: `00-${T}-${S}-00` });
    expect(all.start(no, 'server')).toBeUndefined();
    expect(no.headers.traceparent).toMatch(new RegExp(`^00-${T}-[0-9a-f]{16}-00$`));
  });

  it('starts a trace when the request has none: sampled at the ratio, the context written either way', () => {
    let r = 0.5;
    const { tracer: t } = tracer(0.3, () => r);
    const req = request();
    expect(t.start(req, 'client')).toBeUndefined();
    expect(req.headers.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
    r = 0.1;
    const req2 = request();
    const span = t.start(req2, 'client')!;
    expect(span.parentSpanId).toBeUndefined();
    expect(req2.headers.traceparent).toBe(`00-${span.traceId}-${span.spanId}-01`);
    // B3 left the decision to us: ours, and B3 written back with it.
    const b3 = request({ b3: `${T}-${S}` });
    expect(t.start(b3, 'server')).toMatchObject({ traceId: T, parentSpanId: S });
    expect(b3.headers.b3).toMatch(new RegExp(`^${T}-[0-9a-f]{16}-1-${S}$`));
  });

  it('marks failures as OpenTelemetry says for each side', () => {
    const { tracer: t, spans } = tracer(1);
    const end = (kind: 'client' | 'server', over: Partial<SpanEnd>, grpc = false) => {
      const req = request({}, grpc ? { grpc: true, path: '/pkg.Svc/Do', method: 'POST' } : {});
      t.end(t.start(req, kind)!, ending(req, over));
      return spans.at(-1)!;
    };
    expect(end('client', { status: 404 }).status.code).toBe(2);
    expect(end('server', { status: 404 }).status.code).toBe(0);
    expect(end('server', { status: 503, error: 'upstream connect error' }).status).toEqual({ code: 2, message: 'upstream connect error' });
    expect(end('server', { status: 200, error: 'client went away' }).attributes['error.type']).toBe('reset');
    const g = end('client', { grpcStatus: '5' }, true);
    expect(g.name).toBe('pkg.Svc/Do');
    expect(g.attributes).toMatchObject({ 'rpc.system': 'grpc', 'rpc.grpc.status_code': 5 });
    expect(g.status.code).toBe(2);
    expect(end('server', { grpcStatus: '5' }, true).status.code).toBe(0);
    expect(end('server', { grpcStatus: '14' }, true).status.code).toBe(2);
    expect(end('server', { authz: { decision: 'deny', policy: 'ns/deny-all', reason: 'denied' }, status: 403 }).attributes).toMatchObject({ 'trellis.authz.decision': 'deny', 'trellis.authz.policy': 'ns/deny-all' });
  });
});

describe('OtlpExporter', () => {
  const finished = (n: number) => {
    const { tracer: t, spans } = tracer(1);
    for (let i = 0; i < n; i++) {
      const req = request({ traceparent: `00-${T}-${S}-01` });
      t.end(t.start(req, 'server')!, ending(req));
    }
    return spans;
  };

  for (const protocol of ['grpc', 'http/protobuf', 'http/json'] as OtlpProtocol[]) {
    it(`exports batches over ${protocol}, every span whole`, async () => {
      const receiver = new OtlpReceiver();
      const ports = await receiver.listen();
      const metrics = new Metrics({ defaultMetrics: false });
      const port = protocol === 'grpc' ? ports.grpc : ports.http;
      const exporter = new OtlpExporter({ endpoint: `http://127.0.0.1:${port}`, protocol, metrics, logger: captureLogger().logger, delayMs: 20, maxBatch: 4 });
      const spans = finished(10);
      for (const s of spans) exporter.push(s);
      await until('10 spans received', async () => receiver.spans.length === 10, 5000);
      expect(receiver.exports[protocol]).toBeGreaterThanOrEqual(3);
      const got = receiver.spans[0]!;
      const sent = spans[0]!;
      expect(got).toMatchObject({ traceId: T, spanId: sent.spanContext().spanId, parentSpanId: S, kind: 2, name: 'GET', protocol });
      expect(got.attributes).toEqual(sent.attributes);
      expect(got.resource).toEqual({ 'service.name': 'trellis-agent', 'k8s.node.name': 'node-a' });
      expect(got.startNs).toBe(BigInt(sent.startTime[0]) * 1_000_000_000n + BigInt(sent.startTime[1]));
      // Counted once the collector's answer is back, which may be a moment after it has the spans.
      await until('10 spans counted as exported', async () => (await metrics.tracingSpansExported.get()).values[0]!.value === 10, 5000);
      await exporter.close();
      await receiver.close();
    });
  }

  it('drops what does not fit its queue, and what a collector that is down did not take, counting both', async () => {
    const receiver = new OtlpReceiver();
    const ports = await receiver.listen();
    await receiver.stopListening();
    const metrics = new Metrics({ defaultMetrics: false });
    const exporter = new OtlpExporter({ endpoint: `http://127.0.0.1:${ports.http}`, protocol: 'http/protobuf', metrics, logger: captureLogger().logger, maxQueue: 8, maxBatch: 4, delayMs: 10 });
    for (const s of finished(20)) exporter.push(s);
    const dropped = async (reason: string) => (await metrics.tracingSpansDropped.get()).values.find((v) => v.labels.reason === reason)?.value ?? 0;
    await exporter.close();
    // 8 queued at most: 12 refused at once (less any batch already taken off the queue), the rest failed to export.
    expect((await dropped('queue_full')) + (await dropped('export_failed'))).toBe(20);
    expect(await dropped('queue_full')).toBeGreaterThanOrEqual(8);
    await receiver.close();
  });
});
