// What a tap streams (tap.proto's TapEvent, in protobufjs's object form) and how a finished request or connection
// becomes events. Built only for a record some open tap matched (hub.ts): nothing here runs while nobody taps.
// Header values named in the redaction list are replaced, their names kept; bodies are never read.
import type { TapHttp, TapPeer } from './match.js';

/** Redacted unless the agent is told otherwise: credentials and the caller's certificate. */
export const DEFAULT_REDACTED_HEADERS: readonly string[] = Object.freeze(['authorization', 'cookie', 'set-cookie', 'proxy-authorization', 'x-forwarded-client-cert']);
export const REDACTED = '[REDACTED]';

export interface TapPeerInfo {
  ip?: string;
  port?: number;
  workload?: string;
  namespace?: string;
  pod?: string;
  identity?: string;
  service?: string;
  /** The name the client gave a destination outside the cluster (TLS SNI, HTTP Host). */
  host?: string;
}

export interface TapHeader {
  name: string;
  value: string;
}

export interface TapAuthz {
  decision: string;
  code?: string;
  action?: string;
  policy?: string;
  rule?: number;
  reason?: string;
}

export interface TapEvent {
  node: string;
  /** '' on a summary, which is the stream's, not a side's. */
  reporter: 'source' | 'destination' | '';
  timestampMs: number;
  /** Set by the stream (session.ts), per observation. */
  id?: number;
  source?: TapPeerInfo;
  destination?: TapPeerInfo;
  security?: string;
  route?: string;
  rule?: string;
  authz?: TapAuthz;
  /** Set by the stream: observations dropped since its previous message. */
  dropped?: number;
  requestInit?: { method: string; authority: string; path: string; headers: TapHeader[]; requestId: string; protocol: string };
  responseInit?: { sinceRequestInitMs: number; httpStatus: number; headers: TapHeader[] };
  responseEnd?: { sinceRequestInitMs: number; httpStatus: number; grpcStatus?: string; requestBytes: number; responseBytes: number; error?: string; rejected?: boolean };
  tcpOpen?: Record<string, never>;
  tcpClose?: { bytesReceived: number; bytesSent: number; durationMs: number; error?: string };
  summary?: { delivered: number; droppedTotal: number; end?: string };
}

/** The events of one request, or of one connection's open or close: admitted or dropped together. */
export type Observation = readonly TapEvent[];

/** Header fields as the L7 path holds them (l7/headers.ts): lowercase names, repeated fields as arrays. */
export type TapHeaders = Readonly<Record<string, string | readonly string[] | undefined>>;

/** What the hub reads of a finished request (l7/record.ts's RequestRecord has all of it). */
export interface TappedRequest {
  readonly direction: 'outbound' | 'inbound';
  readonly req: TapHttp & { readonly headers: TapHeaders; readonly requestId: string; readonly protocol: string; readonly grpc: boolean };
  readonly src: TapPeer;
  readonly dst: TapPeer;
  readonly security: string;
  readonly status: number;
  readonly grpcStatus: string;
  readonly error: string | undefined;
  readonly responseBytes: number;
  readonly destinationService: string | undefined;
  readonly route: { readonly route: string; readonly name: string } | undefined;
  /** The audit line's extra members: `authz` is the authorization decision (security/decisions.ts). */
  readonly extra: Readonly<Record<string, unknown>>;
  /** The response head, when one came from upstream (an answer the agent made has none). */
  readonly responseHeaders: TapHeaders | undefined;
  /** Microseconds from the request head to the response head; -1 when unknown. */
  readonly firstByteUs: number;
}

/** What the hub reads of a proxied connection (proxy/connection.ts's ConnectionRecord). */
export interface TappedConnection {
  readonly fields: {
    readonly direction: 'outbound' | 'inbound';
    readonly src: TapPeer;
    readonly dst: TapPeer & { readonly service?: string | undefined; readonly host?: string | undefined };
    readonly security: string;
    /** The audit line's decision members (`authz`), as on requests. */
    readonly authz?: Readonly<Record<string, unknown>> | undefined;
  };
  readonly bytesIn: number;
  readonly bytesOut: number;
}

/** A request refused before it was parsed whole (l7/record.ts rejectedLine): what its audit line knows. */
export interface RejectedRequest {
  readonly direction: 'outbound' | 'inbound';
  readonly src: TapPeer;
  readonly dst: TapPeer & { readonly service?: string | undefined };
  readonly security: string;
  readonly status: number;
  readonly reason: string;
}

export interface BuildContext {
  readonly node: string;
  /** Lowercase header names whose values are replaced. */
  readonly redact: ReadonlySet<string>;
  /** Wall clock, Unix ms. */
  readonly now: () => number;
}

/** The builders the hub calls for a matched record; injected, so a test can see whether any ran. */
export interface EventBuilders {
  request(ctx: BuildContext, rec: TappedRequest, seconds: number, requestBytes: number): Observation;
  connection(ctx: BuildContext, rec: TappedConnection, phase: 'open' | 'close', durationMs: number, error: string | undefined): Observation;
  rejected(ctx: BuildContext, r: RejectedRequest): Observation;
}

export const eventBuilders: EventBuilders = Object.freeze({ request: requestEvents, connection: connectionEvents, rejected: rejectedEvents });

const reporterOf = (direction: 'outbound' | 'inbound') => (direction === 'outbound' ? 'source' : 'destination');

export function peerInfo(p: TapPeer, service?: string): TapPeerInfo {
  const out: TapPeerInfo = {};
  if (p.ip !== undefined) out.ip = p.ip;
  if (p.port !== undefined) out.port = p.port;
  const w = p.workload;
  if (w) {
    out.workload = w.name;
    out.namespace = w.namespace;
    out.pod = w.pod;
  }
  if (p.principal !== undefined) out.identity = p.principal;
  if (service !== undefined) out.service = service;
  return out;
}

/** Names kept, values of redacted names replaced, a repeated field one entry per value. */
export function redactHeaders(headers: TapHeaders | undefined, redact: ReadonlySet<string>): TapHeader[] {
  const out: TapHeader[] = [];
  if (!headers) return out;
  for (const name in headers) {
    const v = headers[name];
    if (v === undefined) continue;
    const hidden = redact.has(name.toLowerCase());
    if (typeof v === 'string') out.push({ name, value: hidden ? REDACTED : v });
    else for (const one of v) out.push({ name, value: hidden ? REDACTED : one });
  }
  return out;
}

/** The decision members of an audit line (security/decisions.ts decisionFields), as a tap event carries them. */
export function authzOf(members: Readonly<Record<string, unknown>> | undefined): TapAuthz | undefined {
  const a = members?.['authz'] as Record<string, unknown> | undefined;
  if (!a || typeof a['decision'] !== 'string') return undefined;
  const out: TapAuthz = { decision: a['decision'] };
  if (typeof a['code'] === 'string') out.code = a['code'];
  if (typeof a['action'] === 'string') out.action = a['action'];
  if (typeof a['policy'] === 'string') out.policy = a['policy'];
  if (typeof a['rule'] === 'number') out.rule = a['rule'];
  if (typeof a['reason'] === 'string') out.reason = a['reason'];
  return out;
}

function requestEvents(ctx: BuildContext, rec: TappedRequest, seconds: number, requestBytes: number): Observation {
  const end = ctx.now();
  const ms = seconds * 1000;
  const base: TapEvent = {
    node: ctx.node,
    reporter: reporterOf(rec.direction),
    timestampMs: end - ms,
    source: peerInfo(rec.src),
    destination: peerInfo(rec.dst, rec.destinationService),
    security: rec.security,
  };
  if (rec.route) {
    base.route = rec.route.route;
    base.rule = rec.route.name;
  }
  const authz = authzOf(rec.extra);
  if (authz) base.authz = authz;
  const { req } = rec;
  const events: TapEvent[] = [
    {
      ...base,
      requestInit: {
        method: req.method,
        authority: req.authority,
        path: req.path,
        headers: redactHeaders(req.headers, ctx.redact),
        requestId: req.requestId,
        protocol: req.grpc ? 'grpc' : req.protocol,
      },
    },
  ];
  if (rec.status > 0) {
    const ttfb = rec.firstByteUs >= 0 ? rec.firstByteUs / 1000 : 0;
    events.push({
      ...base,
      timestampMs: base.timestampMs + (ttfb || ms),
      responseInit: { sinceRequestInitMs: ttfb, httpStatus: rec.status, headers: redactHeaders(rec.responseHeaders, ctx.redact) },
    });
  }
  const responseEnd: NonNullable<TapEvent['responseEnd']> = { sinceRequestInitMs: ms, httpStatus: rec.status, requestBytes, responseBytes: rec.responseBytes };
  if (rec.grpcStatus) responseEnd.grpcStatus = rec.grpcStatus;
  if (rec.error !== undefined) responseEnd.error = rec.error;
  events.push({ ...base, timestampMs: end, responseEnd });
  return events;
}

function connectionEvents(ctx: BuildContext, rec: TappedConnection, phase: 'open' | 'close', durationMs: number, error: string | undefined): Observation {
  const f = rec.fields;
  const event: TapEvent = {
    node: ctx.node,
    reporter: reporterOf(f.direction),
    timestampMs: ctx.now(),
    source: peerInfo(f.src),
    destination: peerInfo(f.dst, f.dst.service),
    security: f.security,
  };
  if (f.dst.host !== undefined) event.destination!.host = f.dst.host;
  const authz = authzOf(f.authz);
  if (authz) event.authz = authz;
  if (phase === 'open') event.tcpOpen = {};
  else event.tcpClose = { bytesReceived: rec.bytesIn, bytesSent: rec.bytesOut, durationMs, ...(error !== undefined && { error }) };
  return [event];
}

function rejectedEvents(ctx: BuildContext, r: RejectedRequest): Observation {
  return [
    {
      node: ctx.node,
      reporter: reporterOf(r.direction),
      timestampMs: ctx.now(),
      source: peerInfo(r.src),
      destination: peerInfo(r.dst, r.dst.service),
      security: r.security,
      responseEnd: { sinceRequestInitMs: 0, httpStatus: r.status, requestBytes: 0, responseBytes: 0, error: r.reason, rejected: true },
    },
  ];
}
