// mTLS between agents: the TLS options both ends of an HBONE tunnel use, and the identity check that
// authorization runs on. Verification is Node's own (OpenSSL chain check, X509Certificate for SANs).

import { X509Certificate } from 'node:crypto';
import type tls from 'node:tls';
import { TrellisError } from '../errors.js';
import type { Svid } from './certs.js';
import { certIdentity, certUriSans, parseSpiffeId } from './spiffe.js';

/**
 * What both sides of an agent-to-agent connection share: the SVID, the bundle, TLS 1.3 only, HTTP/2, and
 * the key exchange groups (OpenSSL names, colon-separated, in order of preference; Node's default when absent).
 */
function agentTls(svid: Svid, groups?: string) {
  return {
    key: svid.keyPem,
    cert: svid.certPem,
    ca: svid.caPem,
    minVersion: 'TLSv1.3' as const,
    maxVersion: 'TLSv1.3' as const,
    ALPNProtocols: ['h2'],
    ...(groups && { ecdhCurve: groups }),
  };
}

/**
 * TLS options for an agent's HBONE server side: TLS 1.3 only, ALPN h2, client cert required and
 * verified against the bundle. Node drops a client whose certificate fails verification without an
 * error of its own: the server sees 'tlsClientError' (ECONNRESET, "socket hang up") and
 * peerIdentity(socket) in that handler gives the real reason.
 */
export function serverTlsOptions(svid: Svid, groups?: string): tls.TlsOptions {
  return {
    ...agentTls(svid, groups),
    requestCert: true,
    rejectUnauthorized: true,
  };
}

/**
 * TLS options for an agent's client side: TLS 1.3 only, ALPN h2, presents svid, verifies the server
 * chain against the bundle and that it presents exactly `expectedPeer`. servername plays no part in
 * identity. Do not add a `session` to these options: Node skips checkServerIdentity on resumption.
 */
export function clientTlsOptions(svid: Svid, expectedPeer: string, groups?: string): tls.ConnectionOptions {
  if (!parseSpiffeId(expectedPeer)) {
    throw new TrellisError('EIDENTITY', `expected peer "${expectedPeer}" is not a workload SPIFFE ID`);
  }
  return {
    ...agentTls(svid, groups),
    rejectUnauthorized: true,
    // Runs only after OpenSSL has verified the chain; an error returned here aborts the connection.
    checkServerIdentity(_host, cert) {
      const presented = cert.raw ? certIdentity(new X509Certificate(cert.raw)) : null;
      if (presented === expectedPeer) return undefined;
      return new TrellisError(
        'EIDENTITY',
        `peer presented ${presented ?? 'no single SPIFFE ID'}, expected ${expectedPeer}; ` +
          'the address may now belong to another workload, or the destination runs under another service account',
      );
    },
  };
}

/** After the handshake, server side: the client's verified SPIFFE identity, or why it was refused. */
export function peerIdentity(
  socket: tls.TLSSocket,
  trustDomain: string,
): { ok: true; identity: string } | { ok: false; reason: string } {
  const cert = socket.getPeerX509Certificate();
  if (!cert) {
    // A socket torn down for its certificate no longer shows the certificate but keeps the reason.
    if (socket.destroyed && socket.authorizationError) {
      return { ok: false, reason: `the client certificate is not authorized by the trust bundle: ${String(socket.authorizationError)}` };
    }
    return { ok: false, reason: 'the client presented no certificate' };
  }
  if (!socket.authorized) {
    return { ok: false, reason: `the client certificate is not authorized by the trust bundle: ${String(socket.authorizationError)}` };
  }
  const identity = certIdentity(cert);
  if (!identity) {
    const uris = certUriSans(cert);
    if (!uris) return { ok: false, reason: 'the client certificate has an unreadable subjectAltName' };
    if (uris.length === 0) return { ok: false, reason: 'the client certificate has no URI SAN (no SPIFFE ID)' };
    if (uris.length > 1) return { ok: false, reason: `the client certificate has ${uris.length} URI SANs; an SVID carries exactly one` };
    return { ok: false, reason: `the client certificate's URI SAN ${uris[0]} is not a SPIFFE ID` };
  }
  const id = parseSpiffeId(identity);
  if (!id) return { ok: false, reason: `${identity} is not a workload SPIFFE ID (spiffe://<trust domain>/ns/<namespace>/sa/<service account>)` };
  if (id.trustDomain !== trustDomain) {
    return { ok: false, reason: `${identity} is in trust domain ${id.trustDomain}, not ${trustDomain}` };
  }
  return { ok: true, identity };
}
