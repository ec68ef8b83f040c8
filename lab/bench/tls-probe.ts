// Bench: what a TLS endpoint really negotiates (version, cipher, key exchange group, certificate key), read
// from a handshake of our own, so the report states the crypto of every TLS path instead of assuming it.
import net from 'node:net';
import tls from 'node:tls';
import { LabError } from '../errors.js';

export interface TlsCreds {
  keyPem: string;
  certPem: string;
  caPem: string;
}

export interface TlsParams {
  protocol: string;
  cipher: string;
  /** Key exchange group: X25519, X25519MLKEM768... */
  group: string;
  /** The server certificate's key: "RSA 2048"... */
  serverKey: string;
}

export function describeTls(p: TlsParams): string {
  return `${p.protocol} ${p.cipher}, key exchange ${p.group}, ${p.serverKey} certificates`;
}

/** The settings both ends of an agent-to-agent connection use (identity/tls.ts), minus identity checks. */
function agentLike(creds: TlsCreds): tls.SecureContextOptions & { minVersion: 'TLSv1.3'; maxVersion: 'TLSv1.3'; ALPNProtocols: string[] } {
  return { key: creds.keyPem, cert: creds.certPem, ca: creds.caPem, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', ALPNProtocols: ['h2'] };
}

/**
 * Handshakes as a client over `socket` (already connecting, e.g. from inside a netns), presenting `creds`
 * and offering `groups` (Node's default when absent), and reports what was negotiated. The chain is checked against creds.caPem; names are not (SPIFFE
 * certificates carry no DNS name).
 */
export function probeTls(socket: net.Socket, creds: TlsCreds, what: string, opts: { timeoutMs?: number; groups?: string } = {}): Promise<TlsParams> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  return new Promise((resolve, reject) => {
    const conn = tls.connect({
      ...agentLike(creds),
      ...(opts.groups && { ecdhCurve: opts.groups }),
      socket,
      rejectUnauthorized: true,
      checkServerIdentity: () => undefined,
    });
    const timer = setTimeout(() => conn.destroy(new LabError('ETIMEDOUT', `TLS probe of ${what}: no handshake in ${timeoutMs} ms`)), timeoutMs);
    conn.once('secureConnect', () => {
      clearTimeout(timer);
      const params = paramsOf(conn);
      // An orderly close, so the server gets our certificate before the connection goes (a TLS 1.3 server
      // reads it after the client considers the handshake done) and does not count a refused peer.
      conn.end();
      const bye = setTimeout(() => conn.destroy(), 1000);
      conn.once('close', () => clearTimeout(bye));
      resolve(params);
    });
    conn.on('error', (err) => {
      clearTimeout(timer);
      conn.destroy();
      reject(new LabError('ETLSPROBE', `TLS probe of ${what}: ${err.message}`, { cause: err }));
    });
  });
}

/** What two Node endpoints configured like the agents negotiate with this process's defaults (loopback). */
export async function probeNodeDefaults(creds: TlsCreds): Promise<TlsParams> {
  const server = tls.createServer({ ...agentLike(creds), requestCert: true, rejectUnauthorized: true }, (s) => s.end());
  server.on('tlsClientError', () => {});
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  try {
    const port = (server.address() as net.AddressInfo).port;
    return await probeTls(net.connect({ host: '127.0.0.1', port }), creds, 'a Node TLS server on loopback');
  } finally {
    server.close();
  }
}

function paramsOf(conn: tls.TLSSocket): TlsParams {
  const cipher = conn.getCipher();
  const eph = conn.getEphemeralKeyInfo() as { name?: string } | null;
  const peer = conn.getPeerX509Certificate();
  const type = peer?.publicKey.asymmetricKeyType;
  const bits = peer?.publicKey.asymmetricKeyDetails?.modulusLength;
  return {
    protocol: conn.getProtocol() ?? 'unknown',
    cipher: cipher?.standardName ?? cipher?.name ?? 'unknown',
    group: eph?.name ?? 'unknown',
    serverKey: type ? `${type.toUpperCase()}${bits ? ` ${bits}` : ''}` : 'unknown',
  };
}
