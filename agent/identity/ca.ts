// The certificate authority of local mode: signs workload CSRs for one trust domain. In a cluster the
// identity service plays this part behind the same CsrSigner interface.

import crypto, { X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import forge from 'node-forge';
import { systemClock, type Clock } from '../clock.js';
import { TrellisError } from '../errors.js';
import { certUriSans, parseSpiffeId, parseTrustDomainId } from './spiffe.js';

export interface CsrSigner {
  /** Returns the leaf certificate PEM. */
  sign(csrPem: string, req: { identity: string; ttlMs: number }): Promise<string>;
}

const YEAR_MS = 365 * 24 * 60 * 60 * 1000;
// Backdating absorbs clock skew between the CA and the peers that check the certificate.
const SKEW_MS = 60_000;
const KEY_FILE = 'ca.key.pem';
const CERT_FILE = 'ca.cert.pem';
// How long loadOrCreate waits for a racing process to publish the certificate after its key.
const PUBLISH_WAIT_MS = 2_000;
const URI_SAN = 6;
const MIN_RSA_BITS = 2048;

// PKCS#1 v1.5 DigestInfo prefix for SHA-256 (RFC 8017, section 9.2, note 1).
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex');

/**
 * A key that forge can sign with while the RSA operation runs in Node: forge lays out certificates and
 * CSRs and only ever calls key.sign(md), and its JavaScript RSA costs ~20 ms of event loop per
 * signature against ~1 ms natively.
 */
export function nativeRsaSigner(key: KeyObject): forge.pki.rsa.PrivateKey {
  const signer = {
    sign(md: forge.md.MessageDigest): string {
      if (md.algorithm !== 'sha256') throw new Error(`nativeRsaSigner supports sha256 only, got ${md.algorithm}`);
      const digestInfo = Buffer.concat([SHA256_DIGEST_INFO, Buffer.from(md.digest().getBytes(), 'binary')]);
      return crypto
        .privateEncrypt({ key, padding: crypto.constants.RSA_PKCS1_PADDING }, digestInfo)
        .toString('binary');
    },
  };
  return signer as unknown as forge.pki.rsa.PrivateKey;
}

/** The public half of a Node key, as forge wants it in a certificate or CSR. */
export function forgePublicKey(key: KeyObject): forge.pki.rsa.PublicKey {
  const spki = crypto.createPublicKey(key).export({ type: 'spki', format: 'pem' }) as string;
  return forge.pki.publicKeyFromPem(spki);
}

/** A positive 16-byte serial whose first byte is non-zero, so its DER encoding is exactly 16 bytes. */
function randomSerial(): string {
  const bytes = crypto.randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x40;
  return bytes.toString('hex');
}

function toPem(forgePem: string): string {
  return forgePem.replace(/\r\n/g, '\n');
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function selfSignRoot(key: KeyObject, trustDomain: string, now: number, validityMs: number): string {
  const cert = forge.pki.createCertificate();
  cert.publicKey = forgePublicKey(key);
  cert.serialNumber = randomSerial();
  cert.validity.notBefore = new Date(now - SKEW_MS);
  cert.validity.notAfter = new Date(now + validityMs);
  const name = [{ name: 'commonName', value: 'trellis root' }];
  cert.setSubject(name);
  cert.setIssuer(name);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectAltName', altNames: [{ type: URI_SAN, value: `spiffe://${trustDomain}` }] },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(nativeRsaSigner(key), forge.md.sha256.create());
  return toPem(forge.pki.certificateToPem(cert));
}

/** Every URI SAN requested in a CSR's extensionRequest attributes. */
function csrUriSans(csr: forge.pki.CertificateSigningRequest): string[] {
  const uris: string[] = [];
  for (const attr of csr.attributes) {
    if (attr.name !== 'extensionRequest') continue;
    for (const ext of (attr.extensions ?? []) as { name?: string; altNames?: { type: number; value: string }[] }[]) {
      if (ext.name !== 'subjectAltName') continue;
      for (const alt of ext.altNames ?? []) if (alt.type === URI_SAN) uris.push(alt.value);
    }
  }
  return uris;
}

/**
 * Writes a file under a temporary name, then links it into place. Returns false if the file already
 * existed: link, unlike rename, never replaces what another process published first.
 */
function publishOnce(file: string, content: string, mode: number): boolean {
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`;
  const fd = fs.openSync(tmp, 'wx', mode);
  try {
    fs.writeSync(fd, content);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  try {
    fs.linkSync(tmp, file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw new TrellisError('ECAWRITE', `cannot write ${file}: ${message(err)}; check that the agent may write to ${path.dirname(file)}`, { cause: err });
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

function replaceFile(file: string, content: string, mode: number): void {
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`;
  fs.writeFileSync(tmp, content, { mode, flag: 'wx' });
  fs.renameSync(tmp, file);
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function readCaFile(dir: string, file: string): string {
  const p = path.join(dir, file);
  try {
    return fs.readFileSync(p, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new TrellisError(
        'ECANOTFOUND',
        `no CA in ${dir}: ${file} is missing; restore both ${KEY_FILE} and ${CERT_FILE}, or point the agent at an empty directory to create a new CA`,
      );
    }
    throw new TrellisError('ECANOTFOUND', `cannot read ${p}: ${message(err)}; check the file's owner and mode`, { cause: err });
  }
}

export class LocalCa implements CsrSigner {
  readonly trustDomain: string;
  readonly rootCertPem: string;
  private readonly key: KeyObject;
  private readonly clock: Clock;
  private readonly rootSubject: forge.pki.CertificateField[];
  private readonly rootKeyId: string | undefined;
  private readonly rootNotAfter: number;

  private constructor(inputs: { key: KeyObject; rootCertPem: string; trustDomain: string; clock: Clock }) {
    this.key = inputs.key;
    this.rootCertPem = inputs.rootCertPem;
    this.trustDomain = inputs.trustDomain;
    this.clock = inputs.clock;
    const root = forge.pki.certificateFromPem(inputs.rootCertPem);
    this.rootSubject = root.subject.attributes;
    const ski = root.getExtension('subjectKeyIdentifier') as { subjectKeyIdentifier?: string } | undefined;
    this.rootKeyId = ski?.subjectKeyIdentifier ? forge.util.hexToBytes(ski.subjectKeyIdentifier) : undefined;
    this.rootNotAfter = root.validity.notAfter.getTime();
  }

  static generate(opts: { trustDomain: string; clock?: Clock; validityMs?: number }): LocalCa {
    if (!parseTrustDomainId(`spiffe://${opts.trustDomain}`)) {
      throw new TrellisError('EIDENTITY', `"${opts.trustDomain}" is not a valid trust domain: use lowercase DNS labels such as cluster.local`);
    }
    const clock = opts.clock ?? systemClock;
    const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const rootCertPem = selfSignRoot(privateKey, opts.trustDomain, clock.now(), opts.validityMs ?? YEAR_MS);
    return new LocalCa({ key: privateKey, rootCertPem, trustDomain: opts.trustDomain, clock });
  }

  /** Loads dir/ca.key.pem and dir/ca.cert.pem; `opts.clock` is for tests. */
  static load(dir: string, opts: { clock?: Clock } = {}): LocalCa {
    const keyPem = readCaFile(dir, KEY_FILE);
    const certPem = readCaFile(dir, CERT_FILE);
    const certPath = path.join(dir, CERT_FILE);
    const fix = `restore the original pair, or remove both files to create a new CA (every agent must then trust the new root)`;
    let cert: X509Certificate;
    let key: KeyObject;
    try {
      cert = new X509Certificate(certPem);
    } catch (err) {
      throw new TrellisError('ECABAD', `${certPath} is not a PEM certificate (${message(err)}); ${fix}`, { cause: err });
    }
    try {
      key = crypto.createPrivateKey(keyPem);
    } catch (err) {
      throw new TrellisError('ECABAD', `${path.join(dir, KEY_FILE)} is not a PEM private key (${message(err)}); ${fix}`, { cause: err });
    }
    if (!cert.ca) throw new TrellisError('ECABAD', `${certPath} is not a CA certificate; ${fix}`);
    if (key.asymmetricKeyType !== 'rsa') throw new TrellisError('ECABAD', `${path.join(dir, KEY_FILE)} is not an RSA key; ${fix}`);
    if (!cert.checkPrivateKey(key)) {
      throw new TrellisError('ECAMISMATCH', `${KEY_FILE} does not match ${CERT_FILE} in ${dir}; ${fix}`);
    }
    const uris = certUriSans(cert);
    const trustDomain = uris?.length === 1 ? parseTrustDomainId(uris[0]!) : null;
    if (!trustDomain) {
      throw new TrellisError('ECABAD', `${certPath} names no trust domain (it needs exactly one URI SAN spiffe://<trust domain>); ${fix}`);
    }
    return new LocalCa({ key, rootCertPem: certPem, trustDomain, clock: opts.clock ?? systemClock });
  }

  /**
   * Loads the CA in dir, creating it first if absent. Several processes may start on the same dir at
   * once: each publishes with link (first one wins) and then loads whatever was published.
   */
  static loadOrCreate(dir: string, trustDomain: string, opts: { clock?: Clock; validityMs?: number } = {}): LocalCa {
    const clock = opts.clock ?? systemClock;
    const created = fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (created) fs.chmodSync(dir, 0o700);
    const keyPath = path.join(dir, KEY_FILE);
    const certPath = path.join(dir, CERT_FILE);

    if (!fs.existsSync(keyPath)) {
      const ca = LocalCa.generate({ trustDomain, clock, validityMs: opts.validityMs });
      // The key goes first and the certificate marks the pair complete.
      if (publishOnce(keyPath, ca.keyPem(), 0o600)) publishOnce(certPath, ca.rootCertPem, 0o644);
    }
    if (!fs.existsSync(certPath)) {
      // A racing process published its key and is about to publish the certificate. If it died in
      // between, the key alone is still good: certify it ourselves. An old key has no live publisher.
      const deadline = fs.statSync(keyPath).mtimeMs + PUBLISH_WAIT_MS;
      while (!fs.existsSync(certPath) && Date.now() < deadline) sleepSync(10);
      if (!fs.existsSync(certPath)) {
        let key: KeyObject;
        try {
          key = crypto.createPrivateKey(readCaFile(dir, KEY_FILE));
        } catch (err) {
          if (err instanceof TrellisError) throw err;
          throw new TrellisError('ECABAD', `${keyPath} is not a PEM private key and there is no ${CERT_FILE}; remove it to create a new CA`, { cause: err });
        }
        publishOnce(certPath, selfSignRoot(key, trustDomain, clock.now(), opts.validityMs ?? YEAR_MS), 0o644);
      }
    }

    const ca = LocalCa.load(dir, { clock });
    if (ca.trustDomain !== trustDomain) {
      throw new TrellisError(
        'ECATRUSTDOMAIN',
        `the CA in ${dir} is for trust domain ${ca.trustDomain}, not ${trustDomain}; use another directory or configure trust domain ${ca.trustDomain}`,
      );
    }
    return ca;
  }

  /** Writes the key (0600) and certificate, replacing any there. */
  save(dir: string): void {
    const created = fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (created) fs.chmodSync(dir, 0o700);
    replaceFile(path.join(dir, KEY_FILE), this.keyPem(), 0o600);
    replaceFile(path.join(dir, CERT_FILE), this.rootCertPem, 0o644);
  }

  async sign(csrPem: string, req: { identity: string; ttlMs: number }): Promise<string> {
    return this.issue(csrPem, req.identity, req.ttlMs);
  }

  private keyPem(): string {
    return this.key.export({ type: 'pkcs8', format: 'pem' }) as string;
  }

  private issue(csrPem: string, identity: string, ttlMs: number): string {
    if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw new RangeError(`ttlMs must be a positive number of milliseconds, got ${ttlMs}`);

    const id = parseSpiffeId(identity);
    if (!id) {
      throw new TrellisError('EIDENTITY', `"${identity}" is not a workload SPIFFE ID (spiffe://<trust domain>/ns/<namespace>/sa/<service account>)`);
    }
    if (id.trustDomain !== this.trustDomain) {
      throw new TrellisError(
        'EIDENTITY',
        `${identity} is in trust domain ${id.trustDomain}, but this CA signs only for ${this.trustDomain}; check the agent's trust domain setting`,
      );
    }

    let csr: forge.pki.CertificateSigningRequest;
    try {
      csr = forge.pki.certificationRequestFromPem(csrPem);
    } catch (err) {
      throw new TrellisError('EBADCSR', `cannot parse the CSR for ${identity} (${message(err)}); send a PEM PKCS#10 request with an RSA key`, { cause: err });
    }
    this.verifyCsrSignature(csr, identity);

    const uris = csrUriSans(csr);
    if (uris.length !== 1) {
      throw new TrellisError('EBADCSR', `the CSR for ${identity} carries ${uris.length} URI SANs; it must carry exactly one, the SPIFFE ID`);
    }
    if (uris[0] !== identity) {
      throw new TrellisError('EIDENTITY', `the CSR asks for ${uris[0]} but the request is for ${identity}; the CSR's URI SAN must equal the identity`);
    }

    const now = this.clock.now();
    if (now >= this.rootNotAfter) {
      throw new TrellisError(
        'ECAEXPIRED',
        `the local CA certificate expired at ${new Date(this.rootNotAfter).toISOString()}; create a new CA and make every agent trust it`,
      );
    }
    const cert = forge.pki.createCertificate();
    cert.publicKey = csr.publicKey!;
    cert.serialNumber = randomSerial();
    cert.validity.notBefore = new Date(now - SKEW_MS);
    // A leaf never outlives the root that vouches for it.
    cert.validity.notAfter = new Date(Math.min(now + ttlMs, this.rootNotAfter));
    cert.setSubject([{ name: 'organizationName', value: 'trellis' }]);
    cert.setIssuer(this.rootSubject);
    const extensions: object[] = [
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
      { name: 'subjectAltName', altNames: [{ type: URI_SAN, value: identity }] },
      { name: 'subjectKeyIdentifier' },
    ];
    if (this.rootKeyId) extensions.push({ name: 'authorityKeyIdentifier', keyIdentifier: this.rootKeyId });
    cert.setExtensions(extensions);
    cert.sign(nativeRsaSigner(this.key), forge.md.sha256.create());
    return toPem(forge.pki.certificateToPem(cert));
  }

  /** The signature is checked by Node over the request's exact signed bytes, not by forge. */
  private verifyCsrSignature(csr: forge.pki.CertificateSigningRequest, identity: string): void {
    if (csr.signatureOid !== forge.pki.oids['sha256WithRSAEncryption']) {
      const alg = (csr.signatureOid && forge.pki.oids[csr.signatureOid]) || csr.signatureOid;
      throw new TrellisError('EBADCSR', `the CSR for ${identity} is signed with ${alg}; only sha256WithRSAEncryption is accepted`);
    }
    const publicKey = csr.publicKey as forge.pki.rsa.PublicKey | null;
    if (!publicKey || !csr.certificationRequestInfo) {
      throw new TrellisError('EBADCSR', `the CSR for ${identity} has no public key or request info`);
    }
    if (publicKey.n.bitLength() < MIN_RSA_BITS) {
      throw new TrellisError('EBADCSR', `the CSR for ${identity} has a ${publicKey.n.bitLength()}-bit RSA key; use at least ${MIN_RSA_BITS} bits`);
    }
    const signed = Buffer.from(forge.asn1.toDer(csr.certificationRequestInfo).getBytes(), 'binary');
    const signature = Buffer.from(csr.signature as string, 'binary');
    const ok = crypto.verify('sha256', signed, forge.pki.publicKeyToPem(publicKey), signature);
    if (!ok) {
      throw new TrellisError('EBADCSR', `the CSR signature for ${identity} does not verify: the request was altered or signed with another key`);
    }
  }
}
