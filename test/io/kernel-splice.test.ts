// The same-node kernel splice over loopback: the stream verdict program moves the bytes between two real sockets, and
// the agent passes FIN and reset itself, exactly. Needs root (BPF).
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelSplice } from '../../agent/io/kernel-splice.js';
import { splice, type SpliceHooks, type SpliceOutcome } from '../../agent/io/splice.js';
import { SAME_NODE_PROGRAM, SameNodeMaps } from '../../agent/native/index.js';
import { requireRoot } from '../support/root.js';
import { listenLocal, digestSink, resetter } from '../support/loopback.js';
import { until } from '../support/until.js';

const MB = 1024 * 1024;

function bpftool(kind: 'prog' | 'map', id: number): { name?: string; type?: string } | undefined {
  try {
    return JSON.parse(execFileSync('bpftool', ['-j', kind, 'show', 'id', String(id)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })) as never;
  } catch {
    return undefined;
  }
}

describe('KernelSplice', () => {
  let maps: SameNodeMaps;
  let kernel: KernelSplice;
  const servers: net.Server[] = [];
  // The apps: a sink answering the digest of what it read once the client half-closed; one resetting at the first bytes; an echo.
  const sink = digestSink();
  const resetApp = resetter();
  const source = net.createServer({ allowHalfOpen: true }, (s) => {
    // Sends 8 MB as soon as the client connects, then ends (a server that speaks first and most).
    s.on('error', () => undefined);
    s.end(Buffer.alloc(8 * MB, 7));
  });
  const ports: Record<string, number> = {};

  beforeAll(async () => {
    requireRoot('the kernel splice tests (BPF)');
    maps = SameNodeMaps.open();
    kernel = new KernelSplice(maps);
    ports.sink = await listenLocal(sink);
    ports.resetApp = await listenLocal(resetApp);
    ports.source = await listenLocal(source);
  });

  afterAll(() => {
    maps?.close();
    for (const s of [sink, resetApp, source, ...servers]) s.close();
  });

  /** A front port whose connections are spliced (in the kernel) to the app at `port`, as the same-node path does. */
  async function front(port: number, opts: { pauseOnConnect?: boolean; delayMs?: number } = {}) {
    const results: Promise<{ counts: [number, number]; outcome: SpliceOutcome; refused?: string }>[] = [];
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: opts.pauseOnConnect ?? false }, (down) => {
      down.on('error', () => undefined);
      results.push(
        (async () => {
          const up = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
          up.on('error', () => undefined);
          await new Promise((r) => up.once('connect', r));
          if (opts.delayMs) await new Promise((r) => setTimeout(r, opts.delayMs));
          const counts: [number, number] = [0, 0];
          const hooks: SpliceHooks = { downToUp: (n) => (counts[0] += n), upToDown: (n) => (counts[1] += n) };
          const r = await kernel.splice(down, up, hooks);
          if ('refused' in r) return { counts, outcome: await splice(down, up, hooks), refused: r.refused };
          return { counts, outcome: r.outcome };
        })(),
      );
    });
    servers.push(server);
    const p = await listenLocal(server);
    return { connect: () => net.connect({ host: '127.0.0.1', port: p, allowHalfOpen: true }), results };
  }

  it('moves 32 MB byte-identical, passes the half-close after the last byte, and counts exactly from the program', async () => {
    const { connect, results } = await front(ports.sink!);
    const payload = randomBytes(32 * MB);
    const sock = connect();
    let reply = '';
    sock.on('data', (d: Buffer) => (reply += d.toString()));
    const ended = new Promise((r) => sock.on('end', r));
    await new Promise((r) => sock.once('connect', r));
    // A little first, so the hand-over finds bytes already read by Node; then the rest in the kernel's hands.
    sock.write(payload.subarray(0, 1000));
    await new Promise((r) => setTimeout(r, 20));
    sock.end(payload.subarray(1000));
    await ended;
    const expected = `${createHash('sha256').update(payload).digest('hex')} ${payload.length}\n`;
    expect(reply).toBe(expected);
    sock.destroy();
    const r = await results[0]!;
    expect(r.refused).toBeUndefined();
    expect(r.outcome.error).toBeUndefined();
    expect(r.counts).toEqual([payload.length, expected.length]);
  });

  it('moves a server-first stream to its end, and the client reads all of it before its end', async () => {
    const { connect, results } = await front(ports.source!);
    const sock = connect();
    let n = 0;
    const h = createHash('sha256');
    sock.on('data', (d: Buffer) => { n += d.length; h.update(d); });
    await new Promise((r) => sock.on('end', r));
    sock.end();
    expect(n).toBe(8 * MB);
    expect(h.digest('hex')).toBe(createHash('sha256').update(Buffer.alloc(8 * MB, 7)).digest('hex'));
    const r = await results[0]!;
    expect(r.outcome.error).toBeUndefined();
    expect(r.counts).toEqual([0, 8 * MB]);
  });

  it('passes a reset from the server to the client', async () => {
    const { connect, results } = await front(ports.resetApp!);
    const sock = connect();
    await new Promise((r) => sock.once('connect', r));
    await new Promise((r) => setTimeout(r, 20));
    const failed = new Promise<NodeJS.ErrnoException | undefined>((r) => { sock.once('error', r); sock.once('close', () => r(undefined)); });
    sock.write('reset me');
    expect((await failed)?.code).toBe('ECONNRESET');
    const r = await results[0]!;
    expect(r.outcome.error).toBeDefined();
  });

  it('takes bytes that wait unread at the hand-over and sends them on first, losing none', async () => {
    // Node never read the client's bytes (paused on connect): they wait in the kernel, where the program would get them
    // only with the next arrival (the client waits for nothing here, but a client waiting for its answer would wait for
    // ever): the hand-over reads them itself and writes them on before the program takes over.
    const { connect, results } = await front(ports.sink!, { pauseOnConnect: true, delayMs: 50 });
    const sock = connect();
    let reply = '';
    sock.on('data', (d: Buffer) => (reply += d.toString()));
    await new Promise((r) => sock.once('connect', r));
    sock.write('waiting bytes');
    const ended = new Promise((r) => sock.on('end', r));
    await new Promise((r) => setTimeout(r, 150));
    sock.end(' and more');
    await ended;
    const expected = `${createHash('sha256').update('waiting bytes and more').digest('hex')} 22\n`;
    expect(reply).toBe(expected);
    const r = await results[0]!;
    expect(r.refused).toBeUndefined();
    expect(r.outcome.error).toBeUndefined();
    expect(r.counts).toEqual([22, expected.length]);
  });

  it('is one program on a sockhash, gone with its maps once closed', async () => {
    const own = SameNodeMaps.open();
    const ids = own.ids();
    expect(bpftool('prog', ids.program)).toMatchObject({ name: SAME_NODE_PROGRAM, type: 'sk_skb' });
    expect(bpftool('map', ids.sockets)?.type).toBe('sockhash');
    own.close();
    own.close();
    // The kernel frees them after a grace period (RCU, a work queue).
    await until('the program and its maps to be gone', async () => !bpftool('prog', ids.program) && !bpftool('map', ids.sockets) && !bpftool('map', ids.peers), 5000);
  });
});
