// mTLS between agents: the TLS options both ends of an HBONE tunnel use, and the identity check that
// authorization runs on. Verification is Node's own (OpenSSL chain check, X509Certificate for SANs).

import { X509Certificate } from 'node:crypto';
import type { Duplex } from 'node:stream';
import tls, { createSecureContext } from 'node:tls';
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
 * One client context per SVID (and key exchange groups), shared by every connection it dials: building one parses
 * the key, the certificate and the bundle, which was a sixth of the source agent's CPU when every connection got a
 * handshake of its own. An SVID is never changed in place (renewal and a new bundle make a new one), so a context
 * lives exactly as long as its SVID. Sharing it resumes nothing: Node's contexts keep no client session cache, and
 * a session is only ever resumed when passed in `session` (never, see clientTlsOptions).
 */
const clientContexts = new WeakMap<Svid, Map<string, tls.SecureContext>>();

function clientContext(svid: Svid, groups?: string): tls.SecureContext {
  let byGroups = clientContexts.get(svid);
  if (!byGroups) clientContexts.set(svid, (byGroups = new Map()));
  let context = byGroups.get(groups ?? '');
  if (!context) {
    const { ALPNProtocols: _alpn, ...options } = agentTls(svid, groups);
    context = createSecureContext(options);
    byGroups.set(groups ?? '', context);
  }
  return context;
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
    secureContext: clientContext(svid, groups),
    ALPNProtocols: ['h2'],
    rejectUnauthorized: true,
    // Runs only after OpenSSL has verified the chain; an error returned here aborts the connection.
    checkServerIdentity(_host, cert) {
      const x509 = (cert as LeanPeerCertificate).x509 ?? (cert.raw ? new X509Certificate(cert.raw) : undefined);
      const presented = x509 ? certIdentity(x509) : null;
      if (presented === expectedPeer) return undefined;
      return new TrellisError(
        'EIDENTITY',
        `peer presented ${presented ?? 'no single SPIFFE ID'}, expected ${expectedPeer}; ` +
          'the address may now belong to another workload, or the destination runs under another service account',
      );
    },
  };
}

/** What connectAgent's sockets hand checkServerIdentity: the verified leaf as Node's own X509Certificate. */
interface LeanPeerCertificate extends tls.PeerCertificate {
  x509?: X509Certificate;
}

/**
 * An agent's client side of an HBONE connection over `socket`, verified as clientTlsOptions says. Node asks the
 * socket for getPeerCertificate(true) before checkServerIdentity: the whole chain turned into JavaScript objects
 * with three fingerprints each, about a tenth of the source agent's CPU per connection when every connection
 * has a handshake of its own. This socket answers with the leaf as an X509Certificate instead, the one thing
 * the identity check reads; nothing else in the agent asks for it.
 */
export function connectAgent(svid: Svid, expectedPeer: string, groups: string | undefined, socket: Duplex): tls.TLSSocket {
  const tlsSocket = tls.connect({ ...clientTlsOptions(svid, expectedPeer, groups), socket });
  tlsSocket.getPeerCertificate = function leanPeerCertificate(this: tls.TLSSocket) {
    const x509 = this.getPeerX509Certificate();
    return (x509 ? { x509 } : {}) as LeanPeerCertificate;
  } as tls.TLSSocket['getPeerCertificate'];
  return tlsSocket;
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
