// The bench's load tools, in process on 127.0.0.1: counts, framing, and that open-loop latency counts from
// when a request was due (a stalled server shows up in every request queued behind it).
import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { bulkSend } from '../../../lab/tools/bulk-send.js';
import { connHold } from '../../../lab/tools/conn-hold.js';
import { connRate } from '../../../lab/tools/conn-rate.js';
import { httpBench } from '../../../lab/tools/http-bench.js';
import { startHttpEcho } from '../../../lab/tools/http-echo.js';
import { serve, type ToolServer } from '../../../lab/tools/server.js';
import { waitHttp } from '../../../lab/tools/wait-http.js';
import { closedPort as closedPortOn } from '../../support/ports.js';

const host = '127.0.0.1';
const running: ToolServer[] = [];

async function echo(): Promise<string> {
  const s = await startHttpEcho({ host, port: 0, name: 'e', bodyBytes: 1024 });
  running.push(s);
  return `http://${host}:${s.port}/`;
}

async function custom(handler: http.RequestListener): Promise<string> {
  const s = await serve('custom', http.createServer(handler), { host, port: 0 });
  running.push(s);
  return `http://${host}:${s.port}/`;
}

const closedPort = () => closedPortOn(host);

afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.close()));
});

describe('http-echo --body-bytes', () => {
  it('answers with exactly that many bytes', async () => {
    const url = await echo();
    const body = await new Promise<Buffer>((resolve, reject) => {
      http.get(url, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve(Buffer.concat(chunks)));
      }).on('error', reject);
    });
    expect(body.length).toBe(1024);
  });
});

describe('http-bench', () => {
  it('sends exactly rate x duration measured requests, warm-up answered but not counted', async () => {
    const r = await httpBench({ url: await echo(), rate: 200, durationS: 0.5, warmupS: 0.1, connections: 4 });
    expect(r).toMatchObject({ mode: 'open', target_rps: 200, sent: 100, ok: 100, errors: 0, completed_total: 120 });
    expect(r.p50_ms).toBeGreaterThan(0);
    expect(r.p999_ms).toBeGreaterThanOrEqual(r.p50_ms!);
    expect(r.max_ms).toBeGreaterThanOrEqual(r.p999_ms!);
  });

  it('counts latency from the due time: a 300 ms stall shows in the requests queued behind it', async () => {
    let n = 0;
    const url = await custom((req, res) => {
      req.resume();
      const stall = ++n === 10 ? 300 : 0;
      setTimeout(() => res.end('ok'), stall);
    });
    const r = await httpBench({ url, rate: 100, durationS: 1, connections: 1 });
    expect(r.ok).toBe(100);
    // About 30 requests were due while the 10th was stalled; measured from their own send they would be fast.
    expect(r.p90_ms).toBeGreaterThan(150);
    expect(r.max_ms).toBeGreaterThan(280);
  });

  it('reports the throughput a slower target delivered, also when the warm-up backlog fills the window', async () => {
    // One connection to a server that takes 20 ms per request: at most ~50 responses/s for 200 offered.
    const url = await custom((req, res) => {
      req.resume();
      setTimeout(() => res.end('ok'), 20);
    });
    const r = await httpBench({ url, rate: 200, durationS: 0.5, warmupS: 0.3, connections: 1 });
    expect(r).toMatchObject({ sent: 100, ok: 100, errors: 0, completed_total: 160 });
    // The 60 warm-up requests alone take ~1.2 s to answer: every response inside the window is one of them.
    expect(r.achieved_rps).toBeGreaterThan(25);
    expect(r.achieved_rps).toBeLessThan(60);
  });

  it('runs closed loop with rate 0', async () => {
    const r = await httpBench({ url: await echo(), rate: 0, durationS: 0.3, connections: 2 });
    expect(r.mode).toBe('closed');
    expect(r.target_rps).toBeNull();
    expect(r.ok).toBeGreaterThan(10);
    expect(r.errors).toBe(0);
    expect(r.achieved_rps).toBeGreaterThan(0);
  });

  it('counts error statuses and refused connections, and still ends in bounded time', async () => {
    const url = await custom((req, res) => {
      req.resume();
      res.statusCode = 503;
      res.end();
    });
    const r = await httpBench({ url, rate: 100, durationS: 0.2, connections: 2 });
    expect(r.ok).toBe(0);
    expect(r.error_counts).toEqual({ 503: 20 });

    const started = Date.now();
    const refused = await httpBench({ url: `http://${host}:${await closedPort()}/`, rate: 100, durationS: 0.2, connections: 2, timeoutMs: 1000 });
    expect(refused.ok).toBe(0);
    expect(refused.errors).toBe(20);
    expect(Date.now() - started).toBeLessThan(10_000);
  });
});

describe('bulk-send, conn-rate, conn-hold, wait-http', () => {
  it('bulk-send streams chunked POST bodies on N connections and counts what the server read', async () => {
    const r = await bulkSend({ url: await echo(), streams: 2, durationS: 0.3 });
    expect(r.ok_streams).toBe(2);
    expect(r.bytes).toBeGreaterThan(1024 * 1024);
    expect(r.gbps).toBeGreaterThan(0);
    expect(r.error_counts).toEqual({});
  });

  it('conn-rate opens one connection per request', async () => {
    const r = await connRate({ url: await echo(), durationS: 0.3, concurrency: 4 });
    expect(r.errors).toBe(0);
    expect(r.ok).toBe(r.connections);
    expect(r.connections).toBeGreaterThan(4);
    expect(r.conn_per_s).toBeGreaterThan(0);
  });

  it('conn-hold opens N answered connections, reports ready, holds until released', async () => {
    const url = await echo();
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let ready: unknown;
    const done = connHold({ url, count: 50, holdS: 30 }, (r) => {
      ready = r;
      release();
    }, released);
    const r = await done;
    expect(ready).toMatchObject({ open: 50, failed: 0 });
    expect(r).toMatchObject({ open: 50, failed: 0, closed_while_held: 0 });
  });

  it('wait-http waits for an answer, or for the lack of one', async () => {
    const url = await echo();
    const firsts: string[] = [];
    const ok = await waitHttp({ url, timeoutS: 5 }, (f) => firsts.push(f));
    expect(ok).toMatchObject({ met: true, tries: 1, last: '200' });
    expect(firsts).toEqual(['200']);
    const dead = `http://${host}:${await closedPort()}/`;
    expect(await waitHttp({ url: dead, timeoutS: 5, until: 'fail' })).toMatchObject({ met: true, last: 'ECONNREFUSED' });
    const never = await waitHttp({ url: dead, timeoutS: 0.2, intervalMs: 10 });
    expect(never.met).toBe(false);
    expect(never.at_ms).toBeNull();
  });
});
