// The HBONE pool's knobs, over loopback with real TLS 1.3 and HTTP/2: a cap on the streams a session carries
// (one TLS handshake per connection at 1) and the key exchange groups it offers.
import net from 'node:net';
import type tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../agent/clock.js';
import { agentConfig, parseTlsGroups } from '../../agent/config.js';
import { LocalCa } from '../../agent/identity/ca.js';
import { WorkloadCerts } from '../../agent/identity/certs.js';
import { HbonePool } from '../../agent/proxy/hbone-pool.js';
import { HboneInbound } from '../../agent/proxy/inbound-hbone.js';
import { Drain } from '../../agent/proxy/drain.js';
import { compile } from '../../agent/state/store.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { captureLogger } from '../support/logger.js';
import { TEST_TRUST_DOMAIN, listenLocal, loopbackWorkload } from '../support/loopback.js';

const TD = TEST_TRUST_DOMAIN;



describe('HBONE pool limits and groups', () => {
  const { logger } = captureLogger();
  const client = loopbackWorkload('demo', 'client');
  const server = loopbackWorkload('demo', 'server');
  let certs: WorkloadCerts;
  let inbound: HboneInbound;
  let hbonePort = 0;
  let appPort = 0;
  /** TLS handshakes the destination completed. */
  let handshakes = 0;
  const app = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => undefined);
    s.on('data', (d: Buffer) => s.write(d));
    s.on('end', () => s.end());
  });
  const pools: HbonePool[] = [];

  const makePool = (opts: { maxStreamsPerSession?: number; tlsGroups?: string; dial?: () => net.Socket } = {}) => {
    const pool = new HbonePool({
      certs,
      dial: () => net.connect({ host: '127.0.0.1', port: hbonePort, allowHalfOpen: true }),
      metrics: new Metrics({ defaultMetrics: false }),
      logger,
      clock: systemClock,
      connectTimeoutMs: 3000,
      idleMs: 60_000,
      ...opts,
    });
    pools.push(pool);
    return pool;
  };
  const open = (pool: HbonePool) => pool.open({ src: client, dstIdentity: server.identity, ip: '127.0.0.1', port: appPort });
  const closed = (s: { once(e: 'close', f: () => void): unknown; close(): void }) =>
    new Promise<void>((resolve) => {
      s.once('close', resolve);
      s.close();
    });

  beforeAll(async () => {
    const ca = LocalCa.generate({ trustDomain: TD });
    certs = new WorkloadCerts({ signer: ca, trustBundle: ca.rootCertPem, ttlMs: 3_600_000, clock: systemClock, logger });
    const state = compile([], TD, 1);
    inbound = new HboneInbound(
      { pod: server, trustDomain: TD, state: () => state, dialApp: (_p, ip, port) => net.connect({ host: ip, port, allowHalfOpen: true }), metrics: new Metrics({ defaultMetrics: false }), logger, accessLog: logger, drain: new Drain() },
      await certs.get(server.identity),
    );
    inbound.server.on('secureConnection', () => handshakes++);
    hbonePort = await listenLocal(inbound.server as unknown as net.Server);
    appPort = await listenLocal(app);
  });

  afterAll(() => {
    for (const p of pools) p.close();
    certs.close();
    inbound.server.close();
    app.close();
  });

  it('without a limit carries every connection on one session', async () => {
    const pool = makePool();
    const before = handshakes;
    const streams = await Promise.all([open(pool), open(pool), open(pool)]);
    streams.push(await open(pool));
    expect(handshakes - before).toBe(1);
    expect(pool.size()).toBe(1);
    await Promise.all(streams.map(closed));
  });

  it('at 1 stream per session does a TLS handshake per connection, concurrent or not, and closes each session after its stream', async () => {
    const pool = makePool({ maxStreamsPerSession: 1 });
    const before = handshakes;
    const concurrent = await Promise.all([open(pool), open(pool), open(pool)]);
    const sessions = new Set(concurrent.map((s) => s.session));
    expect(sessions.size).toBe(3);
    const next = await open(pool);
    expect(sessions.has(next.session)).toBe(false);
    expect(handshakes - before).toBe(4);
    // A full session leaves the pool at once and closes with its last stream.
    expect(pool.size()).toBe(0);
    const first = concurrent[0]!.session!;
    const sessionClosed = new Promise((resolve) => first.once('close', resolve));
    await closed(concurrent[0]!);
    await sessionClosed;
    await Promise.all([...concurrent.slice(1), next].map(closed));
  });

  it('at 2 streams per session opens a second session for the third connection', async () => {
    const pool = makePool({ maxStreamsPerSession: 2 });
    const before = handshakes;
    const streams = await Promise.all([open(pool), open(pool), open(pool)]);
    expect(new Set(streams.map((s) => s.session)).size).toBe(2);
    expect(handshakes - before).toBe(2);
    await Promise.all(streams.map(closed));
  });

  it('drops a session whose destination went away without GOAWAY (a FIN only), and opens the next stream on a new one', async () => {
    // The agent's transports are half-open: without watching for the peer's FIN the session would stay pooled and the
    // next CONNECT on it would wait unanswered for the connect timeout. The destination here is reached through a
    // relay that ends the client's side as a killed agent's kernel would: a FIN, no HTTP/2 frame before it.
    const fronts: net.Socket[] = [];
    const relay = net.createServer((front) => {
      fronts.push(front);
      const back = net.connect({ host: '127.0.0.1', port: hbonePort });
      for (const s of [front, back]) s.on('error', () => undefined);
      front.pipe(back);
      back.pipe(front);
    });
    const relayPort = await listenLocal(relay);
    try {
      const pool = makePool({ dial: () => net.connect({ host: '127.0.0.1', port: relayPort, allowHalfOpen: true }) });
      const first = await open(pool);
      first.on('error', () => undefined);
      const session = first.session!;
      const gone = new Promise((resolve) => session.once('close', resolve));
      fronts[0]!.unpipe();
      fronts[0]!.end();
      await gone;
      expect(pool.size()).toBe(0);
      const next = await open(pool);
      expect(next.session === session).toBe(false);
      expect(fronts).toHaveLength(2);
      await closed(next);
    } finally {
      for (const s of fronts) s.destroy();
      relay.close();
    }
  }, 10_000);

  it('offers only the configured key exchange groups', async () => {
    for (const group of ['P-256', 'X25519']) {
      const pool = makePool({ tlsGroups: group });
      const stream = await open(pool);
      const socket = stream.session!.socket as unknown as tls.TLSSocket;
      expect((socket.getEphemeralKeyInfo() as { name?: string }).name).toBe(group === 'P-256' ? 'prime256v1' : 'X25519');
      await closed(stream);
      pool.close();
    }
  });
});

describe('agent flags for HBONE', () => {
  const base = { node: 'n', dir: '/tmp/x' };

  it('validates --tls-groups against OpenSSL and joins them for it', () => {
    expect(parseTlsGroups('X25519')).toBe('X25519');
    expect(parseTlsGroups('X25519MLKEM768, X25519,P-256')).toBe('X25519MLKEM768:X25519:P-256');
    expect(agentConfig({ ...base, tlsGroups: 'X25519' }).tlsGroups).toBe('X25519');
    expect(agentConfig(base).tlsGroups).toBeUndefined();
    expect(() => parseTlsGroups('X25519,curve9000')).toThrow(/curve9000 is not a key exchange group/);
    expect(() => parseTlsGroups(' , ')).toThrow(/at least one group/);
  });

  it('reads --hbone-max-streams-per-session as a whole number, 0 by default', () => {
    expect(agentConfig(base).hboneMaxStreamsPerSession).toBe(0);
    expect(agentConfig({ ...base, hboneMaxStreamsPerSession: '1' }).hboneMaxStreamsPerSession).toBe(1);
    for (const bad of ['-1', '1.5', 'off', '']) {
      expect(() => agentConfig({ ...base, hboneMaxStreamsPerSession: bad })).toThrow(expect.objectContaining({ code: 'ECONFIG' }));
    }
  });
});
