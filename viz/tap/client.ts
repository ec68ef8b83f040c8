// One agent's tap stream, seen from `trellis tap`: trellis.tap.v1.Tap/Observe over gRPC on the agent's Unix socket, or
// on its tap port over TLS with the caller's Kubernetes token (agent/tap/server.ts), with the agent's own definition
// of the wire (agent/tap/proto.ts).
import type { PeerCertificate } from 'node:tls';
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

/**
 * An agent's tap port (cluster mode): TLS checked against the mesh's trust bundle, the server's certificate being the
 * agent's own SVID (nothing else is sent the token), and the caller's bearer token.
 */
export interface TapRemote {
  /** host:port to dial. */
  readonly address: string;
  /** The mesh's trust bundle (the trellis-ca-root ConfigMap). */
  readonly caPem: string;
  /** The SPIFFE ID the agent's certificate must carry. */
  readonly identity: string;
  readonly token: string;
}

export interface TapStream {
  /** Ends the stream from this side (the agent's tap closes). */
  cancel(): void;
}

/** Why a stream failed, as a user can act on it. */
function explain(socket: string, err: grpc.ServiceError, remote: TapRemote | undefined): Error {
  const details = err.details || err.message;
  if (remote && err.code === grpc.status.UNAVAILABLE && !/cannot check the caller/.test(details)) {
    return new Error(`cannot reach the agent's tap port ${remote.address}: ${details} (is the agent serving it? \`trellis agent --tap-addr\`; a NetworkPolicy or firewall may block it)`);
  }
  if (!remote && err.code === grpc.status.UNAVAILABLE) {
    const access = /EACCES|permission/i.test(details) ? ' (the socket is 0600: run as root)' : ' (is the agent running, and serving tap on this socket? `trellis agent --tap-socket`)';
    return new Error(`cannot reach the tap socket ${socket}: ${details}${access}`);
  }
  return new Error(`${grpc.status[err.code] ?? err.code}: ${details}`);
}

/** The URI SAN a certificate must hold to be the agent's. */
export function checkAgentIdentity(identity: string, cert: PeerCertificate): Error | undefined {
  const sans = (cert.subjectaltname ?? '').split(/,\s*/).filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
  if (sans.includes(identity)) return undefined;
  return new Error(`the tap port's certificate is for ${sans.join(', ') || 'no SPIFFE ID'}, not the agent's ${identity}: refusing to send it the token`);
}

/** Opens a tap on the agent at `socket` (a Unix socket path), or on its tap port when `remote` is given. */
export function observe(socket: string, request: ObserveRequest, handlers: TapStreamHandlers, remote?: TapRemote): TapStream {
  const def = tapServiceDefinition().Observe;
  const metadata = new grpc.Metadata();
  let client: grpc.Client;
  if (remote) {
    const creds = grpc.credentials.createSsl(Buffer.from(remote.caPem), null, null, { checkServerIdentity: (_host, cert) => checkAgentIdentity(remote.identity, cert) });
    // The name the TLS handshake asks for (SNI takes no IP address); the certificate is checked by its SPIFFE ID.
    client = new grpc.Client(remote.address, creds, { 'grpc.ssl_target_name_override': 'trellis-agent' });
    metadata.set('authorization', `Bearer ${remote.token}`);
  } else {
    client = new grpc.Client(`unix:${socket}`, grpc.credentials.createInsecure());
  }
  const call = client.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, request, metadata);
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
  call.on('error', (err: grpc.ServiceError) => finish(err.code === grpc.status.CANCELLED ? undefined : explain(socket, err, remote)));
  call.on('end', () => finish(undefined));
  return {
    cancel: () => {
      call.cancel();
      finish(undefined);
    },
  };
}
