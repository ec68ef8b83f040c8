// L7 end to end, as a user runs it: a two-node lab whose callers (node-a) reach HTTP/1.1, h2c, gRPC, WebSocket and
// server-first backends (node-b) through the agents' outbound path. The Gateway API mesh conformance tests are
// ported here over the network (the same routes and expectations as test/model/routes/conformance.test.ts, which
// checks the compiled tables without one), with Trellis's own policies, metrics and protocol edges. Needs root.
import { execFile } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Lab } from '../../lab/cluster/lab.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import { connectInNetns } from '../../agent/native/index.js';
import type { KubeObject } from '../../agent/model/objects.js';
import { parsePrometheus, sumOf, type Sample } from '../../lab/load/promtext.js';
import type { GrpcClientSummary } from '../../lab/tools/grpc-client.js';
import type { HttpClientSummary, HttpReply } from '../../lab/tools/http-client.js';
import type { EchoReply } from '../../lab/tools/l7-echo.js';
import type { TcpRawReport } from '../../lab/tools/tcp-raw.js';
import type { WsClientReport } from '../../lab/tools/ws-client.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const run = promisify(execFile);
const fixtures = path.join(import.meta.dirname, 'fixtures', 'l7.yaml');
const labBase = `e7${Math.random().toString(36).slice(2, 5)}`;
/** The lab of the capture mode running now (each mode's block runs in turn, with a lab of its own). */
let labName = labBase;
const NS = 'mesh';
const CLIENT = 'mesh/client';
const CALLER = 'consumer/caller';
const fqdn = (service: string, ns = NS) => `${service}.${ns}.svc.cluster.local`;
/** How long a route change may take to reach the data path before a test gives up on it. */
const SETTLE_MS = 3000;

let lab: Lab;
const vip = (service: string) => lab.services.find((s) => s.namespace === NS && s.name === service)!.clusterIP;

async function metrics(node = 'node-a'): Promise<Sample[]> {
  return parsePrometheus(await lab.metrics(node));
}

/** Runs `trellis tool ...` in a pod and returns its one JSON line. */
async function tool<T>(pod: string, args: string[], timeoutMs = 30_000): Promise<T> {
  const r = await lab.exec(pod, ['trellis', 'tool', ...args], { timeoutMs });
  const line = r.stdout.trim().split('\n').at(-1) ?? '';
  try {
    return JSON.parse(line) as T;
  } catch {
    throw new Error(`trellis tool ${args.join(' ')} in ${pod} printed no JSON (exit ${r.code}): ${r.stdout.slice(0, 500)} ${r.stderr.slice(0, 500)}`);
  }
}

const httpTool = (pod: string, url: string, flags: string[] = []) => tool<HttpClientSummary>(pod, ['http-client', '--url', url, ...flags]);
const grpcTool = (pod: string, to: string, flags: string[] = []) => tool<GrpcClientSummary>(pod, ['grpc-client', '--to', to, ...flags]);

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: EchoReply | string;
  ms: number;
}

/**
 * One HTTP/1.1 request made from inside a pod's netns by this process (no process to start), so tests can poll
 * fast. The pod's capture rules apply to it exactly as to the pod's own programs.
 */
function request(from: string, host: string, port: number, opts: { path?: string; method?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  const netns = lab.pod(from).netnsPath;
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host,
        port,
        method: opts.method ?? 'GET',
        path: opts.path ?? '/',
        headers: { connection: 'close', ...opts.headers },
        timeout: 5000,
        // No `agent`: with one, Node ignores createConnection and would connect from this process's netns.
        createConnection: () => connectInNetns(netns, { host, port, timeoutMs: 5000 }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: EchoReply | string = text;
          try {
            body = JSON.parse(text) as EchoReply;
          } catch {
            // Not from l7-echo (an error page of the mesh, a redirect): the text is the body.
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body, ms: performance.now() - started });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${host}:${port}${opts.path ?? '/'} from ${from}: no answer in 5 s`)));
    req.on('error', reject);
    req.end();
  });
}

const nameOf = (a: Answer) => (typeof a.body === 'object' ? a.body.name : undefined);
/** Which backend answered a kept reply, or its status (or error code) when none did. */
const answeredBy = (x: HttpReply) => (x.status === 200 && typeof x.body === 'object' && x.body !== null ? (x.body as EchoReply).name : x.status);

/** Waits until `probe` holds `times` times in a row: the route in question is in force on the data path. */
async function settle(what: string, probe: () => Promise<boolean>, times = 5): Promise<void> {
  let streak = 0;
  await until(`${what} to take effect`, async () => {
    streak = (await probe().catch(() => false)) ? streak + 1 : 0;
    return streak >= times;
  }, SETTLE_MS);
}

/** Objects applied by the running test; removed after it, so every test starts from no routes. */
let applied: KubeObject[] = [];
let barriers = 0;

async function apply(yamlText: string): Promise<KubeObject[]> {
  const objects = parseAllDocuments(yamlText).map((d) => d.toJS() as KubeObject);
  await lab.apply(objects);
  for (const o of objects) {
    if (!applied.some((a) => a.kind === o.kind && a.metadata.name === o.metadata.name && a.metadata.namespace === o.metadata.namespace)) applied.push(o);
  }
  return objects;
}

const route = (kind: 'HTTPRoute' | 'GRPCRoute', name: string, body: string, ns = NS) =>
  `apiVersion: gateway.networking.k8s.io/v1\nkind: ${kind}\nmetadata: {name: ${name}, namespace: ${ns}}\n${body}`;

/** The header values a filter produced, whether the mesh joined them into one line or sent several. */
function values(v: string | string[] | undefined): string[] {
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).flatMap((x) => x.split(/,\s*/));
}

describe.each(['auto', 'nft'] as const)('L7 on the outbound path (two-node lab, --capture %s)', (capture) => {
  beforeAll(async () => {
    requireRoot('end-to-end L7 tests');
    // Agents at --log-level warn: the audit trail is written all the same (the access-line test below reads it).
    labName = `${labBase}${capture[0]}`;
    lab = await Lab.up(fixtures, { name: labName, logLevel: 'warn', agentArgs: ['--capture', capture] });
    // Backends are up when their port accepts; probed from node-b, which bypasses the mesh and counts no request.
    const node = lab.node('node-b');
    const ports: Record<string, number> = { 'echo-v1': 8080, 'echo-v2': 8080, 'echo-mirror': 8080, flaky: 8080, broken: 8080, 'grpc-v1': 7070, 'grpc-v2': 7070, banner: 2525 };
    await Promise.all(
      Object.entries(ports).map(([pod, port]) =>
        until(`${pod} to listen on ${port}`, () =>
          new Promise<boolean>((resolve) => {
            const s = connectInNetns(node.netnsPath, { host: lab.pod(`${NS}/${pod}`).ip, port, timeoutMs: 1000 });
            s.once('connect', () => (s.destroy(), resolve(true)));
            s.once('error', () => resolve(false));
          }), 20_000),
      ),
    );
  });

  afterEach(async ({ task }) => {
    if (applied.length === 0) return;
    for (const o of applied.reverse()) await lab.remove(o.kind, o.metadata.namespace ?? 'default', o.metadata.name);
    applied = [];
    // A barrier, so the next test never meets this one's routes: a change written after the removals shows
    // on the data path only once the agents have read the removals too. (Pointless when the test failed.)
    if (task.result?.state !== 'pass') return;
    const mark = String(++barriers);
    await lab.apply(parseAllDocuments(route('HTTPRoute', 'barrier', `spec:
  parentRefs: [{group: "", kind: Service, name: echo-mirror, port: 80}]
  rules:
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Barrier, value: "${mark}"}]}}]
    backendRefs: [{name: echo-mirror, port: 80}]
`)).map((d) => d.toJS() as KubeObject));
    await until(`barrier ${mark}`, async () => (await request(CLIENT, vip('echo-mirror'), 80)).headers['x-barrier'] === mark, SETTLE_MS);
  });

  afterAll(async () => {
    await lab?.down();
    const { stdout } = await run('ip', ['netns', 'list']);
    expect(stdout).not.toContain(`trl-${labName}-`);
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  // --- What works without any route: the mesh carries HTTP, h2c, gRPC, WebSocket and server-first TCP.

  it('MeshBasic: a Service answers through the mesh', async () => {
    const all = await httpTool(CLIENT, `http://${vip('echo')}/`, ['--count', '20', '--concurrency', '4']);
    expect(all).toMatchObject({ sent: 20, ok: 20 });
    expect(Object.keys(all.names).every((n) => n === 'echo-v1' || n === 'echo-v2')).toBe(true);
    expect(await httpTool(CLIENT, `http://${vip('echo-v1')}/`, ['--count', '5'])).toMatchObject({ ok: 5, names: { 'echo-v1': 5 } });
  });

  it('carries h2c (prior knowledge) on a port declared kubernetes.io/h2c, and routes it like HTTP/1.1', async () => {
    const h2c = () => httpTool(CLIENT, `http://${vip('echo-v1')}:8082/`, ['--count', '10', '--concurrency', '4', '--http2', '--header', 'version: two', '--timeout-ms', '2000']);
    const direct = await h2c();
    expect(direct, JSON.stringify(direct.statusCounts)).toMatchObject({ sent: 10, ok: 10, names: { 'echo-v1': 10 } });
    await apply(route('HTTPRoute', 'h2c-split', `spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1, port: 8082}]
  rules:
  - matches: [{headers: [{name: version, value: two}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - backendRefs: [{name: echo-v1, port: 8080}]
`));
    await until('route h2c-split', async () => (await h2c()).names['echo-v2'] === 10, SETTLE_MS + 2000);
    const plain = await httpTool(CLIENT, `http://${vip('echo-v1')}:8082/`, ['--count', '4', '--http2', '--timeout-ms', '2000']);
    expect(plain, JSON.stringify(plain.statusCounts)).toMatchObject({ ok: 4, names: { 'echo-v1': 4 } });
  });

  it('carries h2c (prior knowledge) on a port declared http too, as gRPC clients and auto-detecting proxies expect', async () => {
    const r = await httpTool(CLIENT, `http://${vip('echo')}/`, ['--count', '20', '--concurrency', '4', '--http2', '--timeout-ms', '2000']);
    expect(r, JSON.stringify(r.statusCounts)).toMatchObject({ sent: 20, ok: 20 });
    expect(Object.keys(r.names).every((n) => n === 'echo-v1' || n === 'echo-v2')).toBe(true);
  });

  it('carries WebSocket frames both ways', async () => {
    const r = await tool<WsClientReport>(CLIENT, ['ws-client', '--url', `ws://${vip('echo-v1')}/chat`, '--messages', '20', '--size', '2000']);
    expect(r).toMatchObject({ connected: true, sent: 20, echoed: 20, mismatched: 0, closeCode: 1000 });
  });

  it('passes gRPC status codes and trailers through unchanged', async () => {
    const ok = await grpcTool(CLIENT, `${vip('grpc')}:7070`, ['--count', '4']);
    expect(ok).toMatchObject({ ok: 4, statusCounts: { '0': 4 } });
    expect(Object.values(ok.trailers['x-echo-trailer'] ?? {}).reduce((a, b) => a + b, 0)).toBe(4);
    const failed = await grpcTool(CLIENT, `${vip('grpc')}:7070`, ['--count', '3', '--metadata', 'x-echo-grpc-status: 14']);
    expect(failed, failed.details.join('; ')).toMatchObject({ ok: 0, statusCounts: { '14': 3 } });
    expect(failed.details[0]).toMatch(/^grpc-v[12]: status 14 as asked/);
    expect(Object.values(failed.trailers['x-echo-trailer'] ?? {}).reduce((a, b) => a + b, 0)).toBe(3);
  });

  it('has the destination agent count a connection against the Service the caller used', async () => {
    // The banner pod is behind two Services; whichever the agent finds first, each connection must be counted
    // against the one it was made through. The first test to reach the pod, so no earlier line arrives late.
    const inbound = (service: string) =>
      lab
        .agentLog('node-b')
        .split('\n')
        .filter((l) => l.includes('"log":"access"') && l.includes('"msg":"connection"') && l.includes('"direction":"inbound"') && l.includes(`"service":"${fqdn(service)}"`)).length;
    const before = { banner: inbound('banner'), alias: inbound('banner-alias') };
    for (const service of ['banner-alias', 'banner']) {
      const r = await tool<TcpRawReport>(CLIENT, ['tcp-raw', '--to', `${vip(service)}:2525`, '--idle-ms', '300']);
      expect(r.received).toBe('220 trellis-banner ready\r\n');
    }
    await until('two inbound connection lines', async () => inbound('banner') + inbound('banner-alias') === before.banner + before.alias + 2, 3000);
    expect({ banner: inbound('banner') - before.banner, alias: inbound('banner-alias') - before.alias }).toEqual({ banner: 1, alias: 1 });
  });

  it('gives a server-first protocol on an undeclared port its banner at once', async () => {
    const r = await tool<TcpRawReport>(CLIENT, ['tcp-raw', '--to', `${vip('banner')}:2525`, '--idle-ms', '1500']);
    expect(r).toMatchObject({ connected: true, received: '220 trellis-banner ready\r\n' });
    // Protocol detection waits for the client's first bytes for at most --protocol-detect-timeout (100 ms).
    expect(r.first_byte_ms!).toBeLessThan(1000);
  });

  // --- Protocol detection and telemetry.

  it('counts the detection timeout of the server-first protocol', async () => {
    const before = sumOf(await metrics(), 'trellis_protocol_detect_timeouts_total');
    const r = await tool<TcpRawReport>(CLIENT, ['tcp-raw', '--to', `${vip('banner')}:2525`, '--idle-ms', '1500']);
    expect(r.received).toBe('220 trellis-banner ready\r\n');
    await until('the detection timeout to be counted', async () => sumOf(await metrics(), 'trellis_protocol_detect_timeouts_total') === before + 1, 2000);
  });

  it('sniffs HTTP on an undeclared port and records every request', async () => {
    const match = { reporter: 'source', destination_service: fqdn('echo-sniffed'), request_protocol: 'http', response_code: '200' };
    const before = sumOf(await metrics(), 'trellis_requests_total', match);
    const r = await httpTool(CLIENT, `http://${vip('echo-sniffed')}:8000/sniffed`, ['--count', '10', '--concurrency', '2']);
    expect(r).toMatchObject({ ok: 10, names: { 'echo-v1': 10 } });
    await until('10 requests to be recorded', async () => sumOf(await metrics(), 'trellis_requests_total', match) - before === 10, 2000);
  });

  it('records per-route metrics and one access log line for exactly the requests sent', async () => {
    await apply(route('HTTPRoute', 'counted', `spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - name: to-v1
    matches: [{path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: echo-v2, port: 8080}]
`));
    await settle('route counted', async () => (await request(CLIENT, vip('echo'), 80, { path: '/nomatch' })).status === 404);
    // A routed request is counted against the backend Service it went to (as Istio's destination_service),
    // with the route and rule that sent it there; one no rule matched is counted against the Service called.
    const base = {
      reporter: 'source',
      source_workload: 'client',
      source_workload_namespace: NS,
      source_principal: `spiffe://cluster.local/ns/${NS}/sa/client`,
      // The workload is the pods' app label, shared by both versions.
      destination_workload: 'echo',
      destination_workload_namespace: NS,
      destination_principal: `spiffe://cluster.local/ns/${NS}/sa/echo`,
      request_protocol: 'http',
      response_code: '200',
      grpc_response_status: '',
      route_namespace: NS,
      route_name: 'counted',
      connection_security_policy: 'mutual_tls',
    };
    const v1 = { ...base, destination_service: fqdn('echo-v1'), route_rule: 'to-v1' };
    const v2 = { ...base, destination_service: fqdn('echo-v2'), route_rule: '1' };
    const miss = { reporter: 'source', destination_service: fqdn('echo'), response_code: '404', route_name: '', route_rule: '' };
    const count = (s: Sample[], m: Record<string, string>) => sumOf(s, 'trellis_requests_total', m);
    const all = (s: Sample[]) => count(s, { reporter: 'source', route_name: 'counted' }) + count(s, miss);
    const before = await metrics();
    const beforeB = await metrics('node-b');
    const logBefore = lab.agentLog('node-a').length;
    await httpTool(CLIENT, `http://${vip('echo')}/`, ['--count', '15', '--requests', JSON.stringify([...Array(7).fill({ path: '/v1/a' }), ...Array(5).fill({ path: '/v2/b' }), ...Array(3).fill({ path: '/other' })])]);
    const after = await until('15 requests to be recorded', async () => {
      const m = await metrics();
      return all(m) - all(before) >= 15 && m;
    }, 2000);
    expect(count(after, v1) - count(before, v1)).toBe(7);
    expect(count(after, v2) - count(before, v2)).toBe(5);
    expect(count(after, miss) - count(before, miss)).toBe(3);
    expect(all(after) - all(before)).toBe(15);
    const histogram = (s: Sample[]) => sumOf(s, 'trellis_request_duration_seconds_count', v1);
    expect(histogram(after) - histogram(before)).toBe(7);
    expect(sumOf(after, 'trellis_request_duration_seconds_bucket', { ...v1, le: '+Inf' }) - sumOf(before, 'trellis_request_duration_seconds_bucket', { ...v1, le: '+Inf' })).toBe(7);
    // The audit trail gathers lines for a few ms per write: a line of the settle loop above may land after the mark,
    // so the lines are told apart by their paths, used by no other test.
    const logged = () => {
      const paths = lab.agentLog('node-a').slice(logBefore).split('\n').filter((l) => l.includes('"msg":"request"')).map((l) => /"path":"([^"]*)"/.exec(l)?.[1]);
      return ['/v1/a', '/v2/b', '/other'].map((p) => paths.filter((x) => x === p).length);
    };
    await until('15 access log lines', async () => logged().join() === '7,5,3', 2000);
    // The destination agent counts them against the Service the source picked the endpoint from (the tunnel
    // says which), not the first Service of the endpoint (echo, echo-sniffed and echo-v1 all select the v1 pod).
    const atB = (s: Sample[], service: string) => sumOf(s, 'trellis_requests_total', { reporter: 'destination', destination_service: fqdn(service), response_code: '200' });
    await until('the destination side to record them', async () => {
      const m = await metrics('node-b');
      return atB(m, 'echo-v1') - atB(beforeB, 'echo-v1') === 7 && atB(m, 'echo-v2') - atB(beforeB, 'echo-v2') === 5;
    }, 2000);
    expect(atB(await metrics('node-b'), 'echo') - atB(beforeB, 'echo')).toBe(0);
  });

  it('counts gRPC calls with their grpc-status', async () => {
    const m = { reporter: 'source', destination_service: fqdn('grpc'), request_protocol: 'grpc', grpc_response_status: '14' };
    const before = sumOf(await metrics(), 'trellis_requests_total', m);
    await grpcTool(CLIENT, `${vip('grpc')}:7070`, ['--count', '6', '--metadata', 'x-echo-grpc-status: 14']);
    await until('6 gRPC failures to be recorded', async () => sumOf(await metrics(), 'trellis_requests_total', m) - before === 6, 2000);
  });

  // --- Gateway API mesh conformance (GAMMA), over the network.

  it('MeshHTTPRouteMatching', async () => {
    await apply(route('HTTPRoute', 'mesh-matching', `spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /}
    - headers: [{name: version, value: one}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches:
    - path: {type: PathPrefix, value: /v2}
    - headers: [{name: version, value: two}]
    backendRefs: [{name: echo-v2, port: 8080}]
`));
    // Two answers no single backend gives: the route is in force, not the Service's own balancing.
    await settle('route mesh-matching', async () =>
      nameOf(await request(CLIENT, vip('echo'), 80, { path: '/v2/x' })) === 'echo-v2' && nameOf(await request(CLIENT, vip('echo'), 80, { path: '/v2example' })) === 'echo-v1');
    const cases: [string, Record<string, string>, string][] = [
      ['/', {}, 'echo-v1'],
      ['/example', {}, 'echo-v1'],
      ['/', { Version: 'one' }, 'echo-v1'],
      ['/v2', {}, 'echo-v2'],
      ['/v2/example', {}, 'echo-v2'],
      ['/', { Version: 'two' }, 'echo-v2'],
      ['/v2/', {}, 'echo-v2'],
      ['/v2example', {}, 'echo-v1'],
      ['/foo/v2/example', {}, 'echo-v1'],
    ];
    const requests = JSON.stringify(cases.map(([p, headers]) => ({ path: p, headers })));
    const r = await httpTool(CLIENT, `http://${vip('echo')}/`, ['--count', String(cases.length), '--requests', requests, '--replies', String(cases.length)]);
    expect(r.replies!.map(answeredBy)).toEqual(cases.map((c) => c[2]));
  });

  it('MeshHTTPRouteQueryParamMatching', async () => {
    await apply(route('HTTPRoute', 'mesh-query-param-matching', `spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{queryParams: [{name: animal, value: dolphin}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path1}, queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{headers: [{name: version, value: one}], queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches:
    - {path: {type: PathPrefix, value: /path3}, queryParams: [{name: animal, value: shark}]}
    - {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], queryParams: [{name: animal, value: kraken}]}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path5}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{queryParams: [{name: animal, value: hydra}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
`));
    await settle('route mesh-query-param-matching', async () => (await request(CLIENT, vip('echo'), 80, { path: '/?animal=dog' })).status === 404);
    const cases: [string, Record<string, string>, string | number][] = [
      ['/?animal=whale', {}, 'echo-v1'],
      ['/?animal=dolphin', {}, 'echo-v2'],
      ['/?animal=whale&otherparam=irrelevant', {}, 'echo-v1'],
      ['/?animal=dolphin&color=yellow', {}, 'echo-v2'],
      ['/?color=blue', {}, 404],
      ['/?animal=dog', {}, 404],
      ['/?animal=whaledolphin', {}, 404],
      ['/', {}, 404],
      ['/path1?animal=whale', {}, 'echo-v1'],
      ['/?animal=whale', { version: 'one' }, 'echo-v2'],
      ['/path3?animal=shark', {}, 'echo-v1'],
      ['/path4?animal=kraken', { version: 'three' }, 'echo-v1'],
      ['/?animal=shark', {}, 404],
      ['/path4?animal=kraken', {}, 404],
      ['/path5?animal=hydra', {}, 'echo-v1'],
    ];
    const r = await httpTool(CLIENT, `http://${vip('echo')}/`, [
      '--count', String(cases.length), '--replies', String(cases.length),
      '--requests', JSON.stringify(cases.map(([p, headers]) => ({ path: p, headers }))),
    ]);
    expect(r.replies!.map(answeredBy)).toEqual(cases.map((c) => c[2]));
    // The query reaches the backend as sent.
    expect((r.replies![2]!.body as EchoReply).query).toEqual({ animal: 'whale', otherparam: 'irrelevant' });
  });

  it('MeshHTTPRouteWeight: 500 requests split 70/30 within 5 %', async () => {
    await apply(route('HTTPRoute', 'mesh-weighted-backends', `spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - backendRefs:
    - {name: echo-v1, port: 8080, weight: 70}
    - {name: echo-v2, port: 8080, weight: 30}
`));
    // Before the route, 50/50 by endpoint; a run of 20 cannot tell, so wait for the route through its metric.
    await until('route mesh-weighted-backends to count a request', async () => {
      await request(CLIENT, vip('echo'), 80);
      return sumOf(await metrics(), 'trellis_requests_total', { route_name: 'mesh-weighted-backends' }) > 0;
    }, SETTLE_MS);
    const r = await withinShares({ 'echo-v1': 0.7, 'echo-v2': 0.3 }, () => httpTool(CLIENT, `http://${vip('echo')}/`, ['--count', '500', '--concurrency', '8']));
    expect(r.ok).toBe(500);
  });

  /**
   * Runs `send` (500 requests) and checks each backend's share within 5 points, with one more run when the first
   * falls outside: with random weighted picks a run lands outside about once in 70 (2.4 standard deviations),
   * which is why the Gateway API suite retries this check too. A split that is wrong fails both runs.
   */
  async function withinShares<T extends { names: Record<string, number> }>(shares: Record<string, number>, send: () => Promise<T>): Promise<T> {
    const off = (r: T) => Object.keys(r.names).sort().join() !== Object.keys(shares).sort().join() ||
      Object.entries(shares).some(([name, share]) => Math.abs((r.names[name] ?? 0) / 500 - share) > 0.05);
    const first = await send();
    if (!off(first)) return first;
    const second = await send();
    expect(off(second), `shares ${JSON.stringify(shares)}, runs ${JSON.stringify(first.names)} and ${JSON.stringify(second.names)}`).toBe(false);
    return second;
  }

  const headerRoute = (name: string, onBackend: boolean) => {
    const rule = (p: string, modifier: string) =>
      onBackend
        ? `  - matches: [{path: {type: PathPrefix, value: ${p}}}]
    backendRefs:
    - name: echo-v1
      port: 8080
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: ${modifier}}]
`
        : `  - matches: [{path: {type: PathPrefix, value: ${p}}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: ${modifier}}]
    backendRefs: [{name: echo-v1, port: 8080}]
`;
    return route('HTTPRoute', name, `spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
${rule('/set', '{set: [{name: X-Header-Set, value: set-overwrites-values}]}')}${rule('/add', '{add: [{name: X-Header-Add, value: add-appends-values}]}')}${rule('/remove', '{remove: [X-Header-Remove]}')}${rule(
      '/multiple',
      '{set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}], add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}], remove: [X-Header-Remove-1, X-Header-Remove-2]}',
    )}${rule('/case-insensitivity', '{set: [{name: X-Header-Set, value: header-set}], add: [{name: X-Header-Add, value: header-add}], remove: [X-Header-Remove]}')}`);
  };

  it.each([
    ['MeshHTTPRouteRequestHeaderModifier', false],
    ['MeshHTTPRouteBackendRequestHeaderModifier', true],
  ])('%s', async (_name, onBackend) => {
    await apply(headerRoute(onBackend ? 'backend-request-header-modifier' : 'request-header-modifier', onBackend));
    await settle('the header route', async () => {
      const a = await request(CLIENT, vip('echo'), 80, { path: '/set' });
      return typeof a.body === 'object' && a.body.headers['x-header-set'] === 'set-overwrites-values';
    });
    const cases: { path: string; headers: Record<string, string>; want: Record<string, string[]>; absent?: string[] }[] = [
      { path: '/set', headers: { 'Some-Other-Header': 'val' }, want: { 'some-other-header': ['val'], 'x-header-set': ['set-overwrites-values'] } },
      { path: '/set', headers: { 'Some-Other-Header': 'val', 'X-Header-Set': 'some-other-value' }, want: { 'x-header-set': ['set-overwrites-values'] } },
      { path: '/add', headers: { 'Some-Other-Header': 'val' }, want: { 'x-header-add': ['add-appends-values'] } },
      { path: '/add', headers: { 'Some-Other-Header': 'val', 'X-Header-Add': 'some-other-value' }, want: { 'x-header-add': ['some-other-value', 'add-appends-values'] } },
      { path: '/remove', headers: { 'X-Header-Remove': 'val' }, want: {}, absent: ['x-header-remove'] },
      {
        path: '/multiple',
        headers: { 'X-Header-Set-2': 'set-val-2', 'X-Header-Add-2': 'add-val-2', 'X-Header-Remove-2': 'remove-val-2', 'Another-Header': 'another-header-val' },
        want: {
          'x-header-set-1': ['header-set-1'],
          'x-header-set-2': ['header-set-2'],
          'x-header-add-1': ['header-add-1'],
          'x-header-add-2': ['add-val-2', 'header-add-2'],
          'x-header-add-3': ['header-add-3'],
          'another-header': ['another-header-val'],
        },
        absent: ['x-header-remove-1', 'x-header-remove-2'],
      },
      {
        path: '/case-insensitivity',
        headers: { 'x-header-set': 'original-val-set', 'x-header-add': 'original-val-add', 'x-header-remove': 'original-val-remove', 'Another-Header': 'another-header-val' },
        want: { 'x-header-set': ['header-set'], 'x-header-add': ['original-val-add', 'header-add'], 'another-header': ['another-header-val'] },
        absent: ['x-header-remove'],
      },
    ];
    const r = await httpTool(CLIENT, `http://${vip('echo')}/`, [
      '--count', String(cases.length), '--replies', String(cases.length),
      '--requests', JSON.stringify(cases.map(({ path: p, headers }) => ({ path: p, headers }))),
    ]);
    for (const [k, c] of cases.entries()) {
      expect(answeredBy(r.replies![k]!), c.path).toBe('echo-v1');
      const reply = r.replies![k]!.body as EchoReply;
      for (const [h, want] of Object.entries(c.want)) expect(values(reply.headers[h]), `${c.path} ${h}`).toEqual(want);
      for (const h of c.absent ?? []) expect(reply.headers[h], `${c.path} ${h}`).toBeUndefined();
    }
  });

  it('MeshHTTPRouteRewritePath', async () => {
    await apply(route('HTTPRoute', 'mesh-rewrite-path', `spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /full/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /full/rewrite-path-and-modify-headers}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /test}}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
        remove: [X-Header-Remove]
    backendRefs: [{name: echo-v1, port: 8080}]
`));
    await settle('route mesh-rewrite-path', async () => {
      const a = await request(CLIENT, vip('echo'), 80, { path: '/strip-prefix/x' });
      return typeof a.body === 'object' && a.body.path === '/x';
    });
    const cases: [string, string][] = [
      ['/prefix/one/two', '/one/two'],
      ['/strip-prefix/three', '/three'],
      ['/strip-prefix', '/'],
      ['/full/one/two', '/one'],
      ['/full/rewrite-path-and-modify-headers/test?q=1', '/test'],
    ];
    const r = await httpTool(CLIENT, `http://${vip('echo')}/`, [
      '--count', String(cases.length), '--replies', String(cases.length),
      '--requests', JSON.stringify(cases.map(([p]) => ({ path: p, headers: { 'X-Header-Remove': 'remove-val', 'X-Header-Add-Append': 'append-val-1' } }))),
    ]);
    expect(r.replies!.map((x) => (x.status === 200 ? (x.body as EchoReply).path : x.status))).toEqual(cases.map((c) => c[1]));
    const last = r.replies!.at(-1)!.body as EchoReply;
    // The query survives a full-path rewrite; the header filter of the same rule applies too.
    expect(last.query).toEqual({ q: '1' });
    expect(values(last.headers['x-header-add-append'])).toEqual(['append-val-1', 'header-val-2']);
    expect(last.headers['x-header-set']).toBe('set-overwrites-values');
    expect(last.headers['x-header-remove']).toBeUndefined();
  });

  it('MeshHTTPRouteRedirect: path, host, status, port and scheme', async () => {
    const redirect = (p: string, r: string) => `  - matches: [{path: {type: PathPrefix, value: ${p}}}]\n    filters: [{type: RequestRedirect, requestRedirect: ${r}}]\n`;
    await apply(route('HTTPRoute', 'mesh-redirect', `spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
${redirect('/original-prefix', '{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}')}${redirect(
      '/full',
      '{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}',
    )}${redirect('/path-and-host', '{hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}')}${redirect(
      '/path-and-status',
      '{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}, statusCode: 301}',
    )}${redirect('/hostname-redirect', '{hostname: example.org}')}${redirect('/host-and-status', '{statusCode: 301, hostname: example.org}')}${redirect(
      '/s307',
      '{statusCode: 307}',
    )}${redirect('/port', '{port: 8083}')}${redirect('/port-and-host-and-status', '{port: 8083, hostname: example.org, statusCode: 302}')}${redirect(
      '/scheme',
      '{scheme: https}',
    )}${redirect('/scheme-and-host-and-status', '{scheme: https, statusCode: 302, hostname: example.org}')}`));
    await settle('route mesh-redirect', async () => (await request(CLIENT, vip('echo'), 80, { path: '/port', headers: { host: 'echo' } })).status === 302);
    const cases: [string, number, string][] = [
      ['/original-prefix/lemon', 302, 'http://echo/replacement-prefix/lemon'],
      ['/full/path/original', 302, 'http://echo/full-path-replacement'],
      ['/path-and-host', 302, 'http://example.org/replacement-prefix'],
      ['/path-and-status', 301, 'http://echo/replacement-prefix'],
      ['/hostname-redirect', 302, 'http://example.org/hostname-redirect'],
      ['/host-and-status', 301, 'http://example.org/host-and-status'],
      ['/s307', 307, 'http://echo/s307'],
      ['/port', 302, 'http://echo:8083/port'],
      ['/port-and-host-and-status', 302, 'http://example.org:8083/port-and-host-and-status'],
      ['/scheme', 302, 'https://echo/scheme'],
      ['/scheme-and-host-and-status', 302, 'https://example.org/scheme-and-host-and-status'],
    ];
    const r = await httpTool(CLIENT, `http://${vip('echo')}/`, [
      '--count', String(cases.length), '--replies', String(cases.length), '--header', 'Host: echo',
      '--requests', JSON.stringify(cases.map(([p]) => ({ path: p }))),
    ]);
    expect(r.replies!.map((x) => [x.status, x.headers.location])).toEqual(cases.map(([, s, l]) => [s, l]));
    // A redirect answers the request: no backend saw it.
    expect(r.names).toEqual({});
  });

  it('MeshFrontend: a route applies to its Service, not to calls to a pod IP', async () => {
    await apply(route('HTTPRoute', 'mesh-frontend', `spec:
  parentRefs: [{group: "", kind: Service, name: echo-v2}]
  rules:
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]
    backendRefs: [{name: echo-v2, port: 80}]
`));
    await settle('route mesh-frontend', async () => (await request(CLIENT, vip('echo-v2'), 80)).headers['x-header-set'] === 'set');
    const direct = await request(CLIENT, lab.pod(`${NS}/echo-v2`).ip, 8080);
    expect(direct.status).toBe(200);
    expect(nameOf(direct)).toBe('echo-v2');
    expect(direct.headers['x-header-set']).toBeUndefined();
  });

  it('MeshPorts: a parentRef with a port applies to that port only', async () => {
    await apply(`${route('HTTPRoute', 'mesh-split-v1', `spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1, port: 80}]
  rules:
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v1}]}}]
    backendRefs: [{name: echo-v1, port: 80}]
`)}---\n${route('HTTPRoute', 'mesh-split-v2', `spec:
  parentRefs: [{group: "", kind: Service, name: echo-v2}]
  rules:
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v2}]}}]
    backendRefs: [{name: echo-v2, port: 80}]
`)}`);
    await settle('routes mesh-split-v1/v2', async () =>
      (await request(CLIENT, vip('echo-v1'), 80)).headers['x-header-set'] === 'v1' && (await request(CLIENT, vip('echo-v2'), 8080)).headers['x-header-set'] === 'v2');
    const cases: [string, number, string | undefined][] = [
      ['echo-v1', 80, 'v1'],
      ['echo-v1', 8080, undefined],
      ['echo-v2', 80, 'v2'],
      ['echo-v2', 8080, 'v2'],
    ];
    for (const [service, port, want] of cases) {
      const a = await request(CLIENT, vip(service), port);
      expect([a.status, nameOf(a), a.headers['x-header-set']], `${service}:${port}`).toEqual([200, service, want]);
    }
  });

  it('MeshConsumerRoute: a route in the caller namespace applies to that namespace only', async () => {
    await apply(route('HTTPRoute', 'mesh-echo-add-header', `spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1, namespace: ${NS}}]
  rules:
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]
    backendRefs: [{name: echo-v1, namespace: ${NS}, port: 80}]
`, 'consumer'));
    await settle('consumer route', async () => (await request(CALLER, vip('echo-v1'), 80)).headers['x-header-set'] === 'set');
    const other = await request(CLIENT, vip('echo-v1'), 80);
    expect([other.status, nameOf(other), other.headers['x-header-set']]).toEqual([200, 'echo-v1', undefined]);
  });

  it('MeshGRPCRouteWeight: 500 calls split 70/30 within 5 %, never to weight 0', async () => {
    await apply(route('GRPCRoute', 'mesh-grpc-weighted-backends', `spec:
  parentRefs: [{group: "", kind: Service, name: grpc, port: 7070}]
  rules:
  - backendRefs:
    - {name: grpc-v1, port: 7070, weight: 70}
    - {name: grpc-v2, port: 7070, weight: 30}
    - {name: echo-mirror, port: 80, weight: 0}
`));
    await until('route mesh-grpc-weighted-backends to count a call', async () => {
      await grpcTool(CLIENT, `${vip('grpc')}:7070`, ['--count', '1']);
      return sumOf(await metrics(), 'trellis_requests_total', { route_name: 'mesh-grpc-weighted-backends' }) > 0;
    }, SETTLE_MS + 2000);
    const r = await withinShares({ 'grpc-v1': 0.7, 'grpc-v2': 0.3 }, () => grpcTool(CLIENT, `${vip('grpc')}:7070`, ['--count', '500', '--concurrency', '8']));
    expect(r.ok).toBe(500);
  });

  // --- Resilience: retries, retry budget, timeouts, mirrors, faults.

  it('retries {codes: [503], attempts: 2} hide a backend failing every 2nd request', async () => {
    await apply(route('HTTPRoute', 'flaky-retry', `spec:
  parentRefs: [{group: "", kind: Service, name: flaky, port: 80}]
  rules:
  - retry: {codes: [503], attempts: 2}
    backendRefs: [{name: flaky, port: 80}]
`));
    // Without the retry, every 2nd answer is a 503: a run of 200s means the route is in force.
    await settle('route flaky-retry', async () => (await request(CLIENT, vip('flaky'), 80)).status === 200, 6);
    const retries = async () => sumOf(await metrics(), 'trellis_request_retries_total', { destination_service: fqdn('flaky') });
    const before = await retries();
    // One at a time: interleaved requests could each meet the failing turn of the backend's counter twice.
    const r = await httpTool(CLIENT, `http://${vip('flaky')}/`, ['--count', '20']);
    expect(r).toMatchObject({ sent: 20, ok: 20, statusCounts: { '200': 20 } });
    // Every 2nd try failed and was retried once: about one retry per request.
    await until('the retries to be counted', async () => (await retries()) - before >= 9, 2000);
    expect((await retries()) - before).toBeLessThanOrEqual(20);
  });

  it('a RetryBudget caps the retries sent to a backend that always fails', async () => {
    await apply(`apiVersion: traffic.trellis.dev/v1alpha1
kind: RetryBudget
metadata: {name: broken-budget, namespace: ${NS}}
spec:
  targetRef: {group: "", kind: Service, name: broken}
  retryRatio: 0.1
  minRetriesPerSecond: 0
  ttl: 10s
---
${route('HTTPRoute', 'broken-retry', `spec:
  parentRefs: [{group: "", kind: Service, name: broken, port: 80}]
  rules:
  - retry: {codes: [503], attempts: 3}
    backendRefs: [{name: broken, port: 80}]
`)}`);
    await until('route broken-retry to count a request', async () => {
      await request(CLIENT, vip('broken'), 80);
      return sumOf(await metrics(), 'trellis_requests_total', { route_name: 'broken-retry' }) > 0;
    }, SETTLE_MS);
    const svc = { destination_service: fqdn('broken') };
    const before = await metrics();
    const seenBefore = backendRequests('broken', '/budget');
    const r = await httpTool(CLIENT, `http://${vip('broken')}/budget`, ['--count', '100', '--concurrency', '4']);
    // The original answer comes back when no retry may be sent.
    expect(r).toMatchObject({ sent: 100, statusCounts: { '503': 100 } });
    const after = await metrics();
    const retried = sumOf(after, 'trellis_request_retries_total', svc) - sumOf(before, 'trellis_request_retries_total', svc);
    // retries <= retryRatio x requests (+ the few probes above); without the budget it would be up to 300.
    expect(retried).toBeGreaterThan(0);
    expect(retried).toBeLessThanOrEqual(15);
    expect(sumOf(after, 'trellis_retry_budget_exhausted_total', svc) - sumOf(before, 'trellis_retry_budget_exhausted_total', svc)).toBeGreaterThanOrEqual(50);
    // The backend saw each request once, plus exactly the retries counted.
    await until('the backend to log every try', async () => backendRequests('broken', '/budget') - seenBefore === 100 + retried, 2000);
  });

  /** Requests l7-echo logged with this path prefix (pods started with --log-requests). */
  function backendRequests(pod: string, prefix: string): number {
    return logged(pod).filter((l) => l.event === 'request' && typeof l.path === 'string' && l.path.startsWith(prefix)).length;
  }

  function logged(pod: string): { event?: string; path?: string; raw?: string }[] {
    return lab
      .podLog(`${NS}/${pod}`)
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { event?: string; path?: string; raw?: string });
  }

  it('timeouts.request: 500ms turns a 1 s backend into a 504 in time', async () => {
    await apply(route('HTTPRoute', 'echo-timeout', `spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules:
  - timeouts: {request: 500ms}
    backendRefs: [{name: echo-v1, port: 8080}]
`));
    await settle('route echo-timeout', async () => (await request(CLIENT, vip('echo'), 8080, { headers: { 'x-echo-delay-ms': '1000' } })).status === 504, 1);
    const slow = await request(CLIENT, vip('echo'), 8080, { headers: { 'x-echo-delay-ms': '1000' } });
    expect(slow.status).toBe(504);
    expect(slow.ms).toBeGreaterThanOrEqual(450);
    expect(slow.ms).toBeLessThan(900);
    const fast = await request(CLIENT, vip('echo'), 8080, { headers: { 'x-echo-delay-ms': '100' } });
    expect([fast.status, nameOf(fast)]).toEqual([200, 'echo-v1']);
  });

  it('RequestMirror sends a copy of each request and leaves the answers alone', async () => {
    await apply(route('HTTPRoute', 'echo-mirror', `spec:
  parentRefs: [{group: "", kind: Service, name: echo-v2, port: 8080}]
  rules:
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-mirror, port: 80}}}]
    backendRefs: [{name: echo-v2, port: 8080}]
`));
    const probe = `/mirror-probe-${Math.random().toString(36).slice(2)}`;
    await until('the mirror to see a probe', async () => {
      await request(CLIENT, vip('echo-v2'), 8080, { path: probe });
      return backendRequests('echo-mirror', probe) > 0;
    }, SETTLE_MS);
    const mirrored = async () => sumOf(await metrics(), 'trellis_mirror_requests_total');
    const before = await mirrored();
    const marker = `/mirrored-${Math.random().toString(36).slice(2)}`;
    const r = await httpTool(CLIENT, `http://${vip('echo-v2')}:8080${marker}`, ['--count', '20', '--concurrency', '2', '--method', 'POST', '--body', 'payload']);
    expect(r).toMatchObject({ ok: 20, names: { 'echo-v2': 20 } });
    await until('the mirror to see all 20', async () => backendRequests('echo-mirror', marker) === 20, 2000);
    expect(backendRequests('echo-v2', marker)).toBe(20);
    await until('20 mirrored requests to be counted', async () => (await mirrored()) - before >= 20, 2000);
  });

  it('FaultInjection aborts about half the requests with 503 and delays the others as told', async () => {
    await apply(`apiVersion: traffic.trellis.dev/v1alpha1
kind: FaultInjection
metadata: {name: half-abort, namespace: ${NS}}
spec: {abort: {httpStatus: 503, percentage: {value: 50}}}
---
apiVersion: traffic.trellis.dev/v1alpha1
kind: FaultInjection
metadata: {name: slow-down, namespace: ${NS}}
spec: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}
---
${route('HTTPRoute', 'echo-faults', `spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1, port: 8080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /abort}}]
    filters: [{type: ExtensionRef, extensionRef: {group: traffic.trellis.dev, kind: FaultInjection, name: half-abort}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    filters: [{type: ExtensionRef, extensionRef: {group: traffic.trellis.dev, kind: FaultInjection, name: slow-down}}]
    backendRefs: [{name: echo-v1, port: 8080}]
`)}`);
    await settle('route echo-faults', async () => (await request(CLIENT, vip('echo-v1'), 8080, { path: '/delay' })).ms >= 280, 2);
    const marker = `/abort/${Math.random().toString(36).slice(2)}`;
    const aborted = await httpTool(CLIENT, `http://${vip('echo-v1')}:8080${marker}`, ['--count', '400', '--concurrency', '4']);
    const failed = aborted.statusCounts['503'] ?? 0;
    expect(failed + (aborted.statusCounts['200'] ?? 0)).toBe(400);
    // Binomial(400, 0.5): 200 +- 40 (50 +- 10 %) is 4 standard deviations.
    expect(Math.abs(failed - 200)).toBeLessThanOrEqual(40);
    // An aborted request never reaches the backend.
    await until('the backend log to settle', async () => backendRequests('echo-v1', marker) === 400 - failed, 2000);
    const delayed = await httpTool(CLIENT, `http://${vip('echo-v1')}:8080/delay`, ['--count', '5']);
    expect(delayed.ok).toBe(5);
    expect(delayed.p50_ms!).toBeGreaterThanOrEqual(290);
  });

  it('FaultInjection aborts gRPC calls with a grpc-status in a trailers-only answer', async () => {
    await apply(`apiVersion: traffic.trellis.dev/v1alpha1
kind: FaultInjection
metadata: {name: grpc-unavailable, namespace: ${NS}}
spec: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
---
${route('GRPCRoute', 'grpc-faults', `spec:
  parentRefs: [{group: "", kind: Service, name: grpc-v2, port: 7070}]
  rules:
  - matches: [{method: {service: trellis.test.Echo, method: Hello}}]
    filters: [{type: ExtensionRef, extensionRef: {group: traffic.trellis.dev, kind: FaultInjection, name: grpc-unavailable}}]
    backendRefs: [{name: grpc-v2, port: 7070}]
  - backendRefs: [{name: grpc-v2, port: 7070}]
`)}`);
    const hello = ['--method', '/trellis.test.Echo/Hello'];
    await until('route grpc-faults', async () => (await grpcTool(CLIENT, `${vip('grpc-v2')}:7070`, hello)).statusCounts['14'] === 1, SETTLE_MS + 2000);
    const r = await grpcTool(CLIENT, `${vip('grpc-v2')}:7070`, [...hello, '--count', '10', '--concurrency', '2']);
    // UNAVAILABLE from the mesh itself: no backend name, no backend trailer.
    expect(r).toMatchObject({ sent: 10, ok: 0, statusCounts: { '14': 10 }, names: {} });
    expect(r.trailers['x-echo-trailer']).toBeUndefined();
    // The other method of the same service is not matched by the fault rule.
    expect(await grpcTool(CLIENT, `${vip('grpc-v2')}:7070`, ['--count', '3'])).toMatchObject({ ok: 3, names: { 'grpc-v2': 3 } });
  });

  // --- Configuration changes.

  it('a route change takes effect within 1 s, and an invalid route keeps the previous good one', async () => {
    const to = (backend: string, extra = '') => route('HTTPRoute', 'switch', `spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - ${extra}backendRefs: [{name: ${backend}, port: 8080}]
`);
    const answeredBy = async (want: string) => nameOf(await request(CLIENT, vip('echo'), 80)) === want;
    await apply(to('echo-v1'));
    await settle('route switch to echo-v1', () => answeredBy('echo-v1'), 6);

    const started = performance.now();
    await apply(to('echo-v2'));
    await until('the change to echo-v2', () => answeredBy('echo-v2'), 1000);
    const tookMs = performance.now() - started;
    for (let i = 0; i < 10; i++) expect(await answeredBy('echo-v2')).toBe(true);
    console.log(`route change in force after ${tookMs.toFixed(0)} ms`);

    // An invalid version (a path without its leading "/"), written before a marker route that shows the
    // agents have read both: the last good version of `switch` stays in force.
    await apply(`${to('echo-v1', 'matches: [{path: {type: PathPrefix, value: no-leading-slash}}]\n    ')}---\n${route('HTTPRoute', 'marker', `spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1, port: 80}]
  rules:
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Marker, value: seen}]}}]
    backendRefs: [{name: echo-v1, port: 80}]
`)}`);
    await until('the marker route', async () => (await request(CLIENT, vip('echo-v1'), 80)).headers['x-marker'] === 'seen', SETTLE_MS);
    for (let i = 0; i < 10; i++) expect(await answeredBy('echo-v2')).toBe(true);
  });

  // --- Errors the mesh answers itself.

  it('answers 404 without a matching rule, 500 for a missing backend Service, 503 without endpoints', async () => {
    await apply(route('HTTPRoute', 'errors', `spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /present}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{name: no-such-service, port: 80}]
`));
    await settle('route errors', async () => (await request(CLIENT, vip('echo'), 80, { path: '/elsewhere' })).status === 404, 2);
    expect((await request(CLIENT, vip('echo'), 80, { path: '/present' })).status).toBe(200);
    expect((await request(CLIENT, vip('echo'), 80, { path: '/missing' })).status).toBe(500);
    expect((await request(CLIENT, vip('empty'), 80)).status).toBe(503);
  });

  it('refuses malformed HTTP with 400 and oversized headers with 431; the backend never sees them', async () => {
    const id = Math.random().toString(36).slice(2);
    const cases: [string, string, number][] = [
      ['bare CR', `GET /bad-cr-${id} HTTP/1.1\r\nHost: echo\rX-Evil: 1\r\n\r\n`, 400],
      ['CL and TE', `POST /smuggle-${id} HTTP/1.1\r\nHost: echo\r\nContent-Length: 47\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled-${id} HTTP/1.1\r\nHost: echo\r\n\r\n`, 400],
      ['two Content-Length', `POST /dup-cl-${id} HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!`, 400],
      ['space before colon', `GET /space-${id} HTTP/1.1\r\nHost: echo\r\nX-Evil : 1\r\n\r\n`, 400],
      ['80 KiB of headers', `GET /big-${id} HTTP/1.1\r\nHost: echo\r\n${Array.from({ length: 10 }, (_, k) => `X-Big-${k}: ${'a'.repeat(8192)}\r\n`).join('')}\r\n`, 431],
    ];
    const answers = await Promise.all(
      cases.map(([, raw]) =>
        tool<TcpRawReport>(CLIENT, ['tcp-raw', '--to', `${vip('echo-v1')}:80`, '--send-b64', Buffer.from(raw, 'latin1').toString('base64'), '--idle-ms', '1000']),
      ),
    );
    for (const [k, [what, , status]] of cases.entries()) expect(answers[k]!.httpStatus, what).toBe(status);
    // Neither as a request nor as a protocol error did anything with the id reach echo-v1.
    const reached = logged('echo-v1').filter((l) => (l.path ?? '').includes(id) || (l.raw ?? '').includes(id));
    expect(reached).toEqual([]);
  });
});
