// `trellis identity`: the cluster's CA as a gRPC service. Agents send a CSR for a workload on their node
// with their projected service-account token; the service checks both and signs a short-lived SVID.

import crypto, { X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import forge from 'node-forge';
import type { Logger } from 'pino';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import { TrellisError } from '../errors.js';
import { Authorizer, Refusal, type Caller } from './authorize.js';
import { forgePublicKey, LocalCa, nativeRsaSigner } from '../identity/ca.js';
import { generateKey } from '../identity/certs.js';
import type { IdentityCluster } from './cluster.js';
import {
  identityServiceDefinition,
  REFUSAL_STATUS,
  type CreateCertificateRequest,
  type CreateCertificateResponse,
} from '../identity/proto.js';

export interface ObjectRef {
  namespace: string;
  name: string;
}

export interface IdentityServiceInputs {
  /** Where to serve gRPC over TLS; port 0 picks a free one (see IdentityService.port). */
  listen: { host: string; port: number };
  /** Secret holding ca.key.pem and ca.cert.pem. */
  caSecret: ObjectRef;
  /** ConfigMap the root certificate is published in, under root-cert.pem. */
  bundleConfigMap: ObjectRef;
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
  readonly rootCertPem: string;
  /** Stops accepting, lets calls in flight finish for up to graceMs, then cuts the rest. */
  stop(graceMs?: number): Promise<void>;
}

export const CA_KEY_FILE = 'ca.key.pem';
export const CA_CERT_FILE = 'ca.cert.pem';
export const BUNDLE_KEY = 'root-cert.pem';
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

/**
 * The root CA from its Secret, checked as LocalCa.load checks files (key matches certificate, CA bit,
 * trust domain). LocalCa loads from a directory, so the pair passes through a private temporary one.
 */
async function loadCa(inputs: IdentityServiceInputs, clock: Clock): Promise<{ ca: LocalCa; rootKey: KeyObject }> {
  const { caSecret, trustDomain, cluster } = inputs;
  const ref = `${caSecret.namespace}/${caSecret.name}`;
  const howTo = `create it with:\n  ${caCreateCommands(caSecret, trustDomain)}`;
  const data = await cluster.readSecret(caSecret.namespace, caSecret.name);
  if (!data) throw new TrellisError('ECANOTFOUND', `the CA Secret ${ref} does not exist; ${howTo}`);
  const keyPem = data[CA_KEY_FILE];
  const certPem = data[CA_CERT_FILE];
  if (!keyPem || !certPem) {
    const missing = [CA_KEY_FILE, CA_CERT_FILE].filter((k) => !data[k]).join(' and ');
    throw new TrellisError('ECANOTFOUND', `the CA Secret ${ref} has no ${missing}; ${howTo}`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trellis-ca-'));
  let ca: LocalCa;
  try {
    fs.writeFileSync(path.join(dir, CA_KEY_FILE), keyPem, { mode: 0o600 });
    fs.writeFileSync(path.join(dir, CA_CERT_FILE), certPem, { mode: 0o644 });
    ca = LocalCa.load(dir, { clock });
  } catch (err) {
    const code = err instanceof TrellisError ? (err as TrellisError).code : 'ECABAD';
    throw new TrellisError(code, `the CA Secret ${ref} is unusable: ${message(err).replaceAll(dir, `Secret ${ref}`)}`, { cause: err });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (ca.trustDomain !== trustDomain) {
    throw new TrellisError(
      'ECATRUSTDOMAIN',
      `the CA in Secret ${ref} is for trust domain ${ca.trustDomain}, not ${trustDomain}; run with --trust-domain ${ca.trustDomain} or ${howTo}`,
    );
  }
  return { ca, rootKey: crypto.createPrivateKey(keyPem) };
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

  // 1. The root, from its Secret: without it there is nothing to sign with, so refuse to start.
  const { ca, rootKey } = await loadCa(inputs, clock);
  const bundle = inputs.bundleConfigMap;

  // 2. Publish the trust bundle, so agents (and anyone verifying SVIDs) can find the root.
  const published = await inputs.cluster.publishConfigMap(bundle.namespace, bundle.name, { [BUNDLE_KEY]: ca.rootCertPem });
  logger.info({ configMap: `${bundle.namespace}/${bundle.name}`, key: BUNDLE_KEY, result: published }, 'trust bundle published');

  // 3. The serving certificate, renewed at half-life for as long as the service runs.
  const dnsNames = [...new Set([...SERVICE_NAMES, ...(inputs.extraDnsNames ?? []), ...LOOPBACK_NAMES])];
  const serving = await issueServingCert(rootKey, ca.rootCertPem, dnsNames, clock);
  const creds = new RotatingServerCredentials(serving);
  let renewal: TimerHandle | undefined;
  let stopped = false;
  const scheduleRenewal = (delayMs: number) => {
    renewal = clock.after(delayMs, () => {
      issueServingCert(rootKey, ca.rootCertPem, dnsNames, clock).then(
        (pair) => {
          if (stopped) return;
          creds.rotate(pair);
          logger.info({ notAfter: new Date(pair.notAfter).toISOString() }, 'serving certificate renewed');
          scheduleRenewal((pair.notAfter - clock.now()) / 2);
        },
        (err: unknown) => {
          if (stopped) return;
          logger.error({ err: message(err), retryInMs: SERVING_RETRY_MS }, 'serving certificate renewal failed');
          scheduleRenewal(SERVING_RETRY_MS);
        },
      );
    });
  };
  scheduleRenewal((serving.notAfter - clock.now()) / 2);

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
    try {
      certPem = await ca.sign(req.csrPem, { identity: req.identity, ttlMs });
    } catch (err) {
      throw signRefusal(err);
    }
    const cert = new X509Certificate(certPem);
    logger.info(
      { identity: req.identity, caller: who.username, node: who.node, serial: cert.serialNumber, notAfter: cert.validToDate.toISOString() },
      'certificate issued',
    );
    return { certPem, rootCertPem: ca.rootCertPem };
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
    server.forceShutdown();
    throw err;
  }
  logger.info(
    { listen: `${host}:${port}`, trustDomain: ca.trustDomain, audience: inputs.audience, agentServiceAccount: inputs.agentServiceAccount, dnsNames },
    'identity service ready',
  );

  return {
    port,
    rootCertPem: ca.rootCertPem,
    stop(graceMs = DEFAULT_GRACE_MS) {
      stopped = true;
      renewal?.cancel();
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
