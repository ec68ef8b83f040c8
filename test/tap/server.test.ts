// The tap API over its Unix socket (agent/tap/server.ts) with the client `trellis tap` uses (viz/tap/): gRPC loaded
// on the first connection only, events streamed as records finish, the rate bound the agent applies told in the
// response metadata, refusals with their reason, the hub idle again when the reader goes, and a successor agent
// taking the socket path over without its predecessor removing it; the TCP port of cluster mode over TLS, with its
// refusals and a client that sends its token only to the agent's certificate. In-process, no root needed.
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../agent/clock.js';
import { Body } from '../../agent/l7/body.js';
import { RequestRecord } from '../../agent/l7/record.js';
import type { Workload } from '../../agent/state/workload.js';
import { DEFAULT_REDACTED_HEADERS, type TapEvent } from '../../agent/tap/events.js';
import { LocalCa } from '../../agent/identity/ca.js';
import { WorkloadCerts } from '../../agent/identity/certs.js';
import { TapAuthorizer, type TapReviewer, type TapUser } from '../../agent/tap/authorize.js';
import type { Match } from '../../agent/tap/match.js';
import { authorizationOf, TapServer } from '../../agent/tap/server.js';
import { TapService } from '../../agent/tap/service.js';
import type { AccessLog } from '../../agent/telemetry/audit.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { observe, type TapRemote } from '../../viz/tap/client.js';
import { captureLogger } from '../support/logger.js';
import { until } from '../support/until.js';

const dir = mkdtempSync(path.join(tmpdir(), 'trellis-tap-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const workload = (ns: string, name: string): Workload =>
  ({ key: `${ns}/${name}-0`, namespace: ns, pod: `${name}-0`, name, identity: `spiffe://cluster.local/ns/${ns}/sa/${name}`, meshed: true, labels: {} }) as unknown as Workload;
const client = workload('demo', 'client');
const server = workload('demo', 'server');
const accessLog = { info: () => undefined, line: () => undefined } as unknown as AccessLog;

function agent(socketPath: string, maxRps = 100, instance?: string) {
  const tap = new TapService({ node: 'node-a', redact: new Set(DEFAULT_REDACTED_HEADERS), maxRps, clock: systemClock, metrics: new Metrics({ defaultMetrics: false }) });
  return { tap, listen: () => TapServer.listen({ socketPath, service: tap, logger: captureLogger().logger, ...(instance && { instance }) }) };
}

function finishRequest(tap: TapService, path = '/items'): void {
  const rec = new RequestRecord(
    { protocol: 'http1', grpc: false, method: 'GET', authority: 'server.demo:80', path, query: '', headers: { authorization: 'Bearer x' }, body: Body.EMPTY, requestId: 'r', startedAt: performance.now() },
    { metrics: new Metrics({ defaultMetrics: false }), accessLog, tap: tap.hub },
    'outbound',
    { workload: client, principal: client.identity, ip: '10.244.1.2', port: 40000 },
    {},
    'none',
  );
  rec.setEndpoint({ ip: '10.244.2.2', port: 8080, workload: server });
  rec.status = 200;
  rec.finish();
}

describe('tap API on a Unix socket', () => {
  it('streams the matching requests, ends at the limit, and the hub goes idle', async () => {
    const socket = path.join(dir, 'a', 'tap.sock');
    const a = agent(socket);
    const srv = await a.listen();
    try {
      expect(statSync(socket).mode & 0o777).toBe(0o600);
      // Nothing of gRPC before someone connects.
      expect((srv as unknown as { grpc: unknown }).grpc).toBeUndefined();
      const events: TapEvent[] = [];
      const done = new Promise<Error | undefined>((resolve) => {
        observe(socket, { limit: 3, match: { all: { matches: [{ destination: { namespace: 'demo', workload: 'server' } }, { http: { method: 'GET' } }] } } }, { accepted: () => undefined, event: (e) => events.push(e), end: resolve });
      });
      await until('the tap to open', async () => a.tap.hub.active);
      for (let i = 0; i < 5; i++) finishRequest(a.tap, `/items/${i}`);
      expect(await done).toBeUndefined();
      const kinds = events.map((e) => (e.requestInit ? 'req' : e.responseInit ? 'rsp' : e.responseEnd ? 'end' : e.summary ? 'summary' : '?'));
      expect(kinds).toEqual(['req', 'rsp', 'end', 'req', 'rsp', 'end', 'req', 'rsp', 'end', 'summary']);
      expect(events.map((e) => e.requestInit?.path).filter(Boolean)).toEqual(['/items/0', '/items/1', '/items/2']);
      // As protobufjs reads the wire: the same fields the hub built.
      expect(events[0]).toMatchObject({
        node: 'node-a',
        reporter: 'source',
        id: 1,
        source: { workload: 'client', namespace: 'demo', pod: 'client-0', identity: client.identity, ip: '10.244.1.2', port: 40000 },
        destination: { workload: 'server', ip: '10.244.2.2', port: 8080 },
        security: 'mutual_tls',
        requestInit: { method: 'GET', authority: 'server.demo:80', path: '/items/0', headers: [{ name: 'authorization', value: '[REDACTED]' }] },
      });
      expect(events.at(-1)!.summary).toEqual({ delivered: 3, end: 'limit' });
      await until('the hub to be idle again', async () => !a.tap.hub.active && a.tap.size === 0);
    } finally {
      await srv.close();
    }
    expect(existsSync(socket)).toBe(false);
  });

  it('says what the agent applies and refuses a tree it cannot match', async () => {
    const socket = path.join(dir, 'b.sock');
    const a = agent(socket, 5);
    const srv = await a.listen();
    try {
      const events: TapEvent[] = [];
      let bound: number | undefined;
      const done = new Promise<Error | undefined>((resolve) => {
        const s = observe(socket, { maxRps: 50, durationMs: 300 }, { accepted: (n) => (bound = n), event: (e) => events.push(e), end: resolve });
        void s;
      });
      await until('the tap to open', async () => a.tap.hub.active);
      for (let i = 0; i < 8; i++) finishRequest(a.tap);
      expect(await done).toBeUndefined();
      expect(bound).toBe(5);
      expect(events.filter((e) => e.requestInit)).toHaveLength(5);
      const last = events.at(-1)!;
      expect(last.summary).toEqual({ delivered: 5, droppedTotal: 3, end: 'duration' });
      expect(events.reduce((n, e) => n + (e.dropped ?? 0), 0)).toBe(3);

      const refused = await new Promise<Error | undefined>((resolve) => {
        observe(socket, { match: { http: { pathPrefix: 'nope' } } }, { accepted: () => undefined, event: () => undefined, end: resolve });
      });
      expect(refused?.message).toMatch(/^INVALID_ARGUMENT: .*a path starts with \//);
    } finally {
      await srv.close();
    }
  });

  it('a reader that goes away closes its tap', async () => {
    const socket = path.join(dir, 'c.sock');
    const a = agent(socket);
    const srv = await a.listen();
    try {
      const s = observe(socket, {}, { accepted: () => undefined, event: () => undefined, end: () => undefined });
      await until('the tap to open', async () => a.tap.hub.active);
      s.cancel();
      await until('the hub to be idle again', async () => !a.tap.hub.active);
    } finally {
      await srv.close();
    }
  });

  it('the agent stopping ends every stream with a last summary, and a reader cannot hold its shutdown', async () => {
    const socket = path.join(dir, 'e.sock');
    const a = agent(socket);
    const srv = await a.listen();
    const events: TapEvent[] = [];
    const done = new Promise<Error | undefined>((resolve) => {
      observe(socket, {}, { accepted: () => undefined, event: (e) => events.push(e), end: resolve });
    });
    await until('the tap to open', async () => a.tap.hub.active);
    finishRequest(a.tap);
    // As app.ts stops: the service first, then the server.
    a.tap.stop();
    const started = performance.now();
    await srv.close();
    expect(performance.now() - started).toBeLessThan(1500);
    expect(await done).toBeUndefined();
    expect(events.at(-1)!.summary).toEqual({ delivered: 1, end: 'agent stopping' });
    // A raw connection that never speaks gRPC does not hold close() past its grace.
    const srv2 = await agent(socket).listen();
    const idle = net.connect(socket);
    idle.on('error', () => undefined);
    await new Promise((r) => idle.once('connect', r));
    const t = performance.now();
    await srv2.close(200);
    expect(performance.now() - t).toBeLessThan(1000);
  });

  it('a successor takes the socket over; its predecessor leaving does not remove it', async () => {
    const socket = path.join(dir, 'd.sock');
    // Two agents are two processes: their own sockets differ by pid.
    const old = await agent(socket, 100, 'old').listen();
    const next = agent(socket, 100, 'new');
    const successor = await next.listen();
    try {
      await old.close();
      expect(existsSync(socket)).toBe(true);
      const s = observe(socket, {}, { accepted: () => undefined, event: () => undefined, end: () => undefined });
      await until('the successor to serve the tap', async () => next.tap.hub.active);
      s.cancel();
    } finally {
      await successor.close();
    }
  });

  it('an agent that is not there: the reason and what to check', async () => {
    const error = await new Promise<Error | undefined>((resolve) => {
      observe(path.join(dir, 'none.sock'), {}, { accepted: () => undefined, event: () => undefined, end: resolve });
    });
    expect(error?.message).toMatch(/cannot reach the tap socket .*none\.sock.*is the agent running/);
  });
});

describe('tap API on the TCP port (cluster mode), over TLS with a bearer token', () => {
  const TD = 'cluster.local';
  const AGENT_ID = `spiffe://${TD}/ns/trellis-system/sa/trellis-agent`;
  const ALICE: TapUser = { username: 'alice', groups: ['system:authenticated'], extra: {} };
  // Alice may tap demo; any other token is invalid. The real API server: test/e2e/tap-cluster.test.ts.
  const reviewer: TapReviewer = {
    authenticate: async (token) => (token === 'alice-token' ? { authenticated: true, user: ALICE } : { authenticated: false, error: 'invalid bearer token' }),
    mayWatch: async (_user, ns) => ({ allowed: ns === 'demo' }),
  };

  async function tlsAgent(identity = AGENT_ID) {
    const ca = LocalCa.generate({ trustDomain: TD });
    const certs = new WorkloadCerts({ signer: ca, trustBundle: ca.rootCertPem, ttlMs: 3_600_000, clock: systemClock, logger: captureLogger().logger });
    const svid = await certs.get(identity);
    const tap = new TapService({ node: 'node-a', redact: new Set(DEFAULT_REDACTED_HEADERS), maxRps: 100, clock: systemClock, metrics: new Metrics({ defaultMetrics: false }) });
    const authorizer = new TapAuthorizer({ reviewer, clock: systemClock });
    const srv = await TapServer.listenTls({
      host: '127.0.0.1',
      port: 0,
      certificate: svid,
      service: tap,
      logger: captureLogger().logger,
      authorize: (md, req) => authorizer.authorize(authorizationOf(md), req.match),
    });
    const remote = (token: string): TapRemote => ({ address: `127.0.0.1:${srv.port}`, caPem: ca.rootCertPem, identity: AGENT_ID, token });
    return { tap, srv, remote, certs };
  }

  const demoServer: Match = { destination: { namespace: 'demo', workload: 'server' } };
  const open = (remote: TapRemote, match: Match | undefined, events: TapEvent[] = [], limit = 0) =>
    new Promise<Error | undefined>((resolve) => {
      observe(remote.address, { limit, ...(match && { match }) }, { accepted: () => undefined, event: (e) => events.push(e), end: resolve }, remote);
    });

  it('streams to a caller RBAC allows, and refuses the others with the gRPC status and why', async () => {
    const a = await tlsAgent();
    try {
      const events: TapEvent[] = [];
      const done = open(a.remote('alice-token'), demoServer, events, 2);
      await until('the tap to open', async () => a.tap.hub.active);
      for (let i = 0; i < 3; i++) finishRequest(a.tap);
      expect(await done).toBeUndefined();
      expect(events.filter((e) => e.responseEnd)).toHaveLength(2);

      expect((await open(a.remote(''), demoServer))?.message).toMatch(/^UNAUTHENTICATED: no bearer token/);
      expect((await open(a.remote('garbage'), demoServer))?.message).toMatch(/^UNAUTHENTICATED: the token is not valid \(API server: invalid bearer token\)/);
      expect((await open(a.remote('alice-token'), { destination: { namespace: 'prod' } }))?.message).toMatch(/^PERMISSION_DENIED: user alice may not watch tap.tap.trellis.dev in namespace prod/);
      expect((await open(a.remote('alice-token'), undefined))?.message).toMatch(/^PERMISSION_DENIED: user alice may not watch tap.tap.trellis.dev in all namespaces/);
      // A tree that is not one is refused as such, before anyone is asked.
      expect((await open(a.remote(''), { http: { pathPrefix: 'x' } }))?.message).toMatch(/^INVALID_ARGUMENT/);
      expect(a.tap.size).toBe(0);
    } finally {
      await a.srv.close();
      a.certs.close();
    }
  });

  it('the client sends no token to a port whose certificate is not the agent\'s, nor to one that is not TLS', async () => {
    const a = await tlsAgent(`spiffe://${TD}/ns/demo/sa/server`);
    try {
      const error = await open(a.remote('alice-token'), demoServer);
      expect(error?.message).toMatch(/cannot reach the agent's tap port .*not the agent's spiffe:\/\/cluster.local\/ns\/trellis-system\/sa\/trellis-agent/);
      expect(a.tap.size).toBe(0);
    } finally {
      await a.srv.close();
      a.certs.close();
    }
    const plain = net.createServer((s) => s.destroy());
    await new Promise<void>((r) => plain.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (plain.address() as net.AddressInfo).port;
      const error = await open({ address: `127.0.0.1:${port}`, caPem: LocalCa.generate({ trustDomain: TD }).rootCertPem, identity: AGENT_ID, token: 't' }, demoServer);
      expect(error?.message).toMatch(/cannot reach the agent's tap port/);
    } finally {
      plain.close();
    }
  });
});
