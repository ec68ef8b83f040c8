// L7 router: one request from match to the last byte of the answer. The layers, in the order they apply:
//   route match (404 when routes exist and none matches) -> redirect -> fault (delay, abort) -> request
//   timeout -> body buffering (for retries and mirrors, capped) -> mirror -> retry loop { weighted split ->
//   endpoint (P2C EWMA, ejection) -> header and path filters -> per-try timeout -> upstream } -> response
//   header filters -> stream the answer -> one metrics update and one access-log line.
// One MeshState snapshot is read per request, so a request finishes on the route it started with.
import http from 'node:http';
import type { Duplex, Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import type { RetryBudgetSpec } from '../model/retry-budget.js';
import type { ServiceInfo } from '../model/services.js';
import type { MeshState } from '../state/store.js';
import type { Metrics } from '../telemetry/metrics.js';
import { splice } from '../io/splice.js';
import { Balancer, type PickedEndpoint } from './policy/balancer.js';
import { FaultDecider } from './policy/fault.js';
import { RetryBudget } from './policy/retry-budget.js';
import { RetryPolicy, type RetryError } from './policy/retry.js';
import {
  applyHeaderModifier,
  applyRewrite,
  matchGrpc,
  matchRequest,
  pickBackend,
  redirectLocation,
  type CompiledRule,
  type CompiledRoutes,
  type FaultSpec,
  type MatchedRule,
  type RequestMirror,
  type ServiceBackend,
} from '../model/routes/index.js';
import { headerValue, type CallContext, type L7Request, type Responder } from './exchange.js';
import { RequestRecord } from './record.js';
import { grpcLocal, local, relay } from './relay.js';
import { UpstreamError, type Headers, type UpstreamEndpoint, type UpstreamRequest, type UpstreamResponse, type Upstreams } from './upstream.js';

export interface RouterInputs {
  state: () => MeshState;
  upstreams: Upstreams;
  metrics: Metrics;
  accessLog: Logger;
  clock: Clock;
  random: () => number;
  /** Largest request body buffered for retries and mirrors. */
  bodyCapBytes: number;
  /** Mirrored copies give up after this long. */
  mirrorTimeoutMs: number;
}

/** gRPC status codes the router answers with. */
const GRPC = { NOT_FOUND: 5, UNIMPLEMENTED: 12, INTERNAL: 13, UNAVAILABLE: 14, DEADLINE_EXCEEDED: 4 } as const;

/** The default backend of a Service port without routes: the Service itself. */
function selfBackend(service: ServiceInfo, port: number): ServiceBackend {
  return { kind: 'Service', weight: 1, service: service.key, namespace: service.namespace, name: service.name, port, host: service.host, filters: [] };
}

interface BalancerEntry {
  version: number;
  balancer: Balancer<UpstreamEndpoint>;
  /** Ejections already counted in trellis_endpoint_ejections_total. */
  counted: number;
}

interface Attempt {
  /** Failed on a reused keep-alive connection (the server may have closed it while idle). */
  reusedClosed?: boolean;
  response?: UpstreamResponse;
  error?: RetryError;
  message?: string;
  endpoint?: UpstreamEndpoint;
}

export class Router {
  private readonly balancers = new Map<string, BalancerEntry>();
  private readonly budgets = new Map<string, { spec: RetryBudgetSpec | undefined; budget: RetryBudget }>();
  // Compiled rules and faults are frozen per snapshot; their runtime helpers live as long as they do.
  private readonly retryPolicies = new WeakMap<CompiledRule, RetryPolicy>();
  private readonly faultDeciders = new WeakMap<FaultSpec, FaultDecider>();

  constructor(private readonly inputs: RouterInputs) {}

  async handle(ctx: CallContext, req: L7Request, res: Responder): Promise<void> {
    const state = this.inputs.state();
    const rec = outboundRecord(ctx, req, this.inputs);
    try {
      await this.route(state, ctx, req, res, rec);
    } catch (err) {
      // A bug, not an expected failure: answer 500 if we still can, and say where.
      rec.error = `internal: ${(err as Error).message}`;
      if (!res.headSent && !res.closed) local(res, req, rec, 500, GRPC.INTERNAL, 'internal proxy error');
      else res.reset();
    } finally {
      rec.finish();
    }
  }

  private async route(state: MeshState, ctx: CallContext, req: L7Request, res: Responder, rec: RequestRecord): Promise<void> {
    // 1. Route: consumer routes of the caller's namespace win over the Service's own (producer) routes.
    const routes = state.routesFor(ctx.service.key, ctx.port, ctx.src.namespace);
    let matched: MatchedRule | undefined;
    if (routes) {
      matched = matchRoutes(routes, req);
      if (!matched) return local(res, req, rec, 404, GRPC.UNIMPLEMENTED, `no rule of the routes for ${ctx.service.key}:${ctx.port} matches`);
      rec.route = matched.rule;
    }
    const rule = matched?.rule;
    if (rule?.error) return local(res, req, rec, 500, GRPC.INTERNAL, rule.error.reason);

    // 2. Redirect: answered here, never sent upstream.
    if (matched && rule?.redirect) {
      const where = redirectLocation(matched, { scheme: 'http', host: req.authority, path: req.path, query: req.query, port: ctx.port });
      if (where) return local(res, req, rec, where.statusCode, GRPC.INTERNAL, '', { location: where.location });
    }

    // 3. Fault injection: a delay, then maybe an abort.
    if (rule?.fault) {
      const decision = this.faultFor(rule.fault).decide(this.inputs.random);
      if (decision.delayMs > 0) {
        await sleep(this.inputs.clock, decision.delayMs, res);
        if (res.closed) return void (rec.error = 'client went away during an injected delay');
      }
      if (decision.abort) {
        rec.fault = true;
        if (decision.abort.grpcStatus !== undefined) return grpcLocal(res, rec, decision.abort.grpcStatus, 'fault injected');
        return local(res, req, rec, decision.abort.httpStatus ?? 500, GRPC.UNAVAILABLE, 'fault injected');
      }
    }

    // 4. Request timeout: the whole exchange, retries included; absent or 0: none.
    const requestMs = rule?.timeouts.requestMs || undefined;
    const deadline = requestMs ? performance.now() + requestMs : undefined;

    // 5. Body: buffered (up to the cap) only when a retry or a mirror may need to send it again.
    const retry = rule?.retry && rule.retry.attempts > 0 ? this.retryFor(rule, requestMs) : undefined;
    const mirrors = rule?.mirrors ?? [];
    let body: Buffer | Readable = req.body;
    if (retry || mirrors.length > 0) body = await readCapped(req.body, this.inputs.bodyCapBytes);
    if (Buffer.isBuffer(body)) rec.requestBytes = body.length;
    if (res.closed) return void (rec.error = 'client went away while sending the body');

    // 6. Mirrors: copies of the request, answers discarded; never delay or change the caller's response.
    for (const m of mirrors) this.mirror(state, ctx, req, matched!, m, body);

    // 7. The split: one weighted pick per request; retries stay on the backend picked.
    const backend = matched ? pickBackend(matched, this.inputs.random) : selfBackend(ctx.service, ctx.port);
    if (backend.kind === 'Error') return local(res, req, rec, backend.status, backend.grpcStatus, backend.reason);
    rec.destinationService = backend.host;
    const budget = this.budgetFor(state, backend.service);
    budget.onRequest();

    const upstreamPath = matched ? applyRewrite(matched, req.path) : req.path;
    const headers: Headers = { ...req.headers };
    if (rule?.requestHeaders) applyHeaderModifier(rule.requestHeaders, headers);
    if (backend.requestHeaders) applyHeaderModifier(backend.requestHeaders, headers);
    const upstreamReq: UpstreamRequest = {
      method: req.method,
      path: req.query ? `${upstreamPath}?${req.query}` : upstreamPath,
      authority: rule?.rewrite?.hostname ?? req.authority,
      headers,
      body,
    };

    // 8. Tries: each to an endpoint the balancer picks, under the per-try timeout and the request deadline.
    let attempt: Attempt = {};
    for (let n = 1; ; n++) {
      const picked = this.pickEndpoint(state, backend);
      if (!picked) return local(res, req, rec, 503, GRPC.UNAVAILABLE, `no ready endpoint for ${backend.service}:${backend.port}`);
      rec.setEndpoint(picked.endpoint);
      attempt = await this.tryOnce(ctx, upstreamReq, picked, rule, deadline, res);
      if (res.closed) {
        attempt.response?.abort();
        rec.error = 'client went away';
        return;
      }
      // A keep-alive connection the server closed while idle: sent again at once, once, as undici does.
      if (attempt.error === 'reset' && attempt.reusedClosed && Buffer.isBuffer(body) && n === 1) {
        attempt = await this.tryOnce(ctx, upstreamReq, this.pickEndpoint(state, backend) ?? picked, rule, deadline, res);
      }
      const timedOut = deadline !== undefined && performance.now() >= deadline;
      if (!retry || timedOut) break;
      const decision = retry.decide({
        attempt: n,
        status: attempt.response?.status,
        error: attempt.error,
        elapsedMs: performance.now() - req.startedAt,
        bodyBytes: Buffer.isBuffer(body) ? body.length : Infinity,
        bodyComplete: Buffer.isBuffer(body),
        budget,
      });
      if (!decision.retry) {
        if (decision.reason === 'budget') this.inputs.metrics.retryBudgetExhausted.inc({ destination_service: backend.host });
        break;
      }
      this.inputs.metrics.retries.inc({ destination_service: backend.host });
      rec.retries++;
      attempt.response?.abort();
      await sleep(this.inputs.clock, decision.delayMs, res);
      if (res.closed) return void (rec.error = 'client went away during a retry backoff');
    }

    if (!attempt.response) {
      const timedOut = attempt.error === 'timeout';
      rec.error = attempt.message;
      return local(res, req, rec, timedOut ? 504 : 503, timedOut ? GRPC.DEADLINE_EXCEEDED : GRPC.UNAVAILABLE, timedOut ? 'upstream request timeout' : 'upstream connect error or disconnect/reset before headers');
    }
    await this.respond(req, res, rec, attempt.response, rule, backend, deadline);
  }

  private async tryOnce(
    ctx: CallContext,
    upstreamReq: UpstreamRequest,
    picked: PickedEndpoint<UpstreamEndpoint>,
    rule: CompiledRule | undefined,
    deadline: number | undefined,
    res: Responder,
  ): Promise<Attempt> {
    const started = performance.now();
    const ep = picked.endpoint;
    const perTry = rule?.timeouts.backendRequestMs || undefined;
    const limit = Math.min(deadline ?? Infinity, perTry ? started + perTry : Infinity);
    const send =
      ctx.protocol === 'h2' ? this.inputs.upstreams.h2(ctx.src, ep, upstreamReq) : this.inputs.upstreams.http1(ctx.src, ep, upstreamReq);
    const outcome = await raceDeadline(send, limit, this.inputs.clock, res);
    const latencyMs = performance.now() - started;
    if (outcome.kind === 'response') {
      const r = outcome.response;
      picked.done({ latencyMs, outcome: r.status >= 500 ? '5xx' : 'ok' });
      return { response: r, endpoint: ep };
    }
    if (outcome.kind === 'timeout') {
      picked.done({ latencyMs, outcome: '5xx' });
      return { error: 'timeout', message: `no response from ${ep.ip}:${ep.port} within the timeout`, endpoint: ep };
    }
    const err = outcome.error;
    const isUpstream = err instanceof UpstreamError;
    picked.done({ latencyMs, outcome: isUpstream && err.kind === 'connect' ? 'connect-failure' : '5xx' });
    return {
      error: isUpstream && err.kind === 'connect' ? 'connect' : 'reset',
      message: `${ep.ip}:${ep.port}: ${err.message}`,
      endpoint: ep,
      reusedClosed: isUpstream && err.reused,
    };
  }

  private async respond(
    req: L7Request,
    res: Responder,
    rec: RequestRecord,
    up: UpstreamResponse,
    rule: CompiledRule | undefined,
    backend: ServiceBackend,
    deadline: number | undefined,
  ): Promise<void> {
    const headers = up.headers;
    if (rule?.responseHeaders) applyHeaderModifier(rule.responseHeaders, headers);
    if (backend.responseHeaders) applyHeaderModifier(backend.responseHeaders, headers);
    await relay(req, up, res, rec, this.inputs.clock, deadline);
  }

  /**
   * An HTTP/1.1 Upgrade (WebSocket): routed like a request (match, split, endpoint, path rewrite), then the
   * request head is replayed to the endpoint and both sides are carried as opaque bytes.
   */
  async upgrade(ctx: CallContext, req: L7Request, rawHeaders: readonly string[], socket: Duplex, head: Buffer): Promise<void> {
    const state = this.inputs.state();
    const rec = outboundRecord(ctx, req, this.inputs);
    socket.on('error', () => undefined);
    const refuse = (status: number, message: string) => {
      rec.status = status;
      rec.error = message;
      socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
    };
    try {
      const routes = state.routesFor(ctx.service.key, ctx.port, ctx.src.namespace);
      const matched = routes ? matchRoutes(routes, req) : undefined;
      if (routes && !matched) return refuse(404, 'no route rule matches');
      if (matched) rec.route = matched.rule;
      if (matched?.rule.error || matched?.rule.redirect) return refuse(500, 'the matching rule cannot carry an Upgrade');
      const backend = matched ? pickBackend(matched, this.inputs.random) : selfBackend(ctx.service, ctx.port);
      if (backend.kind === 'Error') return refuse(backend.status, backend.reason);
      rec.destinationService = backend.host;
      const picked = this.pickEndpoint(state, backend);
      if (!picked) return refuse(503, `no ready endpoint for ${backend.service}:${backend.port}`);
      rec.setEndpoint(picked.endpoint);
      const started = performance.now();
      let tunnel: Duplex;
      try {
        tunnel = await this.inputs.upstreams.tunnel(ctx.src, picked.endpoint);
      } catch (err) {
        picked.done({ latencyMs: performance.now() - started, outcome: 'connect-failure' });
        return refuse(503, `upgrade: ${(err as Error).message}`);
      }
      tunnel.on('error', () => undefined);
      const path = matched ? applyRewrite(matched, req.path) : req.path;
      let text = `${req.method} ${req.query ? `${path}?${req.query}` : path} HTTP/1.1\r\n`;
      for (let i = 0; i + 1 < rawHeaders.length; i += 2) text += `${rawHeaders[i]}: ${rawHeaders[i + 1]}\r\n`;
      tunnel.write(`${text}\r\n`);
      if (head.length > 0) tunnel.write(head);
      // The first bytes back carry the status line: read them before handing both sides to splice.
      const first = await new Promise<Buffer | undefined>((resolve) => {
        const onData = (chunk: Buffer) => {
          tunnel.pause();
          cleanup();
          resolve(chunk);
        };
        const onGone = () => {
          cleanup();
          resolve(undefined);
        };
        const cleanup = () => {
          tunnel.off('data', onData);
          tunnel.off('end', onGone);
          tunnel.off('close', onGone);
        };
        tunnel.on('data', onData);
        tunnel.once('end', onGone);
        tunnel.once('close', onGone);
      });
      picked.done({ latencyMs: performance.now() - started, outcome: first ? 'ok' : '5xx' });
      if (!first) {
        tunnel.destroy();
        return refuse(503, 'upstream closed before answering the Upgrade');
      }
      rec.status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(first.toString('latin1', 0, 16))?.[1] ?? 0);
      rec.responseBytes = first.length;
      socket.write(first);
      const outcome = await splice(socket, tunnel, { downToUp: () => undefined, upToDown: (n) => (rec.responseBytes += n) });
      if (outcome.error) rec.error = outcome.error.message;
    } finally {
      rec.finish();
    }
  }

  private mirror(state: MeshState, ctx: CallContext, req: L7Request, matched: MatchedRule, m: RequestMirror, body: Buffer | Readable): void {
    const host = m.backend.host;
    if (m.percent < 100 && !(this.inputs.random() * 100 < m.percent)) return;
    if (!Buffer.isBuffer(body)) {
      this.inputs.metrics.mirrorRequests.inc({ destination_service: host, outcome: 'skipped' });
      return;
    }
    const picked = this.pickEndpoint(state, m.backend);
    if (!picked) {
      this.inputs.metrics.mirrorRequests.inc({ destination_service: host, outcome: 'failed' });
      return;
    }
    const path = applyRewrite(matched, req.path);
    const copy: UpstreamRequest = {
      method: req.method,
      path: req.query ? `${path}?${req.query}` : path,
      authority: req.authority,
      headers: { ...req.headers },
      body,
    };
    const started = performance.now();
    const send = ctx.protocol === 'h2' ? this.inputs.upstreams.h2(ctx.src, picked.endpoint, copy) : this.inputs.upstreams.http1(ctx.src, picked.endpoint, copy);
    void raceDeadline(send, started + this.inputs.mirrorTimeoutMs, this.inputs.clock).then((o) => {
      const latencyMs = performance.now() - started;
      if (o.kind === 'response') {
        o.response.body.resume();
        picked.done({ latencyMs, outcome: o.response.status >= 500 ? '5xx' : 'ok' });
        this.inputs.metrics.mirrorRequests.inc({ destination_service: host, outcome: 'sent' });
      } else {
        picked.done({ latencyMs, outcome: '5xx' });
        this.inputs.metrics.mirrorRequests.inc({ destination_service: host, outcome: 'failed' });
      }
    });
  }

  private pickEndpoint(state: MeshState, backend: ServiceBackend): PickedEndpoint<UpstreamEndpoint> | undefined {
    const key = `${backend.service}:${backend.port}`;
    let entry = this.balancers.get(key);
    if (!entry || entry.version !== state.version) {
      const endpoints = readyEndpoints(state, backend);
      if (entry) {
        entry.balancer.setEndpoints(endpoints);
        entry.version = state.version;
      } else {
        entry = {
          version: state.version,
          balancer: new Balancer<UpstreamEndpoint>(endpoints, { clock: this.inputs.clock, random: this.inputs.random, key: (e) => `${e.ip}:${e.port}` }),
          counted: 0,
        };
        this.balancers.set(key, entry);
      }
    }
    // Ejections happen when a try completes; they are counted at the next pick.
    const ejections = entry.balancer.ejections;
    if (ejections !== entry.counted) {
      this.inputs.metrics.endpointEjections.inc({ destination_service: backend.host }, ejections - entry.counted);
      entry.counted = ejections;
    }
    return entry.balancer.pick();
  }

  private budgetFor(state: MeshState, service: string): RetryBudget {
    const spec = state.traffic.retryBudgets.get(service);
    const held = this.budgets.get(service);
    if (held && held.spec === spec) return held.budget;
    const budget = new RetryBudget({ clock: this.inputs.clock, ...(spec && { retryRatio: spec.retryRatio, minRetriesPerSecond: spec.minRetriesPerSecond, ttlMs: spec.ttlMs }) });
    this.budgets.set(service, { spec, budget });
    return budget;
  }

  private retryFor(rule: CompiledRule, requestMs: number | undefined): RetryPolicy {
    let policy = this.retryPolicies.get(rule);
    if (!policy) {
      const r = rule.retry!;
      policy = new RetryPolicy(
        { codes: r.codes, attempts: r.attempts, ...(r.backoffMs !== undefined && { backoffMs: r.backoffMs }) },
        { ...(requestMs !== undefined && { requestTimeoutMs: requestMs }), bodyCapBytes: this.inputs.bodyCapBytes },
        { random: this.inputs.random },
      );
      this.retryPolicies.set(rule, policy);
    }
    return policy;
  }

  private faultFor(spec: FaultSpec): FaultDecider {
    let d = this.faultDeciders.get(spec);
    if (!d) {
      d = new FaultDecider({
        ...(spec.delayMs !== undefined && { delayMs: spec.delayMs }),
        delayPercent: spec.delayPercent,
        ...(spec.abort && { abort: spec.abort.httpStatus !== undefined ? { httpStatus: spec.abort.httpStatus } : { grpcStatus: spec.abort.grpcStatus } }),
        abortPercent: spec.abortPercent,
      });
      this.faultDeciders.set(spec, d);
    }
    return d;
  }
}

function outboundRecord(ctx: CallContext, req: L7Request, sinks: RouterInputs): RequestRecord {
  const rec = new RequestRecord(req, sinks, 'outbound', { workload: ctx.src, principal: ctx.src.identity, ip: ctx.srcIp, port: ctx.srcPort }, {}, 'none');
  rec.destinationService = ctx.service.host;
  return rec;
}

const NO_QUERY = new URLSearchParams();

function matchRoutes(routes: CompiledRoutes, req: L7Request): MatchedRule | undefined {
  const headers = (name: string) => headerValue(req.headers, name);
  if (routes.kind === 'GRPCRoute') {
    if (!req.grpc) return undefined;
    const parts = req.path.split('/');
    if (parts.length !== 3 || parts[0] !== '') return undefined;
    return matchGrpc(routes, { service: parts[1]!, method: parts[2]!, headers });
  }
  return matchRequest(routes, { method: req.method, path: req.path, query: req.query ? new URLSearchParams(req.query) : NO_QUERY, headers });
}

function readyEndpoints(state: MeshState, backend: ServiceBackend): UpstreamEndpoint[] {
  const service = state.services.get(backend.service);
  const port = service?.ports.find((p) => p.port === backend.port);
  if (!service || !port) return [];
  const out: UpstreamEndpoint[] = [];
  for (const e of port.endpoints) {
    if (!e.ready) continue;
    const workload = state.workloadByIp(e.ip);
    out.push(workload ? { ip: e.ip, port: e.port, workload, service: service.host } : { ip: e.ip, port: e.port, service: service.host });
  }
  return out;
}

/** Reads the body up to `cap` bytes: the whole body as a Buffer, or (over the cap) a stream that replays what was read. */
function readCapped(body: Readable, cap: number): Promise<Buffer | Readable> {
  if (body.readableEnded) return Promise.resolve(Buffer.alloc(0));
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (value: Buffer | Readable) => {
      body.off('data', onData);
      body.off('end', onEnd);
      body.off('error', onEnd);
      body.off('close', onEnd);
      resolve(value);
    };
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
      if (size > cap) {
        body.pause();
        for (let i = chunks.length - 1; i >= 0; i--) body.unshift(chunks[i]!);
        done(body);
      }
    };
    const onEnd = () => done(Buffer.concat(chunks, size));
    body.on('data', onData);
    body.once('end', onEnd);
    body.once('error', onEnd);
    body.once('close', onEnd);
  });
}

type RaceOutcome = { kind: 'response'; response: UpstreamResponse } | { kind: 'timeout' } | { kind: 'error'; error: Error };

/** Waits for the response head until `deadline` (performance.now() time); a late response is aborted. */
function raceDeadline(send: Promise<UpstreamResponse>, deadline: number, clock: Clock, res?: Responder): Promise<RaceOutcome> {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (o: RaceOutcome) => {
      if (settled) {
        if (o.kind === 'response') o.response.abort();
        return;
      }
      settled = true;
      timer?.cancel();
      resolve(o);
    };
    const timer = Number.isFinite(deadline) ? clock.after(Math.max(0, deadline - performance.now()), () => settle({ kind: 'timeout' })) : undefined;
    res?.onClose(() => settle({ kind: 'error', error: new Error('client went away') }));
    send.then(
      (response) => settle({ kind: 'response', response }),
      (error: Error) => settle({ kind: 'error', error }),
    );
  });
}

function sleep(clock: Clock, ms: number, res: Responder): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve) => {
    const t = clock.after(ms, resolve);
    res.onClose(() => {
      t.cancel();
      resolve();
    });
  });
}

