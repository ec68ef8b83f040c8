// An agent that stops waits for its peers to let go of their HBONE sessions (they do on its GOAWAY): over loopback with
// real TLS 1.3 and HTTP/2, the destination's session count (InboundInputs.sessions) against the source's pool.
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../agent/clock.js';
import { LocalCa } from '../../agent/identity/ca.js';
import { WorkloadCerts } from '../../agent/identity/certs.js';
import { GOAWAY_NOTICE_MS } from '../../agent/io/goaway.js';
import { Drain } from '../../agent/proxy/drain.js';
import { HbonePool } from '../../agent/proxy/hbone-pool.js';
import { HboneInbound } from '../../agent/proxy/inbound-hbone.js';
import { compile } from '../../agent/state/store.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { captureLogger } from '../support/logger.js';
import { TEST_TRUST_DOMAIN, listenLocal, loopbackWorkload } from '../support/loopback.js';

const TD = TEST_TRUST_DOMAIN;



describe('HBONE sessions at shutdown', () => {
  const { logger } = captureLogger();
  const client = loopbackWorkload('demo', 'client');
  const server = loopbackWorkload('demo', 'server');
  let certs: WorkloadCerts;
  let appPort = 0;
  const app = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => undefined);
    s.on('data', (d: Buffer) => s.write(d));
    s.on('end', () => s.end());
  });
  const closing: { close(): void }[] = [];

  /** A destination with a session count of its own, and a source pool dialling it. */
  const pair = async () => {
    const sessions = new Drain();
    const state = compile([], TD, 1);
    const inbound = new HboneInbound(
      { pod: server, trustDomain: TD, state: () => state, dialApp: (_p, ip, port) => net.connect({ host: ip, port, allowHalfOpen: true }), metrics: new Metrics({ defaultMetrics: false }), logger, accessLog: logger, drain: new Drain(), sessions },
      await certs.get(server.identity),
    );
    const port = await listenLocal(inbound.server as unknown as net.Server);
    const pool = new HbonePool({
      certs,
      dial: () => net.connect({ host: '127.0.0.1', port, allowHalfOpen: true }),
      metrics: new Metrics({ defaultMetrics: false }),
      logger,
      clock: systemClock,
      connectTimeoutMs: 3000,
      idleMs: 60_000,
    });
    closing.push(pool, inbound.server);
    return { inbound, sessions, pool, open: () => pool.open({ src: client, dstIdentity: server.identity, ip: '127.0.0.1', port: appPort }) };
  };

  beforeAll(async () => {
    const ca = LocalCa.generate({ trustDomain: TD });
    certs = new WorkloadCerts({ signer: ca, trustBundle: ca.rootCertPem, ttlMs: 3_600_000, clock: systemClock, logger });
    appPort = await listenLocal(app);
  });

  afterAll(() => {
    for (const c of closing) c.close();
    certs.close();
    app.close();
  });

  it('an idle peer session is let go of on the GOAWAY and ends within the notice; the wait on it ends then', async () => {
    const { inbound, sessions, pool, open } = await pair();
    const stream = await open();
    const cs = stream.session!;
    await new Promise<void>((resolve) => {
      stream.once('close', resolve);
      stream.end();
      stream.resume();
    });
    expect(sessions.active()).toBe(1);
    const started = performance.now();
    inbound.goaway();
    // The source takes no new stream to it from the first GOAWAY on.
    await new Promise((resolve) => cs.once('goaway', resolve));
    expect(pool.size()).toBe(0);
    expect(await sessions.wait(5000)).toBe(0);
    expect(performance.now() - started).toBeLessThan(GOAWAY_NOTICE_MS + 1500);
  });

  it('a session with a stream in flight ends with its stream, which the GOAWAY does not cut', async () => {
    const { inbound, sessions, open } = await pair();
    const stream = await open();
    inbound.goaway();
    let echoed = '';
    stream.on('data', (d: Buffer) => (echoed += d.toString()));
    stream.write('still served;');
    await new Promise((resolve) => setTimeout(resolve, 1500));
    // Past the notice: the session is still there for its stream.
    expect(sessions.active()).toBe(1);
    const ended = new Promise((resolve) => stream.once('close', resolve));
    stream.end('done');
    await ended;
    expect(echoed).toBe('still served;done');
    expect(await sessions.wait(5000)).toBe(0);
  });
});
