// L7 router (the source agent): the one place that fixes the order of the route features. Each is a layer
// `(next) => handler` in layers/; a request goes through them top to bottom, and the answer comes back up:
//
//   match -> redirect -> fault -> timeout -> buffer -> mirror -> split -> filters -> respond -> retry
//     -> endpoint -> forward
//
// An Upgrade (WebSocket) takes the same route (match, split, path rewrite, endpoint) and ends in a tunnel.
// One MeshState snapshot is read per request, so a request finishes on the route it started with; one record per
// request gives the metrics update and the access line, whatever happens.
import type { Duplex } from 'node:stream';
import type { Clock } from '../clock.js';
import type { MeshState } from '../state/store.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { CallContext, L7Request, Responder } from './exchange.js';
import { buffer } from './layers/buffer.js';
import { GRPC, NO_ATTEMPT, compose, type Call, type Handler, type LayerInputs } from './layers/call.js';
import { Balancers, endpoint } from './layers/endpoint.js';
import { fault } from './layers/fault.js';
import { filters } from './layers/filters.js';
import { forward } from './layers/forward.js';
import { match } from './layers/match.js';
import { mirror } from './layers/mirror.js';
import { redirect } from './layers/redirect.js';
import { respond } from './layers/respond.js';
import { retry } from './layers/retry.js';
import { Budgets, split } from './layers/split.js';
import { timeout } from './layers/timeout.js';
import { UpgradeRefusal, plainRule, tunnel } from './layers/upgrade.js';
import { RequestRecord } from './record.js';
import { local } from './relay.js';
import type { Upstreams } from './upstream.js';
import type { AccessLog } from '../telemetry/audit.js';
import type { TapHub } from '../tap/hub.js';
import type { Tracer } from '../tracing/tracer.js';

export interface RouterInputs {
  state: () => MeshState;
  upstreams: Upstreams;
  metrics: Metrics;
  accessLog: AccessLog;
  clock: Clock;
  random: () => number;
  /** Largest request body buffered for retries and mirrors. */
  bodyCapBytes: number;
  /** Mirrored copies give up after this long. */
  mirrorTimeoutMs: number;
  /** This thread's tap hub (agent/tap/). */
  tap?: TapHub | undefined;
  /** This thread's tracer (agent/tracing/), with --tracing-endpoint only. */
  tracer?: Tracer | undefined;
}

export class Router {
  private readonly stack: Handler;
  private readonly layers: LayerInputs;
  private readonly balancers: Balancers;
  private readonly budgets: Budgets;

  constructor(private readonly inputs: RouterInputs) {
    this.layers = inputs;
    this.balancers = new Balancers(inputs);
    this.budgets = new Budgets(inputs);
    this.stack = compose(
      [
        match,
        redirect,
        fault(inputs),
        timeout,
        buffer(inputs),
        mirror(inputs, this.balancers),
        split(inputs, this.budgets),
        filters,
        respond(inputs),
        retry(inputs),
        endpoint(this.balancers),
      ],
      forward(inputs),
    );
  }

  async handle(ctx: CallContext, req: L7Request, res: Responder): Promise<void> {
    const call = this.call(ctx, req, res);
    // Tracing: the CLIENT span, a child of the app's; the request goes on with this span as its parent's context.
    if (this.inputs.tracer) call.rec.span = this.inputs.tracer.start(req, 'client');
    try {
      await this.stack(call);
    } catch (err) {
      // A bug, not an expected failure: answer 500 if we still can, and say where.
      call.rec.error = `internal: ${(err as Error).message}`;
      if (!res.headSent && !res.closed) local(res, req, call.rec, 500, GRPC.INTERNAL, 'internal proxy error');
      else res.reset();
    } finally {
      call.rec.finish();
    }
  }

  /** An HTTP/1.1 Upgrade: routed as a request, then the connection is the tunnel's. */
  async upgrade(ctx: CallContext, req: L7Request, raw: readonly string[], socket: Duplex, head: Buffer): Promise<void> {
    socket.on('error', () => undefined);
    const call = this.call(ctx, req, new UpgradeRefusal(socket));
    const stack = compose([match, plainRule, split(this.inputs, this.budgets), filters, endpoint(this.balancers)], tunnel(this.layers, socket, raw, head));
    try {
      await stack(call);
    } finally {
      call.rec.finish();
    }
  }

  private call(ctx: CallContext, req: L7Request, res: Responder): Call {
    const rec = new RequestRecord(req, this.inputs, 'outbound', { workload: ctx.src, principal: ctx.src.identity, ip: ctx.srcIp, port: ctx.srcPort }, {}, 'none', ctx);
    rec.destinationService = ctx.service.host;
    return { ctx, req, res, rec, state: this.inputs.state(), attempt: NO_ATTEMPT };
  }
}
