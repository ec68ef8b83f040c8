// Egress end to end (issue 16), in a lab with its internet (198.18.0.0/15 in a netns of its own, reached through the
// nodes): TLS servers with a certificate made here at run time for two names, and an HTTP server. From a meshed pod:
// HTTPS to a declared host is counted under its SNI name, and the client gets the server's own certificate (TLS is
// not terminated); under Deny an undeclared host is refused with a reset and logged; a forged SNI (a declared name
// at another address), an absent SNI, a garbled hello, opaque bytes and a silent client never pass and never reach
// the internet; a namespace without an EgressNetwork is seen (the real name in the access line, `unknown` in the
// metrics), plaintext HTTP by its Host; `trellis tap` shows egress as the access line does. Needs root.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KubeObject } from '../../agent/model/objects.js';
import { Lab } from '../../lab/cluster/lab.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../..');
const PEERS = path.join(ROOT, 'test/support/egress-peers.mjs');
const fixtures = path.join(import.meta.dirname, 'fixtures', 'egress.yaml');
const NODE = 'node-a';
const API = '198.18.0.10';
const EVIL = '198.18.0.20';
const PLAIN = '198.18.0.30';

let lab: Lab;
let labName: string;
let certDir: string;
let fingerprint: string;
let servers: ChildProcess;
/** What the internet's servers printed: one JSON line per accepted connection. */
let serverOut = '';

interface AccessLine {
  direction: string;
  src: { workload?: string };
  dst: { ip?: string; port?: number; host?: string };
  egress?: { network?: string; policy?: string; host?: string; named_by?: string; name_problem?: string };
  bytes_received: number;
  bytes_sent: number;
  authz?: { decision: string; code: string; action: string; policy?: string; reason?: string };
}

function accessLines(from: number): AccessLine[] {
  return lab
    .agentLog(NODE)
    .slice(from)
    .split('\n')
    .filter((l) => l.includes('"log":"access"') && l.includes('"egress"'))
    .map((l) => JSON.parse(l) as AccessLine);
}
const logMark = () => lab.agentLog(NODE).length;
const accepted = (addr: string) => serverOut.split('\n').filter((l) => l.includes(`"accepted":"${addr}"`)).length;

/** Runs egress-peers.mjs in a pod and returns its JSON line. */
async function peer<T = Record<string, unknown>>(pod: string, args: string[]): Promise<T> {
  const r = await lab.exec(pod, [process.execPath, PEERS, ...args], { timeoutMs: 20_000 });
  const line = r.stdout.trim().split('\n').at(-1) ?? '';
  try {
    return JSON.parse(line) as T;
  } catch {
    throw new Error(`egress-peers ${args.join(' ')} in ${pod} printed no JSON (exit ${r.code}): ${r.stdout} ${r.stderr}`);
  }
}

async function metric(name: string, match: Record<string, string>): Promise<number> {
  return sumOf(parsePrometheus(await lab.metrics(NODE)), name, match);
}

/** A ClientHello as a client would send it, with its handshake length made wrong (a garbled hello). */
async function garbledHello(): Promise<string> {
  const { Duplex } = await import('node:stream');
  const tls = await import('node:tls');
  const hello = await new Promise<Buffer>((resolve) => {
    const wire = new Duplex({ read() {}, write: (c: Buffer, _e, cb) => (resolve(c), cb()) });
    const c = tls.connect({ socket: wire, servername: 'api.example.com', rejectUnauthorized: false });
    c.on('error', () => undefined);
  });
  const b = Buffer.from(hello);
  b.writeUInt8(0xff, 7); // The ClientHello's 24-bit length now runs far past the record.
  return b.toString('hex');
}

// Local mode (`--source dir`) and cluster mode (`--source kube`: the EgressNetwork and the route through a real API
// server, Gateway API's experimental channel for the route's rule names and retry).
describe.each(['dir', 'kube'] as const)('egress (one-node lab with an internet, --source %s)', (mode) => {
  beforeAll(async () => {
    requireRoot('the egress end-to-end tests');
    labName = `eg${mode[0]}${Math.random().toString(36).slice(2, 5)}`;
    serverOut = '';
    // A self-signed certificate for two names, made now and removed after: never committed.
    certDir = mkdtempSync(path.join(os.tmpdir(), 'trellis-egress-'));
    await run('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', '/CN=api.example.com', '-addext', 'subjectAltName=DNS:api.example.com,DNS:evil.example.net',
      '-keyout', path.join(certDir, 'key.pem'), '-out', path.join(certDir, 'cert.pem'),
    ]);
    fingerprint = new X509Certificate(readFileSync(path.join(certDir, 'cert.pem'))).fingerprint256;
    lab = await Lab.up(fixtures, { name: labName, logLevel: 'info', internet: true, ...(mode === 'kube' && { cluster: { gatewayChannel: 'experimental' } }) });
    servers = lab.spawnInInternet([process.execPath, PEERS, 'serve', path.join(certDir, 'cert.pem'), path.join(certDir, 'key.pem'), API, EVIL, '--', PLAIN]);
    servers.stdout!.on('data', (d: Buffer) => (serverOut += d.toString()));
    servers.stderr!.on('data', (d: Buffer) => (serverOut += d.toString()));
    await until('the internet servers to listen', async () => serverOut.includes('"ready":true'), 15_000);
  }, 600_000);

  afterAll(async () => {
    await lab?.down();
    if (certDir) rmSync(certDir, { recursive: true, force: true });
  }, 60_000);

  it('counts HTTPS to a declared host under its SNI name, without terminating TLS', async () => {
    const mark = logMark();
    const r = await peer<{ reply: string; fingerprint: string }>('egress/client', ['tls', API, 'api.example.com']);
    expect(r.reply).toBe(`${API} api.example.com`);
    // The server's own certificate reached the client: the agent never held a key for it.
    expect(r.fingerprint).toBe(fingerprint);
    const labels = { reporter: 'source', source_workload: 'client', source_workload_namespace: 'egress', destination_workload: 'egress', destination_workload_namespace: 'egress', destination_service: 'api.example.com' };
    await until('the connection to be counted', async () => (await metric('trellis_tcp_connections_closed_total', labels)) === 1);
    expect(await metric('trellis_tcp_connections_opened_total', labels)).toBe(1);
    // The server's reply is what the app read (payload bytes, TLS records included: the agent sees TLS as bytes).
    expect(await metric('trellis_tcp_sent_bytes_total', labels)).toBeGreaterThan(`${API} api.example.com\n`.length);
    const lines = await until('its access line', async () => {
      const l = accessLines(mark).filter((x) => x.dst.ip === API);
      return l.length > 0 && l;
    });
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      direction: 'outbound',
      src: { workload: 'egress/client' },
      dst: { ip: API, port: 443, host: 'api.example.com' },
      egress: { network: 'egress/internet', policy: 'Deny', host: 'api.example.com', named_by: 'sni' },
    });
    expect(lines[0]!.authz).toBeUndefined();
  });

  it('refuses an undeclared host under Deny with a reset and logs it; the internet never sees it', async () => {
    const mark = logMark();
    const before = accepted(EVIL);
    const r = await peer<{ error?: string }>('egress/client', ['tls', EVIL, 'evil.example.net']);
    expect(r.error).toBe('ECONNRESET');
    const lines = await until('the refusal line', async () => {
      const l = accessLines(mark).filter((x) => x.dst.ip === EVIL);
      return l.length > 0 && l;
    });
    expect(lines[0]).toMatchObject({
      dst: { ip: EVIL, port: 443, host: 'evil.example.net' },
      egress: { network: 'egress/internet', policy: 'Deny', named_by: 'sni' },
      bytes_received: 0,
      bytes_sent: 0,
      authz: { decision: 'deny', code: 'egress_undeclared_host', action: 'egress', policy: 'egress/internet', reason: 'EgressNetwork egress/internet denies undeclared egress and evil.example.net is not one of its hosts' },
    });
    expect(await metric('trellis_authz_decisions_total', { decision: 'deny', action: 'egress', policy: 'egress/internet', reason: 'egress_undeclared_host' })).toBe(1);
    expect(accepted(EVIL)).toBe(before);
  });

  it('never lets a forged, absent or garbled SNI, opaque bytes or a silent client past Deny', async () => {
    const mark = logMark();
    const reached = { api: accepted(API), evil: accepted(EVIL) };
    // A declared name at an address it is not declared at.
    expect(await peer('egress/client', ['tls', EVIL, 'api.example.com'])).toEqual({ error: 'ECONNRESET' });
    // No SNI at all (a client dialling an address sends none).
    expect(await peer('egress/client', ['tls', API, '-'])).toEqual({ error: 'ECONNRESET' });
    // A hello whose length runs past its record.
    expect(await peer('egress/client', ['raw', API, '443', await garbledHello()])).toEqual({ error: 'ECONNRESET' });
    // Bytes that are neither TLS nor HTTP, and a client that sends nothing (let go at the detection timeout).
    expect(await peer('egress/client', ['raw', API, '443', Buffer.from('SSH-2.0-x\r\n').toString('hex')])).toEqual({ error: 'ECONNRESET' });
    expect(await peer('egress/client', ['raw', API, '443', '-'])).toEqual({ error: 'ECONNRESET' });
    const lines = await until('five refusal lines', async () => {
      const l = accessLines(mark);
      return l.length >= 5 && l;
    });
    expect(lines.map((l) => [l.dst.ip, l.dst.host, l.authz?.code])).toEqual([
      [EVIL, 'api.example.com', 'egress_wrong_address'],
      [API, undefined, 'egress_no_name'],
      [API, undefined, 'egress_no_name'],
      [API, undefined, 'egress_no_name'],
      [API, undefined, 'egress_no_name'],
    ]);
    expect(lines[0]!.authz!.reason).toBe(`api.example.com is declared at 198.18.0.10/32 in EgressNetwork egress/internet, but the connection goes to ${EVIL}`);
    expect(lines[1]!.egress!.name_problem).toBe('the ClientHello names no server');
    expect(lines[2]!.egress!.name_problem).toMatch(/ClientHello/);
    expect({ api: accepted(API), evil: accepted(EVIL) }).toEqual(reached);
  });

  it('allows plaintext HTTP to a declared host by its Host', async () => {
    const mark = logMark();
    expect(await peer('egress/client', ['http', PLAIN, 'plain.example.com', '/hello'])).toEqual({ status: 200, body: `${PLAIN} plain.example.com /hello` });
    expect(await peer('egress/client', ['http', PLAIN, 'other.example.com', '/hello'])).toMatchObject({ error: expect.stringMatching(/ECONNRESET|socket hang up/) });
    const lines = await until('two lines', async () => {
      const l = accessLines(mark).filter((x) => x.dst.ip === PLAIN);
      return l.length >= 2 && l;
    });
    expect(lines.map((l) => [l.dst.host, l.egress?.named_by, l.egress?.host, l.authz?.code])).toEqual([
      ['plain.example.com', 'host', 'plain.example.com', undefined],
      ['other.example.com', 'host', undefined, 'egress_undeclared_host'],
    ]);
  });

  it('sees egress of a namespace without an EgressNetwork: the real name in the access line, `unknown` in the metrics', async () => {
    const mark = logMark();
    const r = await peer<{ reply: string }>('open/client', ['tls', EVIL, 'evil.example.net']);
    expect(r.reply).toBe(`${EVIL} evil.example.net`);
    expect(await peer('open/client', ['http', PLAIN, 'www.example.org', '/x'])).toEqual({ status: 200, body: `${PLAIN} www.example.org /x` });
    const labels = { source_workload_namespace: 'open', destination_workload: 'egress', destination_workload_namespace: 'unknown', destination_service: 'unknown' };
    await until('both connections counted under unknown', async () => (await metric('trellis_tcp_connections_closed_total', labels)) === 2);
    const lines = await until('both lines', async () => {
      const l = accessLines(mark);
      return l.length >= 2 && l;
    });
    expect(lines.map((l) => [l.dst.ip, l.dst.host, l.egress])).toEqual([
      [EVIL, 'evil.example.net', { named_by: 'sni' }],
      [PLAIN, 'www.example.org', { named_by: 'host' }],
    ]);
    // No label value carries a name nobody declared.
    expect(await lab.metrics(NODE)).not.toMatch(/evil\.example\.net|www\.example\.org/);
  });

  it('applies an HTTPRoute timeout and retry to a declared egress host (parentRef to the EgressNetwork)', async () => {
    await lab.apply([
      {
        apiVersion: 'gateway.networking.k8s.io/v1',
        kind: 'HTTPRoute',
        metadata: { name: 'plain', namespace: 'egress' },
        spec: {
          parentRefs: [{ group: 'traffic.trellis.dev', kind: 'EgressNetwork', name: 'internet', port: 80 }],
          hostnames: ['plain.example.com'],
          rules: [
            { name: 'slow', matches: [{ path: { type: 'PathPrefix', value: '/slow' } }], timeouts: { request: '300ms' } },
            { name: 'flaky', matches: [{ path: { type: 'PathPrefix', value: '/flaky' } }], retry: { codes: [503], attempts: 1 } },
            { name: 'rest' },
          ],
        },
      } as unknown as KubeObject,
    ]);
    const routed = { reporter: 'source', route_namespace: 'egress', route_name: 'plain', destination_service: 'plain.example.com' };
    // In force once a request is counted under the route (the agents reload the objects on their own).
    await until('the route in force', async () => {
      const r = await peer<{ status?: number }>('egress/client', ['http', PLAIN, 'plain.example.com', '/hello']);
      return r.status === 200 && (await metric('trellis_requests_total', { ...routed, route_rule: 'rest' })) > 0;
    }, 20_000);
    const mark = logMark();
    // The server answers /slow after 3 s; the route's request timeout answers first.
    const slow = await peer<{ status: number; body: string }>('egress/client', ['http', PLAIN, 'plain.example.com', '/slow?ms=3000']);
    expect(slow.status).toBe(504);
    expect(await peer('egress/client', ['http', PLAIN, 'plain.example.com', '/slow?ms=10'])).toEqual({ status: 200, body: `${PLAIN} plain.example.com /slow` });
    await until('both counted', async () => (await metric('trellis_requests_total', { ...routed, route_rule: 'slow' })) === 2);
    expect(await metric('trellis_requests_total', { ...routed, route_rule: 'slow', response_code: '504' })).toBe(1);
    expect(await metric('trellis_requests_total', { ...routed, route_rule: 'slow', response_code: '200' })).toBe(1);
    const requests = await until('both request lines', async () => {
      const l = lab
        .agentLog(NODE)
        .slice(mark)
        .split('\n')
        .filter((x) => x.includes('"msg":"request"'))
        .map((x) => JSON.parse(x) as { status: number; path: string; route?: string; rule?: string; authority?: string; dst?: { ip?: string } })
        // Lines of the requests before the mark may still be on their way (access lines leave in batches).
        .filter((r) => r.path === '/slow');
      return l.length >= 2 && l;
    });
    expect(requests.map((r) => [r.status, r.route, r.rule, r.dst?.ip])).toEqual([
      [504, 'egress/plain', 'slow', PLAIN],
      [200, 'egress/plain', 'slow', PLAIN],
    ]);
    // A 503 is retried once, to the same address, and the client sees the retry's answer.
    expect(await peer('egress/client', ['http', PLAIN, 'plain.example.com', '/flaky?key=a'])).toEqual({ status: 200, body: `${PLAIN} ok` });
    await until('the retry counted', async () => (await metric('trellis_request_retries_total', { destination_service: 'plain.example.com' })) === 1);
    // Another host of the EgressNetwork has no route: still carried at L4 (and refused here, being undeclared).
    expect(await peer('egress/client', ['http', PLAIN, 'other.example.com', '/slow?ms=10'])).toMatchObject({ error: expect.any(String) });
  }, 60_000);

  it('shows egress in `trellis tap` as the access line does', async () => {
    const child = spawn(path.join(ROOT, 'node_modules/.bin/node'), [path.join(ROOT, 'dist/agent/main.js'), 'tap', 'egress/client', '--lab', labName, '--limit', '3', '--duration', '20s'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const done = new Promise<number | null>((resolve) => child.on('close', resolve));
    await until('the tap to open', async () => sumOf(parsePrometheus(await lab.metrics(NODE)), 'trellis_tap_streams', {}) === 1, 10_000);
    await peer('egress/client', ['tls', API, 'api.example.com']);
    await peer('egress/client', ['tls', EVIL, 'evil.example.net']);
    const code = await done;
    expect({ code, stderr }).toMatchObject({ code: 0 });
    const lines = stdout.trim().split('\n');
    expect(lines.filter((l) => l.startsWith('tcp '))).toHaveLength(3);
    expect(lines.find((l) => l.includes(' open'))).toMatch(new RegExp(`proxy=out src=\\S+ dst=${API}:443 src_wl=egress/client dst_wl=- dst_host=api.example.com tls=false open`));
    expect(lines.find((l) => l.includes(' close') && l.includes(API))).toMatch(/dst_host=api\.example\.com tls=false close duration=\S+ bytes-received=\d+B bytes-sent=\d+B/);
    expect(lines.find((l) => l.includes(EVIL))).toMatch(/dst_host=evil\.example\.net tls=false close .* authz=deny policy=egress\/internet reason=egress_undeclared_host error="denied by policy"/);
  });
});
