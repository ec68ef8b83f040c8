// The wire contract of tap: tap.proto, loaded with protobufjs and turned into the grpc-js method definition that
// the agent's server (server.ts) and `trellis tap` (viz/tap/) both use. Loaded only when someone taps.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { TrellisError } from '../errors.js';
import type { TapEvent } from './events.js';
import type { Match } from './match.js';

/** ObserveRequest as protobufjs reads and writes it. */
export interface ObserveRequest {
  limit?: number;
  durationMs?: number;
  maxRps?: number;
  match?: Match;
}

export interface TapServiceDefinition extends grpc.ServiceDefinition {
  Observe: grpc.MethodDefinition<ObserveRequest, TapEvent>;
}

const PROTO_FILE = 'tap.proto';
const PACKAGE = 'trellis.tap.v1';

/** Beside this module (the build copies it), or in the source tree next to dist/. */
function protoPath(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.join(here, PROTO_FILE), path.resolve(here, '../../../agent/tap', PROTO_FILE)];
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) {
    throw new TrellisError('EPROTO', `${PROTO_FILE} not found (looked in ${candidates.join(', ')}); the build must copy agent/tap/${PROTO_FILE} beside the compiled tap modules`);
  }
  return found;
}

function codec<T extends object>(type: protobuf.Type): { serialize: (value: T) => Buffer; deserialize: (bytes: Buffer) => T } {
  return {
    serialize: (value) => Buffer.from(type.encode(type.fromObject(value as Record<string, unknown>)).finish()),
    // No defaults: a oneof member, an optional message or a field left at its zero value is absent, as match.ts
    // and the printers expect; uint64 as number (counts far below 2^53).
    deserialize: (bytes) => type.toObject(type.decode(bytes), { longs: Number }) as T,
  };
}

let cached: TapServiceDefinition | undefined;

/** trellis.tap.v1.Tap, loaded once per process. */
export function tapServiceDefinition(): TapServiceDefinition {
  if (cached) return cached;
  const root = protobuf.loadSync(protoPath());
  const service = root.lookupService(`${PACKAGE}.Tap`);
  if (!service.methods['Observe']) throw new TrellisError('EPROTO', `${PROTO_FILE} has no Tap.Observe method`);
  const req = codec<ObserveRequest>(root.lookupType(`${PACKAGE}.ObserveRequest`));
  const res = codec<TapEvent>(root.lookupType(`${PACKAGE}.TapEvent`));
  cached = {
    Observe: {
      path: `/${PACKAGE}.Tap/Observe`,
      requestStream: false,
      responseStream: true,
      requestSerialize: req.serialize,
      requestDeserialize: req.deserialize,
      responseSerialize: res.serialize,
      responseDeserialize: res.deserialize,
      originalName: 'observe',
    },
  };
  return cached;
}
