// Distributed tracing end to end: a two-node lab whose agents export OTLP/gRPC to a receiver in this test (listening
// in each node's netns at 127.0.0.1:4317), and apps built on the OpenTelemetry JS SDK in the pods
// (fixtures/otel-app.mjs), which propagate W3C context themselves. One trace id runs from the client app's span through
// both agents' spans to the server app's span, each parent right, for HTTP/1.1 and gRPC; a trace the source agent
// starts reaches the app; sampling over 2 000 new traces is near the ratio and the destination follows the source's
// decision exactly; a collector that hangs costs no request, and its drops are counted. Needs root.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectInNetns } from '../../agent/native/index.js';
import { Lab } from '../../lab/cluster/lab.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import { OtlpReceiver, type ReceivedSpan } from '../support/otlp-receiver.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const run = promisify(execFile);
const APP = path.join(import.meta.dirname, 'fixtures', 'otel-app.mjs');
const fixtures = path.join(import.meta.dirname, 'fixtures', 'tracing.yaml');
const labName = `tr${Math.random().toString(36).slice(2, 5)}`;
const RATIO = 0.2;
/** OTLP's SpanKind. */
const SERVER = 2;
const CLIENT = 3;

interface AppSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  sampled: boolean;
}
interface CallLine {
  client?: AppSpan;
  status?: number;
  grpcStatus?: number;
  server: AppSpan;
  headers: Record<string, string>;
}

let lab: Lab;
const receiver = new OtlpReceiver();
const vip = (service: string) => lab.services.find((s) => s.namespace === 'trace' && s.name === service)!.clusterIP;

async function app(pod: string, args: string[], timeoutMs = 60_000): Promise<CallLine[]> {
  const r = await lab.exec(pod, ['node', APP, ...args], { timeoutMs });
  if (r.code !== 0) throw new Error(`otel-app ${args.join(' ')} exited ${r.code}: ${r.stderr.slice(0, 1000)}`);
  return r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as CallLine);
}

async function metric(node: string, name: string, match: Record<string, string> = {}): Promise<number> {
  return sumOf(parsePrometheus(await lab.metrics(node)), name, match);
}

const spansOf = (traceId: string) => receiver.spans.filter((s) => s.traceId === traceId);

/** Both agents' spans of one trace, once exported. */
async function agentSpans(traceId: string): Promise<{ client: ReceivedSpan; server: ReceivedSpan }> {
  await until(`both agents' spans of trace ${traceId}`, async () => spansOf(traceId).length >= 2, 20_000);
  const spans = spansOf(traceId);
  expect(spans).toHaveLength(2);
  const client = spans.find((s) => s.kind === CLIENT)!;
  const server = spans.find((s) => s.kind === SERVER)!;
  expect(client.resource['k8s.node.name']).toBe('node-a');
  expect(server.resource['k8s.node.name']).toBe('node-b');
  return { client, server };
}

describe('distributed tracing (two-node lab, OTLP/gRPC to a receiver in the test)', () => {
  beforeAll(async () => {
    requireRoot('the tracing end-to-end tests');
    lab = await Lab.up(fixtures, {
      name: labName,
      logLevel: 'warn',
      agentArgs: ['--tracing-endpoint', 'http://127.0.0.1:4317', '--tracing-protocol', 'grpc', '--tracing-sample-ratio', String(RATIO)],
    });
    for (const node of ['node-a', 'node-b']) await receiver.listen({ netnsPath: lab.node(node).netnsPath, grpcPort: 4317, httpPort: 4318 });
    lab.spawn('trace/web-0', ['node', APP, 'http-server', '--port', '8080']);
    lab.spawn('trace/rpc-0', ['node', APP, 'grpc-server', '--port', '9090']);
    const node = lab.node('node-b');
    for (const [pod, port] of [['trace/web-0', 8080], ['trace/rpc-0', 9090]] as const) {
      await until(`${pod} to listen on ${port}`, () =>
        new Promise<boolean>((resolve) => {
          const s = connectInNetns(node.netnsPath, { host: lab.pod(pod).ip, port, timeoutMs: 1000 });
          s.once('connect', () => (s.destroy(), resolve(true)));
          s.once('error', () => resolve(false));
        }), 20_000);
    }
  });

  afterAll(async () => {
    await receiver.close();
    await lab?.down();
    const { stdout } = await run('ip', ['netns', 'list']);
    expect(stdout).not.toContain(`trl-${labName}-`);
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  it('HTTP/1.1: one trace from the client app through both agents to the server app, each parent right', async () => {
    const lines = await app('trace/client', ['http-client', '--url', `http://${vip('web')}/hello/../hello?x=1`, '--count', '5']);
    expect(lines).toHaveLength(5);
    for (const line of lines) {
      expect(line.status).toBe(200);
      const traceId = line.client!.traceId;
      const { client, server } = await agentSpans(traceId);
      // client app -> source agent (CLIENT) -> destination agent (SERVER) -> server app
      expect(client.parentSpanId).toBe(line.client!.spanId);
      expect(server.parentSpanId).toBe(client.spanId);
      expect(line.server).toMatchObject({ traceId, parentSpanId: server.spanId, sampled: true });
      expect(line.headers).toEqual({ traceparent: `00-${traceId}-${server.spanId}-01` });
      for (const s of [client, server]) {
        expect(s.name).toBe('GET');
        expect(s.attributes).toMatchObject({
          'http.request.method': 'GET',
          'url.path': '/hello',
          'http.response.status_code': 200,
          'server.address': vip('web'),
          'trellis.source.principal': 'spiffe://cluster.local/ns/trace/sa/client',
          'trellis.destination.principal': 'spiffe://cluster.local/ns/trace/sa/web',
          'trellis.destination.service': 'web.trace.svc.cluster.local',
        });
        expect(s.status.code).toBe(0);
        expect(s.endNs).toBeGreaterThan(s.startNs);
      }
      expect(client.attributes).toMatchObject({ 'trellis.route': 'trace/web-route', 'trellis.route.rule': 'main' });
      expect(server.attributes).toMatchObject({ 'trellis.authz.decision': 'allow' });
      expect(server.attributes['client.address']).toBe(lab.pod('trace/client').ip);
      // The server's span lies within the client's (one clock: both agents run on this machine).
      expect(server.startNs).toBeGreaterThanOrEqual(client.startNs);
      expect(server.endNs).toBeLessThanOrEqual(client.endNs);
    }
    expect(await metric('node-a', 'trellis_tracing_spans_exported_total')).toBeGreaterThanOrEqual(5);
  });

  it('gRPC: the same tree, with rpc.grpc.status_code from the status the agents read', async () => {
    const ok = await app('trace/client', ['grpc-client', '--target', `${vip('rpc')}:9090`, '--count', '3']);
    const failed = await app('trace/client', ['grpc-client', '--target', `${vip('rpc')}:9090`, '--count', '1', '--code', '5']);
    for (const line of [...ok, ...failed]) {
      const traceId = line.client!.traceId;
      const { client, server } = await agentSpans(traceId);
      expect(client.parentSpanId).toBe(line.client!.spanId);
      expect(server.parentSpanId).toBe(client.spanId);
      expect(line.server).toMatchObject({ traceId, parentSpanId: server.spanId });
      const code = line.grpcStatus;
      for (const s of [client, server]) {
        expect(s.name).toBe('trellis.test.Trace/Call');
        expect(s.attributes).toMatchObject({
          'http.request.method': 'POST',
          'url.path': '/trellis.test.Trace/Call',
          'rpc.system': 'grpc',
          'rpc.grpc.status_code': code,
          'http.response.status_code': 200,
          'network.protocol.version': '2',
          'trellis.destination.principal': 'spiffe://cluster.local/ns/trace/sa/rpc',
        });
      }
      // NOT_FOUND: the client's call failed; for the server it is an answer, not its failure.
      expect(client.status.code).toBe(code === 0 ? 0 : 2);
      expect(server.status.code).toBe(0);
    }
    expect(ok.map((l) => l.grpcStatus)).toEqual([0, 0, 0]);
    expect(failed.map((l) => l.grpcStatus)).toEqual([5]);
  });

  it('without context from the app: the source agent starts the trace, the app gets it, sampling near the ratio over 2 000 requests', async () => {
    const N = 2000;
    const lines = await app('trace/client', ['http-client', '--url', `http://${vip('web')}/new`, '--count', String(N), '--no-context'], 180_000);
    expect(lines).toHaveLength(N);
    expect(lines.every((l) => l.status === 200)).toBe(true);
    // Every request reached the app with a context; its parent is the destination agent's span.
    const parsed = lines.map((l) => /^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$/.exec(l.headers.traceparent ?? ''));
    expect(parsed.every((m) => m !== null)).toBe(true);
    expect(new Set(parsed.map((m) => m![1])).size).toBe(N);
    const sampled = parsed.filter((m) => m![3] === '01').map((m) => ({ traceId: m![1]!, parent: m![2]! }));
    // Binomial(2000, 0.2): mean 400, standard deviation ~18; 4.5 of them either side.
    expect(sampled.length).toBeGreaterThan(N * RATIO - 80);
    expect(sampled.length).toBeLessThan(N * RATIO + 80);
    await until('the sampled traces exported by both agents', async () => sampled.every((t) => spansOf(t.traceId).length >= 2), 30_000);
    for (const t of sampled) {
      const spans = spansOf(t.traceId);
      expect(spans).toHaveLength(2);
      const client = spans.find((s) => s.kind === CLIENT)!;
      const server = spans.find((s) => s.kind === SERVER)!;
      expect(client.parentSpanId).toBe('');
      expect(server.parentSpanId).toBe(client.spanId);
      expect(t.parent).toBe(server.spanId);
    }
    // Parent-based: what the source did not sample, the destination did not either.
    const unsampled = new Set(parsed.filter((m) => m![3] === '00').map((m) => m![1]!));
    expect(receiver.spans.filter((s) => unsampled.has(s.traceId))).toEqual([]);
  });

  it('a collector that hangs costs no request: every request answers, the spans are dropped and counted', async () => {
    const before = await metric('node-a', 'trellis_tracing_spans_dropped_total');
    const received = receiver.spans.length;
    receiver.hang = true;
    receiver.cutConnections();
    const lines = await app('trace/client', ['http-client', '--url', `http://${vip('web')}/during`, '--count', '300'], 120_000);
    expect(lines).toHaveLength(300);
    expect(lines.every((l) => l.status === 200)).toBe(true);
    // Each export waits for its 10 s limit, then its batch is dropped and counted.
    await until('the source agent to count its dropped spans', async () => (await metric('node-a', 'trellis_tracing_spans_dropped_total', { reason: 'export_failed' })) - before >= 1, 40_000);
    expect(receiver.spans.length).toBe(received);
  });
});
