// The L7 proxy in one process over real loopback sockets: a front listener plays the capture (it hands each
// connection to L7Proxy as the outbound path does), backends are real HTTP/1.1 and HTTP/2 servers, the tunnel
// opener is a plain TCP connect. Routes are compiled from YAML exactly as the agent does.
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import pino from 'pino';
import { parseAllDocuments } from 'yaml';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../agent/clock.js';
import { L7Proxy, type L7Options } from '../../agent/l7/l7-proxy.js';
import type { KubeObject } from '../../agent/model/objects.js';
import { validateObject } from '../../agent/model/validate.js';
import { compile, type MeshState } from '../../agent/state/store.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { mulberry32 } from '../support/prng.js';

const NS = 'mesh';
const VIP = '10.96.0.10';

interface Backend {
  name: string;
  port: number;
  /** Connections open to it now. */
  open(): number;
  seen: { method: string; url: string; headers: http.IncomingHttpHeaders; body: string }[];
  close(): Promise<void>;
}

/** An HTTP/1.1 + h2c backend answering JSON {name, url, headers}; x-status / x-delay-ms steer it. */
async function backend(name: string, behave: (n: number) => { status?: number; delayMs?: number } = () => ({})): Promise<Backend> {
  const seen: Backend['seen'] = [];
  let count = 0;
  const answer = (method: string, url: string, headers: http.IncomingHttpHeaders, body: string, reply: (status: number, text: string) => void) => {
    seen.push({ method, url, headers, body });
    const b = behave(++count);
    const status = Number(headers['x-status'] ?? b.status ?? 200);
    const delay = Number(headers['x-delay-ms'] ?? b.delayMs ?? 0);
    setTimeout(() => reply(status, JSON.stringify({ name, url, headers, body })), delay);
  };
  const h1 = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => (body += c));
    req.on('end', () => answer(req.method!, req.url!, req.headers, body, (status, text) => res.writeHead(status, { 'content-type': 'application/json', 'x-backend': name }).end(text)));
  });
  h1.on('upgrade', (req, socket, head: Buffer) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers, body: '' });
    socket.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: Upgrade\r\n\r\n');
    socket.write(head);
    socket.pipe(socket);
  });
  const h2 = http2.createServer();
  h2.on('stream', (stream, headers) => {
    stream.on('error', () => undefined);
    let body = '';
    stream.setEncoding('utf8');
    stream.on('data', (c) => (body += c));
    stream.on('end', () =>
      answer(headers[':method']!, headers[':path']!, headers as http.IncomingHttpHeaders, body, (status, text) => {
        if (stream.destroyed) return;
        if (headers['x-trailers-only']) {
          stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': String(headers['x-trailers-only']), 'grpc-message': 'down' }, { endStream: true });
          return;
        }
        if (headers['content-type'] === 'application/grpc') {
          stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
          stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': String(headers['x-grpc-status'] ?? '0'), 'x-trailer': name }));
          stream.end(text);
        } else {
          stream.respond({ ':status': status, 'x-backend': name });
          stream.end(text);
        }
      }),
    );
  });
  let open = 0;
  const front = net.createServer((s) => {
    open++;
    s.once('close', () => open--);
    s.once('readable', () => {
      const head = s.read(3) as Buffer | null;
      if (head) s.unshift(head);
      if (head?.toString() === 'PRI') h2.emit('connection', s);
      else h1.emit('connection', s);
    });
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
  const port = (front.address() as net.AddressInfo).port;
  return {
    name,
    port,
    open: () => open,
    seen,
    close: () => new Promise((r) => { front.close(() => r()); h1.closeAllConnections(); }),
  };
}

function objects(yamlText: string): KubeObject[] {
  return parseAllDocuments(yamlText).filter((d) => d.toJS() !== null).map((d) => {
    const v = validateObject(d.toJS());
    if (!v.ok) throw new Error(v.reason);
    return v.object;
  });
}

function serviceYaml(name: string, vip: string, ports: { port: number; target: number; name: string; appProtocol?: string }[]): string {
  return `apiVersion: v1
kind: Service
metadata: {name: ${name}, namespace: ${NS}}
spec:
  clusterIP: ${vip}
  ports: [${ports.map((p) => `{name: ${p.name}, port: ${p.port}, targetPort: ${p.target}${p.appProtocol ? `, appProtocol: ${p.appProtocol}` : ''}}`).join(', ')}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ${name}-1, namespace: ${NS}, labels: {kubernetes.io/service-name: ${name}}}
addressType: IPv4
ports: [${ports.map((p) => `{name: ${p.name}, port: ${p.target}}`).join(', ')}]
endpoints: [{addresses: [127.0.0.1], conditions: {ready: true}}]
---
`;
}

describe('L7 proxy (in process, loopback)', () => {
  let v1: Backend;
  let v2: Backend;
  let flaky: Backend;
  let slow: Backend;
  let mirror: Backend;
  let broken: http.Server;
  let front: net.Server;
  let frontPort: number;
  let state: MeshState;
  let metrics: Metrics;
  let proxy: L7Proxy;
  let base: string;
  let nextVersion = 1;
  const logs: Record<string, unknown>[] = [];
  /** The Service port the front listener pretends every connection was for. */
  let calledPort = 80;

  const setRoutes = (extra: string) => {
    state = compile(objects(base + extra), 'cluster.local', ++nextVersion, state);
  };

  beforeAll(async () => {
    v1 = await backend('v1');
    v2 = await backend('v2');
    flaky = await backend('flaky', (n) => ({ status: n % 2 === 0 ? 503 : 200 }));
    slow = await backend('slow', () => ({ delayMs: 1000 }));
    mirror = await backend('mirror');
    base = `apiVersion: v1
kind: Pod
metadata: {name: client, namespace: ${NS}, labels: {app: client}}
spec: {nodeName: n1, serviceAccountName: client, containers: [{name: c}]}
status: {podIP: 10.244.0.5}
---
${serviceYaml('echo', VIP, [{ name: 'http', port: 80, target: v1.port }, { name: 'grpc', port: 90, target: v1.port, appProtocol: 'kubernetes.io/h2c' }, { name: 'other', port: 91, target: v1.port }])}
${serviceYaml('echo-v1', '10.96.0.11', [{ name: 'http', port: 80, target: v1.port }])}
${serviceYaml('echo-v2', '10.96.0.12', [{ name: 'http', port: 80, target: v2.port }, { name: 'grpc', port: 90, target: v2.port, appProtocol: 'grpc' }])}
${serviceYaml('flaky', '10.96.0.13', [{ name: 'http', port: 80, target: flaky.port }])}
${serviceYaml('slow', '10.96.0.14', [{ name: 'http', port: 80, target: slow.port }])}
${serviceYaml('mirror', '10.96.0.15', [{ name: 'http', port: 80, target: mirror.port }])}
${serviceYaml('pair', '10.96.0.16', [{ name: 'http', port: 80, target: v1.port }]).replace('addresses: [127.0.0.1]', 'addresses: [127.0.0.1, 127.0.0.2]')}
`;
    // The pair's second endpoint: the same port on 127.0.0.2, always failing.
    broken = http.createServer((_req, res) => res.writeHead(503).end('broken'));
    await new Promise<void>((r) => broken.listen(v1.port, '127.0.0.2', r));
    state = compile(objects(base), 'cluster.local', 1);
    metrics = new Metrics({ defaultMetrics: false });
    const options: L7Options = {
      detectTimeoutMs: 100,
      opaquePorts: new Set([25]),
      limits: { maxHeaderBytes: 8 * 1024, maxHeaderCount: 50, maxConcurrentStreams: 100, headerTimeoutMs: 10_000, idleTimeoutMs: 60_000 },
      bodyCapBytes: 64 * 1024,
      mirrorTimeoutMs: 2000,
    };
    const accessLog = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line)) });
    proxy = new L7Proxy({
      options,
      state: () => state,
      open: (_src, ep) =>
        new Promise((resolve, reject) => {
          const s = net.connect(ep.port, ep.ip);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        }),
      metrics,
      logger: pino({ level: 'silent' }),
      accessLog,
      clock: systemClock,
      random: mulberry32(7),
    });
    front = net.createServer({ allowHalfOpen: true }, (socket) => {
      void (async () => {
        const svc = state.serviceByVip(VIP)!;
        const port = svc.ports.find((p) => p.port === calledPort)!;
        const sel = await proxy.select(socket, port);
        const src = state.workloads.get(`${NS}/client`)!;
        if (sel.protocol === 'tcp') {
          // Opaque: what the outbound path would splice; here a marker and the bytes the client sent, back.
          socket.write('opaque:');
          socket.pipe(socket);
          setTimeout(() => socket.end(), 50);
          return;
        }
        proxy.serve(socket, sel.protocol, src, svc, calledPort);
      })();
    });
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
    frontPort = (front.address() as net.AddressInfo).port;
  });

  afterAll(async () => {
    proxy?.close();
    front?.close();
    for (const b of [v1, v2, flaky, slow, mirror]) await b?.close();
    broken?.close();
  });

  afterEach(() => {
    calledPort = 80;
    setRoutes('');
  });

  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  function get(path: string, headers: http.OutgoingHttpHeaders = {}, method = 'GET', body?: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
    return new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: frontPort, path, method, headers: { host: 'echo.mesh', ...headers }, agent }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: text }));
      });
      req.on('error', reject);
      req.end(body);
    });
  }

  function raw(bytes: string, waitMs = 300): Promise<string> {
    return new Promise((resolve) => {
      const s = net.connect(frontPort, '127.0.0.1');
      let out = '';
      s.on('data', (c) => (out += c.toString('latin1')));
      s.on('error', () => undefined);
      s.on('close', () => resolve(out));
      s.write(bytes);
      setTimeout(() => s.destroy(), waitMs);
    });
  }

  it('forwards HTTP/1.1 with no route to the Service itself and counts the request', async () => {
    const r = await get('/hello?x=1', {}, 'POST', 'abc');
    expect(r.status).toBe(200);
    const body = JSON.parse(r.body);
    expect(body).toMatchObject({ name: 'v1', url: '/hello?x=1', body: 'abc' });
    expect(body.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    const m = parsePrometheus(await metrics.registry.metrics());
    expect(sumOf(m, 'trellis_requests_total', { destination_service: 'echo.mesh.svc.cluster.local', response_code: '200', reporter: 'source', route_name: '' })).toBeGreaterThanOrEqual(1);
    const line = logs.find((l) => l.msg === 'request' && l.path === '/hello');
    expect(line).toMatchObject({ method: 'POST', status: 200, dst: { service: 'echo.mesh.svc.cluster.local' } });
  });

  it('splits per request on one keep-alive connection by weight', async () => {
    setRoutes(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: ${NS}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
    - backendRefs: [{name: echo-v1, port: 80, weight: 70}, {name: echo-v2, port: 80, weight: 30}]
`);
    const counts: Record<string, number> = {};
    for (let i = 0; i < 200; i++) {
      const r = await get('/');
      counts[r.headers['x-backend'] as string] = (counts[r.headers['x-backend'] as string] ?? 0) + 1;
    }
    expect(counts.v1! + counts.v2!).toBe(200);
    expect(counts.v1! / 200).toBeGreaterThan(0.6);
    expect(counts.v1! / 200).toBeLessThan(0.8);
    const m = parsePrometheus(await metrics.registry.metrics());
    expect(sumOf(m, 'trellis_requests_total', { route_name: 'split', route_namespace: NS, route_rule: '0' })).toBe(200);
  });

  it('answers 404 when routes exist and none matches, and applies header filters and rewrites', async () => {
    setRoutes(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: paths, namespace: ${NS}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /v2}}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: x-set, value: one}], remove: [x-drop]}
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /api}}
        - type: ResponseHeaderModifier
          responseHeaderModifier: {add: [{name: x-added, value: yes}]}
      backendRefs: [{name: echo-v2, port: 80}]
`);
    expect((await get('/v2example')).status).toBe(404);
    const r = await get('/v2/items?q=1', { 'x-drop': 'gone' });
    expect(r.status).toBe(200);
    expect(r.headers['x-added']).toBe('yes');
    const body = JSON.parse(r.body);
    expect(body).toMatchObject({ name: 'v2', url: '/api/items?q=1' });
    expect(body.headers['x-set']).toBe('one');
    expect(body.headers['x-drop']).toBeUndefined();
  });

  it('redirects without reaching a backend', async () => {
    setRoutes(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: redir, namespace: ${NS}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
    - filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, statusCode: 301}}]
`);
    const before = v1.seen.length;
    const r = await get('/x?y=1');
    expect(r.status).toBe(301);
    expect(r.headers.location).toBe('http://example.org/x?y=1');
    expect(v1.seen.length).toBe(before);
  });

  it('retries 503 and hides a backend failing every second request', async () => {
    setRoutes(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: retry, namespace: ${NS}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
    - backendRefs: [{name: flaky, port: 80}]
      retry: {codes: [503], attempts: 2, backoff: 1ms}
`);
    for (let i = 0; i < 20; i++) expect((await get('/r', {}, 'POST', 'body')).status).toBe(200);
    expect(flaky.seen.filter((s) => s.body === 'body').length).toBeGreaterThanOrEqual(29);
    const m = parsePrometheus(await metrics.registry.metrics());
    expect(sumOf(m, 'trellis_request_retries_total', { destination_service: 'flaky.mesh.svc.cluster.local' })).toBeGreaterThanOrEqual(9);
  });

  it('turns a slow backend into 504 at timeouts.request', async () => {
    setRoutes(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: slow, namespace: ${NS}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
    - backendRefs: [{name: slow, port: 80}]
      timeouts: {request: 200ms}
`);
    const t0 = performance.now();
    const r = await get('/slow');
    const took = performance.now() - t0;
    expect(r.status).toBe(504);
    expect(took).toBeGreaterThanOrEqual(190);
    expect(took).toBeLessThan(900);
  });

  it('mirrors copies without changing the answer', async () => {
    setRoutes(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mirror, namespace: ${NS}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
    - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: mirror, port: 80}}}]
      backendRefs: [{name: echo-v1, port: 80}]
`);
    const before = mirror.seen.length;
    for (let i = 0; i < 5; i++) {
      const r = await get('/m', {}, 'POST', `copy-${i}`);
      expect(JSON.parse(r.body).name).toBe('v1');
    }
    for (let i = 0; i < 50 && mirror.seen.length < before + 5; i++) await new Promise((r) => setTimeout(r, 20));
    expect(mirror.seen.slice(before).map((s) => s.body).sort()).toEqual(['copy-0', 'copy-1', 'copy-2', 'copy-3', 'copy-4']);
  });

  it('ejects an endpoint after consecutive 5xx and balances onto the healthy one', async () => {
    setRoutes(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pair, namespace: ${NS}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
    - backendRefs: [{name: pair, port: 80}]
`);
    const statuses: number[] = [];
    for (let i = 0; i < 60; i++) statuses.push((await get('/p')).status);
    // At most 5 consecutive failures before the ejection (and P2C avoids a failing endpoint before that).
    expect(statuses.filter((s) => s === 503).length).toBeLessThanOrEqual(5);
    expect(statuses.slice(-30).every((s) => s === 200)).toBe(true);
    const m = parsePrometheus(await metrics.registry.metrics());
    const failures = statuses.filter((s) => s === 503).length;
    if (failures === 5) expect(sumOf(m, 'trellis_endpoint_ejections_total', { destination_service: 'pair.mesh.svc.cluster.local' })).toBe(1);
  });

  it('lets go of the pooled connections of a pod that leaves: idle ones close, the next request opens anew', async () => {
    await get('/warm');
    expect(v1.open()).toBeGreaterThanOrEqual(1);
    proxy.forget(`${NS}/client`);
    for (let i = 0; i < 50 && v1.open() > 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(v1.open()).toBe(0);
    expect((await get('/after')).status).toBe(200);
  });

  it('answers 500 for the share of a backendRef to a missing Service', async () => {
    setRoutes(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: missing, namespace: ${NS}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
    - backendRefs: [{name: nowhere, port: 80}]
`);
    expect((await get('/')).status).toBe(500);
  });

  it('refuses malformed and smuggling requests with 400 and oversized heads with 431, never forwarding them', async () => {
    const before = v1.seen.length;
    const bad = [
      'GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab',
      'GET / HTTP/1.1\r\nHost: a\rX-Bad: 1\r\n\r\n',
      'GET / HTTP/1.1\r\nHost : a\r\n\r\n',
    ];
    for (const b of bad) expect(await raw(b)).toMatch(/^HTTP\/1\.1 400 /);
    expect(await raw(`GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${'a'.repeat(10_000)}\r\n\r\n`)).toMatch(/^HTTP\/1\.1 431 /);
    const many = Array.from({ length: 60 }, (_, i) => `X-H${i}: v\r\n`).join('');
    expect(await raw(`GET / HTTP/1.1\r\nHost: a\r\n${many}\r\n`)).toMatch(/^HTTP\/1\.1 431 /);
    expect(v1.seen.length).toBe(before);
  });

  it('normalizes paths once: routes match and the backend receives the same canonical form; unsafe forms are 400', async () => {
    setRoutes(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: admin, namespace: ${NS}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /admin}}]
      backendRefs: [{name: echo-v2, port: 80}]
    - backendRefs: [{name: echo-v1, port: 80}]
`);
    for (const p of ['//admin', '/./admin', '/api/../admin', '/%61dmin', '/x/..//admin/']) {
      const r = await get(p);
      expect(r.status, p).toBe(200);
      const body = JSON.parse(r.body);
      expect(body.name, p).toBe('v2');
      expect(body.url, p).toMatch(/^\/admin\/?$/);
    }
    const before = v1.seen.length + v2.seen.length;
    for (const p of ['/admin%2F', '/admin%00', '/%2e%2e;/admin', '/a%zz']) expect((await get(p)).status, p).toBe(400);
    expect(v1.seen.length + v2.seen.length).toBe(before);
  });

  it('survives an HTTP/2 rapid-reset flood and keeps serving', async () => {
    calledPort = 90;
    // Raw frames: preface, SETTINGS, then 2000 x (HEADERS for a new stream + RST_STREAM CANCEL).
    const frame = (type: number, flags: number, stream: number, payload: Buffer) => {
      const h = Buffer.alloc(9);
      h.writeUIntBE(payload.length, 0, 3);
      h[3] = type;
      h[4] = flags;
      h.writeUInt32BE(stream, 5);
      return Buffer.concat([h, payload]);
    };
    // HPACK: :method GET (0x82), :scheme http (0x86), :path / (0x84), :authority "a" (literal, indexed name 1).
    const block = Buffer.from([0x82, 0x86, 0x84, 0x41, 0x01, 0x61]);
    const parts = [Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), frame(4, 0, 0, Buffer.alloc(0))];
    for (let id = 1; id < 4000; id += 2) {
      parts.push(frame(1, 0x4 | 0x1, id, block), frame(3, 0, id, Buffer.from([0, 0, 0, 8])));
    }
    const closed = await new Promise<boolean>((resolve) => {
      const s = net.connect(frontPort, '127.0.0.1', () => s.write(Buffer.concat(parts)));
      s.on('data', () => undefined);
      s.on('error', () => undefined);
      s.on('close', () => resolve(true));
      setTimeout(() => {
        s.destroy();
        resolve(false);
      }, 3000);
    });
    // Whether the session was cut or not, the proxy goes on serving new connections.
    void closed;
    const session = http2.connect(`http://127.0.0.1:${frontPort}`);
    try {
      const status = await new Promise<number>((resolve, reject) => {
        const st = session.request({ ':path': '/after-flood' });
        st.on('response', (h) => resolve(Number(h[':status'])));
        st.on('error', reject);
        st.end();
      });
      expect(status).toBe(200);
    } finally {
      session.close();
    }
  });

  it('carries a WebSocket-style Upgrade as opaque bytes after routing it', async () => {
    const out = await raw('GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nping-bytes', 500);
    expect(out).toMatch(/^HTTP\/1\.1 101 /);
    expect(out).toContain('ping-bytes');
  });

  it('sniffs: a client that sends nothing is opaque after the timeout; non-HTTP bytes are opaque at once', async () => {
    calledPort = 91;
    const t0 = performance.now();
    const silent = await new Promise<string>((resolve) => {
      const s = net.connect(frontPort, '127.0.0.1');
      let out = '';
      s.on('data', (c) => (out += c));
      s.on('close', () => resolve(out));
    });
    expect(silent).toBe('opaque:');
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(await raw('\x16\x03\x01hello')).toBe('opaque:\x16\x03\x01hello');
    // Bytes and FIN in one go: nothing is lost or delivered out of order.
    const early = await new Promise<string>((resolve) => {
      const s = net.connect(frontPort, '127.0.0.1', () => s.end('back'));
      let out = '';
      s.on('data', (c) => (out += c));
      s.on('close', () => resolve(out));
    });
    expect(early).toBe('opaque:back');
    const r = await get('/sniffed');
    expect(JSON.parse(r.body).url).toBe('/sniffed');
    // HTTP/2 with prior knowledge on an undeclared port: the preface is recognised and replayed.
    const session = http2.connect(`http://127.0.0.1:${frontPort}`);
    try {
      const body = await new Promise<string>((resolve, reject) => {
        const st = session.request({ ':path': '/h2-sniffed' });
        let text = '';
        st.on('data', (c) => (text += c));
        st.on('end', () => resolve(text));
        st.on('error', reject);
        st.end();
      });
      expect(JSON.parse(body).url).toBe('/h2-sniffed');
    } finally {
      session.close();
    }
    const m = parsePrometheus(await metrics.registry.metrics());
    expect(sumOf(m, 'trellis_protocol_detect_timeouts_total', {})).toBeGreaterThanOrEqual(1);
  });

  it('carries HTTP/2 and keeps gRPC trailers and grpc-status; GRPCRoute splits', async () => {
    calledPort = 90;
    setRoutes(`apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: ${NS}}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 90}]
  rules:
    - matches: [{method: {service: test.Echo, method: Echo}}]
      backendRefs: [{name: echo-v2, port: 90}]
`);
    const session = http2.connect(`http://127.0.0.1:${frontPort}`);
    try {
      const call = (path: string, status = '0', extra: http2.OutgoingHttpHeaders = {}) =>
        new Promise<{ headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders; body: string }>((resolve, reject) => {
          const st = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', 'x-grpc-status': status, ...extra });
          let headers: http2.IncomingHttpHeaders = {};
          let trailers: http2.IncomingHttpHeaders = {};
          let body = '';
          st.on('response', (h) => (headers = h));
          st.on('trailers', (t) => (trailers = t));
          st.on('data', (c) => (body += c));
          st.on('end', () => resolve({ headers, trailers, body }));
          st.on('error', reject);
          st.end('msg');
        });
      const ok = await call('/test.Echo/Echo');
      expect(ok.trailers['grpc-status']).toBe('0');
      expect(ok.trailers['x-trailer']).toBe('v2');
      const failed = await call('/test.Echo/Echo', '7');
      expect(failed.trailers['grpc-status']).toBe('7');
      const unmatched = await call('/test.Echo/Other');
      expect(unmatched.headers['grpc-status']).toBe('12');
      // A backend's trailers-only answer passes as it came, not as a reset.
      const only = await call('/test.Echo/Echo', '0', { 'x-trailers-only': '14' });
      expect(only.headers['grpc-status']).toBe('14');
      expect(only.headers['grpc-message']).toBe('down');
      // Plain HTTP/2 (not gRPC), many streams at once on one session: every response ends.
      setRoutes('');
      const bodies = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          new Promise<string>((resolve, reject) => {
            const st = session.request({ ':path': `/many/${i}` });
            let text = '';
            st.on('data', (c) => (text += c));
            st.on('end', () => resolve(text));
            st.on('error', reject);
            st.end();
          }),
        ),
      );
      expect(bodies.map((b) => JSON.parse(b).url).sort()).toEqual(Array.from({ length: 20 }, (_, i) => `/many/${i}`).sort());
      const m = parsePrometheus(await metrics.registry.metrics());
      expect(sumOf(m, 'trellis_requests_total', { request_protocol: 'grpc', grpc_response_status: '7', route_name: 'grpc' })).toBe(1);
    } finally {
      session.close();
    }
  });
});
