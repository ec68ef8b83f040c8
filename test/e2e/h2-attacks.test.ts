// HTTP/2 attacks on both edges a client can reach: a meshed app's outbound port (15001, through a Service VIP) and
// a pod's inbound plaintext port (15006, from outside the mesh), with h2c prior knowledge on a port that declares
// HTTP. Each attack is raw frames on a connection of its own; the agent must end it (GOAWAY, or the stream reset and
// the connection closed) within a bounded time, keep serving a legitimate client meanwhile, and stay within a memory
// bound.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../agent/clock.js';
import { LocalCa } from '../../agent/identity/ca.js';
import { WorkloadCerts } from '../../agent/identity/certs.js';
import { clientTlsOptions } from '../../agent/identity/tls.js';
import { connectInNetns } from '../../agent/native/index.js';
import { Lab } from '../../lab/cluster/lab.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';
import { CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, PREFACE, RST_STREAM, SETTINGS, frame, hpackInt, literal } from '../support/h2-wire.js';

const fixtures = path.join(import.meta.dirname, 'fixtures', 'edges.yaml');

/** GET / with :authority web: :method GET, :scheme http, :path / from the static table, :authority by name index 1. */
const REQUEST = Buffer.concat([Buffer.from([0x82, 0x86, 0x84]), Buffer.from([0x41]), hpackInt(3, 7, 0), Buffer.from('web')]);

interface Outcome {
  ms: number;
  how: 'goaway' | 'closed' | 'open';
  goawayCode?: number;
  resets: number;
  /** When the first RST_STREAM came (a stream refused, the connection kept). */
  resetMs?: number;
  /** HEADERS frames received (responses). */
  responses: number;
}

describe('HTTP/2 attacks on the edges (two-node lab)', () => {
  const name = `ha${Math.random().toString(36).slice(2, 5)}`;
  let lab: Lab;

  beforeAll(async () => {
    requireRoot('HTTP/2 attack tests');
    lab = await Lab.up(fixtures, { name });
  });

  afterAll(async () => {
    await lab?.down();
  });

  const rssKb = async (node: string) => {
    const pid = (await lab.status()).nodes.find((n) => n.name === node)!.agent!.pid;
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
  };

  /** Opens a connection from `from`, sends the preface and then `attack`'s frames, and watches what comes back. */
  function attack(
    from: string,
    host: string,
    port: number,
    send: (write: (b: Buffer) => boolean) => Promise<void> | void,
    limitMs: number,
    secure?: tls.ConnectionOptions,
  ): Promise<Outcome> {
    return new Promise((resolve) => {
      const raw = connectInNetns(lab.pod(from).netnsPath, { host, port, timeoutMs: 3000 });
      // HBONE: mutual TLS first, as a meshed peer's agent would open it.
      const s = secure ? tls.connect({ ...secure, socket: raw, ALPNProtocols: ['h2'] }) : raw;
      raw.on('error', () => undefined);
      const started = performance.now();
      const out: Outcome = { ms: 0, how: 'open', resets: 0, responses: 0 };
      let buf = Buffer.alloc(0);
      let done = false;
      const finish = (how: Outcome['how']) => {
        if (done) return;
        done = true;
        out.how = how;
        out.ms = performance.now() - started;
        clearTimeout(timer);
        s.destroy();
        resolve(out);
      };
      const timer = setTimeout(() => finish('open'), limitMs);
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        while (buf.length >= 9) {
          const len = buf.readUIntBE(0, 3);
          if (buf.length < 9 + len) break;
          const type = buf[3]!;
          if (type === GOAWAY) {
            out.goawayCode = buf.readUInt32BE(9 + 4);
            finish('goaway');
            return;
          }
          if (type === RST_STREAM) {
            out.resets++;
            out.resetMs ??= performance.now() - started;
          }
          if (type === HEADERS) out.responses++;
          buf = buf.subarray(9 + len);
        }
      });
      s.on('error', () => finish('closed'));
      s.on('close', () => finish('closed'));
      s.on('end', () => finish('closed'));
      s.once(secure ? 'secureConnect' : 'connect', () => {
        s.write(Buffer.concat([PREFACE, frame(SETTINGS, 0, 0)]));
        void Promise.resolve(send((b) => (s.destroyed ? false : s.write(b)))).catch(() => undefined);
      });
    });
  }

  /** Each attack, given how to write and the request head (an HPACK block) its streams open with. */
  const ATTACKS: [string, (write: (b: Buffer) => boolean, request: Buffer) => Promise<void> | void][] = [
    [
      // CVE-2023-44487: open a stream and reset it at once, over and over.
      'rapid reset',
      (write, request) => {
        for (let id = 1; id < 20_000; id += 2) write(Buffer.concat([frame(HEADERS, END_HEADERS, id, request), frame(RST_STREAM, 0, id, Buffer.from([0, 0, 0, 8]))]));
      },
    ],
    [
      // CVE-2024-27316 class: a header block that never ends, one CONTINUATION after another.
      'CONTINUATION flood',
      (write, request) => {
        write(frame(HEADERS, 0, 1, request));
        const more = literal('x-flood', 'a'.repeat(1000), false);
        for (let i = 0; i < 5000; i++) if (!write(frame(CONTINUATION, 0, 1, more))) break;
      },
    ],
    [
      // A header block that decompresses far past the limits: one 4 KB entry in the dynamic table, then 4 000
      // one-byte references to it (16 MB of headers).
      'HPACK bomb',
      (write, request) => {
        const block = Buffer.concat([request, literal('x-bomb', 'b'.repeat(4000), true), Buffer.alloc(4000, 0xbe)]);
        write(frame(HEADERS, END_HEADERS | END_STREAM, 1, block));
      },
    ],
    [
      'SETTINGS flood',
      (write) => {
        for (let i = 0; i < 50_000; i++) if (!write(frame(SETTINGS, 0, 0, Buffer.from([0, 3, 0, 0, 0, 100])))) break;
      },
    ],
    [
      'PING flood',
      (write) => {
        for (let i = 0; i < 50_000; i++) if (!write(frame(PING, 0, 0, Buffer.alloc(8, i % 256)))) break;
      },
    ],
    [
      // MadeYouReset (CVE-2025-8671): frames that make the server reset streams itself (DATA on a half-closed
      // stream, a WINDOW_UPDATE of 0), over and over.
      'MadeYouReset',
      (write, request) => {
        for (let id = 1; id < 20_000; id += 2) write(Buffer.concat([frame(HEADERS, END_HEADERS | END_STREAM, id, request), frame(DATA, 0, id, Buffer.from('x'))]));
      },
    ],
  ];

  it('ends every attack within seconds on both edges, keeps serving a legitimate client, and stays within a memory bound', async () => {
    const web = lab.services.find((s) => s.name === 'web')!.clusterIP;
    const webPod = lab.pod('mesh/web').ip;
    await until('the mesh to answer', async () => (await lab.exec('mesh/client', ['trellis', 'tool', 'http-client', '--url', `http://${web}/warm`])).code === 0, 20_000);
    const before = { a: await rssKb('node-a'), b: await rssKb('node-b') };
    const legit = lab.exec('mesh/client', ['trellis', 'tool', 'http-client', '--http2', '--url', `http://${web}/legit`, '--count', '100000', '--concurrency', '2', '--interval-ms', '10', '--duration-s', '15'], { timeoutMs: 60_000 });
    const results: string[] = [];
    for (const [what, send] of ATTACKS) {
      for (const [edge, from, host, port] of [['15001', 'mesh/client', web, 80], ['15006', 'plain/outsider', webPod, 8080]] as const) {
        const o = await attack(from, host, port, (write) => send(write, REQUEST), 10_000);
        // Ended: the connection closed (GOAWAY or not), or the offending stream reset with no response to it.
        const ended = o.how !== 'open' ? `${o.how}${o.goawayCode !== undefined ? ` (GOAWAY code ${o.goawayCode})` : ''} after ${Math.round(o.ms)} ms` : o.resets > 0 && o.responses === 0 ? `stream reset after ${Math.round(o.resetMs!)} ms, connection kept` : 'still served';
        results.push(`${what} on ${edge}: ${ended}; ${o.resets} resets, ${o.responses} responses`);
      }
    }
    // A meshed peer on 15008: a certificate of the mesh (the lab's CA), HBONE CONNECT streams.
    const ca = LocalCa.loadOrCreate(path.join(lab.stateDir, 'ca'), 'cluster.local');
    const certs = new WorkloadCerts({ signer: ca, trustBundle: ca.rootCertPem, ttlMs: 3_600_000, clock: systemClock, logger: pino({ level: 'silent' }) });
    const svid = await certs.get('spiffe://cluster.local/ns/mesh/sa/client');
    certs.close();
    const connect = Buffer.concat([Buffer.from([0x42]), hpackInt(7, 7, 0), Buffer.from('CONNECT'), Buffer.from([0x41]), hpackInt(`${webPod}:8080`.length, 7, 0), Buffer.from(`${webPod}:8080`)]);
    // Every attack again from a meshed peer on 15008, its streams opened with CONNECT (HBONE), over mutual TLS.
    for (const [what, send] of ATTACKS) {
      const o = await attack('plain/outsider', webPod, 15008, (write) => send(write, connect), 10_000, clientTlsOptions(svid, 'spiffe://cluster.local/ns/mesh/sa/web'));
      const ended = o.how !== 'open' ? `${o.how}${o.goawayCode !== undefined ? ` (GOAWAY code ${o.goawayCode})` : ''} after ${Math.round(o.ms)} ms` : o.resets > 0 && o.responses === 0 ? `stream reset after ${Math.round(o.resetMs!)} ms, connection kept` : 'still served';
      results.push(`${what} from a meshed peer on 15008: ${ended}; ${o.resets} resets, ${o.responses} responses`);
    }
    const summary = JSON.parse((await legit).stdout.trim().split('\n').at(-1)!) as { sent: number; ok: number; failed: number; p99_ms: number };
    for (const n of (await lab.status()).nodes) {
      expect(n.agent?.alive, `${results.join('\n')}\nthe agent on ${n.name} died; its log ends:\n${lab.agentLog(n.name).split('\n').slice(-15).join('\n')}`).toBe(true);
    }
    const after = { a: await rssKb('node-a'), b: await rssKb('node-b') };
    console.log(`${results.join('\n')}\nlegitimate h2c client meanwhile: ${summary.ok}/${summary.sent} ok, p99 ${summary.p99_ms} ms; RSS node-a ${Math.round(before.a / 1024)} -> ${Math.round(after.a / 1024)} MB, node-b ${Math.round(before.b / 1024)} -> ${Math.round(after.b / 1024)} MB`);
    for (const r of results) expect(r, 'each attack is ended by the agent within 2 s').toMatch(/: (goaway \(GOAWAY code \d+\)|closed|stream reset) after (\d{1,3}|1\d{3}) ms/);
    expect(summary.failed).toBe(0);
    expect(summary.ok).toBeGreaterThan(500);
    expect(after.a - before.a, 'node-a RSS growth').toBeLessThan(80 * 1024);
    expect(after.b - before.b, 'node-b RSS growth').toBeLessThan(80 * 1024);
  });
});
