// The agent's side of the identity service: a CsrSigner that sends each CSR to `trellis identity` over
// gRPC/TLS, authenticated by the agent's projected service-account token.

import fs from 'node:fs/promises';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { systemClock, type Clock } from '../clock.js';
import { TrellisError } from '../errors.js';
import type { CsrSigner } from './ca.js';
import { identityServiceDefinition, type IdentityServiceDefinition, type RefusalCode } from './proto.js';

export interface RemoteSignerInputs {
  /** host:port of the identity service, e.g. trellis-identity.trellis-system.svc:15012. */
  address: string;
  /** The projected service-account token; read again for every call, since the kubelet rotates it. */
  tokenFile: string;
  /** PEM root(s) the service's TLS certificate must chain to; a function is asked again on every call. */
  caPem: string | (() => string);
  /** Times each call for the debug log. */
  clock?: Clock;
  logger: Logger;
  /** Deadline of one call. Default 10 s. */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 10_000;
// What OpenSSL says when the server's chain does not verify against the bundle, or names another host.
const TLS_VERIFY_FAILURE = /certificate|self[- ]signed|unable to verify|altnames|hostname|issuer/i;

function reason(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class RemoteSigner implements CsrSigner {
  private readonly address: string;
  private readonly tokenFile: string;
  private readonly caPem: () => string;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly timeoutMs: number;
  private readonly method: IdentityServiceDefinition['CreateCertificate'];
  /** One channel per bundle: a new bundle gets a new channel, so TLS verifies against it. */
  private channel: { caPem: string; client: grpc.Client } | undefined;

  constructor(inputs: RemoteSignerInputs) {
    this.address = inputs.address;
    this.tokenFile = inputs.tokenFile;
    const caPem = inputs.caPem;
    this.caPem = typeof caPem === 'string' ? () => caPem : caPem;
    this.clock = inputs.clock ?? systemClock;
    this.logger = inputs.logger;
    this.timeoutMs = inputs.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.method = identityServiceDefinition().CreateCertificate;
  }

  async sign(csrPem: string, req: { identity: string; ttlMs: number }): Promise<string> {
    const token = await this.readToken();
    const client = this.client();
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${token}`);
    const started = this.clock.now();
    const res = await new Promise<{ certPem: string }>((resolve, reject) => {
      client.makeUnaryRequest(
        this.method.path,
        this.method.requestSerialize,
        this.method.responseDeserialize,
        { csrPem, identity: req.identity, ttlSeconds: Math.ceil(req.ttlMs / 1000) },
        metadata,
        { deadline: Date.now() + this.timeoutMs },
        (err, value) => {
          if (err) reject(this.failure(req.identity, err));
          else if (!value?.certPem) reject(new TrellisError('EINTERNAL', `the identity service at ${this.address} answered without a certificate for ${req.identity}`));
          else resolve(value);
        },
      );
    });
    this.logger.debug({ identity: req.identity, address: this.address, ms: this.clock.now() - started }, 'certificate signed by the identity service');
    return res.certPem;
  }

  close(): void {
    this.channel?.client.close();
    this.channel = undefined;
  }

  private async readToken(): Promise<string> {
    let token: string;
    try {
      token = (await fs.readFile(this.tokenFile, 'utf8')).trim();
    } catch (err) {
      throw new TrellisError(
        'EUNAUTHENTICATED',
        `cannot read the service-account token at ${this.tokenFile} (${reason(err)}); mount a projected serviceAccountToken volume with the identity service's audience there`,
        { cause: err },
      );
    }
    if (!token) throw new TrellisError('EUNAUTHENTICATED', `the service-account token file ${this.tokenFile} is empty; the kubelet writes it for a projected serviceAccountToken volume`);
    return token;
  }

  private client(): grpc.Client {
    const caPem = this.caPem();
    if (!caPem.includes('-----BEGIN CERTIFICATE-----')) {
      throw new TrellisError('EBUNDLE', `no trust bundle to verify the identity service at ${this.address} with; it is published in the ConfigMap trellis-system/trellis-ca-root`);
    }
    if (this.channel?.caPem === caPem) return this.channel.client;
    this.channel?.client.close();
    // TLS 1.3 only, as between agents; the server certificate must chain to the bundle and name the host.
    const context = tls.createSecureContext({ ca: caPem, minVersion: 'TLSv1.3' });
    const client = new grpc.Client(this.address, grpc.credentials.createFromSecureContext(context));
    this.channel = { caPem, client };
    return client;
  }

  /** The service's refusal as a TrellisError that keeps its reason and says where it came from. */
  private failure(identity: string, err: grpc.ServiceError): TrellisError {
    const details = err.details || err.message;
    const at = `the identity service at ${this.address}`;
    const make = (code: RefusalCode, msg: string) => new TrellisError(code, msg, { cause: err });
    switch (err.code) {
      case grpc.status.UNAUTHENTICATED:
        return make('EUNAUTHENTICATED', `${at} did not accept this agent's token: ${details}`);
      case grpc.status.PERMISSION_DENIED:
        return make('EPERMISSION', `${at} refused ${identity}: ${details}`);
      case grpc.status.INVALID_ARGUMENT:
        return make('EINVALID', `${at} rejected the request for ${identity}: ${details}`);
      case grpc.status.DEADLINE_EXCEEDED:
        return make('EUNAVAILABLE', `${at} did not answer within ${this.timeoutMs} ms; check that it is running and reachable`);
      case grpc.status.UNAVAILABLE:
        if (TLS_VERIFY_FAILURE.test(details)) {
          return make(
            'EUNAVAILABLE',
            `${at} presented a TLS certificate that does not verify against the trust bundle (${details}); ` +
              'check that the agent trusts the root published in the ConfigMap trellis-system/trellis-ca-root and that the address is the trellis-identity Service',
          );
        }
        return make('EUNAVAILABLE', `${at} is unavailable: ${details}; check that the trellis-identity Service has ready endpoints and that no NetworkPolicy blocks its port`);
      default:
        return make('EINTERNAL', `${at} failed on ${identity} (${grpc.status[err.code] ?? err.code}): ${details}`);
    }
  }
}
