// The same-node path in one process over loopback: which destinations are local, an opaque connection carried in one
// splice and counted by both records, a DENY refusing it as the HBONE listener would (the client reset, both sides
// counted), a new DENY cutting it open, and the L7 tunnel (a byte pair) refused to an agent port.
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KubeObject } from '../../agent/model/objects.js';
import { ConnectionRecord } from '../../agent/proxy/connection.js';
import { Drain } from '../../agent/proxy/drain.js';
import type { InboundInputs } from '../../agent/proxy/inbound.js';
import { PolicyRecheck } from '../../agent/proxy/recheck.js';
import { SameNode } from '../../agent/proxy/same-node.js';
import { compile, type MeshState } from '../../agent/state/store.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { captureLogger } from '../support/logger.js';
import { TEST_TRUST_DOMAIN, listenLocal, loopbackWorkload, digestSink } from '../support/loopback.js';

const TD = TEST_TRUST_DOMAIN;
const client = loopbackWorkload('demo', 'client');
const server = loopbackWorkload('demo', 'server');

const denyClient = {
  apiVersion: 'security.trellis.dev/v1alpha1',
  kind: 'AuthorizationPolicy',
  metadata: { name: 'no-client', namespace: 'demo' },
  spec: { action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/demo/sa/client'] } }] }] },
} as unknown as KubeObject;

async function total(m: Metrics, name: string, labels: Record<string, string> = {}): Promise<number> {
  const values = (await m.registry.getSingleMetric(name)!.get()).values;
  return values.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((a, v) => a + v.value, 0);
}

describe('SameNode', () => {
  const { logger, lines } = captureLogger();
  let state: MeshState = compile([], TD, 1);
  const metrics = new Metrics({ defaultMetrics: false });
  const recheck = new PolicyRecheck();
  const sameNode = new SameNode({ metrics, logger });
  const inbound: InboundInputs = {
    pod: server,
    trustDomain: TD,
    state: () => state,
    dialApp: (_pod, ip, port) => net.connect({ host: ip, port, allowHalfOpen: true }),
    metrics,
    logger,
    accessLog: logger,
    drain: new Drain(),
    recheck,
  };
  // The app: a sink answering the digest of what it read once the client half-closed, or an echo on port `echoPort`.
  const sink = digestSink();
  const echo = net.createServer((s) => { s.on('error', () => undefined); s.pipe(s); });
  let sinkPort = 0;
  let echoPort = 0;
  const fronts: net.Server[] = [];
  let forget: () => void;

  beforeAll(async () => {
    sinkPort = await listenLocal(sink);
    echoPort = await listenLocal(echo);
    forget = sameNode.add(inbound);
  });

  afterAll(() => {
    sink.close();
    echo.close();
    for (const f of fronts) f.close();
  });

  /** What outbound.ts does: each connection accepted on a front port is carried to the app at `port`. */
  async function front(port: number) {
    const refusals: string[] = [];
    const records: ConnectionRecord[] = [];
    const listener = net.createServer({ allowHalfOpen: true }, (down) => {
      down.on('error', () => undefined);
      void sameNode.carry(inbound, down, client, { ip: '127.0.0.1', port, service: 'server.demo.svc.cluster.local' }, 'tcp', {
        opened: () => {
          const r = new ConnectionRecord({ direction: 'outbound', src: { workload: client, principal: client.identity }, dst: { workload: server, principal: server.identity, service: 'server.demo.svc.cluster.local' }, security: 'mutual_tls' }, { metrics, accessLog: logger, drain: new Drain() });
          records.push(r);
          return r;
        },
        refused: (message) => {
          refusals.push(message);
          down.resetAndDestroy();
        },
      });
    });
    fronts.push(listener);
    const frontPort = await listenLocal(listener);
    return { connect: () => net.connect({ host: '127.0.0.1', port: frontPort, allowHalfOpen: true }), refusals, records };
  }

  it('knows a registered meshed pod at its own address as local, and nothing else', () => {
    expect(sameNode.local({ ip: '127.0.0.1', workload: server })).toBe(inbound);
    expect(sameNode.local({ ip: '127.0.0.2', workload: server })).toBeUndefined();
    expect(sameNode.local({ ip: '127.0.0.1', workload: { ...server, meshed: false } })).toBeUndefined();
    expect(sameNode.local({ ip: '127.0.0.1', workload: client })).toBeUndefined();
    expect(sameNode.local({ ip: '127.0.0.1' })).toBeUndefined();
  });

  it('carries 8 MB with half-close in one splice, counted exactly by the source and the destination records', async () => {
    const { connect, records } = await front(sinkPort);
    const payload = randomBytes(8 * 1024 * 1024);
    const sock = connect();
    let reply = '';
    sock.on('data', (d: Buffer) => (reply += d.toString()));
    const ended = new Promise((r) => sock.on('end', r));
    sock.end(payload);
    await ended;
    const expected = `${createHash('sha256').update(payload).digest('hex')} ${payload.length}\n`;
    expect(reply).toBe(expected);
    await new Promise((r) => sock.once('close', r));
    await new Promise((r) => setTimeout(r, 50));
    expect(records).toHaveLength(1);
    expect([records[0]!.bytesIn, records[0]!.bytesOut]).toEqual([payload.length, expected.length]);
    for (const reporter of ['source', 'destination']) {
      // (The state knows no pods here: the destination side names its caller by principal only.)
      const labels = { reporter, source_principal: client.identity, destination_principal: server.identity, connection_security_policy: 'mutual_tls' };
      expect(await total(metrics, 'trellis_tcp_received_bytes_total', labels)).toBe(payload.length);
      expect(await total(metrics, 'trellis_tcp_sent_bytes_total', labels)).toBe(expected.length);
      expect(await total(metrics, 'trellis_tcp_connections_closed_total', labels)).toBe(1);
    }
    expect(await total(metrics, 'trellis_same_node_connections_total', { protocol: 'tcp' })).toBe(1);
    const access = lines().filter((l) => l.msg === 'connection' && l.bytes_received === payload.length);
    expect(access.map((l) => l.direction).sort()).toEqual(['inbound', 'outbound']);
  });

  it('refuses what a DENY forbids before any byte reaches the app: the client reset, counted on both sides', async () => {
    const previous = state;
    state = compile([denyClient], TD, 2, previous);
    try {
      const { connect, refusals } = await front(echoPort);
      const sock = connect();
      sock.write('must-not-pass');
      let got = '';
      sock.on('data', (d: Buffer) => (got += d.toString()));
      const error = await new Promise<NodeJS.ErrnoException | undefined>((r) => { sock.once('error', r); sock.once('close', () => r(undefined)); });
      expect(['ECONNRESET', 'EPIPE']).toContain(error?.code);
      expect(got).toBe('');
      expect(refusals).toHaveLength(1);
      expect(refusals[0]).toMatch(/^403 denied by DENY policy demo\/no-client/);
      expect(await total(metrics, 'trellis_connection_failures_total', { direction: 'inbound', reason: 'same_node_403' })).toBe(1);
      expect(lines().some((l) => l.msg === 'connection' && l.direction === 'inbound' && (l.authz as { decision?: string } | undefined)?.decision === 'deny')).toBe(true);
    } finally {
      state = previous;
    }
  });

  it('cuts an open connection when the policies change to deny it', async () => {
    const { connect } = await front(echoPort);
    const sock = connect();
    let got = '';
    sock.on('data', (d: Buffer) => (got += d.toString()));
    const failed = new Promise<NodeJS.ErrnoException | undefined>((r) => { sock.once('error', r); sock.once('close', () => r(undefined)); });
    sock.write('ping;');
    for (let i = 0; i < 100 && !got.includes('ping;'); i++) await new Promise((r) => setTimeout(r, 10));
    expect(got).toBe('ping;');
    const previous = state;
    state = compile([denyClient], TD, 3, previous);
    try {
      expect(recheck.apply(state, previous)).toBe(1);
      expect((await failed)?.code).toBe('ECONNRESET');
    } finally {
      state = previous;
    }
  });

  it('opens an L7 tunnel as a byte pair, and refuses one to a port of the agent', async () => {
    // No inbound HTTP here: the destination side carries the tunnel to the app as opaque bytes.
    const tunnel = await sameNode.open(inbound, client, { ip: '127.0.0.1', port: sinkPort }, 'tcp');
    let reply = '';
    tunnel.on('data', (d: Buffer) => (reply += d.toString()));
    const ended = new Promise((r) => tunnel.once('end', r));
    tunnel.end('through the pair');
    await ended;
    expect(reply).toBe(`${createHash('sha256').update('through the pair').digest('hex')} 16\n`);
    await expect(sameNode.open(inbound, client, { ip: '127.0.0.1', port: 15008 }, 'http1')).rejects.toMatchObject({ code: 'EREFUSED' });
  });

  it('forgets a pod when its listeners close', () => {
    forget();
    expect(sameNode.local({ ip: '127.0.0.1', workload: server })).toBeUndefined();
  });
});
