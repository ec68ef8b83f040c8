// Inbound, one tunnel into a pod from a caller whose identity the agent knows: an HBONE CONNECT stream (inbound-hbone.ts,
// the peer's certificate verified) or a same-node call (same-node.ts, the caller a pod of this node). Decides what the
// tunnel carries, authorizes it, records it, and serves it: opaque bytes to the app from inside the pod's netns, or
// HTTP to the inbound L7 path (per-request authorization and metrics). Both kinds of tunnel go through this one path.
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { wrapError } from '../errors.js';
import { whenConnected, type SpliceOutcome } from '../io/splice.js';
import { declaredForEndpoint, selectProtocol } from '../l7/detect.js';
import type { InboundCall } from '../l7/inbound-http.js';
import { decisionFields } from '../security/index.js';
import { ConnectionRecord } from './connection.js';
import { formatAuthority } from './hbone.js';
import { authorizeConnection, trackConnection, type InboundInputs } from './inbound.js';
import type { PeerSocketHealth } from './tcp-health.js';

export interface InboundTunnel {
  /** The caller's identity: verified by its certificate (HBONE), or known as a pod of this node (same node). */
  readonly principal: string;
  /** The caller's address: its pod's IP, and the port it called from. */
  readonly peer: { readonly ip: string | undefined; readonly port: number | undefined };
  readonly target: { readonly ip: string; readonly port: number };
  /** The Service the caller called (`trellis-service`), believed only for a Service that has this endpoint. */
  readonly service: string | undefined;
  /** What the source side found the tunnel carries (`trellis-protocol`: http1, h2, tcp), if it said. */
  readonly hint: string | undefined;
  /** The caller's bytes (read by the sniff, when the tunnel's protocol is not known). */
  readonly stream: Duplex;
  /** The tunnel's socket toward its peer, read for TCP health (an HBONE session's); none on the same node. */
  readonly peerHealth?: PeerSocketHealth | undefined;
  /** Tells the caller the tunnel is open (HBONE: 200). Called before a sniff or before bytes flow; idempotent. */
  accept(): void;
  /** Refuses the tunnel: with `status` if it was not accepted yet, by a reset after that. */
  refuse(status: number, reason: string): void;
  /** The byte stream the inbound HTTP server serves (the tunnel is accepted). */
  http(): Duplex;
  /** Moves opaque bytes between the caller and the app under `record` until both sides closed (the tunnel is accepted). */
  carry(app: net.Socket, record: ConnectionRecord): Promise<SpliceOutcome>;
}

/** Serves one tunnel into `inputs.pod` until it ends. The caller has checked that the target is this pod's, not an agent port. */
export async function serveTunnel(inputs: InboundInputs, t: InboundTunnel): Promise<void> {
  const pod = inputs.pod;
  const { principal, target } = t;
  let state = inputs.state();
  const srcWorkload = t.peer.ip ? state.workloadByIp(t.peer.ip) : undefined;
  const http = inputs.http;
  const service = state.serviceCalled(target.ip, target.port, t.service);
  const declared = http ? declaredForEndpoint(state.servicePortsByEndpoint(target.ip, target.port)) : 'tcp';
  // The source's hint says what the tunnel carries: HTTP it parsed itself (HTTP/1.1 for requests of HTTP/1.1 and
  // HTTP/2 clients alike), or `tcp` when it found the bytes are not HTTP (declared so, or sniffed). Without a hint (a
  // call to a pod IP, which the source carries as L4, or a source agent without L7), what the port declares; and a
  // port that declares nothing is sniffed here, so that HTTP a client sends straight to a pod is parsed too and the
  // app never gets identity headers the client forged. A port this agent knows to carry HTTP is parsed whatever the
  // hint says (`tcp` only spares a second sniff).
  const hint = t.hint;
  const hinted = hint === 'http1' || hint === 'h2' ? hint : undefined;
  let protocol: 'http1' | 'h2' | 'tcp' | undefined = declared === 'tcp' ? 'tcp' : (hinted ?? declared ?? (hint === 'tcp' ? 'tcp' : undefined));
  if (protocol === undefined && http) {
    // The sniff needs the caller's first bytes: the tunnel is accepted before the decision, which a refusal then resets.
    t.accept();
    const selection = await selectProtocol(t.stream, target.port, undefined, http, inputs.metrics);
    if (t.stream.destroyed) return;
    // The sniff waited for the client: decide under the policies of now.
    state = inputs.state();
    protocol = selection.protocol;
  }
  protocol ??= 'tcp';
  const facts = { principal, sourceIp: t.peer.ip, sourcePort: t.peer.port, ip: target.ip, port: target.port };
  const authz = authorizeConnection(inputs, state, { ...facts, l7: protocol !== 'tcp' });
  if (http && protocol !== 'tcp') {
    t.accept();
    const call: InboundCall = {
      pod,
      port: target.port,
      service,
      peer: { principal, ip: t.peer.ip, port: t.peer.port, workload: srcWorkload },
      security: 'mutual_tls',
      protocol,
      appProtocol: declared === 'h2' || declared === 'http1' ? declared : undefined,
      connection: authz,
    };
    const transport = t.http();
    const leave = inputs.drain.enter();
    transport.once('close', leave);
    http.server.serve(transport, call);
    return;
  }
  if (!authz.verdict.decision.allowed) return t.refuse(403, authz.verdict.decision.reason);
  let app: net.Socket;
  try {
    app = await whenConnected(inputs.dialApp(pod, target.ip, target.port, t.peer.ip));
  } catch (err) {
    return t.refuse(503, wrapError(`connect to app ${formatAuthority(target.ip, target.port)}`, err).message);
  }
  if (t.stream.destroyed) {
    app.destroy();
    return;
  }
  t.accept();
  const record = new ConnectionRecord(
    {
      direction: 'inbound',
      src: { ip: t.peer.ip, port: t.peer.port, workload: srcWorkload, principal },
      dst: { ip: target.ip, port: target.port, workload: pod, principal: pod.identity, service: service?.host },
      security: 'mutual_tls',
      authz: decisionFields(authz.verdict.decision),
    },
    inputs,
    t.peerHealth,
  );
  const untrack = trackConnection(inputs, { ...facts, l7: false }, [t.stream, app], record);
  const outcome = await t.carry(app, record);
  untrack();
  record.finish(outcome.error);
}
