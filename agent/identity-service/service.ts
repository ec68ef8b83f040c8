// `trellis identity`: the cluster's CA as a gRPC service. Agents send a CSR for a workload on their node
// with their projected service-account token; the service checks both and signs a short-lived SVID.

import crypto, { X509Certificate, type KeyObject } from 'node:crypto';
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import forge from 'node-forge';
import type { Logger } from 'pino';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import { TrellisError } from '../errors.js';
import { Authorizer, Refusal, type Caller } from './authorize.js';
import { forgePublicKey, nativeRsaSigner } from '../identity/ca.js';
import { caCreateCommands, caDigest as caDigestOf, loadCa, type LoadedCa, type ObjectRef } from './ca-source.js';
import { generateKey } from '../identity/certs.js';
import type { IdentityCluster } from './cluster.js';
import {
  identityServiceDefinition,
  REFUSAL_STATUS,
  type CreateCertificateRequest,
  type CreateCertificateResponse,
} from '../identity/proto.js';

export interface IdentityServiceInputs {
  /** Where to serve gRPC over TLS; port 0 picks a free one (see IdentityService.port). */
  listen: { host: string; port: number };
  /** Secret holding ca.key.pem and ca.cert.pem, and during a rotation trusted-roots.pem. */
  caSecret: ObjectRef;
  /** ConfigMap the trust bundle is published in, under root-cert.pem. */
  bundleConfigMap: ObjectRef;
  /** How often the CA Secret is read again (a rotation switches the CA or the bundle without a restart). Default 10 s. */
  caPollMs?: number;
  trustDomain: string;
  /** Audience agent tokens must carry (default in the CLI: trellis-identity). */
  audience: string;
  /** Username of the only caller allowed, e.g. system:serviceaccount:trellis-system:trellis-agent. */
  agentServiceAccount: string;
  /** Longest certificate lifetime granted, and the lifetime when a request asks for none. */
  certTtlMs: number;
  /** DNS names for the serving certificate besides the in-cluster names of the trellis-identity Service. */
  extraDnsNames?: readonly string[];
  cluster: IdentityCluster;
  clock?: Clock;
  logger: Logger;
}

export interface IdentityService {
  /** The port actually bound. */
  readonly port: number;
  /** The root it signs with now. */
  readonly rootCertPem: string;
  /** What it publishes: the signing root first, then the other roots of the rotation in progress, if any. */
  readonly bundlePem: string;
  /** Stops accepting, lets calls in flight finish for up to graceMs, then cuts the rest. */
  stop(graceMs?: number): Promise<void>;
}

export { CA_CERT_FILE, CA_KEY_FILE, TRUSTED_ROOTS_FILE, caCreateCommands, type ObjectRef } from './ca-source.js';
export const BUNDLE_KEY = 'root-cert.pem';
const DEFAULT_CA_POLL_MS = 10_000;
/** --cert-ttl may not exceed this: a stolen SVID stays useful for at most two days. */
export const MAX_CERT_TTL_MS = 48 * 3_600_000;
const MIN_CERT_TTL_MS = 60_000;
const SERVICE_NAMES = ['trellis-identity', 'trellis-identity.trellis-system', 'trellis-identity.trellis-system.svc'];
// Also valid on loopback, so a port-forward or an in-process test reaches it under its own name.
const LOOPBACK_NAMES = ['localhost'];
const LOOPBACK_IPS = ['127.0.0.1', '::1'];
const SERVING_TTL_MS = 24 * 3_600_000;
const SERVING_RETRY_MS = 60_000;
const SKEW_MS = 60_000;
// A CSR is about 1 KiB; anything near this limit is not one.
const MAX_MESSAGE_BYTES = 64 * 1024;
const DEFAULT_GRACE_MS = 5_000;
const DNS_SAN = 2;
const IP_SAN = 7;

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The CA Secret's data; refuses to go on without it. */
async function readCaSecret(inputs: IdentityServiceInputs): Promise<Record<string, string>> {
  const { caSecret, trustDomain, cluster } = inputs;
  const data = await cluster.readSecret(caSecret.namespace, caSecret.name);
  if (!data) {
    throw new TrellisError('ECANOTFOUND', `the CA Secret ${caSecret.namespace}/${caSecret.name} does not exist; create it with:\n  ${caCreateCommands(caSecret, trustDomain)}`);
  }
  return data;
}

interface ServingPair {
  keyPem: string;
  certPem: string;
  notAfter: number;
}

/** A TLS server certificate for the service's DNS names, signed by the root itself. */
async function issueServingCert(rootKey: KeyObject, rootCertPem: string, dnsNames: readonly string[], clock: Clock): Promise<ServingPair> {
  const key = await generateKey();
  const root = forge.pki.certificateFromPem(rootCertPem);
  const now = clock.now();
  const cert = forge.pki.createCertificate();
  cert.publicKey = forgePublicKey(key);
  const serial = crypto.randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x40;
  cert.serialNumber = serial.toString('hex');
  cert.validity.notBefore = new Date(now - SKEW_MS);
  cert.validity.notAfter = new Date(Math.min(now + SERVING_TTL_MS, root.validity.notAfter.getTime()));
  cert.setSubject([{ name: 'commonName', value: 'trellis-identity' }]);
  cert.setIssuer(root.subject.attributes);
  const ski = root.getExtension('subjectKeyIdentifier') as { subjectKeyIdentifier?: string } | undefined;
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    {
      name: 'subjectAltName',
      // Names that are IP literals (a Service's ClusterIP, a lab address) become IP SANs.
      altNames: [
        ...dnsNames.filter((n) => !net.isIP(n)).map((value) => ({ type: DNS_SAN, value })),
        ...[...LOOPBACK_IPS, ...dnsNames.filter((n) => net.isIP(n))].map((ip) => ({ type: IP_SAN, ip })),
      ],
    },
    { name: 'subjectKeyIdentifier' },
    ...(ski?.subjectKeyIdentifier ? [{ name: 'authorityKeyIdentifier', keyIdentifier: forge.util.hexToBytes(ski.subjectKeyIdentifier) }] : []),
  ]);
  cert.sign(nativeRsaSigner(rootKey), forge.md.sha256.create());
  return {
    keyPem: key.export({ type: 'pkcs8', format: 'pem' }) as string,
    certPem: forge.pki.certificateToPem(cert).replace(/\r\n/g, '\n'),
    notAfter: cert.validity.notAfter.getTime(),
  };
}

/**
 * Server credentials whose certificate can be replaced while serving: grpc-js hands each update to its
 * TLS server (setSecureContext), so renewal needs no restart and open connections keep going.
 */
class RotatingServerCredentials extends grpc.ServerCredentials {
  constructor(pair: ServingPair) {
    super({ minVersion: 'TLSv1.3' }, RotatingServerCredentials.context(pair));
  }

  rotate(pair: ServingPair): void {
    this.updateSecureContextOptions(RotatingServerCredentials.context(pair));
  }

  override _equals(other: grpc.ServerCredentials): boolean {
    return other === this;
  }

  private static context(pair: ServingPair) {
    return { key: pair.keyPem, cert: pair.certPem, minVersion: 'TLSv1.3' as const };
  }
}

function bearerToken(metadata: grpc.Metadata): string | undefined {
  const value = metadata.get('authorization')[0];
  if (typeof value !== 'string') return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(value);
  return m?.[1];
}

/** The lifetime granted: the request's, within [1 minute, certTtlMs]; 0 asks for the default. */
function grantedTtlMs(ttlSeconds: number, maxMs: number): number {
  if (!Number.isFinite(ttlSeconds) || ttlSeconds < 0) {
    throw new Refusal('EINVALID', `ttl_seconds ${ttlSeconds} is not a lifetime; send 0 for the service default or a number of seconds`);
  }
  if (ttlSeconds === 0) return maxMs;
  return Math.min(Math.max(ttlSeconds * 1000, MIN_CERT_TTL_MS), maxMs);
}

/** LocalCa's verdicts on the CSR are the caller's fault; anything else is the service's. */
function signRefusal(err: unknown): Refusal {
  const code = (err as { code?: unknown }).code;
  if (code === 'EBADCSR' || code === 'EIDENTITY') return new Refusal('EINVALID', message(err), { cause: err });
  return new Refusal('EINTERNAL', `signing failed: ${message(err)}`, { cause: err });
}

function bindAsync(server: grpc.Server, address: string, creds: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, creds, (err, port) => {
      if (err) reject(new TrellisError('ELISTEN', `cannot listen on ${address}: ${err.message}; pick another --listen address`, { cause: err }));
      else resolve(port);
    });
  });
}

/** Loads the CA, publishes the trust bundle, and serves CreateCertificate until stop(). */
export async function startIdentityService(inputs: IdentityServiceInputs): Promise<IdentityService> {
  const clock = inputs.clock ?? systemClock;
  const logger = inputs.logger;
  if (!(inputs.certTtlMs >= MIN_CERT_TTL_MS && inputs.certTtlMs <= MAX_CERT_TTL_MS)) {
    throw new TrellisError('ECONFIG', `certificate lifetime ${inputs.certTtlMs} ms is outside 1m..48h`);
  }

  const definition = identityServiceDefinition();

  // 1. The CA, from its Secret: without it there is nothing to sign with, so refuse to start.
  const caRef = `${inputs.caSecret.namespace}/${inputs.caSecret.name}`;
  let current: LoadedCa = loadCa(await readCaSecret(inputs), inputs.caSecret, inputs.trustDomain, clock);
  const bundle = inputs.bundleConfigMap;

  // 2. Publish the trust bundle, so agents (and anyone verifying SVIDs) can find the roots.
  const publish = async () => {
    const result = await inputs.cluster.publishConfigMap(bundle.namespace, bundle.name, { [BUNDLE_KEY]: current.bundle.pem });
    if (result !== 'unchanged') {
      logger.info({ configMap: `${bundle.namespace}/${bundle.name}`, key: BUNDLE_KEY, result, roots: current.bundle.roots.map((r) => r.fingerprint) }, 'trust bundle published');
    }
  };
  await publish();

  // 3. The serving certificate, from the signing root, renewed at half-life and at once when the CA changes.
  const dnsNames = [...new Set([...SERVICE_NAMES, ...(inputs.extraDnsNames ?? []), ...LOOPBACK_NAMES])];
  const serving = await issueServingCert(current.rootKey, current.ca.rootCertPem, dnsNames, clock);
  const creds = new RotatingServerCredentials(serving);
  let renewal: TimerHandle | undefined;
  let stopped = false;
  const scheduleRenewal = (delayMs: number) => {
    renewal?.cancel();
    renewal = clock.after(delayMs, () => {
      const from = current;
      issueServingCert(from.rootKey, from.ca.rootCertPem, dnsNames, clock).then(
        (pair) => {
          if (stopped || from !== current) return;
          creds.rotate(pair);
          logger.info({ notAfter: new Date(pair.notAfter).toISOString() }, 'serving certificate renewed');
          scheduleRenewal((pair.notAfter - clock.now()) / 2);
        },
        (err: unknown) => {
          if (stopped || from !== current) return;
          logger.error({ err: message(err), retryInMs: SERVING_RETRY_MS }, 'serving certificate renewal failed');
          scheduleRenewal(SERVING_RETRY_MS);
        },
      );
    });
  };
  scheduleRenewal((serving.notAfter - clock.now()) / 2);

  // 3a. The Secret is read again: a rotation adds a root to the bundle (trusted-roots.pem), switches the signing pair,
  //     then removes the old root, with no restart. An unusable Secret changes nothing and is logged (once per reason);
  //     the bundle is published again whenever it differs from ours (a replica or a person changed it).
  let pollTimer: TimerHandle | undefined;
  const lastProblem = new Map<unknown, string>();
  const reload = async () => {
    const data = await readCaSecret(inputs);
    if (caDigestOf(data) === current.digest) return;
    const next = loadCa(data, inputs.caSecret, inputs.trustDomain, clock);
    const before = current;
    current = next;
    const signing = next.bundle.roots[0]!.fingerprint;
    const fields = { secret: caRef, signingRoot: signing, roots: next.bundle.roots.map((r) => r.fingerprint) };
    if (before.bundle.roots[0]!.fingerprint === signing) {
      logger.info(fields, 'CA Secret changed: the trust bundle changes, the signing CA stays');
    } else if (!before.bundle.roots.some((r) => r.fingerprint === signing)) {
      logger.warn(fields, 'CA Secret changed: signing with a root the published bundle did not hold; agents refuse its certificates until they read the new bundle (add a root to trusted-roots.pem first, then switch)');
    } else {
      logger.info(fields, 'CA Secret changed: signing with a new CA; agents renew the certificates of the previous one when they read the bundle');
    }
    scheduleRenewal(0);
  };
  const poll = async () => {
    for (const step of [reload, publish]) {
      try {
        await step();
        lastProblem.delete(step);
      } catch (err) {
        const problem = message(err);
        if (problem !== lastProblem.get(step)) {
          logger.error({ secret: caRef, err: problem }, step === reload ? 'cannot use the CA Secret as it is now; the CA and bundle in force stay' : 'cannot publish the trust bundle; will try again');
        }
        lastProblem.set(step, problem);
      }
    }
    if (!stopped) pollTimer = clock.after(inputs.caPollMs ?? DEFAULT_CA_POLL_MS, () => void poll());
  };
  pollTimer = clock.after(inputs.caPollMs ?? DEFAULT_CA_POLL_MS, () => void poll());

  // 4. The gRPC service.
  const authorizer = new Authorizer({
    cluster: inputs.cluster,
    trustDomain: inputs.trustDomain,
    audience: inputs.audience,
    agentServiceAccount: inputs.agentServiceAccount,
    clock,
  });

  const createCertificate = async (call: grpc.ServerUnaryCall<CreateCertificateRequest, CreateCertificateResponse>, caller: Caller) => {
    const req = call.request;
    const who = await authorizer.authorize(bearerToken(call.metadata), req.identity, caller);
    const ttlMs = grantedTtlMs(req.ttlSeconds, inputs.certTtlMs);
    if (!req.csrPem.trim()) throw new Refusal('EINVALID', `csr_pem is empty; send a PEM PKCS#10 request whose only URI SAN is ${req.identity}`);
    let certPem: string;
    const from = current;
    try {
      certPem = await from.ca.sign(req.csrPem, { identity: req.identity, ttlMs });
    } catch (err) {
      throw signRefusal(err);
    }
    const cert = new X509Certificate(certPem);
    logger.info(
      { identity: req.identity, caller: who.username, node: who.node, serial: cert.serialNumber, notAfter: cert.validToDate.toISOString(), root: from.bundle.roots[0]!.fingerprint },
      'certificate issued',
    );
    return { certPem, rootCertPem: from.bundle.pem };
  };

  const server = new grpc.Server({ 'grpc.max_receive_message_length': MAX_MESSAGE_BYTES });
  server.addService(definition, {
    CreateCertificate: (
      call: grpc.ServerUnaryCall<CreateCertificateRequest, CreateCertificateResponse>,
      callback: grpc.sendUnaryData<CreateCertificateResponse>,
    ) => {
      const caller: Caller = {};
      createCertificate(call, caller).then(
        (res) => callback(null, res),
        (err: unknown) => {
          const refusal = err instanceof Refusal ? err : new Refusal('EINTERNAL', `internal error: ${message(err)}`, { cause: err });
          const status = REFUSAL_STATUS[refusal.code];
          const fields = {
            status: grpc.status[status],
            reason: refusal.message,
            identity: call.request.identity,
            caller: caller.username,
            node: caller.node,
            peer: call.getPeer(),
          };
          if (refusal.code === 'EINTERNAL') logger.error(fields, 'certificate refused');
          else logger.warn(fields, 'certificate refused');
          callback({ code: status, details: refusal.message });
        },
      );
    },
  });

  const host = inputs.listen.host.includes(':') ? `[${inputs.listen.host}]` : inputs.listen.host;
  let port: number;
  try {
    port = await bindAsync(server, `${host}:${inputs.listen.port}`, creds);
  } catch (err) {
    stopped = true;
    renewal?.cancel();
    pollTimer?.cancel();
    server.forceShutdown();
    throw err;
  }
  logger.info(
    { listen: `${host}:${port}`, trustDomain: current.ca.trustDomain, caSecret: caRef, signingRoot: current.bundle.roots[0]!.fingerprint, audience: inputs.audience, agentServiceAccount: inputs.agentServiceAccount, dnsNames },
    'identity service ready',
  );

  return {
    port,
    get rootCertPem() {
      return current.ca.rootCertPem;
    },
    get bundlePem() {
      return current.bundle.pem;
    },
    stop(graceMs = DEFAULT_GRACE_MS) {
      stopped = true;
      renewal?.cancel();
      pollTimer?.cancel();
      return new Promise<void>((resolve) => {
        const force = clock.after(graceMs, () => {
          server.forceShutdown();
          resolve();
        });
        server.tryShutdown(() => {
          force.cancel();
          resolve();
        });
      });
    },
  };
}
