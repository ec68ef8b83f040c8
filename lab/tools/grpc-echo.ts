// Workload tools: a gRPC backend (grpc-js over h2c) for the L7 tests. A generic service, no .proto: the
// messages are JSON bytes. It says who answered, sets a trailer, and fails a call with the status asked for.
import * as grpc from '@grpc/grpc-js';
import { setTimeout as sleep } from 'node:timers/promises';
import { LabError } from '../errors.js';
import type { ToolServer } from './server.js';

export const GRPC_ECHO_SERVICE = 'trellis.test.Echo';
/** The methods served; both answer the same way (two, so method matches can be told apart). */
export const GRPC_ECHO_METHODS = ['Echo', 'Hello'] as const;
export const DEFAULT_GRPC_METHOD = `/${GRPC_ECHO_SERVICE}/Echo`;

/** Request metadata that steers the answer, and the trailer every answer carries. */
export const GRPC_STATUS_METADATA = 'x-echo-grpc-status';
export const GRPC_DELAY_METADATA = 'x-echo-delay-ms';
export const GRPC_TRAILER = 'x-echo-trailer';

export interface GrpcEchoReply {
  name: string;
  /** /package.Service/Method as called. */
  method: string;
  /** Request metadata, lowercase keys, text values only. */
  metadata: Record<string, string>;
  bodyLength: number;
  n: number;
}

export interface GrpcEchoOptions {
  port: number;
  host?: string;
  name: string;
  logRequests?: boolean;
  log?: (line: string) => void;
}

const identity = (b: Buffer): Buffer => b;
const MAX_DELAY_MS = 60_000;

/** The service definition both the server and the client tool use: raw bytes in, raw bytes out. */
export function echoMethod(path: string): grpc.MethodDefinition<Buffer, Buffer> {
  return {
    path,
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  };
}

export async function startGrpcEcho(opts: GrpcEchoOptions): Promise<ToolServer> {
  let served = 0;
  const server = new grpc.Server();
  const definition: grpc.ServiceDefinition = Object.fromEntries(GRPC_ECHO_METHODS.map((m) => [m, echoMethod(`/${GRPC_ECHO_SERVICE}/${m}`)]));
  const handlers: grpc.UntypedServiceImplementation = Object.fromEntries(
    GRPC_ECHO_METHODS.map((m) => [
      m,
      (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => void answer(call, callback),
    ]),
  );
  server.addService(definition, handlers);

  const answer = async (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>): Promise<void> => {
    const n = ++served;
    const metadata: Record<string, string> = {};
    for (const [k, v] of Object.entries(call.metadata.getMap())) if (typeof v === 'string') metadata[k] = v;
    const trailer = new grpc.Metadata();
    trailer.set(GRPC_TRAILER, opts.name);
    const delay = Number(metadata[GRPC_DELAY_METADATA]);
    if (delay > 0) await sleep(Math.min(delay, MAX_DELAY_MS));
    const asked = Number(metadata[GRPC_STATUS_METADATA]);
    const status = Number.isInteger(asked) && asked > 0 && asked <= 16 ? asked : 0;
    const method = call.getPath();
    if (opts.logRequests) process.stdout.write(`${JSON.stringify({ name: opts.name, event: 'call', n, method, status, metadata })}\n`);
    if (status !== 0) {
      callback({ code: status, details: `${opts.name}: status ${status} as asked by ${GRPC_STATUS_METADATA}`, metadata: trailer });
      return;
    }
    const reply: GrpcEchoReply = { name: opts.name, method, metadata, bodyLength: call.request.length, n };
    callback(null, Buffer.from(JSON.stringify(reply)), trailer);
  };

  const host = opts.host ?? '0.0.0.0';
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${host.includes(':') ? `[${host}]` : host}:${opts.port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => {
      if (err) reject(new LabError('EADDRINUSE', `grpc-echo: cannot listen on ${host}:${opts.port}: ${err.message}`, { cause: err }));
      else resolve(bound);
    });
  });
  opts.log?.(`grpc-echo listening on ${host}:${port}`);
  return {
    port,
    close: async () => {
      server.forceShutdown();
    },
  };
}
