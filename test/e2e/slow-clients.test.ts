// Slow and idle HTTP/1.1 clients on both edges a client can reach: a meshed app's outbound port (15001, through a
// Service VIP) and a pod's inbound plaintext port (15006, from outside the mesh). A head sent a byte at a time is
// answered 408 and closed once --http-header-timeout has passed since its first byte; a connection with no request
// in flight is closed after --http-idle-timeout. Meanwhile a legitimate client is served in full, and the agents
// stay within a memory bound.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectInNetns } from '../../agent/native/index.js';
import { Lab } from '../../lab/cluster/lab.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const fixtures = path.join(import.meta.dirname, 'fixtures', 'edges.yaml');
const HEADER_TIMEOUT_MS = 2000;
const IDLE_TIMEOUT_MS = 3000;
/** The servers check their connections once a second, and a refused one lingers up to 2 s for the client's FIN. */
const SLACK_MS = 1500;
const SLOW = 100;
const IDLE = 25;
/** Above what the slow test opens from one source (SLOW / 2 + IDLE). */
const PER_SOURCE = 120;

interface Watched {
  opened: number;
  firstByte?: number;
  closed?: number;
  received: string;
  socket: net.Socket;
}

describe('slow and idle HTTP/1.1 clients (two-node lab)', () => {
  const name = `sl${Math.random().toString(36).slice(2, 5)}`;
  let lab: Lab;

  beforeAll(async () => {
    requireRoot('slow client tests');
    // One thread per agent: --max-connections-per-source counts per thread.
    lab = await Lab.up(fixtures, {
      name,
      agentArgs: ['--http-header-timeout', `${HEADER_TIMEOUT_MS}ms`, '--http-idle-timeout', `${IDLE_TIMEOUT_MS}ms`, '--max-connections-per-source', String(PER_SOURCE), '--workers', '1'],
    });
  });

  afterAll(async () => {
    await lab?.down();
  });

  const rssKb = async (node: string) => {
    const pid = (await lab.status()).nodes.find((n) => n.name === node)!.agent!.pid;
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
  };

  const open = (from: string, host: string, port: number): Promise<Watched> =>
    new Promise((resolve, reject) => {
      const socket = connectInNetns(lab.pod(from).netnsPath, { host, port, timeoutMs: 3000 });
      const w: Watched = { opened: performance.now(), received: '', socket };
      socket.on('data', (d: Buffer) => (w.received += d.toString('latin1')));
      // Closed by the agent: its FIN ('end'; the socket is half-open, so 'close' waits for this side), or a reset.
      for (const e of ['end', 'error', 'close']) socket.on(e, () => (w.closed ??= performance.now()));
      socket.once('connect', () => resolve(w));
      socket.once('error', reject);
    });

  it('closes heads sent a byte at a time (408) and idle connections on both edges, and serves a real client meanwhile', async () => {
    const web = lab.services.find((s) => s.name === 'web')!.clusterIP;
    const webPod = lab.pod('mesh/web').ip;
    await until('the mesh to answer', async () => (await lab.exec('mesh/client', ['trellis', 'tool', 'http-client', '--url', `http://${web}/warm`])).code === 0, 20_000);
    const rssBefore = { a: await rssKb('node-a'), b: await rssKb('node-b') };

    // Slow heads: half from the meshed client to the VIP (node-a's outbound port), half from outside the mesh to the
    // pod IP (node-b's inbound plaintext port). Idle: connected, one whole request answered, then nothing.
    const edges: [string, string, number][] = [['mesh/client', web, 80], ['plain/outsider', webPod, 8080]];
    const slow: Watched[] = [];
    const idle: Watched[] = [];
    for (const [from, host, port] of edges) {
      for (let i = 0; i < SLOW / 2; i++) slow.push(await open(from, host, port));
      for (let i = 0; i < IDLE; i++) idle.push(await open(from, host, port));
    }
    const head = Buffer.from('GET /slow HTTP/1.1\r\nHost: web\r\nx-slow: ', 'latin1');
    let step = 0;
    const drip = setInterval(() => {
      const byte = step < head.length ? head.subarray(step, step + 1) : Buffer.from('a');
      step++;
      for (const w of slow) {
        if (w.closed !== undefined || w.socket.destroyed) continue;
        w.firstByte ??= performance.now();
        w.socket.write(byte);
      }
    }, 250);
    for (const w of idle) w.socket.write('GET /idle HTTP/1.1\r\nHost: web\r\n\r\n');
    const idleAnswered = performance.now();

    try {
      // A legitimate client keeps going the whole time, through the same agents.
      const legit = await lab.exec('mesh/client', ['trellis', 'tool', 'http-client', '--url', `http://${web}/legit`, '--count', '100000', '--concurrency', '2', '--interval-ms', '10', '--duration-s', '6'], { timeoutMs: 30_000 });
      const summary = JSON.parse(legit.stdout.trim().split('\n').at(-1)!) as { sent: number; ok: number; failed: number; p99_ms: number };
      await until('every slow and idle connection to close', async () => [...slow, ...idle].every((w) => w.closed !== undefined), HEADER_TIMEOUT_MS + IDLE_TIMEOUT_MS + 2 * SLACK_MS).catch((err: Error) => {
        const open = (ws: Watched[], what: string) =>
          edges.map(([from], e) => `${what} from ${from}: ${ws.filter((w, i) => Math.floor(i / (ws.length / 2)) === e && w.closed === undefined).length} open, e.g. ${JSON.stringify(ws.find((w, i) => Math.floor(i / (ws.length / 2)) === e && w.closed === undefined)?.received.slice(0, 80))}`);
        throw new Error(`${err.message}: ${[...open(slow, 'slow'), ...open(idle, 'idle')].join('; ')}`);
      });
      const slowMs = slow.map((w) => w.closed! - w.firstByte!).sort((x, y) => x - y);
      const idleMs = idle.map((w) => w.closed! - idleAnswered).sort((x, y) => x - y);
      console.log(
        `legitimate client: ${summary.ok}/${summary.sent} ok, p99 ${summary.p99_ms} ms; ${SLOW} slow heads closed ${Math.round(slowMs[0]!)}-${Math.round(slowMs.at(-1)!)} ms after their first byte; ` +
          `${2 * IDLE} idle connections closed ${Math.round(idleMs[0]!)}-${Math.round(idleMs.at(-1)!)} ms after their answer; agent RSS node-a ${Math.round(rssBefore.a / 1024)} -> ${Math.round((await rssKb('node-a')) / 1024)} MB, node-b ${Math.round(rssBefore.b / 1024)} -> ${Math.round((await rssKb('node-b')) / 1024)} MB`,
      );
      expect(summary.failed).toBe(0);
      expect(summary.ok).toBeGreaterThan(200);
      for (const w of slow) expect(w.received, 'a slow head is answered 408').toMatch(/^HTTP\/1\.1 408 /);
      expect(slowMs[0]!).toBeGreaterThanOrEqual(HEADER_TIMEOUT_MS - 300);
      expect(slowMs.at(-1)!).toBeLessThan(HEADER_TIMEOUT_MS + 2 * SLACK_MS);
      for (const w of idle) expect(w.received, 'the idle connection got its one answer').toMatch(/^HTTP\/1\.1 200 /);
      expect(idleMs[0]!).toBeGreaterThanOrEqual(IDLE_TIMEOUT_MS - 300);
      expect(idleMs.at(-1)!).toBeLessThan(IDLE_TIMEOUT_MS + SLACK_MS);
      // What they cost: a few MB at most (each agent's RSS, under its idle trim).
      for (const node of ['node-a', 'node-b'] as const) expect((await rssKb(node)) - rssBefore[node === 'node-a' ? 'a' : 'b'], node).toBeLessThan(50 * 1024);
    } finally {
      clearInterval(drip);
      for (const w of [...slow, ...idle]) w.socket.destroy();
    }
  });

  it('resets plaintext connections from one source past --max-connections-per-source, and serves everyone else', async () => {
    const web = lab.services.find((x) => x.name === 'web')!.clusterIP;
    const webPod = lab.pod('mesh/web').ip;
    const failures = async () => sumOf(parsePrometheus(await lab.metrics('node-b')), 'trellis_connection_failures_total', { reason: 'source_limit' });
    const before = await failures();
    const held: Watched[] = [];
    let refusedAtConnect = 0;
    try {
      for (let i = 0; i < PER_SOURCE + 10; i++) {
        // A reset may arrive before the client saw its handshake complete: that one fails to connect.
        const w = await open('plain/outsider', webPod, 8080).catch(() => undefined);
        if (w) held.push(w);
        else refusedAtConnect++;
      }
      const reset = () => refusedAtConnect + held.filter((w) => w.closed !== undefined).length;
      await until('the ten past the limit to be reset', async () => reset() >= 10, 2000);
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(reset(), 'reset: exactly those past the limit').toBe(10);
      expect(held.slice(0, PER_SOURCE).every((w) => w.closed === undefined), 'the first ones stay open').toBe(true);
      expect((await failures()) - before).toBe(10);
      // Another source (a meshed client, over HBONE) is served meanwhile.
      const other = await lab.exec('mesh/client', ['trellis', 'tool', 'http-client', '--url', `http://${web}/other`, '--count', '20']);
      expect(JSON.parse(other.stdout.trim().split('\n').at(-1)!)).toMatchObject({ ok: 20, failed: 0 });
    } finally {
      for (const w of held) w.socket.destroy();
    }
    // Once its connections are gone, the source is served again.
    await until('the outsider to be served again', async () => {
      const r = await lab.exec('plain/outsider', ['trellis', 'tool', 'http-client', '--url', `http://${webPod}:8080/again`, '--count', '5']);
      return r.code === 0 && (JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { ok: number }).ok === 5;
    }, 5000);
  });
});
