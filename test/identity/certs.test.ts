// Workload SVIDs on a paused clock: shared issuance, renewal at half-life, keeping the old cert while
// the signer fails, and refusing to hand out an expired one.

import { X509Certificate } from 'node:crypto';
import pino from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { ManualClock, systemClock } from '../../agent/clock.js';
import { TrellisError } from '../../agent/errors.js';
import { LocalCa, type CsrSigner } from '../../agent/identity/ca.js';
import { generateKey, makeCsr, WorkloadCerts, type Svid } from '../../agent/identity/certs.js';

const TD = 'cluster.local';
const A = 'spiffe://cluster.local/ns/shop/sa/cart';
const B = 'spiffe://cluster.local/ns/shop/sa/admin';
const TTL = 24 * 3_600_000;
const RETRY = 1_000;

interface LogLine {
  level: number;
  msg: string;
  identity?: string;
  reason?: string;
  notAfter?: string;
  retryInMs?: number;
}

/** A signer in front of a real CA that can be told to fail, counting calls. */
class FlakySigner implements CsrSigner {
  calls = 0;
  failing = false;
  constructor(private readonly ca: LocalCa) {}
  async sign(csrPem: string, req: { identity: string; ttlMs: number }): Promise<string> {
    this.calls++;
    if (this.failing) throw new TrellisError('EUNAVAILABLE', 'identity service unreachable at 10.0.0.9:15012');
    return this.ca.sign(csrPem, req);
  }
}

function setup(opts: { clock?: ManualClock } = {}) {
  const clock = opts.clock ?? new ManualClock();
  const ca = LocalCa.generate({ trustDomain: TD, clock });
  const signer = new FlakySigner(ca);
  const logs: LogLine[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
  const certs = new WorkloadCerts({ signer, trustBundle: ca.rootCertPem, ttlMs: TTL, clock, logger, retryMs: RETRY });
  const rotations: Svid[] = [];
  certs.onRotate((svid) => rotations.push(svid));
  return { clock, ca, signer, logs, certs, rotations };
}

const serial = (svid: Svid) => new X509Certificate(svid.certPem).serialNumber;
const warnings = (logs: LogLine[]) => logs.filter((l) => l.level >= 40);

describe('WorkloadCerts', () => {
  it('issues an SVID that matches its key, identity and bundle', async () => {
    const { certs, ca, clock } = setup();
    const svid = await certs.get(A);
    const cert = new X509Certificate(svid.certPem);
    expect(svid.identity).toBe(A);
    expect(svid.caPem).toBe(ca.rootCertPem);
    expect(cert.subjectAltName).toBe(`URI:${A}`);
    expect(svid.notAfter).toBe(clock.now() + TTL);
    expect(svid.notBefore).toBe(clock.now() - 60_000);
    expect(certs.current(A)).toBe(svid);
    expect(certs.trustBundle()).toBe(ca.rootCertPem);
    certs.close();
  });

  it('shares one issuance between concurrent callers', async () => {
    const { certs, signer } = setup();
    const all = await Promise.all([certs.get(A), certs.get(A), certs.get(A), certs.get(B)]);
    expect(signer.calls).toBe(2);
    expect(all[1]).toBe(all[0]);
    expect(all[2]).toBe(all[0]);
    expect(all[3]!.identity).toBe(B);
    expect(await certs.get(A)).toBe(all[0]);
    expect(signer.calls).toBe(2);
    certs.close();
  });

  it('renews at half-life with a new key and tells listeners', async () => {
    const { certs, clock, rotations, signer } = setup();
    const first = await certs.get(A);
    clock.advance(TTL / 2 - 1);
    expect(signer.calls).toBe(1);
    clock.advance(2);
    await vi.waitFor(() => expect(rotations).toHaveLength(1));
    const second = rotations[0]!;
    expect(serial(second)).not.toBe(serial(first));
    expect(second.keyPem).not.toBe(first.keyPem);
    expect(certs.current(A)).toBe(second);
    expect(await certs.get(A)).toBe(second);
    // And again at the new certificate's half-life.
    clock.advance(TTL / 2 + 1);
    await vi.waitFor(() => expect(rotations).toHaveLength(2));
    certs.close();
  });

  it('keeps the old SVID while renewal fails, backs off, and rotates once the signer is back', async () => {
    const { certs, clock, rotations, signer, logs } = setup();
    const first = await certs.get(A);
    signer.failing = true;
    clock.advance(TTL / 2 + 1);
    await vi.waitFor(() => expect(warnings(logs)).toHaveLength(1));
    expect(warnings(logs)[0]).toMatchObject({
      level: 40,
      identity: A,
      reason: expect.stringContaining('identity service unreachable'),
      notAfter: new Date(first.notAfter).toISOString(),
      retryInMs: RETRY,
    });
    expect(certs.current(A)).toBe(first);
    expect(await certs.get(A)).toBe(first);
    expect(rotations).toHaveLength(0);

    // Each failure doubles the wait, up to a minute.
    for (let n = 2; n <= 8; n++) {
      clock.advance(60_000);
      await vi.waitFor(() => expect(warnings(logs)).toHaveLength(n));
    }
    expect(warnings(logs).map((l) => l.retryInMs)).toEqual([1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]);

    signer.failing = false;
    clock.advance(60_000);
    await vi.waitFor(() => expect(rotations).toHaveLength(1));
    expect(serial(rotations[0]!)).not.toBe(serial(first));
    expect(certs.current(A)).toBe(rotations[0]);
    certs.close();
  });

  it('rejects with ECERTEXPIRED rather than hand out an expired SVID, and recovers', async () => {
    const { certs, clock, rotations, signer, logs } = setup();
    const first = await certs.get(A);
    signer.failing = true;
    clock.advance(TTL / 2 + 1);
    await vi.waitFor(() => expect(warnings(logs)).toHaveLength(1));
    clock.advance(TTL / 2);
    expect(certs.current(A)).toBeUndefined();
    const err = await certs.get(A).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ECERTEXPIRED', message: expect.stringContaining(new Date(first.notAfter).toISOString()) });
    expect((err as Error).message).toContain('identity service unreachable');
    expect(logs.some((l) => l.level === 50 && l.identity === A)).toBe(true);

    signer.failing = false;
    const fresh = await certs.get(A);
    // Certificates count whole seconds.
    expect(fresh.notAfter).toBe(Math.floor((clock.now() + TTL) / 1000) * 1000);
    expect(rotations).toContain(fresh);
    certs.close();
  });

  it('a first issuance that fails rejects with the signer code, and the next get asks again', async () => {
    const { certs, signer } = setup();
    signer.failing = true;
    await expect(certs.get(A)).rejects.toMatchObject({ code: 'EUNAVAILABLE', message: expect.stringContaining(`issuing an SVID for ${A}`) });
    signer.failing = false;
    await expect(certs.get(A)).resolves.toMatchObject({ identity: A });
    expect(signer.calls).toBe(2);
    certs.close();
  });

  it('forget stops renewal; close refuses further requests', async () => {
    const { certs, clock, signer } = setup();
    await certs.get(A);
    certs.forget(A);
    expect(certs.current(A)).toBeUndefined();
    clock.advance(TTL);
    expect(signer.calls).toBe(1);
    certs.close();
    await expect(certs.get(A)).rejects.toMatchObject({ code: 'ECLOSED' });
  });

  it('unsubscribed listeners are not called, and a throwing listener does not stop the others', async () => {
    const { certs, clock, rotations, logs } = setup();
    const ignored: Svid[] = [];
    const off = certs.onRotate((svid) => ignored.push(svid));
    certs.onRotate(() => {
      throw new Error('listener broke');
    });
    off();
    await certs.get(A);
    clock.advance(TTL / 2 + 1);
    await vi.waitFor(() => expect(rotations).toHaveLength(1));
    expect(ignored).toHaveLength(0);
    expect(logs.some((l) => l.msg.includes('listener failed'))).toBe(true);
    certs.close();
  });

  it('refuses what a misconfigured signer returns', async () => {
    const { ca, clock } = setup();
    const logger = pino({ level: 'silent' });
    const other = LocalCa.generate({ trustDomain: TD, clock });
    const wrongBundle = new WorkloadCerts({ signer: ca, trustBundle: other.rootCertPem, ttlMs: TTL, clock, logger });
    await expect(wrongBundle.get(A)).rejects.toMatchObject({ code: 'EBADSVID', message: expect.stringContaining('trust bundle') });

    // A signer that certifies a key of its own instead of the one in the CSR.
    const keySwap: CsrSigner = {
      sign: async (_csr, req) => ca.sign(makeCsr(req.identity, await generateKey()), req),
    };
    const swapped = new WorkloadCerts({ signer: keySwap, trustBundle: ca.rootCertPem, ttlMs: TTL, clock, logger });
    await expect(swapped.get(A)).rejects.toMatchObject({ code: 'EBADSVID', message: expect.stringContaining('another key') });

    for (const trustBundle of ['', '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n']) {
      expect(() => new WorkloadCerts({ signer: ca, trustBundle, ttlMs: TTL, clock, logger })).toThrow(
        expect.objectContaining({ code: 'EBUNDLE' }),
      );
    }
  });

  it('follows a CA rotation: a new root beside the old, the signing root switched, the old removed; never a restart', async () => {
    const clock = new ManualClock();
    const oldCa = LocalCa.generate({ trustDomain: TD, clock });
    const newCa = LocalCa.generate({ trustDomain: TD, clock });
    const fp = (pem: string) => new X509Certificate(pem).fingerprint256;
    const from = (svid: Svid) => [oldCa, newCa].find((ca) => new X509Certificate(svid.certPem).checkIssued(new X509Certificate(ca.rootCertPem)));
    let issuing = oldCa;
    const signer: CsrSigner = { sign: (csr, req) => issuing.sign(csr, req) };
    const logs: LogLine[] = [];
    const logger = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
    const certs = new WorkloadCerts({ signer, trustBundle: oldCa.rootCertPem, ttlMs: TTL, clock, logger, retryMs: RETRY });
    const rotations: Svid[] = [];
    certs.onRotate((svid) => rotations.push(svid));
    const first = await certs.get(A);
    expect(certs.report()).toEqual({ bundle: [fp(oldCa.rootCertPem)], svids: [{ identity: A, root: fp(oldCa.rootCertPem), notBefore: first.notBefore, notAfter: first.notAfter }] });

    // 1. Both roots, the signing one (the old) first: the same certificate, handed out again with the bundle that trusts both.
    const both = `${oldCa.rootCertPem}${newCa.rootCertPem}`;
    expect(certs.setTrustBundle(both)).toBe(true);
    expect(certs.setTrustBundle(both), 'the same bundle again changes nothing').toBe(false);
    clock.advance(1);
    await Promise.resolve();
    expect(rotations).toHaveLength(1);
    expect([rotations[0]!.certPem, rotations[0]!.caPem]).toEqual([first.certPem, both]);
    expect(certs.trustBundle()).toBe(both);
    expect((await certs.get(A)).caPem).toBe(both);
    expect(certs.report().bundle).toEqual([fp(oldCa.rootCertPem), fp(newCa.rootCertPem)]);

    // 2. The identity service signs with the new CA and lists its root first: the certificate from the old root is
    //    renewed at once (not at half-life), while both roots stay trusted.
    issuing = newCa;
    const switched = `${newCa.rootCertPem}${oldCa.rootCertPem}`;
    expect(certs.setTrustBundle(switched)).toBe(true);
    clock.advance(1);
    await vi.waitFor(() => expect(rotations).toHaveLength(3));
    expect([rotations[1]!.certPem, rotations[1]!.caPem]).toEqual([first.certPem, switched]);
    const renewed = rotations[2]!;
    expect(from(renewed)).toBe(newCa);
    expect(renewed.caPem).toBe(switched);
    expect(certs.current(A)).toBe(renewed);
    expect(certs.report().svids).toEqual([{ identity: A, root: fp(newCa.rootCertPem), notBefore: renewed.notBefore, notAfter: renewed.notAfter }]);
    expect(logs.some((l) => l.msg.startsWith('SVID is from another root than the one the identity service now signs with'))).toBe(true);

    // 3. The old root leaves the bundle: nothing chains to it any more, so nothing is renewed; the bundle is handed out.
    expect(certs.setTrustBundle(newCa.rootCertPem)).toBe(true);
    clock.advance(1);
    await Promise.resolve();
    expect(rotations).toHaveLength(4);
    expect([rotations[3]!.certPem, rotations[3]!.caPem]).toEqual([renewed.certPem, newCa.rootCertPem]);

    // 4. A bundle without a readable certificate is refused; the one in force stays.
    expect(certs.setTrustBundle('not a certificate')).toBe(false);
    expect(certs.trustBundle()).toBe(newCa.rootCertPem);
    expect(logs.some((l) => l.msg === 'new trust bundle refused; the one in force stays')).toBe(true);
    certs.close();
  });

  it('a root dropped from the bundle is trusted no more at once, even while its certificates cannot be renewed', async () => {
    const clock = new ManualClock();
    const oldCa = LocalCa.generate({ trustDomain: TD, clock });
    const newCa = LocalCa.generate({ trustDomain: TD, clock });
    const signer = new FlakySigner(oldCa);
    const logger = pino({ level: 'silent' });
    const certs = new WorkloadCerts({ signer, trustBundle: `${oldCa.rootCertPem}${newCa.rootCertPem}`, ttlMs: TTL, clock, logger, retryMs: RETRY });
    const rotations: Svid[] = [];
    certs.onRotate((svid) => rotations.push(svid));
    const first = await certs.get(A);
    signer.failing = true;
    expect(certs.setTrustBundle(newCa.rootCertPem)).toBe(true);
    // The listeners verify peers against the new bundle from now on, with the certificate they have.
    expect(rotations).toHaveLength(1);
    expect([rotations[0]!.certPem, rotations[0]!.caPem]).toEqual([first.certPem, newCa.rootCertPem]);
    expect(certs.report().svids).toEqual([{ identity: A, root: 'none', notBefore: first.notBefore, notAfter: first.notAfter }]);
    clock.advance(1);
    await vi.waitFor(() => expect(signer.calls).toBe(2));
    // The renewal failed; the next try comes after the retry delay, and the old root stays out.
    expect(certs.current(A)!.caPem).toBe(newCa.rootCertPem);
    certs.close();
  });

  it('issues an SVID in well under a second (native key generation and signing)', async () => {
    const ca = LocalCa.generate({ trustDomain: TD });
    const certs = new WorkloadCerts({ signer: ca, trustBundle: ca.rootCertPem, ttlMs: TTL, clock: systemClock, logger: pino({ level: 'silent' }) });
    const times: number[] = [];
    for (let i = 0; i < 10; i++) {
      const start = performance.now();
      await certs.get(`spiffe://cluster.local/ns/shop/sa/w${i}`);
      times.push(performance.now() - start);
    }
    times.sort((a, b) => a - b);
    expect(times[5]!).toBeLessThan(1_000);
    certs.close();
  });
});
