// SPIFFE ID parsing and the URI SAN reading that peer authentication relies on.

import crypto, { X509Certificate } from 'node:crypto';
import forge from 'node-forge';
import { describe, expect, it } from 'vitest';
import { forgePublicKey, nativeRsaSigner } from '../../agent/identity/ca.js';
import { certIdentity, certUriSans, parseSpiffeId, spiffeId } from '../../agent/identity/spiffe.js';

const key = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;

/** A self-signed certificate with the given subjectAltNames (forge altName objects). */
function certWithSans(altNames: { type: number; value?: string; ip?: string }[]): X509Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = forgePublicKey(key);
  cert.serialNumber = '01';
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 3_600_000);
  cert.setSubject([{ name: 'organizationName', value: 'test' }]);
  cert.setIssuer([{ name: 'organizationName', value: 'test' }]);
  if (altNames.length) cert.setExtensions([{ name: 'subjectAltName', altNames }]);
  cert.sign(nativeRsaSigner(key), forge.md.sha256.create());
  return new X509Certificate(forge.pki.certificateToPem(cert));
}

describe('spiffeId / parseSpiffeId', () => {
  it('builds and parses the ns/sa shape', () => {
    const id = spiffeId('cluster.local', 'shop', 'cart');
    expect(id).toBe('spiffe://cluster.local/ns/shop/sa/cart');
    expect(parseSpiffeId(id)).toEqual({ trustDomain: 'cluster.local', namespace: 'shop', serviceAccount: 'cart' });
    expect(parseSpiffeId('spiffe://td/ns/a.b_c-d/sa/default')).toEqual({ trustDomain: 'td', namespace: 'a.b_c-d', serviceAccount: 'default' });
  });

  it('refuses everything else', () => {
    for (const bad of [
      '',
      'spiffe://cluster.local',
      'spiffe://cluster.local/',
      'spiffe://Cluster.local/ns/a/sa/b',
      'spiffe://cluster.local/ns/a/sa/',
      'spiffe://cluster.local/ns//sa/b',
      'spiffe://cluster.local/ns/a/sa/b/',
      'spiffe://cluster.local/ns/a/sa/b/c',
      'spiffe://cluster.local/sa/b/ns/a',
      'spiffe://cluster.local/foo/a/sa/b',
      'spiffe://cluster.local:8443/ns/a/sa/b',
      'spiffe://user@cluster.local/ns/a/sa/b',
      'spiffe:///ns/a/sa/b',
      'spiffe://-bad.local/ns/a/sa/b',
      'spiffe://bad..local/ns/a/sa/b',
      'spiffe://cluster.local/ns/a/sa/b?x=1',
      'spiffe://cluster.local/ns/a/sa/b#frag',
      'spiffe://cluster.local/ns/%61/sa/b',
      'spiffe://cluster.local/ns/../sa/b',
      'spiffe://cluster.local/ns/./sa/b',
      'SPIFFE://cluster.local/ns/a/sa/b',
      'https://cluster.local/ns/a/sa/b',
      ' spiffe://cluster.local/ns/a/sa/b',
    ]) {
      expect(parseSpiffeId(bad), bad).toBeNull();
    }
  });

  it('spiffeId refuses parts that would not parse back', () => {
    expect(() => spiffeId('cluster.local', 'a/b', 'c')).toThrow(expect.objectContaining({ code: 'EIDENTITY' }));
    expect(() => spiffeId('Cluster.Local', 'a', 'c')).toThrow(/trust domain/);
    expect(() => spiffeId('cluster.local', 'a', '')).toThrow(/service account/);
  });
});

describe('certIdentity', () => {
  it('returns the single spiffe URI SAN, ignoring DNS and IP SANs', () => {
    const cert = certWithSans([
      { type: 2, value: 'cart.shop.svc' },
      { type: 6, value: 'spiffe://cluster.local/ns/shop/sa/cart' },
      { type: 7, ip: '10.0.0.1' },
    ]);
    expect(certIdentity(cert)).toBe('spiffe://cluster.local/ns/shop/sa/cart');
  });

  it('returns null with no SAN, no URI SAN, a non-spiffe URI or two URI SANs', () => {
    expect(certIdentity(certWithSans([]))).toBeNull();
    expect(certIdentity(certWithSans([{ type: 2, value: 'cart.shop.svc' }]))).toBeNull();
    expect(certIdentity(certWithSans([{ type: 6, value: 'https://cluster.local/ns/shop/sa/cart' }]))).toBeNull();
    const two = certWithSans([
      { type: 6, value: 'spiffe://cluster.local/ns/shop/sa/cart' },
      { type: 6, value: 'spiffe://cluster.local/ns/shop/sa/admin' },
    ]);
    expect(certIdentity(two)).toBeNull();
    expect(certUriSans(two)).toEqual(['spiffe://cluster.local/ns/shop/sa/cart', 'spiffe://cluster.local/ns/shop/sa/admin']);
  });

  it('is not fooled by a SAN value that spells out a second SAN', () => {
    const forged = 'spiffe://cluster.local/ns/x/sa/y, URI:spiffe://cluster.local/ns/x/sa/z';
    const cert = certWithSans([{ type: 6, value: forged }]);
    expect(certUriSans(cert)).toEqual([forged]);
    expect(certIdentity(cert)).toBe(forged);
    expect(parseSpiffeId(forged)).toBeNull();
  });
});
