// The local CA: what it signs, what it refuses, and how it keeps its key on disk.

import { spawn } from 'node:child_process';
import crypto, { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import forge from 'node-forge';
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../agent/clock.js';
import { forgePublicKey, LocalCa, nativeRsaSigner } from '../../agent/identity/ca.js';
import { makeCsr } from '../../agent/identity/certs.js';

const TD = 'cluster.local';
const A = 'spiffe://cluster.local/ns/shop/sa/cart';
const B = 'spiffe://cluster.local/ns/shop/sa/admin';
const HOUR = 3_600_000;

const newKey = () => crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;

/** A CSR with arbitrary URI SANs, signed by `signingKey` while carrying `publicKey`. */
function customCsr(uris: string[], signingKey: crypto.KeyObject, publicKey = signingKey): string {
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = forgePublicKey(publicKey);
  csr.setSubject([{ name: 'organizationName', value: 'trellis' }]);
  if (uris.length) {
    csr.setAttributes([
      { name: 'extensionRequest', extensions: [{ name: 'subjectAltName', altNames: uris.map((value) => ({ type: 6, value })) }] },
    ]);
  }
  csr.sign(nativeRsaSigner(signingKey), forge.md.sha256.create());
  return forge.pki.certificationRequestToPem(csr);
}

const dirs: string[] = [];
function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trellis-ca-'));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

describe('LocalCa certificates', () => {
  it('makes a root and leaves with the SVID profile', async () => {
    const clock = new ManualClock();
    const ca = LocalCa.generate({ trustDomain: TD, clock });
    const root = new X509Certificate(ca.rootCertPem);
    expect(ca.trustDomain).toBe(TD);
    expect(root.ca).toBe(true);
    expect(root.subject).toBe('CN=trellis root');
    expect(root.subjectAltName).toBe('URI:spiffe://cluster.local');
    expect(root.validToDate.getTime() - clock.now()).toBe(365 * 24 * HOUR);
    const froot = forge.pki.certificateFromPem(ca.rootCertPem);
    expect(froot.getExtension('basicConstraints')).toMatchObject({ cA: true, critical: true });
    expect(froot.getExtension('keyUsage')).toMatchObject({ keyCertSign: true, cRLSign: true, digitalSignature: false, critical: true });

    const key = newKey();
    const leafPem = await ca.sign(makeCsr(A, key), { identity: A, ttlMs: HOUR });
    const leaf = new X509Certificate(leafPem);
    expect(leaf.ca).toBe(false);
    expect(leaf.subject).toBe('O=trellis');
    expect(leaf.subjectAltName).toBe(`URI:${A}`);
    expect(leaf.serialNumber).toMatch(/^[0-9A-F]{32}$/);
    expect(leaf.checkIssued(root)).toBe(true);
    expect(leaf.verify(root.publicKey)).toBe(true);
    expect(leaf.checkPrivateKey(key)).toBe(true);
    expect(leaf.validFromDate.getTime()).toBe(clock.now() - 60_000);
    expect(leaf.validToDate.getTime()).toBe(clock.now() + HOUR);
    expect(leaf.keyUsage?.sort()).toEqual(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    const fleaf = forge.pki.certificateFromPem(leafPem);
    expect(fleaf.siginfo.algorithmOid).toBe(forge.pki.oids['sha256WithRSAEncryption']);
    expect(fleaf.getExtension('basicConstraints')).toMatchObject({ cA: false });
    expect(fleaf.getExtension('keyUsage')).toMatchObject({ digitalSignature: true, keyEncipherment: true, keyCertSign: false });
    const aki = fleaf.getExtension('authorityKeyIdentifier') as { value: string };
    const ski = froot.getExtension('subjectKeyIdentifier') as { subjectKeyIdentifier: string };
    expect(forge.util.bytesToHex(aki.value)).toContain(ski.subjectKeyIdentifier);
  });

  it('gives every leaf its own serial and never outlives the root', async () => {
    const ca = LocalCa.generate({ trustDomain: TD, validityMs: HOUR });
    const key = newKey();
    const one = new X509Certificate(await ca.sign(makeCsr(A, key), { identity: A, ttlMs: 10 * HOUR }));
    const two = new X509Certificate(await ca.sign(makeCsr(A, key), { identity: A, ttlMs: 10 * HOUR }));
    expect(one.serialNumber).not.toBe(two.serialNumber);
    expect(one.validToDate.getTime()).toBe(new X509Certificate(ca.rootCertPem).validToDate.getTime());
  });

  it('refuses a CSR whose SAN differs from the requested identity', async () => {
    const ca = LocalCa.generate({ trustDomain: TD });
    await expect(ca.sign(makeCsr(B, newKey()), { identity: A, ttlMs: HOUR })).rejects.toMatchObject({
      code: 'EIDENTITY',
      message: expect.stringContaining(`asks for ${B} but the request is for ${A}`),
    });
  });

  it('refuses identities of another trust domain, and non-workload IDs', async () => {
    const ca = LocalCa.generate({ trustDomain: TD });
    const other = 'spiffe://other.example/ns/shop/sa/cart';
    await expect(ca.sign(makeCsr(other, newKey()), { identity: other, ttlMs: HOUR })).rejects.toMatchObject({
      code: 'EIDENTITY',
      message: expect.stringContaining('signs only for cluster.local'),
    });
    await expect(ca.sign(makeCsr('spiffe://cluster.local', newKey()), { identity: 'spiffe://cluster.local', ttlMs: HOUR })).rejects.toMatchObject({
      code: 'EIDENTITY',
    });
  });

  it('refuses malformed CSRs: no URI SAN, two URI SANs, a bad signature, garbage', async () => {
    const ca = LocalCa.generate({ trustDomain: TD });
    const key = newKey();
    const sign = (csr: string) => ca.sign(csr, { identity: A, ttlMs: HOUR });
    await expect(sign(customCsr([], key))).rejects.toMatchObject({ code: 'EBADCSR', message: expect.stringContaining('0 URI SANs') });
    await expect(sign(customCsr([A, B], key))).rejects.toMatchObject({ code: 'EBADCSR', message: expect.stringContaining('2 URI SANs') });
    await expect(sign(customCsr([A], key, newKey()))).rejects.toMatchObject({ code: 'EBADCSR', message: expect.stringContaining('does not verify') });
    await expect(sign('-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n')).rejects.toMatchObject({ code: 'EBADCSR' });
    await expect(sign('not a csr')).rejects.toMatchObject({ code: 'EBADCSR' });
  });

  it('refuses to sign once its own certificate has expired', async () => {
    const clock = new ManualClock();
    const ca = LocalCa.generate({ trustDomain: TD, clock, validityMs: HOUR });
    clock.advance(HOUR);
    await expect(ca.sign(makeCsr(A, newKey()), { identity: A, ttlMs: HOUR })).rejects.toMatchObject({ code: 'ECAEXPIRED' });
  });
});

describe('LocalCa on disk', () => {
  it('loadOrCreate twice in one dir gives the same root, with private modes', async () => {
    const dir = path.join(tempDir(), 'ca');
    const first = LocalCa.loadOrCreate(dir, TD);
    const second = LocalCa.loadOrCreate(dir, TD);
    expect(second.rootCertPem).toBe(first.rootCertPem);
    expect(fs.statSync(dir).mode & 0o777).toBe(0o700);
    expect(fs.statSync(path.join(dir, 'ca.key.pem')).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.join(dir, 'ca.cert.pem')).mode & 0o777).toBe(0o644);
    expect(fs.readdirSync(dir).sort()).toEqual(['ca.cert.pem', 'ca.key.pem']);
    // The reloaded CA signs with the same key.
    const leaf = new X509Certificate(await second.sign(makeCsr(A, newKey()), { identity: A, ttlMs: HOUR }));
    expect(leaf.verify(new X509Certificate(first.rootCertPem).publicKey)).toBe(true);
  });

  it('save and load round-trip', () => {
    const dir = tempDir();
    const ca = LocalCa.generate({ trustDomain: 'corp.example' });
    ca.save(dir);
    const loaded = LocalCa.load(dir);
    expect(loaded.trustDomain).toBe('corp.example');
    expect(loaded.rootCertPem).toBe(ca.rootCertPem);
    expect(fs.statSync(path.join(dir, 'ca.key.pem')).mode & 0o777).toBe(0o600);
  });

  it('load says clearly what is missing or wrong', () => {
    const empty = tempDir();
    expect(() => LocalCa.load(empty)).toThrow(expect.objectContaining({ code: 'ECANOTFOUND', message: expect.stringContaining('ca.key.pem is missing') }));

    const one = tempDir();
    const two = tempDir();
    LocalCa.generate({ trustDomain: TD }).save(one);
    LocalCa.generate({ trustDomain: TD }).save(two);
    fs.copyFileSync(path.join(two, 'ca.key.pem'), path.join(one, 'ca.key.pem'));
    expect(() => LocalCa.load(one)).toThrow(expect.objectContaining({ code: 'ECAMISMATCH', message: expect.stringContaining('does not match') }));

    fs.writeFileSync(path.join(two, 'ca.cert.pem'), 'garbage');
    expect(() => LocalCa.load(two)).toThrow(expect.objectContaining({ code: 'ECABAD' }));
  });

  it('loadOrCreate refuses a dir holding another trust domain', () => {
    const dir = tempDir();
    LocalCa.loadOrCreate(dir, 'corp.example');
    expect(() => LocalCa.loadOrCreate(dir, TD)).toThrow(expect.objectContaining({ code: 'ECATRUSTDOMAIN' }));
  });

  it('loadOrCreate certifies a key left alone by a creator that died before publishing the certificate', () => {
    const dir = tempDir();
    LocalCa.generate({ trustDomain: TD }).save(dir);
    const key = crypto.createPrivateKey(fs.readFileSync(path.join(dir, 'ca.key.pem')));
    fs.rmSync(path.join(dir, 'ca.cert.pem'));
    const longAgo = new Date(Date.now() - 60_000);
    fs.utimesSync(path.join(dir, 'ca.key.pem'), longAgo, longAgo);
    const ca = LocalCa.loadOrCreate(dir, TD);
    expect(new X509Certificate(ca.rootCertPem).checkPrivateKey(key)).toBe(true);
  });

  it('processes racing on an empty dir all end up with the same CA', async () => {
    const dir = path.join(tempDir(), 'ca');
    const go = path.join(path.dirname(dir), 'go');
    const caModule = fileURLToPath(new URL('../../agent/identity/ca.ts', import.meta.url));
    // Each child loads the TypeScript source directly (Node strips the types; the hook maps the .js
    // specifiers to .ts), says it is ready, and waits for the same starting gun.
    const script = `
      import { registerHooks } from 'node:module';
      import fs from 'node:fs';
      registerHooks({
        resolve(spec, ctx, next) {
          try { return next(spec, ctx); } catch (err) {
            if (spec.startsWith('.') && spec.endsWith('.js')) return next(spec.slice(0, -3) + '.ts', ctx);
            throw err;
          }
        },
      });
      const { LocalCa } = await import(${JSON.stringify(caModule)});
      process.stdout.write('ready\\n');
      while (!fs.existsSync(${JSON.stringify(go)})) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
      const ca = LocalCa.loadOrCreate(${JSON.stringify(dir)}, 'cluster.local');
      process.stdout.write(ca.rootCertPem);
    `;
    const children = Array.from({ length: 4 }, () => {
      const child = spawn(process.execPath, ['--no-warnings', '--input-type=module', '-e', script], {
        cwd: path.dirname(caModule),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      const ready = new Promise<void>((resolve) =>
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.startsWith('ready\n')) resolve();
        }),
      );
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const done = new Promise<string>((resolve, reject) =>
        child.on('exit', (code) => (code === 0 ? resolve(out.slice('ready\n'.length)) : reject(new Error(`child failed (${code}): ${err}`)))),
      );
      return { ready, done };
    });
    await Promise.race([Promise.all(children.map((c) => c.ready)), Promise.all(children.map((c) => c.done))]);
    fs.writeFileSync(go, '');
    const roots = await Promise.all(children.map((c) => c.done));
    expect(new Set(roots).size).toBe(1);
    expect(roots[0]).toBe(LocalCa.load(dir).rootCertPem);
    expect(fs.readdirSync(dir).sort()).toEqual(['ca.cert.pem', 'ca.key.pem']);
  });
});
