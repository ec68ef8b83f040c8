// The wire contract between agents and the identity service: identity.proto, loaded with protobufjs and
// turned into the grpc-js method definition that both the service and RemoteSigner use.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { TrellisError } from '../errors.js';

export interface CreateCertificateRequest {
  csrPem: string;
  identity: string;
  ttlSeconds: number;
}

export interface CreateCertificateResponse {
  certPem: string;
  rootCertPem: string;
}

export interface IdentityServiceDefinition extends grpc.ServiceDefinition {
  CreateCertificate: grpc.MethodDefinition<CreateCertificateRequest, CreateCertificateResponse>;
}

/** Why the service refused a request; each travels as one gRPC status and comes back as the same code. */
export type RefusalCode = 'EUNAUTHENTICATED' | 'EPERMISSION' | 'EINVALID' | 'EUNAVAILABLE' | 'EINTERNAL';

export const REFUSAL_STATUS: Readonly<Record<RefusalCode, grpc.status>> = Object.freeze({
  EUNAUTHENTICATED: grpc.status.UNAUTHENTICATED,
  EPERMISSION: grpc.status.PERMISSION_DENIED,
  EINVALID: grpc.status.INVALID_ARGUMENT,
  EUNAVAILABLE: grpc.status.UNAVAILABLE,
  EINTERNAL: grpc.status.INTERNAL,
});

const PROTO_FILE = 'identity.proto';
const PACKAGE = 'trellis.identity.v1';

/**
 * Where identity.proto is: beside this module when run from source (or when the build copied it), else
 * in the source tree next to dist/, as after `npm run build` in a checkout.
 */
function protoPath(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.join(here, PROTO_FILE), path.resolve(here, '../../../agent/identity', PROTO_FILE)];
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) {
    throw new TrellisError(
      'EPROTO',
      `${PROTO_FILE} not found (looked in ${candidates.join(', ')}); the build must copy agent/identity/${PROTO_FILE} beside the compiled identity modules`,
    );
  }
  return found;
}

function codec<T extends object>(type: protobuf.Type): { serialize: (value: T) => Buffer; deserialize: (bytes: Buffer) => T } {
  return {
    serialize: (value) => Buffer.from(type.encode(type.fromObject(value as Record<string, unknown>)).finish()),
    // defaults: absent fields read as '' and 0, so handlers never see undefined; longs: int64 as number.
    deserialize: (bytes) => type.toObject(type.decode(bytes), { longs: Number, defaults: true }) as T,
  };
}

/** Loads identity.proto and returns the grpc-js definition of trellis.identity.v1.IdentityService. */
export function identityServiceDefinition(): IdentityServiceDefinition {
  const root = protobuf.loadSync(protoPath());
  const service = root.lookupService(`${PACKAGE}.IdentityService`);
  const method = service.methods['CreateCertificate'];
  if (!method) throw new TrellisError('EPROTO', `${PROTO_FILE} has no IdentityService.CreateCertificate method`);
  const req = codec<CreateCertificateRequest>(root.lookupType(`${PACKAGE}.CreateCertificateRequest`));
  const res = codec<CreateCertificateResponse>(root.lookupType(`${PACKAGE}.CreateCertificateResponse`));
  return {
    CreateCertificate: {
      path: `/${PACKAGE}.IdentityService/CreateCertificate`,
      requestStream: false,
      responseStream: false,
      requestSerialize: req.serialize,
      requestDeserialize: req.deserialize,
      responseSerialize: res.serialize,
      responseDeserialize: res.deserialize,
      originalName: 'createCertificate',
    },
  };
}
