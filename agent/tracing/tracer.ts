// Tracing on the L7 path: one span per request each agent carries (the source agent's CLIENT span, the destination
// agent's SERVER span), a child of the caller's span. The caller's context is read off the request's headers and the
// agent's own written in its place, so the next hop's span is the agent's child; a request that came with none starts
// a trace here, and the app it reaches gets the context. Sampling is parent-based: the caller's decision is kept, a
// new trace is sampled at --tracing-sample-ratio. Only a sampled request costs a span; finished spans go to the
// thread's OTLP exporter (otlp.ts).
import { randomFillSync } from 'node:crypto';
import { extract, inject, type B3Form, type Headers } from './context.js';

/** What a span reads of a request (l7/exchange.ts's L7Request has it all; tracing sits below l7 and knows no more). */
export interface TracedRequest {
  readonly protocol: 'http1' | 'h2';
  readonly appProtocol?: 'h2';
  readonly grpc: boolean;
  readonly method: string;
  readonly authority: string;
  readonly path: string;
  readonly headers: Headers;
  readonly requestId: string;
  readonly startedAt: number;
}

export type SpanKind = 'client' | 'server';

/** A sampled request's span while it runs: what is known when it starts. */
export interface ActiveSpan {
  readonly kind: SpanKind;
  readonly traceId: string;
  readonly spanId: string;
  /** The caller's span; undefined when this span starts the trace. */
  readonly parentSpanId: string | undefined;
  readonly traceState: string | undefined;
  /** performance.now() when the request head arrived. */
  readonly startedAt: number;
}

/** What a span says about its request when it ends (record.ts fills it from the request's record). */
export interface SpanEnd {
  readonly req: TracedRequest;
  readonly status: number;
  readonly grpcStatus: string;
  readonly error: string | undefined;
  readonly srcPrincipal: string | undefined;
  readonly dstPrincipal: string | undefined;
  readonly srcIp: string | undefined;
  readonly destinationService: string | undefined;
  readonly route: string | undefined;
  readonly rule: string | undefined;
  readonly retries: number;
  /** The authorization decision's fields (decisionFields), destination side only. */
  readonly authz: { decision?: string; policy?: string; reason?: string } | undefined;
}

export type AttributeValue = string | number | boolean;

/** A finished span, in the shape OpenTelemetry's OTLP serializers read (their ReadableSpan's fields). */
export class FinishedSpan {
  readonly events: readonly never[] = [];
  readonly links: readonly never[] = [];
  readonly droppedAttributesCount = 0;
  readonly droppedEventsCount = 0;
  readonly droppedLinksCount = 0;
  readonly ended = true;
  private readonly context: { traceId: string; spanId: string; traceFlags: number; traceState?: { serialize(): string } };

  constructor(
    readonly name: string,
    /** OpenTelemetry's SpanKind: 1 SERVER, 2 CLIENT. */
    readonly kind: number,
    span: ActiveSpan,
    readonly parentSpanContext: { traceId: string; spanId: string; traceFlags: number; isRemote: true } | undefined,
    readonly startTime: [number, number],
    readonly endTime: [number, number],
    readonly attributes: Record<string, AttributeValue>,
    /** 0 unset, 2 error. */
    readonly status: { code: number; message?: string },
    readonly resource: { readonly attributes: Record<string, AttributeValue> },
    readonly instrumentationScope: { readonly name: string; readonly version?: string },
  ) {
    const traceState = span.traceState;
    this.context = { traceId: span.traceId, spanId: span.spanId, traceFlags: 1, ...(traceState && { traceState: { serialize: () => traceState } }) };
  }

  get duration(): [number, number] {
    const ns = (this.endTime[0] - this.startTime[0]) * 1e9 + (this.endTime[1] - this.startTime[1]);
    return [Math.floor(ns / 1e9), ns % 1e9];
  }

  spanContext(): { traceId: string; spanId: string; traceFlags: number; traceState?: { serialize(): string } } {
    return this.context;
  }
}

/** Where finished spans go: the thread's exporter, or a test's list. */
export interface SpanSink {
  push(span: FinishedSpan): void;
}

export interface TracerInputs {
  /** Share of new traces sampled, 0 to 1. */
  sampleRatio: number;
  sink: SpanSink;
  /** This agent's node, for the spans' resource. */
  node: string;
  random: () => number;
  /** Random bytes for ids (tests give a fixed source). */
  randomBytes?: (buf: Buffer) => void;
}

/** Ids come from one buffer of random bytes, refilled when used up: no allocation but the id's string. */
const ID_POOL_BYTES = 4096;

/** gRPC codes a server reports as its own failure (OpenTelemetry's rules for SERVER spans). */
const GRPC_SERVER_ERRORS = new Set(['2', '4', '12', '13', '14', '15']);

export class Tracer {
  private readonly pool = Buffer.allocUnsafe(ID_POOL_BYTES);
  private offset = ID_POOL_BYTES;
  private readonly resource: { readonly attributes: Record<string, AttributeValue> };
  private readonly scope = Object.freeze({ name: 'trellis-agent' });

  constructor(private readonly inputs: TracerInputs) {
    this.resource = Object.freeze({ attributes: Object.freeze({ 'service.name': 'trellis-agent', 'k8s.node.name': inputs.node }) });
  }

  /**
   * Reads the caller's context off the request's headers, decides whether the request is sampled, and writes the
   * context the next hop gets in their place: this span as its parent. Returns the span to end, or undefined when the
   * request is not sampled (its context is still passed on, so the hops after it decide the same).
   */
  start(req: TracedRequest, kind: SpanKind): ActiveSpan | undefined {
    const headers = req.headers;
    const { parent, b3, deny } = extract(headers);
    const sampled = parent?.sampled ?? (!deny && this.inputs.random() < this.inputs.sampleRatio);
    const traceId = parent?.traceId ?? this.id(16);
    const spanId = this.id(8);
    const traceState = parent?.traceState;
    inject(headers, { traceId, spanId, sampled, traceState, parentSpanId: parent?.spanId }, b3 satisfies B3Form | undefined);
    if (!sampled) return undefined;
    return { kind, traceId, spanId, parentSpanId: parent?.spanId, traceState, startedAt: req.startedAt };
  }

  /** Ends a sampled request's span with what its record knows, and hands it to the exporter. */
  end(span: ActiveSpan, end: SpanEnd): void {
    const { req } = end;
    const attributes: Record<string, AttributeValue> = {
      'http.request.method': req.method,
      'url.path': req.path,
      'url.scheme': 'http',
      // The app's protocol: between agents an HTTP/2 request crosses as HTTP/1.1 and says so (appProtocol).
      'network.protocol.version': req.protocol === 'h2' || req.appProtocol === 'h2' ? '2' : '1.1',
      'trellis.request_id': req.requestId,
    };
    const colon = req.authority.lastIndexOf(':');
    const bracket = req.authority.lastIndexOf(']');
    if (colon > bracket && colon > 0) {
      attributes['server.address'] = req.authority.slice(0, colon);
      const port = Number(req.authority.slice(colon + 1));
      if (Number.isInteger(port) && port > 0) attributes['server.port'] = port;
    } else {
      attributes['server.address'] = req.authority;
    }
    if (end.status > 0) attributes['http.response.status_code'] = end.status;
    if (req.grpc) {
      attributes['rpc.system'] = 'grpc';
      if (end.grpcStatus !== '') attributes['rpc.grpc.status_code'] = Number(end.grpcStatus);
    }
    if (end.srcPrincipal) attributes['trellis.source.principal'] = end.srcPrincipal;
    if (end.dstPrincipal) attributes['trellis.destination.principal'] = end.dstPrincipal;
    if (end.srcIp && span.kind === 'server') attributes['client.address'] = end.srcIp;
    if (end.destinationService) attributes['trellis.destination.service'] = end.destinationService;
    if (end.route) attributes['trellis.route'] = end.route;
    if (end.rule) attributes['trellis.route.rule'] = end.rule;
    if (end.retries) attributes['trellis.retries'] = end.retries;
    if (end.authz?.decision) {
      attributes['trellis.authz.decision'] = end.authz.decision;
      if (end.authz.policy) attributes['trellis.authz.policy'] = end.authz.policy;
      if (end.authz.reason) attributes['trellis.authz.reason'] = end.authz.reason;
    }
    const failed = this.failed(span.kind, end);
    if (failed) attributes['error.type'] = failed;
    const status = failed ? { code: 2, ...(end.error !== undefined && { message: end.error }) } : { code: 0 };
    const name = req.grpc ? req.path.slice(1) : req.method;
    const parent = span.parentSpanId === undefined ? undefined : { traceId: span.traceId, spanId: span.parentSpanId, traceFlags: 1, isRemote: true as const };
    const kind = span.kind === 'server' ? 1 : 2;
    this.inputs.sink.push(new FinishedSpan(name, kind, span, parent, hrTime(span.startedAt), hrTime(performance.now()), attributes, status, this.resource, this.scope));
  }

  /**
   * The error a span reports, as OpenTelemetry's HTTP and gRPC conventions say: a CLIENT span fails on 4xx and 5xx
   * and any gRPC code but OK, a SERVER span on 5xx and the gRPC codes that are the server's fault; a reset always.
   */
  private failed(kind: SpanKind, end: SpanEnd): string | undefined {
    if (end.grpcStatus !== '' && end.grpcStatus !== '0' && (kind === 'client' || GRPC_SERVER_ERRORS.has(end.grpcStatus))) return end.grpcStatus;
    if (end.status >= 500 || (kind === 'client' && end.status >= 400)) return String(end.status);
    // A 4xx a server answered on purpose is no failure of the server's; a response cut short is, either side.
    return end.status < 400 && end.error !== undefined ? 'reset' : undefined;
  }

  /** `bytes` random bytes as lowercase hex. */
  private id(bytes: 8 | 16): string {
    if (this.offset + bytes > ID_POOL_BYTES) {
      (this.inputs.randomBytes ?? randomFillSync)(this.pool);
      this.offset = 0;
    }
    const id = this.pool.toString('hex', this.offset, this.offset + bytes);
    this.offset += bytes;
    return id;
  }
}

/** performance.now() as OpenTelemetry's HrTime: [seconds, nanoseconds] since the Unix epoch. */
function hrTime(now: number): [number, number] {
  const ms = performance.timeOrigin + now;
  const s = Math.floor(ms / 1000);
  return [s, Math.floor((ms - s * 1000) * 1e6)];
}
