// Workload tools, in process on 127.0.0.1: the programs lab pods run must be right before they judge the mesh.
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startBanner } from '../../../lab/tools/banner.js';
import { startHttpEcho, type HttpEchoReply } from '../../../lab/tools/http-echo.js';
import { httpLoad } from '../../../lab/tools/http-load.js';
import type { ToolServer } from '../../../lab/tools/server.js';
import { parseTarget } from '../../../lab/tools/target.js';
import { tcpConnect } from '../../../lab/tools/tcp-connect.js';
import { startTcpEcho } from '../../../lab/tools/tcp-echo.js';
import { tcpSend } from '../../../lab/tools/tcp-send.js';
import { startTcpSink } from '../../../lab/tools/tcp-sink.js';
import { closedPort as closedPortOn } from '../../support/ports.js';

const host = '127.0.0.1';
const running: ToolServer[] = [];

async function started(server: Promise<ToolServer>): Promise<ToolServer> {
  const s = await server;
  running.push(s);
  return s;
}

const closedPort = () => closedPortOn(host);

afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.close()));
});

describe('tcp-send -> tcp-sink', () => {
  it('moves 5 MiB and the digests match', async () => {
    const lines: string[] = [];
    const sink = await started(startTcpSink({ host, port: 0, log: (l) => lines.push(l) }));
    expect(lines).toEqual([`tcp-sink listening on ${host}:${sink.port}`]);

    const bytes = 5 * 1024 * 1024;
    const outcome = await tcpSend({ host, port: sink.port, bytes });
    expect(outcome.exitCode).toBe(0);
    if (outcome.exitCode === 2) throw outcome.error;
    expect(outcome.report).toMatchObject({ sent: bytes, match: true });
    expect(outcome.report.reply).toBe(`sha256=${outcome.report.sha256} bytes=${bytes}`);
    expect(outcome.report.mbps).toBeGreaterThan(0);
  });

  it('sends the same bytes for the same seed, whatever the chunk size', async () => {
    const sink = await started(startTcpSink({ host, port: 0 }));
    const digest = async (seed: string, chunk: number): Promise<string> => {
      const o = await tcpSend({ host, port: sink.port, bytes: 300_001, seed, chunk });
      if (o.exitCode === 2) throw o.error;
      expect(o.report.match).toBe(true);
      return o.report.sha256;
    };
    const a = await digest('a', 65536);
    expect(await digest('a', 1000)).toBe(a);
    expect(await digest('b', 65536)).not.toBe(a);
  });

  it('exits 1 when the reply does not match, 2 when the connection fails', async () => {
    const echo = await started(startTcpEcho({ host, port: 0 }));
    const mismatch = await tcpSend({ host, port: echo.port, bytes: 100 });
    expect(mismatch.exitCode).toBe(1);
    if (mismatch.exitCode === 2) throw mismatch.error;
    expect(mismatch.report.match).toBe(false);

    const refused = await tcpSend({ host, port: await closedPort(), bytes: 100 });
    expect(refused.exitCode).toBe(2);
    if (refused.exitCode !== 2) throw new Error('expected a connection error');
    expect(refused.error.code).toBe('ECONNREFUSED');
  });
});

describe('tcp-echo', () => {
  it('echoes, then ends after the client half-closes', async () => {
    const echo = await started(startTcpEcho({ host, port: 0 }));
    const client = net.connect({ host, port: echo.port, allowHalfOpen: true });
    await once(client, 'connect');
    const chunks: Buffer[] = [];
    client.on('data', (c: Buffer) => chunks.push(c));
    client.write('first ');
    await once(client, 'data');
    expect(client.readableEnded).toBe(false);
    client.end('and last');
    await once(client, 'end');
    expect(Buffer.concat(chunks).toString()).toBe('first and last');
    client.destroy();
  });
});

describe('banner', () => {
  it('speaks first, without the client sending anything', async () => {
    const banner = await started(startBanner({ host, port: 0 }));
    const client = net.connect({ host, port: banner.port });
    const [first] = (await once(client, 'data')) as [Buffer];
    expect(first.toString()).toBe('220 trellis-banner ready\r\n');
    client.destroy();

    const custom = await started(startBanner({ host, port: 0, text: 'SSH-2.0-trellis' }));
    const outcome = await tcpConnect({ host, port: custom.port, send: 'ping' });
    expect(outcome).toMatchObject({ exitCode: 0, connected: true, received: 'SSH-2.0-trellis\r\nping' });
  });
});

describe('tcp-connect', () => {
  it('exits 3 on refused and 4 when the server never ends', async () => {
    expect(await tcpConnect({ host, port: await closedPort() })).toMatchObject({
      exitCode: 3,
      connected: false,
      code: 'ECONNREFUSED',
    });

    const silent = net.createServer({ allowHalfOpen: true }, (s) => s.on('error', () => {}));
    await new Promise<void>((resolve) => silent.listen(0, host, resolve));
    try {
      const { port } = silent.address() as net.AddressInfo;
      expect(await tcpConnect({ host, port, timeoutMs: 200 })).toMatchObject({
        exitCode: 4,
        connected: true,
        code: 'ETIMEDOUT',
      });
    } finally {
      silent.close();
    }
  });

  it('parses HOST:PORT and [v6]:PORT', () => {
    expect(parseTarget('10.0.0.1:80')).toEqual({ host: '10.0.0.1', port: 80 });
    expect(parseTarget('[fd00::1]:8080')).toEqual({ host: 'fd00::1', port: 8080 });
    expect(parseTarget('echo.default:7')).toEqual({ host: 'echo.default', port: 7 });
    expect(() => parseTarget('fd00::1:80')).toThrow(/HOST:PORT/);
    expect(() => parseTarget('host:0')).toThrow(/HOST:PORT/);
  });
});

describe('http-echo and http-load', () => {
  it('answers with who served the request', async () => {
    const server = await started(startHttpEcho({ host, port: 0, name: 'echo-1' }));
    const res = await fetch(`http://${host}:${server.port}/hello?x=1`, { method: 'POST', body: 'ignored' });
    expect(res.status).toBe(200);
    const reply = (await res.json()) as HttpEchoReply;
    expect(reply).toMatchObject({ name: 'echo-1', method: 'POST', url: '/hello?x=1' });
    expect(reply.headers.host).toBe(`${host}:${server.port}`);
  });

  it('sends exactly the requested count over keep-alive connections', async () => {
    const server = await started(startHttpEcho({ host, port: 0, name: 'echo-1' }));
    const outcome = await httpLoad({ url: `http://${host}:${server.port}/load`, count: 250, concurrency: 4 });
    expect(outcome.exitCode).toBe(0);
    expect(outcome.summary).toMatchObject({ sent: 250, ok: 250, failed: 0, statusCounts: { '200': 250 } });
    expect(outcome.summary.p50_ms).not.toBeNull();
    expect(outcome.summary.p99_ms!).toBeGreaterThanOrEqual(outcome.summary.p50_ms!);
  });

  it('holds no more connections than its concurrency', async () => {
    let connections = 0;
    const counting = http.createServer((req, res) => {
      req.resume();
      res.end('ok');
    });
    counting.on('connection', () => connections++);
    await new Promise<void>((resolve) => counting.listen(0, host, resolve));
    try {
      const { port } = counting.address() as net.AddressInfo;
      const outcome = await httpLoad({ url: `http://${host}:${port}/`, count: 60, concurrency: 3 });
      expect(outcome.summary.ok).toBe(60);
      expect(connections).toBeGreaterThan(0);
      expect(connections).toBeLessThanOrEqual(3);
    } finally {
      counting.closeAllConnections();
      counting.close();
    }
  });

  it('stops at the duration, and exits 2 when nothing succeeded', async () => {
    const server = await started(startHttpEcho({ host, port: 0, name: 'echo-1' }));
    const paced = await httpLoad({
      url: `http://${host}:${server.port}/`,
      count: 1000,
      durationS: 0.3,
      intervalMs: 50,
    });
    expect(paced.summary.sent).toBeGreaterThan(1);
    expect(paced.summary.sent).toBeLessThan(20);
    expect(paced.summary.ok).toBe(paced.summary.sent);

    const refused = await httpLoad({ url: `http://${host}:${await closedPort()}/`, count: 5, concurrency: 2 });
    expect(refused.exitCode).toBe(2);
    expect(refused.summary).toMatchObject({
      sent: 5,
      ok: 0,
      failed: 5,
      statusCounts: { ECONNREFUSED: 5 },
      p50_ms: null,
    });
  });
});
