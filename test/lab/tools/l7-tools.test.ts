// The L7 workload tools, in process on 127.0.0.1: the echo backends (HTTP/1.1, h2c, WebSocket, gRPC) and the
// clients that judge the mesh's L7 path must be right on their own first.
import { once } from 'node:events';
import net from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { startBanner } from '../../../lab/tools/banner.js';
import { grpcClient } from '../../../lab/tools/grpc-client.js';
import { startGrpcEcho } from '../../../lab/tools/grpc-echo.js';
import { httpClient } from '../../../lab/tools/http-client.js';
import { encodeFrame, startL7Echo, type EchoReply } from '../../../lab/tools/l7-echo.js';
import type { ToolServer } from '../../../lab/tools/server.js';
import { tcpRaw } from '../../../lab/tools/tcp-raw.js';
import { wsClient } from '../../../lab/tools/ws-client.js';
import { closedPort } from '../../support/ports.js';

const host = '127.0.0.1';
const running: ToolServer[] = [];

async function started(server: Promise<ToolServer>): Promise<ToolServer> {
  const s = await server;
  running.push(s);
  return s;
}

afterEach(async () => {
  vi.restoreAllMocks();
  await Promise.all(running.splice(0).map((s) => s.close()));
});

describe('l7-echo', () => {
  it('answers HTTP/1.1 and h2c on one port with what arrived', async () => {
    const echo = await started(startL7Echo({ host, port: 0, name: 'echo-v1' }));
    const url = `http://${host}:${echo.port}/some/path?animal=whale&x=1&x=2`;
    for (const http2 of [false, true]) {
      const r = await httpClient({ url, count: 1, http2, method: 'POST', headers: { 'X-Test': 'yes' }, body: 'hello', replies: 1 });
      expect(r).toMatchObject({ sent: 1, ok: 1, statusCounts: { '200': 1 }, names: { 'echo-v1': 1 } });
      const reply = r.replies![0]!.body as EchoReply;
      expect(reply).toMatchObject({
        name: 'echo-v1',
        method: 'POST',
        path: '/some/path',
        query: { animal: 'whale', x: ['1', '2'] },
        host: `${host}:${echo.port}`,
        protocol: http2 ? 'h2' : 'http/1.1',
        bodyLength: 5,
      });
      expect(reply.headers['x-test']).toBe('yes');
      // No HTTP/2 pseudo-header leaks into the echoed headers.
      expect(Object.keys(reply.headers).filter((k) => k.startsWith(':'))).toEqual([]);
      expect(r.replies![0]!.headers['x-echo-name']).toBe('echo-v1');
      expect(r.backendProtocols).toEqual({ [http2 ? 'h2' : 'http/1.1']: 1 });
    }
  });

  it('fails every Nth request, answers the status asked for, and delays when asked', async () => {
    const echo = await started(startL7Echo({ host, port: 0, name: 'flaky', failEvery: 3 }));
    const url = `http://${host}:${echo.port}/`;
    const r = await httpClient({ url, count: 30, concurrency: 3 });
    expect(r.statusCounts).toEqual({ '200': 20, '503': 10 });
    expect(r.nameStatus).toEqual({ 'flaky 200': 20, 'flaky 503': 10 });

    const plain = await started(startL7Echo({ host, port: 0, name: 'plain' }));
    const asked = await httpClient({ url: `http://${host}:${plain.port}/`, count: 2, headers: { 'x-echo-status': '418' }, http2: true });
    expect(asked.statusCounts).toEqual({ '418': 2 });
    const slow = await httpClient({ url: `http://${host}:${plain.port}/`, count: 1, headers: { 'x-echo-delay-ms': '300' } });
    expect(slow.p50_ms!).toBeGreaterThanOrEqual(290);
    const cut = await httpClient({ url: `http://${host}:${plain.port}/`, count: 1, headers: { 'x-echo-delay-ms': '2000' }, timeoutMs: 200 });
    expect(cut.statusCounts).toEqual({ ETIMEDOUT: 1 });
  });

  it('counts chunked bodies and lets 100-continue through', async () => {
    const echo = await started(startL7Echo({ host, port: 0, name: 'e' }));
    const url = `http://${host}:${echo.port}/upload`;
    const body = 'x'.repeat(100_001);
    const chunked = await httpClient({ url, count: 1, method: 'PUT', body, chunked: true, replies: 1 });
    expect(chunked.replies![0]!.body).toMatchObject({ bodyLength: 100_001, headers: { 'transfer-encoding': 'chunked' } });
    const expect100 = await httpClient({ url, count: 1, method: 'POST', body, headers: { expect: '100-continue' }, replies: 1 });
    expect(expect100.replies![0]!.body).toMatchObject({ bodyLength: 100_001, headers: { expect: '100-continue' } });
  });

  it('sends per-request specs in turn and keeps replies in request order', async () => {
    const echo = await started(startL7Echo({ host, port: 0, name: 'e' }));
    const r = await httpClient({
      url: `http://${host}:${echo.port}/`,
      count: 4,
      concurrency: 2,
      headers: { common: 'c' },
      requests: [{ path: '/a', headers: { version: 'one' } }, { path: '/b?q=1', method: 'DELETE' }],
      replies: 4,
    });
    expect(r.replies!.map((x) => [x.i, (x.body as EchoReply).method, (x.body as EchoReply).path, (x.body as EchoReply).headers.version])).toEqual([
      [0, 'GET', '/a', 'one'],
      [1, 'DELETE', '/b', undefined],
      [2, 'GET', '/a', 'one'],
      [3, 'DELETE', '/b', undefined],
    ]);
    expect(r.replies!.every((x) => (x.body as EchoReply).headers.common === 'c')).toBe(true);
  });

  it('keeps to its connections and counts failures without a response', async () => {
    const echo = await started(startL7Echo({ host, port: 0, name: 'e' }));
    let connections = 0;
    const counter = net.createServer((c) => {
      connections++;
      const up = net.connect(echo.port, host);
      c.pipe(up).pipe(c);
      c.on('error', () => up.destroy());
      up.on('error', () => c.destroy());
    });
    await new Promise<void>((resolve) => counter.listen(0, host, resolve));
    try {
      const port = (counter.address() as net.AddressInfo).port;
      const h1 = await httpClient({ url: `http://${host}:${port}/`, count: 60, concurrency: 3 });
      expect(h1.ok).toBe(60);
      expect(connections).toBeLessThanOrEqual(3);
      connections = 0;
      const h2 = await httpClient({ url: `http://${host}:${port}/`, count: 60, concurrency: 6, http2: true });
      expect(h2.backendProtocols).toEqual({ h2: 60 });
      expect(connections).toBe(1);
    } finally {
      counter.close();
    }
    const refused = await httpClient({ url: `http://${host}:${await closedPort(host)}/`, count: 3 });
    expect(refused).toMatchObject({ sent: 3, ok: 0, failed: 3, statusCounts: { ECONNREFUSED: 3 }, names: {} });
  });

  it('answers malformed requests and oversized headers itself, and logs that they came', async () => {
    const lines: string[] = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      lines.push(String(chunk));
      return true;
    });
    const echo = await started(startL7Echo({ host, port: 0, name: 'e', logRequests: true }));
    const bad = await tcpRaw({ host, port: echo.port, data: Buffer.from('GET /bare-cr HTTP/1.1\r\nHost: x\rX: y\r\n\r\n', 'latin1') });
    expect(bad.httpStatus).toBe(400);
    const big = await tcpRaw({ host, port: echo.port, data: Buffer.from(`GET /big HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(40_000)}\r\n\r\n`, 'latin1') });
    expect(big.httpStatus).toBe(431);
    const good = await tcpRaw({ host, port: echo.port, data: Buffer.from('GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', 'latin1') });
    expect(good).toMatchObject({ httpStatus: 200, end: 'eof' });
    vi.restoreAllMocks();
    const logged = lines.join('').trim().split('\n').map((l) => JSON.parse(l) as { event: string; raw?: string; path?: string; code?: string });
    expect(logged.map((l) => l.event)).toEqual(['client-error', 'client-error', 'request']);
    expect(logged[0]!.raw).toContain('/bare-cr');
    expect(logged[1]!.code).toBe('HPE_HEADER_OVERFLOW');
    expect(logged[2]!.path).toBe('/fine');
  });

  it('echoes WebSocket frames, text and binary, large and small', async () => {
    const echo = await started(startL7Echo({ host, port: 0, name: 'ws' }));
    const small = await wsClient({ url: `ws://${host}:${echo.port}/chat`, messages: 20 });
    expect(small).toMatchObject({ connected: true, sent: 20, echoed: 20, mismatched: 0, closeCode: 1000 });
    const large = await wsClient({ url: `ws://${host}:${echo.port}/chat`, messages: 4, size: 70_000 });
    expect(large).toMatchObject({ connected: true, echoed: 4, closeCode: 1000 });

    // A ping gets a pong, and a fragmented message comes back fragment by fragment.
    const s = net.connect(echo.port, host);
    await once(s, 'connect');
    s.write('GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
    let got = Buffer.alloc(0);
    s.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
    const mask = Buffer.from([1, 2, 3, 4]);
    s.write(Buffer.concat([encodeFrame(0x9, true, Buffer.from('p'), mask), encodeFrame(0x1, false, Buffer.from('ab'), mask), encodeFrame(0x0, true, Buffer.from('c'), mask)]));
    const want = Buffer.concat([encodeFrame(0xa, true, Buffer.from('p')), encodeFrame(0x1, false, Buffer.from('ab')), encodeFrame(0x0, true, Buffer.from('c'))]);
    for (let i = 0; i < 100 && !got.includes(want); i++) await new Promise((r) => setTimeout(r, 10));
    const text = got.toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    // RFC 6455's own example key and accept value.
    expect(text).toContain('Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
    expect(got.includes(want)).toBe(true);
    s.destroy();
  });
});

describe('grpc-echo and grpc-client', () => {
  it('answers with the name and a trailer, and fails with the status asked for', async () => {
    const server = await started(startGrpcEcho({ host, port: 0, name: 'grpc-v1' }));
    const ok = await grpcClient({ host, port: server.port, count: 20, concurrency: 4, body: 'abc', replies: 1 });
    expect(ok).toMatchObject({ sent: 20, ok: 20, statusCounts: { '0': 20 }, names: { 'grpc-v1': 20 }, trailers: { 'x-echo-trailer': { 'grpc-v1': 20 } } });
    expect(ok.replies![0]!.body).toMatchObject({ name: 'grpc-v1', method: '/trellis.test.Echo/Echo', bodyLength: 3 });

    const failing = await grpcClient({ host, port: server.port, count: 3, metadata: { 'x-echo-grpc-status': '14' }, method: '/trellis.test.Echo/Hello' });
    expect(failing).toMatchObject({ ok: 0, failed: 3, statusCounts: { '14': 3 }, names: { 'grpc-v1': 3 }, trailers: { 'x-echo-trailer': { 'grpc-v1': 3 } } });
    expect(failing.details).toEqual(['grpc-v1: status 14 as asked by x-echo-grpc-status']);
    // A trailers-only answer: its headers (content-type, date) are not counted as trailers.
    expect(Object.keys(failing.trailers)).toEqual(['x-echo-trailer']);

    const late = await grpcClient({ host, port: server.port, count: 1, metadata: { 'x-echo-delay-ms': '2000' }, timeoutMs: 200 });
    expect(late.statusCounts).toEqual({ '4': 1 });
    const unknown = await grpcClient({ host, port: server.port, count: 1, method: '/trellis.test.Nope/Echo' });
    expect(unknown.statusCounts).toEqual({ '12': 1 });
  });

  it('reports UNAVAILABLE when nothing listens', async () => {
    const r = await grpcClient({ host, port: await closedPort(host), count: 2, timeoutMs: 2000 });
    expect(r).toMatchObject({ sent: 2, ok: 0, statusCounts: { '14': 2 }, names: {} });
  });
});

describe('tcp-raw', () => {
  it('times the first byte of a server-first protocol and stops when it goes quiet', async () => {
    const banner = await started(startBanner({ host, port: 0 }));
    const r = await tcpRaw({ host, port: banner.port, idleMs: 200 });
    expect(r).toMatchObject({ connected: true, sent: 0, received: '220 trellis-banner ready\r\n', end: 'idle', httpStatus: null });
    expect(r.first_byte_ms!).toBeLessThan(100);
  });

  it('sends bytes as given, half-closes, and reads until the end', async () => {
    const echo = await started(startL7Echo({ host, port: 0, name: 'e' }));
    const r = await tcpRaw({ host, port: echo.port, data: Buffer.from('GET /x HTTP/1.1\r\nHost: h\r\n\r\n'), halfClose: true });
    expect(r).toMatchObject({ connected: true, httpStatus: 200, end: 'eof' });
    expect(r.received).toContain('"path":"/x"');
    const refused = await tcpRaw({ host, port: await closedPort(host) });
    expect(refused).toMatchObject({ connected: false, end: 'error' });
    expect(refused.error).toMatch(/^ECONNREFUSED/);
  });
});
