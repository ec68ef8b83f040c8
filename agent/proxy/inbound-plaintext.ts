// Inbound plaintext (15006, permissive mode): connections from clients outside the mesh, redirected by the
// pod's capture rules (or, in eBPF mode, handed over by its sk_lookup program). STRICT refuses them before any byte reaches the app; otherwise the protocol is selected
// (declared or sniffed) and the connection is served as HTTP or carried as opaque TCP.
import net from 'node:net';
import { INBOUND_PLAINTEXT_PORT } from '../constants.js';
import { wrapError } from '../errors.js';
import { resetSide, splice, whenConnected } from '../io/splice.js';
import { declaredForEndpoint, selectProtocol } from '../l7/detect.js';
import type { InboundCall } from '../l7/inbound-http.js';
import { originalDst, socketFd } from '../native/index.js';
import { decisionFields, modeFor } from '../security/index.js';
import { ConnectionRecord } from './connection.js';
import { AGENT_PORTS, formatAuthority } from './hbone.js';
import { authorizeConnection, trackConnection, type InboundInputs } from './inbound.js';

/** Permissive mode: plaintext from clients outside the mesh, redirected to 15006, forwarded to the app. */
export class PlaintextInbound {
  readonly server: net.Server;

  constructor(private readonly inputs: InboundInputs) {
    this.server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => void this.onConnection(socket));
  }

  private async onConnection(down: net.Socket): Promise<void> {
    const pod = this.inputs.pod;
    down.on('error', () => undefined);
    if (this.inputs.sourceLimit) {
      const leave = this.inputs.sourceLimit.enter(down.remoteAddress);
      if (!leave) {
        // Counted, logged at debug only: a client flooding the port must not flood the log too.
        this.inputs.metrics.connectionFailures.inc({ direction: 'inbound', reason: 'source_limit' });
        this.inputs.logger.debug({ pod: pod.key, peer: down.remoteAddress, max: this.inputs.sourceLimit.max }, 'inbound plaintext connection refused: its source is at --max-connections-per-source');
        return resetSide(down);
      }
      down.once('close', leave);
    }
    let dst: { address: string; port: number };
    try {
      dst = destinationOf(down);
    } catch (err) {
      return this.refuse(down, 'no_original_dst', (err as Error).message);
    }
    if (AGENT_PORTS.has(dst.port)) return this.refuse(down, 'agent_port', `port ${dst.port} belongs to the agent`);
    let state = this.inputs.state();
    const srcWorkload = down.remoteAddress ? state.workloadByIp(down.remoteAddress) : undefined;
    const facts = { principal: undefined, sourceIp: down.remoteAddress, sourcePort: down.remotePort, ip: dst.address, port: dst.port };
    // STRICT (or policies not synced yet) refuses plaintext at once, before any sniffing.
    const current = state.workloads.get(pod.key) ?? pod;
    if (modeFor(state.policies, current, dst.port) === 'STRICT') {
      const authz = authorizeConnection(this.inputs, state, { ...facts, l7: false });
      return this.refuse(down, 'policy', authz.verdict.decision.reason);
    }
    const http = this.inputs.http;
    let protocol: 'http1' | 'h2' | 'tcp' = 'tcp';
    let declared: ReturnType<typeof declaredForEndpoint>;
    if (http) {
      declared = declaredForEndpoint(state.servicePortsByEndpoint(dst.address, dst.port));
      const selection = await selectProtocol(down, dst.port, declared, http, this.inputs.metrics);
      if (down.destroyed) return;
      // A sniff waited for the client: decide under the policies of now.
      if (selection.sniffed) state = this.inputs.state();
      protocol = selection.protocol;
    }
    const authz = authorizeConnection(this.inputs, state, { ...facts, l7: protocol !== 'tcp' });
    if (http && protocol !== 'tcp') {
      if (authz.verdict.decision.code === 'denied_plaintext') return this.refuse(down, 'policy', authz.verdict.decision.reason);
      const call: InboundCall = {
        pod,
        port: dst.port,
        service: state.serviceByEndpoint(dst.address, dst.port),
        peer: { ip: down.remoteAddress, port: down.remotePort, workload: srcWorkload },
        security: 'none',
        protocol,
        appProtocol: declared === 'h2' || declared === 'http1' ? declared : undefined,
        connection: authz,
      };
      const leave = this.inputs.drain.enter();
      down.once('close', leave);
      http.server.serve(down, call);
      return;
    }
    if (!authz.verdict.decision.allowed) return this.refuse(down, 'policy', authz.verdict.decision.reason);
    let app: net.Socket;
    try {
      app = await whenConnected(this.inputs.dialApp(pod, dst.address, dst.port, down.remoteAddress));
    } catch (err) {
      return this.refuse(down, 'app_unreachable', wrapError(`connect to app ${formatAuthority(dst.address, dst.port)}`, err).message);
    }
    if (down.destroyed) {
      app.destroy();
      return;
    }
    const record = new ConnectionRecord(
      {
        direction: 'inbound',
        src: { ip: down.remoteAddress, port: down.remotePort, workload: srcWorkload },
        dst: { ip: dst.address, port: dst.port, workload: pod, principal: pod.identity, service: this.inputs.state().serviceByEndpoint(dst.address, dst.port)?.host },
        security: 'none',
        authz: decisionFields(authz.verdict.decision),
      },
      this.inputs,
      this.inputs.tcpHealth?.own(down),
    );
    const untrack = trackConnection(this.inputs, { ...facts, l7: false }, [down, app], record);
    const outcome = await splice(down, app, record);
    untrack();
    record.finish(outcome.error);
  }

  private refuse(down: net.Socket, reason: string, message: string): void {
    this.inputs.metrics.connectionFailures.inc({ direction: 'inbound', reason });
    this.inputs.logger.warn({ pod: this.inputs.pod.key, peer: down.remoteAddress, reason: message }, 'inbound plaintext connection refused');
    resetSide(down);
  }
}

/**
 * Where the client meant to go. Handed over by the pod's sk_lookup program (eBPF mode), the accepted socket still has
 * that address; redirected by nft, it has 15006 and conntrack remembers the original. The same listener can get both
 * (an agent in either mode beside one in the other during a hand-over).
 */
function destinationOf(down: net.Socket): { address: string; port: number } {
  const { localAddress, localPort } = down;
  if (localAddress && localPort !== undefined && localPort !== INBOUND_PLAINTEXT_PORT) {
    return { address: localAddress.startsWith('::ffff:') ? localAddress.slice(7) : localAddress, port: localPort };
  }
  return originalDst(socketFd(down));
}
