// The identity service's CA as its Secret holds it: the pair it signs with, the other roots agents must trust during a
// rotation, and the trust bundle published from both (signing root first). Read again when the Secret changes.

import crypto, { X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Clock } from '../clock.js';
import { TrellisError } from '../errors.js';
import { LocalCa } from '../identity/ca.js';
import { pemCerts } from '../identity/certs.js';
import { certUriSans, parseTrustDomainId } from '../identity/spiffe.js';

export const CA_KEY_FILE = 'ca.key.pem';
export const CA_CERT_FILE = 'ca.cert.pem';
/**
 * Optional key of the CA Secret: the roots agents trust besides the signing one (PEM, one or more), as a rotation
 * needs them: the new root before the switch, the old one after it until every workload certificate is reissued.
 */
export const TRUSTED_ROOTS_FILE = 'trusted-roots.pem';

export interface ObjectRef {
  namespace: string;
  name: string;
}

/** One root of the bundle. */
export interface BundleRoot {
  /** SHA-256, colon-separated hex, as `openssl x509 -noout -fingerprint -sha256` prints it and the agents' metrics label it. */
  readonly fingerprint: string;
  readonly subject: string;
  readonly notAfter: number;
  readonly pem: string;
}

export interface TrustBundle {
  /** The signing root first, then every other trusted root, each once. */
  readonly roots: readonly BundleRoot[];
  readonly pem: string;
}

export interface LoadedCa {
  readonly ca: LocalCa;
  readonly rootKey: KeyObject;
  readonly bundle: TrustBundle;
  /** A digest of the Secret's CA keys: a new one means the Secret changed. */
  readonly digest: string;
}

/** The two commands that create the CA Secret, as the refusal to start prints them. */
export function caCreateCommands(secret: ObjectRef, trustDomain: string): string {
  return (
    `trellis ca create --trust-domain ${trustDomain} --out DIR\n` +
    `  kubectl -n ${secret.namespace} create secret generic ${secret.name} --from-file=DIR/${CA_KEY_FILE} --from-file=DIR/${CA_CERT_FILE}`
  );
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A digest of the Secret's keys the CA is made of; other keys do not count. */
export function caDigest(data: Record<string, string>): string {
  const h = crypto.createHash('sha256');
  for (const k of [CA_KEY_FILE, CA_CERT_FILE, TRUSTED_ROOTS_FILE]) h.update(`${k}\0${data[k] ?? ''}\0`);
  return h.digest('hex');
}

export function describeRoot(cert: X509Certificate): BundleRoot {
  return Object.freeze({
    fingerprint: cert.fingerprint256,
    subject: cert.subject.replace(/\n/g, ', '),
    notAfter: cert.validToDate.getTime(),
    pem: `${cert.toString().trim()}\n`,
  });
}

/**
 * The bundle agents verify peers with: the signing root, then each root of `trustedPem` not already in it. Every
 * trusted root must be a CA certificate of the same trust domain; TrellisError ECABAD names the one that is not.
 */
export function composeBundle(signingCertPem: string, trustedPem: string | undefined, trustDomain: string, where: string): TrustBundle {
  const signing = new X509Certificate(signingCertPem);
  const roots = [describeRoot(signing)];
  const blocks = pemCerts(trustedPem ?? '');
  if (trustedPem?.trim() && blocks.length === 0) {
    throw new TrellisError('ECABAD', `${where}: ${TRUSTED_ROOTS_FILE} holds no PEM certificate; put the root certificate(s) agents must trust there, or remove the key`);
  }
  blocks.forEach((pem, i) => {
    const what = `${where}: certificate ${i + 1} of ${TRUSTED_ROOTS_FILE}`;
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(pem);
    } catch (err) {
      throw new TrellisError('ECABAD', `${what} is unreadable (${message(err)}); put the root's PEM there as \`trellis ca create\` wrote it`, { cause: err });
    }
    if (!cert.ca) throw new TrellisError('ECABAD', `${what} (${cert.subject}) is not a CA certificate; only roots belong in the trust bundle`);
    const uris = certUriSans(cert);
    const td = uris?.length === 1 ? parseTrustDomainId(uris[0]!) : null;
    if (td !== trustDomain) {
      throw new TrellisError(
        'ECABAD',
        `${what} is for trust domain ${td ?? '(none)'}, not ${trustDomain}: a rotation's roots are all of the mesh's trust domain (trellis ca create --trust-domain ${trustDomain})`,
      );
    }
    if (!roots.some((r) => r.fingerprint === cert.fingerprint256)) roots.push(describeRoot(cert));
  });
  return Object.freeze({ roots: Object.freeze(roots), pem: roots.map((r) => r.pem).join('') });
}

/**
 * The CA from the Secret's data, checked as LocalCa.load checks files (key matches certificate, CA bit, trust domain),
 * and the bundle it publishes. LocalCa loads from a directory, so the pair passes through a private temporary one.
 */
export function loadCa(data: Record<string, string>, ref: ObjectRef, trustDomain: string, clock: Clock): LoadedCa {
  const where = `${ref.namespace}/${ref.name}`;
  const howTo = `create it with:\n  ${caCreateCommands(ref, trustDomain)}`;
  const keyPem = data[CA_KEY_FILE];
  const certPem = data[CA_CERT_FILE];
  if (!keyPem || !certPem) {
    const missing = [CA_KEY_FILE, CA_CERT_FILE].filter((k) => !data[k]).join(' and ');
    throw new TrellisError('ECANOTFOUND', `the CA Secret ${where} has no ${missing}; ${howTo}`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trellis-ca-'));
  let ca: LocalCa;
  try {
    fs.writeFileSync(path.join(dir, CA_KEY_FILE), keyPem, { mode: 0o600 });
    fs.writeFileSync(path.join(dir, CA_CERT_FILE), certPem, { mode: 0o644 });
    ca = LocalCa.load(dir, { clock });
  } catch (err) {
    const code = err instanceof TrellisError ? (err as TrellisError).code : 'ECABAD';
    throw new TrellisError(code, `the CA Secret ${where} is unusable: ${message(err).replaceAll(dir, `Secret ${where}`)}`, { cause: err });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (ca.trustDomain !== trustDomain) {
    throw new TrellisError(
      'ECATRUSTDOMAIN',
      `the CA in Secret ${where} is for trust domain ${ca.trustDomain}, not ${trustDomain}; run with --trust-domain ${ca.trustDomain} or ${howTo}`,
    );
  }
  const bundle = composeBundle(certPem, data[TRUSTED_ROOTS_FILE], trustDomain, `the CA Secret ${where}`);
  return { ca, rootKey: crypto.createPrivateKey(keyPem), bundle, digest: caDigest(data) };
}
