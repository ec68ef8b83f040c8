// Outbound: a connection the app made, redirected to 15001 in its netns. Recover where it was going; a call to
// a Service port that speaks HTTP (declared or sniffed) goes to the L7 proxy, which routes each request;
// anything else is resolved to an endpoint and carried over HBONE to a meshed destination (in process to a meshed
// pod of this node: same-node.ts) or as plain TCP. A destination that is neither a pod nor a Service is egress: named
// by what the client sent (TLS SNI, HTTP Host), judged by its namespace's EgressNetworks, and carried as plain TCP
// from the pod's netns.
import type http2 from 'node:http2';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { L7Proxy } from '../l7/l7-proxy.js';
import { wrapError } from '../errors.js';
import { originalDst, socketFd } from '../native/index.js';
import type { MeshState } from '../state/store.js';
import { sourceAddress, type Workload } from '../state/workload.js';
import type { Metrics } from '../telemetry/metrics.js';
import { ConnectionRecord } from './connection.js';
import type { Drain } from './drain.js';
import type { Connector } from './connector.js';
import { formatAuthority } from './hbone.js';
import { resolveOutbound, type OutboundTarget } from './resolve.js';
import type { SameNode } from './same-node.js';
import { resetSide, splice } from '../io/splice.js';
import type { DetectOptions } from '../l7/detect.js';
import { peekDestinationName, type DestinationName } from '../l7/destination-name.js';
import { decideEgress } from '../model/egress.js';
import { egressRouteKey } from '../model/routes/compile.js';
import type { ServiceInfo } from '../model/services.js';
import { egressFields, refusedEgressLine } from './egress.js';
import type { AccessLog } from '../telemetry/audit.js';
import type { TapHub } from '../tap/hub.js';
import type { PeerSocketHealth, TcpHealthReader } from './tcp-health.js';

export interface OutboundInputs {
  state: () => MeshState;
  connector: Connector;
  metrics: Metrics;
  logger: Logger;
  accessLog: AccessLog;
  drain: Drain;
  random: () => number;
  /** Absent: every connection is carried at L4. */
  l7?: L7Proxy;
  /** This thread's tap hub (agent/tap/). */
  tap?: TapHub | undefined;
  /** How long and on which ports an egress connection's first bytes are read for its name (the sniff's bounds). */
  detect: DetectOptions;
  /** The sockops program's map (TCP health per edge); absent where it does not run. */
  tcpHealth?: TcpHealthReader | undefined;
  /**
   * Where a captured connection was going, from its accepted socket's fd: the outbound programs' record in eBPF mode;
   * absent: SO_ORIGINAL_DST (nft's NAT).
   */
  originalDst?: ((fd: number) => { address: string; port: number }) | undefined;
  /** Meshed pods of this node reached in process (--same-node on); absent: every meshed call goes over HBONE. */
  sameNode?: SameNode | undefined;
}

export class Outbound {
  constructor(private readonly inputs: OutboundInputs) {}

  async handle(down: net.Socket, src: Workload): Promise<void> {
    down.on('error', () => undefined);
    let dst: { address: string; port: number };
    try {
      dst = (this.inputs.originalDst ?? originalDst)(socketFd(down));
    } catch (err) {
      return this.refuse(down, src, 'no_original_dst', (err as Error).message);
    }
    // Which protocol: only calls to a Service's ClusterIP are routed (GAMMA); calls to pod IPs stay L4.
    const service = this.inputs.l7 ? this.inputs.state().serviceByVip(dst.address) : undefined;
    const servicePort = service?.ports.find((p) => p.port === dst.port);
    /** Set when this agent found the bytes are not HTTP: the destination agent is told, and does not sniff again. */
    let opaque: 'tcp' | undefined;
    if (this.inputs.l7 && service && servicePort) {
      const selection = await this.inputs.l7.select(down, servicePort);
      if (down.destroyed) return;
      if (selection.protocol !== 'tcp') {
        const leave = this.inputs.drain.enter();
        down.once('close', leave);
        this.inputs.l7.serve(down, selection.protocol, src, service, dst.port);
        return;
      }
      opaque = 'tcp';
    }

    const target = resolveOutbound(this.inputs.state(), dst, this.inputs.random);
    if (target.kind === 'fail') return this.refuse(down, src, target.reason, target.message);
    if (target.kind === 'passthrough' && !target.workload && !target.service) return this.egress(down, src, dst);

    const where = `outbound ${src.key} -> ${formatAuthority(dst.address, dst.port)}`;
    const dstFacts = { ip: target.ip, port: target.port, workload: target.workload, service: target.service?.host };
    // A meshed pod this agent holds: carried in process, no HBONE, no TLS (same-node.ts); its inbound side authorizes.
    const local = target.kind === 'hbone' ? this.inputs.sameNode?.local(dstFacts) : undefined;
    if (local) {
      return this.inputs.sameNode!.carry(local, down, src, dstFacts, opaque, {
        opened: () => this.record(down, src, target),
        refused: (message) => this.refuse(down, src, 'same_node_refused', `${where}: the destination refused (${message})`),
      });
    }
    let up: Duplex;
    try {
      up = await this.inputs.connector.open(src, dstFacts, opaque);
    } catch (err) {
      return this.refuse(down, src, target.kind === 'hbone' ? 'hbone_failed' : 'connect_failed', wrapError(where, err).message);
    }
    if (down.destroyed) {
      resetSide(up);
      return;
    }
    const record = this.record(down, src, target, up instanceof net.Socket ? this.inputs.tcpHealth?.own(up) : this.inputs.tcpHealth?.session((up as http2.ClientHttp2Stream).session));
    const outcome = await splice(down, up, record);
    record.finish(outcome.error);
  }

  /** The source side's record of a connection to a Service or pod of the cluster (reporter="source"). */
  private record(down: net.Socket, src: Workload, target: Exclude<OutboundTarget, { kind: 'fail' }>, peer?: PeerSocketHealth): ConnectionRecord {
    return new ConnectionRecord(
      {
        direction: 'outbound',
        src: { ip: sourceAddress(src, down.remoteAddress), port: down.remotePort, workload: src, principal: src.identity },
        dst: {
          ip: target.ip,
          port: target.port,
          workload: target.workload,
          principal: target.kind === 'hbone' ? target.workload.identity : undefined,
          service: target.service?.host,
        },
        security: target.kind === 'hbone' ? 'mutual_tls' : 'none',
      },
      this.inputs,
      peer,
    );
  }

  /**
   * Egress: the name the client gave (read without consuming a byte, within the sniff's bounds), the verdict of the
   * client namespace's EgressNetworks, then plain TCP from the pod's netns straight to the address it dialled.
   */
  private async egress(down: net.Socket, src: Workload, dst: { address: string; port: number }): Promise<void> {
    const { detect } = this.inputs;
    const named: DestinationName = detect.opaquePorts.has(dst.port) ? { protocol: 'tcp' } : await peekDestinationName(down, detect.detectTimeoutMs);
    if (down.destroyed) return;
    const verdict = decideEgress(this.inputs.state().traffic.egress, src.namespace, dst.address, named.name);
    const fields = egressFields(down, src, dst, named, verdict);
    if (!verdict.allowed) {
      refusedEgressLine(this.inputs, fields, verdict);
      resetSide(down);
      return;
    }
    // Plaintext HTTP to a declared host with routes attached (HTTPRoute parentRef to the EgressNetwork): served at L7
    // for their timeouts, retries and request metrics, each try to the address the client dialled.
    const l7 = this.inputs.l7;
    if (l7 && named.protocol === 'http1' && verdict.host && verdict.network) {
      const state = this.inputs.state();
      const keys = [egressRouteKey(verdict.network.key, verdict.host.name), egressRouteKey(verdict.network.key, '*')];
      const key = keys.find((k) => state.routesFor(k, dst.port, src.namespace));
      if (key) {
        const leave = this.inputs.drain.enter();
        down.once('close', leave);
        const host = verdict.host.name;
        const standIn: ServiceInfo = { key, namespace: verdict.network.namespace, name: host, host, vips: [], ports: [] };
        l7.serve(down, 'http1', src, standIn, dst.port, { ip: dst.address, port: dst.port, service: host });
        return;
      }
    }
    let up: Duplex;
    try {
      up = await this.inputs.connector.open(src, { ip: dst.address, port: dst.port });
    } catch (err) {
      return this.refuse(down, src, 'connect_failed', wrapError(`egress ${src.key} -> ${formatAuthority(named.name ?? dst.address, dst.port)}`, err).message);
    }
    if (down.destroyed) {
      resetSide(up);
      return;
    }
    const record = new ConnectionRecord(fields, this.inputs);
    const outcome = await splice(down, up, record);
    record.finish(outcome.error);
  }

  private refuse(down: net.Socket, src: Workload, reason: string, message: string): void {
    this.inputs.metrics.connectionFailures.inc({ direction: 'outbound', reason });
    this.inputs.logger.warn({ pod: src.key, reason: message }, 'outbound connection refused');
    resetSide(down);
  }
}
