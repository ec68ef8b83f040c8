// mTLS between two agents over real node:tls on 127.0.0.1. Certificates use the system clock here:
// TLS checks validity against the real date.

import { once } from 'node:events';
import net, { type AddressInfo } from 'node:net';
import { X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import pino from 'pino';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../agent/clock.js';
import { LocalCa } from '../../agent/identity/ca.js';
import { WorkloadCerts, type Svid } from '../../agent/identity/certs.js';
import { certIdentity } from '../../agent/identity/spiffe.js';
import { clientTlsOptions, connectAgent, peerIdentity, serverTlsOptions } from '../../agent/identity/tls.js';

const TD = 'cluster.local';
const A = 'spiffe://cluster.local/ns/x/sa/a';
const B = 'spiffe://cluster.local/ns/x/sa/b';
const Y = 'spiffe://cluster.local/ns/x/sa/y';
const Z = 'spiffe://cluster.local/ns/x/sa/z';
const OTHER = 'spiffe://other.example/ns/x/sa/a';

async function issue(ca: LocalCa, identity: string, trustBundle = ca.rootCertPem): Promise<Svid> {
  const certs = new WorkloadCerts({ signer: ca, trustBundle, ttlMs: 3_600_000, clock: systemClock, logger: pino({ level: 'silent' }) });
  try {
    return await certs.get(identity);
  } finally {
    certs.close();
  }
}

interface Accepted {
  peer: ReturnType<typeof peerIdentity>;
  protocol: string | null;
  alpn: string | false | null;
}

const servers: tls.Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
});

/** A server that records each accepted peer, writes "hello" and closes. */
async function serve(options: tls.TlsOptions) {
  const accepted: Accepted[] = [];
  const refused: { code: string | undefined; peer: ReturnType<typeof peerIdentity> }[] = [];
  const server = tls.createServer(options, (socket) => {
    accepted.push({ peer: peerIdentity(socket, TD), protocol: socket.getProtocol(), alpn: socket.alpnProtocol });
    socket.end('hello');
  });
  server.on('tlsClientError', (err, socket) => refused.push({ code: (err as NodeJS.ErrnoException).code, peer: peerIdentity(socket, TD) }));
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as AddressInfo).port, accepted, refused };
}

type Outcome =
  | { ok: true; data: string; serverIdentity: string | null; protocol: string | null; alpn: string | false | null }
  | { ok: false; err: NodeJS.ErrnoException };

/** Connects, reads until the server closes; ok only if the server's "hello" arrives. */
function dial(port: number, options: tls.ConnectionOptions): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = tls.connect({ ...options, host: '127.0.0.1', port });
    let data = '';
    let serverIdentity: string | null = null;
    let protocol: string | null = null;
    let alpn: string | false | null = null;
    socket.on('secureConnect', () => {
      const cert = socket.getPeerX509Certificate();
      serverIdentity = cert ? certIdentity(cert) : null;
      protocol = socket.getProtocol();
      alpn = socket.alpnProtocol;
    });
    socket.on('data', (d: Buffer) => (data += d.toString()));
    socket.on('error', (err) => resolve({ ok: false, err }));
    socket.on('close', () => {
      if (data === 'hello') resolve({ ok: true, data, serverIdentity, protocol, alpn });
      else resolve({ ok: false, err: Object.assign(new Error('closed without a reply'), { code: 'ECLOSED' }) });
    });
  });
}

/**
 * clientTlsOptions with a context of the connection's own (from the SVID's PEMs), so a test can change what the
 * shared context fixes: the TLS versions, or the certificate presented.
 */
function ownContext(svid: Svid, expected: string): tls.ConnectionOptions {
  const { secureContext: _shared, ...rest } = clientTlsOptions(svid, expected);
  return { ...rest, key: svid.keyPem, cert: svid.certPem, ca: svid.caPem, minVersion: 'TLSv1.3' };
}

/** A client that trusts the bundle but presents no certificate. */
function anonymous(svid: Svid, expected: string): tls.ConnectionOptions {
  const { key: _key, cert: _cert, ...rest } = ownContext(svid, expected);
  return rest;
}

let ca: LocalCa;
let foreign: LocalCa;
beforeAll(() => {
  ca = LocalCa.generate({ trustDomain: TD });
  foreign = LocalCa.generate({ trustDomain: TD });
});

describe('agent-to-agent mTLS', () => {
  it('a client with SVID A and a server with SVID B see each other, over TLS 1.3 and h2', async () => {
    const [a, b] = await Promise.all([issue(ca, A), issue(ca, B)]);
    const server = await serve(serverTlsOptions(b));
    const out = await dial(server.port, clientTlsOptions(a, B));
    expect(out).toMatchObject({ ok: true, serverIdentity: B, protocol: 'TLSv1.3', alpn: 'h2' });
    expect(server.accepted).toEqual([{ peer: { ok: true, identity: A }, protocol: 'TLSv1.3', alpn: 'h2' }]);
  });

  it('the server refuses a client certificate from a foreign CA', async () => {
    const b = await issue(ca, B);
    // The client trusts the right bundle but holds a certificate from another CA.
    const intruder = { ...(await issue(foreign, A)), caPem: ca.rootCertPem };
    const server = await serve(serverTlsOptions(b));
    const out = await dial(server.port, clientTlsOptions(intruder, B));
    // TLS 1.3 lets the client finish first; the server then drops it without a reply.
    expect(out.ok).toBe(false);
    expect(server.accepted).toHaveLength(0);
    await expect.poll(() => server.refused).toEqual([
      {
        code: 'ECONNRESET',
        peer: { ok: false, reason: 'the client certificate is not authorized by the trust bundle: UNABLE_TO_VERIFY_LEAF_SIGNATURE' },
      },
    ]);
  });

  it('the client refuses a server certificate from a foreign CA', async () => {
    const a = await issue(ca, A);
    const impostor = { ...(await issue(foreign, B)), caPem: ca.rootCertPem };
    const server = await serve(serverTlsOptions(impostor));
    const out = await dial(server.port, clientTlsOptions(a, B));
    expect(out).toMatchObject({ ok: false, err: { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' } });
  });

  it('the client refuses a valid certificate for the wrong identity with EIDENTITY', async () => {
    const [a, y] = await Promise.all([issue(ca, A), issue(ca, Y)]);
    const server = await serve(serverTlsOptions(y));
    const out = await dial(server.port, clientTlsOptions(a, Z));
    expect(out).toMatchObject({ ok: false, err: { code: 'EIDENTITY', message: expect.stringContaining(`peer presented ${Y}, expected ${Z}`) } });
  });

  it('servername plays no part in identity', async () => {
    const [a, b] = await Promise.all([issue(ca, A), issue(ca, B)]);
    const server = await serve(serverTlsOptions(b));
    expect(await dial(server.port, { ...clientTlsOptions(a, B), servername: 'something.else' })).toMatchObject({ ok: true });
    expect(await dial(server.port, { ...clientTlsOptions(a, A), servername: 'b' })).toMatchObject({ ok: false, err: { code: 'EIDENTITY' } });
  });

  it('a client without a certificate, or limited to TLS 1.2, is refused', async () => {
    const [a, b] = await Promise.all([issue(ca, A), issue(ca, B)]);
    const server = await serve(serverTlsOptions(b));
    expect((await dial(server.port, anonymous(a, B))).ok).toBe(false);
    expect((await dial(server.port, { ...ownContext(a, B), minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' })).ok).toBe(false);
    expect(server.accepted).toHaveLength(0);
    await expect.poll(() => server.refused.map((r) => r.code)).toEqual(['ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE', 'ERR_SSL_UNSUPPORTED_PROTOCOL']);
  });
});

describe('peerIdentity', () => {
  // With rejectUnauthorized off, the handshake completes and peerIdentity has to give the reason.
  const lenient = (svid: Svid): tls.TlsOptions => ({ ...serverTlsOptions(svid), rejectUnauthorized: false });

  it('says why a client is refused: no certificate, or not authorized by the bundle', async () => {
    const [a, b] = await Promise.all([issue(ca, A), issue(ca, B)]);
    const server = await serve(lenient(b));
    await dial(server.port, anonymous(a, B));
    await dial(server.port, clientTlsOptions({ ...(await issue(foreign, A)), caPem: ca.rootCertPem }, B));
    expect(server.accepted.map((x) => x.peer)).toEqual([
      { ok: false, reason: 'the client presented no certificate' },
      { ok: false, reason: expect.stringMatching(/^the client certificate is not authorized by the trust bundle: [A-Z_]+$/) },
    ]);
  });

  it('refuses a verified client of another trust domain', async () => {
    const other = LocalCa.generate({ trustDomain: 'other.example' });
    const bundle = ca.rootCertPem + other.rootCertPem;
    const [client, b] = await Promise.all([issue(other, OTHER, bundle), issue(ca, B, bundle)]);
    const server = await serve(serverTlsOptions(b));
    const out = await dial(server.port, clientTlsOptions(client, B));
    expect(out.ok).toBe(true);
    expect(server.accepted.map((x) => x.peer)).toEqual([
      { ok: false, reason: `${OTHER} is in trust domain other.example, not cluster.local` },
    ]);
  });

  it('the server sees the identity in the certificate, checked by Node', async () => {
    const [a, b] = await Promise.all([issue(ca, A), issue(ca, B)]);
    const server = await serve(serverTlsOptions(b));
    await dial(server.port, clientTlsOptions(a, B));
    expect(server.accepted[0]?.peer).toEqual({ ok: true, identity: new X509Certificate(a.certPem).subjectAltName!.slice('URI:'.length) });
  });
});

describe('connectAgent', () => {
  /** Dials with connectAgent (the agent's own client side); resolves with the server's "hello" or the error. */
  function dialAgent(port: number, svid: Svid, expected: string): Promise<{ ok: boolean; err?: NodeJS.ErrnoException }> {
    return new Promise((resolve) => {
      const socket = connectAgent(svid, expected, undefined, net.connect(port, '127.0.0.1'));
      let data = '';
      socket.on('data', (d: Buffer) => (data += d.toString()));
      socket.on('error', (err) => resolve({ ok: false, err }));
      socket.on('close', () => resolve({ ok: data === 'hello' }));
    });
  }

  it('checks the server identity from the leaf alone: the right peer answers, another identity or CA is refused', async () => {
    const [a, b] = await Promise.all([issue(ca, A), issue(ca, B)]);
    const right = await serve(serverTlsOptions(b));
    expect(await dialAgent(right.port, a, B)).toEqual({ ok: true });
    expect(await dialAgent(right.port, a, Z)).toMatchObject({ ok: false, err: { code: 'EIDENTITY', message: expect.stringContaining(`peer presented ${B}, expected ${Z}`) } });
    const impostor = await serve(serverTlsOptions({ ...(await issue(foreign, Y)), caPem: ca.rootCertPem }));
    expect(await dialAgent(impostor.port, a, Y)).toMatchObject({ ok: false, err: { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' } });
    expect(right.accepted[0]?.peer).toEqual({ ok: true, identity: A });
  });

  it('one TLS context per SVID: shared by its connections, a new one for a renewed SVID or a new bundle', async () => {
    const a = await issue(ca, A);
    expect(clientTlsOptions(a, B).secureContext).toBe(clientTlsOptions(a, Y).secureContext);
    expect(clientTlsOptions({ ...a }, B).secureContext).not.toBe(clientTlsOptions(a, B).secureContext);
    expect(clientTlsOptions(a, B, 'X25519').secureContext).not.toBe(clientTlsOptions(a, B).secureContext);
  });
});

describe('clientTlsOptions', () => {
  it('refuses an expected peer that is not a workload SPIFFE ID', async () => {
    const a = await issue(ca, A);
    expect(() => clientTlsOptions(a, 'spiffe://cluster.local')).toThrow(expect.objectContaining({ code: 'EIDENTITY' }));
  });
});
