// HBONE end to end inside one process over loopback: real TLS 1.3, real HTTP/2 CONNECT, real sockets.
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../agent/clock.js';
import { LocalCa } from '../../agent/identity/ca.js';
import { WorkloadCerts } from '../../agent/identity/certs.js';
import { HbonePool } from '../../agent/proxy/hbone-pool.js';
import { SESSION_WINDOW, STREAM_WINDOW } from '../../agent/proxy/hbone.js';
import { HboneInbound } from '../../agent/proxy/inbound-hbone.js';
import { ConnectionRecord } from '../../agent/proxy/connection.js';
import { Drain } from '../../agent/proxy/drain.js';
import { splice } from '../../agent/io/splice.js';
import { compile, type MeshState } from '../../agent/state/store.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { captureLogger } from '../support/logger.js';
import { TEST_TRUST_DOMAIN, listenLocal, loopbackWorkload, digestSink, resetter } from '../support/loopback.js';

const TD = TEST_TRUST_DOMAIN;



describe('HBONE over mTLS', () => {
  const { logger, lines } = captureLogger();
  const client = loopbackWorkload('demo', 'client', 'client', '127.0.0.1');
  const server = loopbackWorkload('demo', 'server', 'server', '127.0.0.1');
  const state: MeshState = compile([], TD, 1);
  let ca: LocalCa;
  let certs: WorkloadCerts;
  let serverMetrics: Metrics;
  let clientMetrics: Metrics;
  let inbound: HboneInbound;
  let hbonePort = 0;
  let appPort = 0;
  const app = digestSink();
  const resetApp = resetter();
  let resetPort = 0;
  const pools: HbonePool[] = [];

  const makePool = (c: WorkloadCerts, m: Metrics) => {
    const pool = new HbonePool({
      certs: c,
      dial: () => net.connect({ host: '127.0.0.1', port: hbonePort, allowHalfOpen: true }),
      metrics: m,
      logger,
      clock: systemClock,
      connectTimeoutMs: 3000,
      idleMs: 60_000,
    });
    pools.push(pool);
    return pool;
  };

  beforeAll(async () => {
    ca = LocalCa.generate({ trustDomain: TD });
    certs = new WorkloadCerts({ signer: ca, trustBundle: ca.rootCertPem, ttlMs: 3_600_000, clock: systemClock, logger });
    serverMetrics = new Metrics({ defaultMetrics: false });
    clientMetrics = new Metrics({ defaultMetrics: false });
    inbound = new HboneInbound(
      { pod: server, trustDomain: TD, state: () => state, dialApp: (_p, ip, port) => net.connect({ host: ip, port, allowHalfOpen: true }), metrics: serverMetrics, logger, accessLog: logger, drain: new Drain() },
      await certs.get(server.identity),
    );
    hbonePort = await listenLocal(inbound.server as unknown as net.Server);
    appPort = await listenLocal(app);
    resetPort = await listenLocal(resetApp);
  });

  afterAll(() => {
    for (const p of pools) p.close();
    certs.close();
    inbound.server.close();
    app.close();
    resetApp.close();
  });

  /** Emulates the outbound side: a downstream socket spliced onto a pooled CONNECT stream. */
  async function throughMesh(pool: HbonePool, port: number, dstIdentity = server.identity) {
    const front = net.createServer({ allowHalfOpen: true });
    const frontPort = await listenLocal(front);
    const spliced = new Promise<{ record: ConnectionRecord; error?: Error }>((resolve, reject) => {
      front.once('connection', (down) => {
        pool.open({ src: client, dstIdentity, ip: '127.0.0.1', port }).then(async (up) => {
          const record = new ConnectionRecord({ direction: 'outbound', src: { workload: client }, dst: { workload: server, principal: dstIdentity }, security: 'mutual_tls' }, { metrics: clientMetrics, accessLog: logger, drain: new Drain() });
          const out = await splice(down, up, record);
          record.finish(out.error);
          resolve({ record, error: out.error });
        }, (err: Error) => { down.resetAndDestroy(); reject(err); });
      });
    });
    const sock = net.connect({ host: '127.0.0.1', port: frontPort, allowHalfOpen: true });
    return { sock, spliced, close: () => front.close() };
  }

  it('carries 20 MB byte-identical with half-close, and counts the bytes on both sides', async () => {
    const pool = makePool(certs, clientMetrics);
    const { sock, spliced, close } = await throughMesh(pool, appPort);
    const payload = randomBytes(20 * 1024 * 1024);
    const expected = createHash('sha256').update(payload).digest('hex');
    let reply = '';
    sock.on('data', (d: Buffer) => (reply += d.toString()));
    const ended = new Promise((r) => sock.on('end', r));
    sock.end(payload);
    await ended;
    expect(reply).toBe(`${expected} ${payload.length}\n`);
    await spliced;
    close();
    const metric = async (m: Metrics, name: string) => {
      const v = (await m.registry.getSingleMetric(name)!.get()).values;
      return v.reduce((a, x) => a + x.value, 0);
    };
    expect(await metric(clientMetrics, 'trellis_tcp_received_bytes_total')).toBe(payload.length);
    expect(await metric(clientMetrics, 'trellis_tcp_sent_bytes_total')).toBe(reply.length);
    // The server side records when its splice ends; give it a moment.
    for (let i = 0; i < 50 && (await metric(serverMetrics, 'trellis_tcp_connections_closed_total')) < 1; i++) await new Promise((r) => setTimeout(r, 20));
    expect(await metric(serverMetrics, 'trellis_tcp_received_bytes_total')).toBe(payload.length);
    const inboundLine = (await serverMetrics.registry.getSingleMetric('trellis_tcp_connections_opened_total')!.get()).values[0]!;
    expect(inboundLine.labels).toMatchObject({ reporter: 'destination', source_principal: client.identity, destination_principal: server.identity, connection_security_policy: 'mutual_tls' });
  });

  it('reuses one session for many streams', async () => {
    const pool = makePool(certs, clientMetrics);
    const a = await pool.open({ src: client, dstIdentity: server.identity, ip: '127.0.0.1', port: appPort });
    const b = await pool.open({ src: client, dstIdentity: server.identity, ip: '127.0.0.1', port: appPort });
    expect(pool.size()).toBe(1);
    expect(a.session).toBe(b.session);
    a.close();
    b.close();
  });

  it('opens its streams with the HBONE flow-control windows on both ends', async () => {
    const pool = makePool(certs, clientMetrics);
    const stream = await pool.open({ src: client, dstIdentity: server.identity, ip: '127.0.0.1', port: appPort });
    const session = stream.session!;
    // The client's own SETTINGS, and the inbound server's as the client received them.
    expect(session.localSettings.initialWindowSize).toBe(STREAM_WINDOW);
    expect(session.remoteSettings.initialWindowSize).toBe(STREAM_WINDOW);
    expect(session.state.effectiveLocalWindowSize).toBe(SESSION_WINDOW);
    stream.close();
  });

  it('turns an upstream reset into a downstream reset', async () => {
    const pool = makePool(certs, clientMetrics);
    const { sock, spliced, close } = await throughMesh(pool, resetPort);
    const err = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
      sock.on('error', resolve);
      sock.on('close', () => resolve(undefined));
      sock.write('hello');
    });
    expect(err?.code).toBe('ECONNRESET');
    expect((await spliced).error).toBeDefined();
    close();
  });

  it('refuses a server presenting another identity than expected', async () => {
    const pool = makePool(certs, clientMetrics);
    await expect(pool.open({ src: client, dstIdentity: 'spiffe://cluster.local/ns/demo/sa/other', ip: '127.0.0.1', port: appPort })).rejects.toThrow(/expected|identity/i);
    expect(lines().some((l) => l.msg === 'refused destination peer')).toBe(true);
  });

  it('refuses a client whose certificate comes from another CA', async () => {
    const foreign = LocalCa.generate({ trustDomain: TD });
    // The foreign client trusts our CA (so it gets as far as presenting its cert), but its own cert is foreign.
    const foreignCerts = new WorkloadCerts({ signer: foreign, trustBundle: ca.rootCertPem, ttlMs: 3_600_000, clock: systemClock, logger });
    try {
      const pool = makePool(foreignCerts, new Metrics({ defaultMetrics: false }));
      await expect(pool.open({ src: client, dstIdentity: server.identity, ip: '127.0.0.1', port: appPort })).rejects.toThrow();
      const refused = (await serverMetrics.registry.getSingleMetric('trellis_peer_refusals_total')!.get()).values;
      expect(refused.reduce((a, v) => a + v.value, 0)).toBeGreaterThan(0);
    } finally {
      foreignCerts.close();
    }
  });

  it('renews certificates at half-life without dropping open streams; new sessions get the new ones', async () => {
    const short = new WorkloadCerts({ signer: ca, trustBundle: ca.rootCertPem, ttlMs: 2000, clock: systemClock, logger });
    const inb = new HboneInbound(
      { pod: server, trustDomain: TD, state: () => state, dialApp: (_p, ip, port) => net.connect({ host: ip, port, allowHalfOpen: true }), metrics: new Metrics({ defaultMetrics: false }), logger, accessLog: logger, drain: new Drain() },
      await short.get(server.identity),
    );
    const rotated: string[] = [];
    const unsubscribe = short.onRotate((svid) => {
      rotated.push(svid.identity);
      if (svid.identity === server.identity) inb.rotate(svid);
    });
    // The certificate each session was served with, read on the server: a TLS 1.3 client may drop the peer's
    // certificate once the server's session tickets arrive, so the client side is no place to read it later.
    const presented: string[] = [];
    inb.server.on('secureConnection', (socket: import('node:tls').TLSSocket) => presented.push(socket.getX509Certificate()!.serialNumber));
    const port = await listenLocal(inb.server as unknown as net.Server);
    const poolFor = () =>
      new HbonePool({ certs: short, dial: () => net.connect({ host: '127.0.0.1', port, allowHalfOpen: true }), metrics: clientMetrics, logger, clock: systemClock, connectTimeoutMs: 3000, idleMs: 60_000 });
    const first = poolFor();
    const second = poolFor();
    try {
      const stream = await first.open({ src: client, dstIdentity: server.identity, ip: '127.0.0.1', port: appPort });
      expect(presented).toHaveLength(1);
      let reply = '';
      stream.on('data', (d: Buffer) => (reply += d.toString()));
      stream.write(Buffer.alloc(1000, 1));
      for (let i = 0; i < 100 && !rotated.includes(server.identity); i++) await new Promise((r) => setTimeout(r, 30));
      expect(rotated).toContain(server.identity);
      stream.end(Buffer.alloc(500, 2));
      await new Promise((r) => stream.on('end', r));
      expect(reply.endsWith(' 1500\n')).toBe(true);
      const fresh = await second.open({ src: client, dstIdentity: server.identity, ip: '127.0.0.1', port: appPort });
      expect(presented).toHaveLength(2);
      expect(presented[1]).not.toBe(presented[0]);
      fresh.close();
    } finally {
      unsubscribe();
      first.close();
      second.close();
      short.close();
      inb.server.close();
    }
  });

  it('refuses CONNECT to an address that is not this pod, or to an agent port', async () => {
    const pool = makePool(certs, clientMetrics);
    await expect(pool.open({ src: client, dstIdentity: server.identity, ip: '127.0.0.1', port: 15001 })).rejects.toThrow(/403/);
    await expect(pool.open({ src: client, dstIdentity: server.identity, ip: '127.0.0.2', port: appPort })).rejects.toThrow(/403/);
  });
});
