// Tracing on the L7 path in one process over loopback: the outbound proxy (L7Proxy) with and without a tracer, a real
// HTTP/1.1 backend that answers with the headers it got. Without a tracer the trace headers pass as they came and none
// is added; with one, the backend gets the agent's context (its span as the parent), never what was malformed, and the
// span ends with the request.
import http from 'node:http';
import net from 'node:net';
import pino from 'pino';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../agent/clock.js';
import { L7Proxy } from '../../agent/l7/l7-proxy.js';
import type { KubeObject } from '../../agent/model/objects.js';
import { validateObject } from '../../agent/model/validate.js';
import { compile, type MeshState } from '../../agent/state/store.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { Tracer, type FinishedSpan } from '../../agent/tracing/tracer.js';

const NS = 'mesh';
const VIP = '10.96.0.10';
const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const S = '00f067aa0ba902b7';

function objects(yamlText: string): KubeObject[] {
  return parseAllDocuments(yamlText).map((d) => {
    const v = validateObject(d.toJS());
    if (!v.ok) throw new Error(v.reason);
    return v.object;
  });
}

describe('tracing on the L7 path (in process, loopback)', () => {
  let backend: http.Server;
  const fronts: net.Server[] = [];
  const proxies: L7Proxy[] = [];
  let state: MeshState;
  const spans: FinishedSpan[] = [];
  let plainPort: number;
  let tracedPort: number;

  /** A front listener playing the capture for a proxy: every connection is for echo's port 80. */
  async function front(tracer: Tracer | undefined): Promise<number> {
    const proxy = new L7Proxy({
      options: { detectTimeoutMs: 100, opaquePorts: new Set(), limits: { maxHeaderBytes: 8192, maxHeaderCount: 50, maxConcurrentStreams: 100, headerTimeoutMs: 10_000, idleTimeoutMs: 60_000 }, bodyCapBytes: 65536, mirrorTimeoutMs: 2000 },
      state: () => state,
      open: (_src, ep) =>
        new Promise((resolve, reject) => {
          const s = net.connect(ep.port, ep.ip);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        }),
      metrics: new Metrics({ defaultMetrics: false }),
      logger: pino({ level: 'silent' }),
      accessLog: pino({ level: 'silent' }),
      clock: systemClock,
      random: Math.random,
      tracer,
    });
    proxies.push(proxy);
    const server = net.createServer({ allowHalfOpen: true }, (socket) => {
      const svc = state.serviceByVip(VIP)!;
      proxy.serve(socket, 'http1', state.workloads.get(`${NS}/client`)!, svc, 80);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    fronts.push(server);
    return (server.address() as net.AddressInfo).port;
  }

  beforeAll(async () => {
    backend = http.createServer((req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(req.headers)));
    await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
    const port = (backend.address() as net.AddressInfo).port;
    state = compile(
      objects(`apiVersion: v1
kind: Pod
metadata: {name: client, namespace: ${NS}, labels: {app: client}}
spec: {nodeName: n1, serviceAccountName: client, containers: [{name: c}]}
status: {podIP: 10.244.0.5}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: ${NS}}
spec:
  clusterIP: ${VIP}
  ports: [{name: http, port: 80, targetPort: ${port}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: ${NS}, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: ${port}}]
endpoints: [{addresses: [127.0.0.1], conditions: {ready: true}}]
`),
      'cluster.local',
      1,
    );
    plainPort = await front(undefined);
    tracedPort = await front(new Tracer({ sampleRatio: 1, sink: { push: (s) => spans.push(s) }, node: 'n1', random: Math.random }));
  });

  afterAll(async () => {
    for (const p of proxies) p.close();
    for (const f of fronts) f.close();
    backend?.close();
  });

  function get(port: number, headers: Record<string, string> = {}): Promise<Record<string, string>> {
    return new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, path: '/a', headers: { host: 'echo.mesh', ...headers }, agent: false }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve(JSON.parse(text) as Record<string, string>));
      });
      req.on('error', reject);
      req.end();
    });
  }

  it('without a tracer: trace headers pass as they came, none is added', async () => {
    expect((await get(plainPort)).traceparent).toBeUndefined();
    const seen = await get(plainPort, { traceparent: 'whatever', b3: 'x' });
    expect(seen).toMatchObject({ traceparent: 'whatever', b3: 'x' });
    expect(spans).toHaveLength(0);
  });

  it("with a tracer: the app's context continued, the agent's span the parent the backend gets", async () => {
    const seen = await get(tracedPort, { traceparent: `00-${T}-${S}-01`, tracestate: 'k=v' });
    const span = spans.at(-1)!;
    expect(span.parentSpanContext?.spanId).toBe(S);
    expect(seen.traceparent).toBe(`00-${T}-${span.spanContext().spanId}-01`);
    expect(seen.tracestate).toBe('k=v');
    expect(span.attributes).toMatchObject({ 'http.request.method': 'GET', 'url.path': '/a', 'http.response.status_code': 200, 'trellis.destination.service': 'echo.mesh.svc.cluster.local' });
  });

  it('with a tracer: malformed values are dropped, a valid B3 is continued in its own form, and a new trace starts when nothing is valid', async () => {
    const b3 = await get(tracedPort, { traceparent: 'junk', tracestate: 'k=v', 'x-b3-traceid': T, 'x-b3-spanid': S, 'x-b3-sampled': '1' });
    const span = spans.at(-1)!;
    expect(span.parentSpanContext?.spanId).toBe(S);
    const id = span.spanContext().spanId;
    expect(b3).toMatchObject({ traceparent: `00-${T}-${id}-01`, 'x-b3-traceid': T, 'x-b3-spanid': id, 'x-b3-parentspanid': S, 'x-b3-sampled': '1' });
    expect(b3.tracestate).toBeUndefined();
    const none = await get(tracedPort, { traceparent: '00-zz', b3: 'nope', 'x-b3-sampled': 'maybe' });
    const root = spans.at(-1)!;
    expect(root.parentSpanContext).toBeUndefined();
    expect(none.traceparent).toBe(`00-${root.spanContext().traceId}-${root.spanContext().spanId}-01`);
    expect(none.b3).toBeUndefined();
    expect(none['x-b3-sampled']).toBeUndefined();
  });
});
