// One agent's tap stream, seen from `trellis tap`: trellis.tap.v1.Tap/Observe over gRPC on the agent's Unix socket
// (agent/tap/server.ts), with the agent's own definition of the wire (agent/tap/proto.ts).
import * as grpc from '@grpc/grpc-js';
import type { TapEvent } from '../../agent/tap/events.js';
import { tapServiceDefinition, type ObserveRequest } from '../../agent/tap/proto.js';
import { MAX_RPS_METADATA } from '../../agent/tap/server.js';

export interface TapStreamHandlers {
  /** The agent accepted the tap: the rate bound it applies (its cap may be lower than asked). */
  accepted(maxRps: number | undefined): void;
  event(e: TapEvent): void;
  /** The stream is over: `error` when the agent refused or could not be reached, undefined when it ended it. */
  end(error: Error | undefined): void;
}

export interface TapStream {
  /** Ends the stream from this side (the agent's tap closes). */
  cancel(): void;
}

/** Why a stream failed, as a user can act on it. */
function explain(socket: string, err: grpc.ServiceError): Error {
  const details = err.details || err.message;
  if (err.code === grpc.status.UNAVAILABLE) {
    const access = /EACCES|permission/i.test(details) ? ' (the socket is 0600: run as root)' : ' (is the agent running, and serving tap on this socket? `trellis agent --tap-socket`)';
    return new Error(`cannot reach the tap socket ${socket}: ${details}${access}`);
  }
  return new Error(`${grpc.status[err.code] ?? err.code}: ${details}`);
}

export function observe(socket: string, request: ObserveRequest, handlers: TapStreamHandlers): TapStream {
  const def = tapServiceDefinition().Observe;
  const client = new grpc.Client(`unix:${socket}`, grpc.credentials.createInsecure());
  const call = client.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, request, new grpc.Metadata());
  let done = false;
  const finish = (error: Error | undefined) => {
    if (done) return;
    done = true;
    client.close();
    handlers.end(error);
  };
  call.on('metadata', (md: grpc.Metadata) => {
    const v = md.get(MAX_RPS_METADATA)[0];
    handlers.accepted(v === undefined ? undefined : Number(v));
  });
  call.on('data', (e: TapEvent) => handlers.event(e));
  call.on('error', (err: grpc.ServiceError) => finish(err.code === grpc.status.CANCELLED ? undefined : explain(socket, err)));
  call.on('end', () => finish(undefined));
  return {
    cancel: () => {
      call.cancel();
      finish(undefined);
    },
  };
}
