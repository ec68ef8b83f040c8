// L7 entry for the outbound path: decides whether a connection to a Service port is HTTP (declared or sniffed)
// and, if so, serves it with the router; otherwise hands it back to be carried as opaque TCP.
import type net from 'node:net';
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import type { MeshState, ServiceInfo, ServicePortInfo } from '../state/store.js';
import type { Workload } from '../state/workload.js';
import type { Metrics } from '../telemetry/metrics.js';
import { declaredProtocol, httpVersion, sniff, type AppProtocol } from './detect.js';
import { Downstream, type DownstreamLimits } from './downstream.js';
import type { CallContext } from './exchange.js';
import { rejectedLine } from './record.js';
import { Router } from './router.js';
import { Upstreams, type TunnelOpener } from './upstream.js';

export interface L7Options {
  /** How long an undeclared port waits for the client's first bytes before it is carried as opaque TCP. */
  detectTimeoutMs: number;
  /** Ports never sniffed (server-speaks-first protocols). */
  opaquePorts: ReadonlySet<number>;
  limits: DownstreamLimits;
  /** Largest request body buffered for retries and mirrors (Linkerd's 64 KiB). */
  bodyCapBytes: number;
  mirrorTimeoutMs: number;
}

export interface L7Inputs {
  options: L7Options;
  state: () => MeshState;
  open: TunnelOpener;
  metrics: Metrics;
  logger: Logger;
  accessLog: Logger;
  clock: Clock;
  random: () => number;
}

export interface Selection {
  protocol: AppProtocol;
  /** True when the bytes were looked at (they stay in the socket's buffer). */
  sniffed: boolean;
}

export class L7Proxy {
  private readonly upstreams: Upstreams;
  private readonly router: Router;
  private readonly downstream: Downstream;

  constructor(private readonly inputs: L7Inputs) {
    const { options } = inputs;
    this.upstreams = new Upstreams({ open: inputs.open, maxHeaderListSize: options.limits.maxHeaderBytes });
    this.router = new Router({
      state: inputs.state,
      upstreams: this.upstreams,
      metrics: inputs.metrics,
      accessLog: inputs.accessLog,
      clock: inputs.clock,
      random: inputs.random,
      bodyCapBytes: options.bodyCapBytes,
      mirrorTimeoutMs: options.mirrorTimeoutMs,
    });
    this.downstream = new Downstream({
      limits: options.limits,
      metrics: inputs.metrics,
      logger: inputs.logger,
      authorityOf: (ctx) => `${ctx.service.host}:${ctx.port}`,
      onRequest: (ctx, req, res) => this.router.handle(ctx, req, res),
      onRejected: (ctx, status, reason, requestId) => {
        if (!ctx) return;
        const src = { workload: ctx.src, principal: ctx.src.identity, ip: ctx.srcIp, port: ctx.srcPort };
        rejectedLine(inputs.accessLog, 'outbound', src, { service: ctx.service.host }, 'none', status, reason, requestId);
      },
      onUpgrade: (ctx, req, raw, socket, head) => this.router.upgrade(ctx, req, raw, socket, head),
    });
  }

  /** Which protocol the connection speaks: the port's declaration, else a bounded sniff. */
  async select(socket: net.Socket, port: ServicePortInfo): Promise<Selection> {
    const declared: AppProtocol | undefined = declaredProtocol(port);
    if (declared === 'http1') return { protocol: await httpVersion(socket, this.inputs.options.detectTimeoutMs), sniffed: true };
    if (declared) return { protocol: declared, sniffed: false };
    if (this.inputs.options.detectTimeoutMs === 0 || this.inputs.options.opaquePorts.has(port.port)) return { protocol: 'tcp', sniffed: false };
    const found = await sniff(socket, this.inputs.options.detectTimeoutMs);
    if (found.timedOut) this.inputs.metrics.protocolDetectTimeouts.inc();
    this.inputs.metrics.protocolDetections.inc({ protocol: found.protocol });
    return { protocol: found.protocol, sniffed: true };
  }

  /** Serves an HTTP connection from `src` to a Service port until the client closes it. */
  serve(socket: net.Socket, protocol: 'http1' | 'h2', src: Workload, service: ServiceInfo, port: number): void {
    const ctx: CallContext = { src, srcIp: socket.remoteAddress, srcPort: socket.remotePort, service, port, protocol };
    if (protocol === 'h2') this.downstream.serveH2(socket, ctx);
    else this.downstream.serveHttp1(socket, ctx);
  }

  /** Drops pooled upstream connections of a pod that left. */
  forget(srcKey: string): void {
    this.upstreams.forget(srcKey);
  }

  close(): void {
    this.upstreams.close();
  }
}
