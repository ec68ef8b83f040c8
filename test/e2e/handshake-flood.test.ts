// A handshake flood on the HBONE listener (15008) from a pod outside the mesh: hundreds of TLS connections that
// present a certificate from a foreign CA, no certificate, or a mesh certificate that has expired, many at once.
// Each must be refused at the handshake (a TLS alert, never an HTTP/2 byte), each counted in
// trellis_peer_refusals_total; the agent stays up, within a CPU and memory bound, and meanwhile both a meshed
// client's requests and fresh handshakes with a valid mesh certificate succeed.
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import path from 'node:path';
import tls from 'node:tls';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../agent/clock.js';
import { LocalCa } from '../../agent/identity/ca.js';
import { WorkloadCerts, generateKey, makeCsr, type Svid } from '../../agent/identity/certs.js';
import { clientTlsOptions } from '../../agent/identity/tls.js';
import { connectInNetns } from '../../agent/native/index.js';
import { Lab } from '../../lab/cluster/lab.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const fixtures = path.join(import.meta.dirname, 'fixtures', 'edges.yaml');
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00', 'latin1');
/** Bad handshakes of each kind, and how many are in flight at once. */
const PER_KIND = 150;
const CONCURRENCY = 24;
/** Every few bad ones, a handshake with a valid mesh certificate that must get through. */
const GOOD_EVERY = 15;
const CLIENT_ID = 'spiffe://cluster.local/ns/mesh/sa/client';
const WEB_ID = 'spiffe://cluster.local/ns/mesh/sa/web';

type Kind = 'foreign-ca' | 'no-cert' | 'expired' | 'mesh';

interface Attempt {
  kind: Kind;
  /** The TLS alert / error code the client saw, 'answered' when the server spoke HTTP/2, or 'ok' for a served request. */
  outcome: string;
  ms: number;
}

/** A certificate for `identity` issued by `ca` for an hour from its clock's now (a CA on a clock in the past issues it expired). */
async function issue(ca: LocalCa, identity: string, caPem: string): Promise<Svid> {
  const key = await generateKey();
  const certPem = await ca.sign(makeCsr(identity, key), { identity, ttlMs: 3_600_000 });
  return { identity, certPem, keyPem: key.export({ type: 'pkcs8', format: 'pem' }) as string, caPem, notBefore: 0, notAfter: 0 };
}

describe('a TLS handshake flood with bad certificates on 15008 (two-node lab)', () => {
  const name = `hf${Math.random().toString(36).slice(2, 5)}`;
  let lab: Lab;

  beforeAll(async () => {
    requireRoot('the handshake flood');
    lab = await Lab.up(fixtures, { name });
  });

  afterAll(async () => {
    await lab?.down();
  });

  const agentPid = async (node: string) => (await lab.status()).nodes.find((n) => n.name === node)!.agent!.pid;
  const rssKb = async (node: string) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${await agentPid(node)}/status`, 'utf8'))![1]);
  /** CPU time (user + system) of the agent process, in ms. */
  const cpuMs = async (node: string) => {
    const fields = readFileSync(`/proc/${await agentPid(node)}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
  };
  const refusals = async () => sumOf(parsePrometheus(await lab.metrics('node-b')), 'trellis_peer_refusals_total', { direction: 'inbound' });

  it('refuses every bad handshake and counts it, stays up and keeps serving the mesh', async () => {
    const web = lab.services.find((s) => s.name === 'web')!.clusterIP;
    const webPod = lab.pod('mesh/web').ip;
    const from = lab.pod('plain/outsider').netnsPath;
    const served = (r: { stdout: string }) => (JSON.parse(r.stdout.trim().split('\n').at(-1) || '{}') as { ok?: number }).ok === 1;
    await until('the mesh to answer', async () => served(await lab.exec('mesh/client', ['trellis', 'tool', 'http-client', '--url', `http://${web}/warm`])), 20_000);

    // The certificates: the lab's own CA (a valid one, and one that expired yesterday), and a CA the mesh never trusted.
    const caDir = path.join(lab.stateDir, 'ca');
    const meshCa = LocalCa.loadOrCreate(caDir, 'cluster.local');
    const certs = new WorkloadCerts({ signer: meshCa, trustBundle: meshCa.rootCertPem, ttlMs: 3_600_000, clock: systemClock, logger: pino({ level: 'silent' }) });
    const valid = await certs.get(CLIENT_ID);
    certs.close();
    const yesterday: Clock = { now: () => Date.now() - 2 * 86_400_000, after: systemClock.after };
    const expired = await issue(LocalCa.load(caDir, { clock: yesterday }), CLIENT_ID, meshCa.rootCertPem);
    const foreignCa = LocalCa.generate({ trustDomain: 'cluster.local' });
    const foreign = await issue(foreignCa, CLIENT_ID, foreignCa.rootCertPem);

    const attempt = (kind: Kind): Promise<Attempt> =>
      new Promise((resolve) => {
        const started = performance.now();
        let settled = false;
        let s: tls.TLSSocket | undefined;
        const done = (outcome: string) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          s?.destroy();
          raw.destroy();
          resolve({ kind, outcome, ms: performance.now() - started });
        };
        const raw = connectInNetns(from, { host: webPod, port: 15008, timeoutMs: 5000 });
        const timer = setTimeout(() => done('timeout'), 10_000);
        raw.on('error', (e: NodeJS.ErrnoException) => done(`tcp ${e.code ?? e.message}`));
        if (kind === 'mesh') {
          // A peer of the mesh: mutual TLS with a valid certificate, a CONNECT to the web pod, one request through it.
          const t = (s = tls.connect({ ...clientTlsOptions(valid, WEB_ID), socket: raw }));
          t.on('error', (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
          const session = http2.connect(`https://${webPod}:15008`, { createConnection: () => t });
          session.on('error', (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
          const stream = session.request({ ':method': 'CONNECT', ':authority': `${webPod}:8080` });
          stream.on('error', (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
          let got = '';
          stream.on('response', (h) => {
            if (h[':status'] !== 200) return done(`CONNECT ${h[':status']}`);
            stream.write('GET /flood-meanwhile HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n');
          });
          stream.on('data', (d: Buffer) => {
            got += d.toString('latin1');
            if (got.includes('\r\n\r\n')) done(got.startsWith('HTTP/1.1 200') ? 'ok' : `answered ${got.slice(0, 12)}`);
          });
          return;
        }
        const cert = kind === 'foreign-ca' ? foreign : kind === 'expired' ? expired : undefined;
        const t = (s = tls.connect({
          socket: raw,
          ...(cert && { cert: cert.certPem, key: cert.keyPem }),
          rejectUnauthorized: false,
          minVersion: 'TLSv1.3',
          ALPNProtocols: ['h2'],
        }));
        t.on('error', (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
        // In TLS 1.3 the client finishes first; the server's verdict on its certificate comes as an alert on the next
        // read. A server that accepted would answer the preface with its SETTINGS.
        t.on('secureConnect', () => t.write(PREFACE));
        t.on('data', () => done('answered'));
        t.on('end', () => done('closed without an alert'));
      });

    const before = { refusals: await refusals(), rss: await rssKb('node-b'), cpu: await cpuMs('node-b') };
    // A meshed client calls the web Service through the whole flood (its agent's HBONE session to node-b).
    const legit = lab.exec('mesh/client', ['trellis', 'tool', 'http-client', '--url', `http://${web}/legit`, '--count', '100000', '--concurrency', '2', '--interval-ms', '10', '--duration-s', '12'], { timeoutMs: 60_000 });

    const queue: Kind[] = [];
    for (let i = 0; i < PER_KIND; i++) {
      queue.push('foreign-ca', 'no-cert', 'expired');
      if (i % GOOD_EVERY === 0) queue.push('mesh');
    }
    const results: Attempt[] = [];
    const floodStart = performance.now();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        for (let k = queue.shift(); k; k = queue.shift()) results.push(await attempt(k));
      }),
    );
    const floodMs = performance.now() - floodStart;
    const summary = JSON.parse((await legit).stdout.trim().split('\n').at(-1)!) as { sent: number; ok: number; failed: number; p99_ms: number };
    // After the flood: a new request from the meshed client still goes through.
    const afterwards = await lab.exec('mesh/client', ['trellis', 'tool', 'http-client', '--url', `http://${web}/after`]);

    const bad = results.filter((r) => r.kind !== 'mesh');
    // Refusals are counted when the agent ends the handshake; the last ones may land just after the clients saw them.
    await until('every refusal counted', async () => (await refusals()) - before.refusals >= bad.length, 5000).catch(() => undefined);
    const after = { refusals: await refusals(), rss: await rssKb('node-b'), cpu: await cpuMs('node-b') };

    const byKind: Record<string, Record<string, number>> = {};
    for (const r of results) {
      byKind[r.kind] ??= {};
      byKind[r.kind]![r.outcome] = (byKind[r.kind]![r.outcome] ?? 0) + 1;
    }
    const slowest = Math.max(...bad.map((r) => r.ms));
    const report = [
      `${bad.length} bad handshakes (${CONCURRENCY} at a time) in ${Math.round(floodMs)} ms (${Math.round((bad.length * 1000) / floodMs)}/s), slowest ${Math.round(slowest)} ms`,
      `outcomes: ${JSON.stringify(byKind)}`,
      `trellis_peer_refusals_total{direction="inbound"} on node-b: +${after.refusals - before.refusals}`,
      `meshed client meanwhile: ${summary.ok}/${summary.sent} ok, p99 ${summary.p99_ms} ms; afterwards: ${served(afterwards) ? 'ok' : afterwards.stdout}`,
      `node-b agent: CPU ${Math.round(after.cpu - before.cpu)} ms over the run (flood and meshed client), RSS ${Math.round(before.rss / 1024)} -> ${Math.round(after.rss / 1024)} MB`,
    ].join('\n');
    console.log(report);

    for (const n of (await lab.status()).nodes) {
      expect(n.agent?.alive, `${report}\nthe agent on ${n.name} died; its log ends:\n${lab.agentLog(n.name).split('\n').slice(-15).join('\n')}`).toBe(true);
    }
    // Each refused at the handshake, never an HTTP/2 byte. Without a certificate, OpenSSL sends the alert; a
    // certificate that fails verification is judged by Node after OpenSSL's handshake and the socket closed without
    // one (the client sees its TLS 1.3 handshake end, then the connection close).
    expect(byKind['no-cert'], report).toEqual({ ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED: PER_KIND });
    expect(byKind['foreign-ca'], report).toEqual({ 'closed without an alert': PER_KIND });
    expect(byKind['expired'], report).toEqual({ 'closed without an alert': PER_KIND });
    // The agent knew why: one log line per refusal, naming the reason.
    const reasons: Record<string, number> = {};
    for (const line of lab.agentLog('node-b').split('\n')) {
      if (!line.includes('"refused HBONE peer')) continue;
      const r = (JSON.parse(line) as { reason: string }).reason;
      reasons[r] = (reasons[r] ?? 0) + 1;
    }
    expect(reasons, report).toEqual({
      'the client presented no certificate': PER_KIND,
      'the client certificate is not authorized by the trust bundle: CERT_HAS_EXPIRED': PER_KIND,
      'the client certificate is not authorized by the trust bundle: UNABLE_TO_VERIFY_LEAF_SIGNATURE': PER_KIND,
    });
    // Valid mesh handshakes in the middle of the flood all get through and are served.
    expect(byKind['mesh'], report).toEqual({ ok: Math.ceil(PER_KIND / GOOD_EVERY) });
    expect(after.refusals - before.refusals, report).toBe(bad.length);
    expect(summary.failed, report).toBe(0);
    expect(summary.ok, report).toBeGreaterThan(300);
    expect(served(afterwards), `${report}\n${afterwards.stdout}${afterwards.stderr}`).toBe(true);
    // Bounded: every refusal within seconds even under the flood, and the agent's memory and CPU within a bound.
    expect(slowest, report).toBeLessThan(5000);
    expect(after.rss - before.rss, report).toBeLessThan(60 * 1024);
    expect(after.cpu - before.cpu, report).toBeLessThan(20_000);
  });
});
