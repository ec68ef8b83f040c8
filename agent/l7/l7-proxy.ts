// L7 entry for the outbound path: decides whether a connection to a Service port is HTTP (declared or sniffed)
// and, if so, serves it with the router; otherwise hands it back to be carried as opaque TCP.
import type net from 'node:net';
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import type { ServiceInfo, ServicePortInfo } from '../model/services.js';
import type { MeshState } from '../state/store.js';
import type { Workload } from '../state/workload.js';
import type { Metrics } from '../telemetry/metrics.js';
import { declaredProtocol, selectProtocol, type Selection } from './detect.js';
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
  select(socket: net.Socket, port: ServicePortInfo): Promise<Selection> {
    return selectProtocol(socket, port.port, declaredProtocol(port), this.inputs.options, this.inputs.metrics);
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
