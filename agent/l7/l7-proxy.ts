// L7 entry for the outbound path: decides whether a connection to a Service port is HTTP (declared or sniffed)
// and, if so, serves it with the router: HTTP/1.1 on the lean path (h1/server.ts), HTTP/2 with Node's server
// (h2/server.ts); otherwise hands it back to be carried as opaque TCP.
import type net from 'node:net';
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import type { ServiceInfo, ServicePortInfo } from '../model/services.js';
import type { MeshState } from '../state/store.js';
import { sourceAddress, type Workload } from '../state/workload.js';
import type { Metrics } from '../telemetry/metrics.js';
import { declaredProtocol, selectProtocol, type Selection } from './detect.js';
import type { CallContext } from './exchange.js';
import { H1Server, type H1Limits } from './h1/server.js';
import { H2Server } from './h2/server.js';
import { rejectedLine } from './record.js';
import { Router } from './router.js';
import { Balancer } from './policy/balancer.js';
import { Upstreams, type TunnelOpener, type UpstreamEndpoint } from './upstream.js';
import type { AccessLog } from '../telemetry/audit.js';
import type { TapHub } from '../tap/hub.js';
import type { Tracer } from '../tracing/tracer.js';

export interface L7Limits extends H1Limits {
  /** HTTP/2 streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS). */
  readonly maxConcurrentStreams: number;
}

export interface L7Options {
  /** How long an undeclared port waits for the client's first bytes before it is carried as opaque TCP. */
  detectTimeoutMs: number;
  /** Ports never sniffed (server-speaks-first protocols). */
  opaquePorts: ReadonlySet<number>;
  limits: L7Limits;
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
  accessLog: AccessLog;
  clock: Clock;
  random: () => number;
  /** This thread's tap hub (agent/tap/). */
  tap?: TapHub | undefined;
  /** This thread's tracer (agent/tracing/), with --tracing-endpoint only. */
  tracer?: Tracer | undefined;
}

export class L7Proxy {
  private readonly upstreams: Upstreams;
  private readonly router: Router;
  private readonly h1: H1Server<CallContext>;
  private readonly h2: H2Server<CallContext>;

  constructor(private readonly inputs: L7Inputs) {
    const { options } = inputs;
    this.upstreams = new Upstreams({ open: inputs.open, maxHeaderBytes: options.limits.maxHeaderBytes });
    this.router = new Router({
      state: inputs.state,
      upstreams: this.upstreams,
      metrics: inputs.metrics,
      accessLog: inputs.accessLog,
      clock: inputs.clock,
      random: inputs.random,
      bodyCapBytes: options.bodyCapBytes,
      mirrorTimeoutMs: options.mirrorTimeoutMs,
      tap: inputs.tap,
      tracer: inputs.tracer,
    });
    const onRejected = (ctx: CallContext, status: number, reason: string, requestId?: string) => {
      const src = { workload: ctx.src, principal: ctx.src.identity, ip: ctx.srcIp, port: ctx.srcPort };
      rejectedLine(inputs, 'outbound', src, { service: ctx.service.host }, 'none', status, reason, requestId);
    };
    const authorityOf = (ctx: CallContext) => `${ctx.service.host}:${ctx.port}`;
    const onRequest = (ctx: CallContext, req: Parameters<Router['handle']>[1], res: Parameters<Router['handle']>[2]) => this.router.handle(ctx, req, res);
    this.h1 = new H1Server<CallContext>({
      limits: options.limits,
      metrics: inputs.metrics,
      logger: inputs.logger,
      authorityOf,
      onRequest,
      onRejected,
      onUpgrade: (ctx, req, raw, socket, head) => this.router.upgrade(ctx, req, raw, socket, head),
    });
    this.h2 = new H2Server<CallContext>({ limits: options.limits, metrics: inputs.metrics, logger: inputs.logger, authorityOf, onRequest, onRejected });
  }

  /** Which protocol the connection speaks: the port's declaration, else a bounded sniff. */
  select(socket: net.Socket, port: ServicePortInfo): Promise<Selection> {
    return selectProtocol(socket, portsOf(port), declaredProtocol(port), this.inputs.options, this.inputs.metrics);
  }

  /**
   * Serves an HTTP connection from `src` to a Service port until the client closes it. `egress`: the connection goes
   * outside the cluster, to this address, and `service` is the stand-in its routes are keyed by.
   */
  serve(socket: net.Socket, protocol: 'http1' | 'h2', src: Workload, service: ServiceInfo, port: number, egress?: UpstreamEndpoint): void {
    const ctx: CallContext = {
      src,
      srcIp: sourceAddress(src, socket.remoteAddress),
      srcPort: socket.remotePort,
      service,
      port,
      protocol,
      ...(egress && { egress: { balancer: new Balancer([egress], { clock: this.inputs.clock, random: this.inputs.random, key: (e) => `${e.ip}:${e.port}` }) } }),
    };
    if (protocol === 'h2') this.h2.serve(socket, ctx);
    else this.h1.serve(socket, ctx);
  }

  /** Drops pooled upstream connections of a pod that left. */
  forget(srcKey: string): void {
    this.upstreams.forget(srcKey);
  }

  /** Idle pooled upstream connections (for tests). */
  idleConnections(): number {
    return this.upstreams.idleConnections();
  }

  /** The agent is going: HTTP/1.1 connections end after their next response, HTTP/2 clients get GOAWAY. */
  drain(): void {
    this.h1.drain();
    this.h2.drain();
  }

  close(): void {
    this.h1.close();
    this.upstreams.close();
  }
}

/** A Service port and its endpoints' target ports, distinct (computed once per port of a state snapshot). */
const portLists = new WeakMap<ServicePortInfo, readonly number[]>();
function portsOf(port: ServicePortInfo): readonly number[] {
  let list = portLists.get(port);
  if (!list) {
    list = [...new Set([port.port, ...port.endpoints.map((e) => e.port)])];
    portLists.set(port, list);
  }
  return list;
}
