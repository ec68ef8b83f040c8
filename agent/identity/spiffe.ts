// Identity names: the SPIFFE IDs that the CA issues, the proxy expects of a peer and telemetry reports
// as source/destination principal.

import type { X509Certificate } from 'node:crypto';
import { TrellisError } from '../errors.js';

export interface SpiffeParts {
  trustDomain: string;
  namespace: string;
  serviceAccount: string;
}

// Lowercase DNS-style labels: SPIFFE trust domains are compared byte for byte, so no case folding.
const TRUST_DOMAIN = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$/;
// The SPIFFE path-segment alphabet; Kubernetes names are a subset of it.
const SEGMENT = /^[A-Za-z0-9._-]+$/;

function validSegment(s: string): boolean {
  return SEGMENT.test(s) && s !== '.' && s !== '..';
}

function validTrustDomain(s: string): boolean {
  return s.length <= 255 && TRUST_DOMAIN.test(s);
}

export function spiffeId(trustDomain: string, namespace: string, serviceAccount: string): string {
  const id = `spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
  if (!parseSpiffeId(id)) {
    throw new TrellisError(
      'EIDENTITY',
      `cannot build a SPIFFE ID from trust domain "${trustDomain}", namespace "${namespace}", service account "${serviceAccount}": ` +
        'the trust domain must be lowercase DNS labels and the names may use only letters, digits, ".", "-" and "_"',
    );
  }
  return id;
}

export function parseSpiffeId(uri: string): SpiffeParts | null {
  if (!uri.startsWith('spiffe://')) return null;
  const parts = uri.slice('spiffe://'.length).split('/');
  if (parts.length !== 5) return null;
  const [trustDomain, ns, namespace, sa, serviceAccount] = parts as [string, string, string, string, string];
  if (ns !== 'ns' || sa !== 'sa') return null;
  if (!validTrustDomain(trustDomain) || !validSegment(namespace) || !validSegment(serviceAccount)) return null;
  return { trustDomain, namespace, serviceAccount };
}

/** The trust domain named by a CA's own `spiffe://TD` URI, or null. */
export function parseTrustDomainId(uri: string): string | null {
  if (!uri.startsWith('spiffe://')) return null;
  const td = uri.slice('spiffe://'.length);
  return validTrustDomain(td) ? td : null;
}

/**
 * Every URI SAN of a certificate, in order; null if Node's rendering of the SAN list cannot be read,
 * so callers fail closed rather than guess.
 */
export function certUriSans(cert: X509Certificate): string[] | null {
  const names = splitAltNames(cert.subjectAltName ?? '');
  if (!names) return null;
  return names.filter((n) => n.type === 'URI').map((n) => n.value);
}

/** The single spiffe:// URI SAN of a certificate, or null (none, or more than one). */
export function certIdentity(cert: X509Certificate): string | null {
  // An X.509-SVID carries exactly one URI SAN; a second one, spiffe or not, makes the identity ambiguous.
  const uris = certUriSans(cert);
  if (!uris || uris.length !== 1) return null;
  const uri = uris[0]!;
  return uri.startsWith('spiffe://') ? uri : null;
}

/**
 * Reads Node's "TYPE:value, TYPE:value" rendering. Node quotes a value as a JSON string whenever it
 * holds a comma, quote, backslash or non-printable byte, so an unquoted value never contains ",".
 */
function splitAltNames(s: string): { type: string; value: string }[] | null {
  const out: { type: string; value: string }[] = [];
  let i = 0;
  while (i < s.length) {
    const colon = s.indexOf(':', i);
    if (colon < 0) return null;
    const type = s.slice(i, colon);
    let j = colon + 1;
    let value: string;
    if (s[j] === '"') {
      let k = j + 1;
      while (k < s.length && s[k] !== '"') k += s[k] === '\\' ? 2 : 1;
      if (k >= s.length) return null;
      try {
        value = JSON.parse(s.slice(j, k + 1)) as string;
      } catch {
        return null;
      }
      j = k + 1;
    } else {
      const comma = s.indexOf(',', j);
      const end = comma < 0 ? s.length : comma;
      value = s.slice(j, end);
      j = end;
    }
    out.push({ type, value });
    if (j === s.length) break;
    if (s.slice(j, j + 2) !== ', ') return null;
    i = j + 2;
  }
  return out;
}
