// Trace context on the L7 path: W3C `traceparent`/`tracestate` and B3 (single `b3` header and the multi-header
// `x-b3-*` form) read off a request's headers, and written back for the next hop. A value that does not parse is
// ignored and never passed on: the headers the next hop gets are always the agent's own, well-formed ones.

/** Header fields as the L7 path carries them (l7/headers.ts): lowercase names, repeated fields as arrays. */
export type Headers = Record<string, string | string[]>;

/** A caller's span, as its headers name it. `sampled` undefined: B3 left the decision to us. */
export interface ParentContext {
  readonly traceId: string;
  readonly spanId: string;
  readonly sampled: boolean | undefined;
  /** W3C tracestate, passed on as it came (only when valid and only with a valid traceparent). */
  readonly traceState?: string | undefined;
}

/** Which B3 form the caller used, so the next hop gets the same one; `short`: a 64-bit trace id. */
export interface B3Form {
  readonly multi: boolean;
  readonly short: boolean;
}

export interface Extracted {
  readonly parent: ParentContext | undefined;
  readonly b3: B3Form | undefined;
  /** B3 said "do not sample" without naming a trace. */
  readonly deny: boolean;
}

/** The context written for the next hop: this agent's span (or, unsampled, the id it stands for) as the parent. */
export interface OutgoingContext {
  readonly traceId: string;
  readonly spanId: string;
  readonly sampled: boolean;
  readonly traceState?: string | undefined;
  /** The caller's span, for B3's parent span id. */
  readonly parentSpanId?: string | undefined;
}

/** Every header a context travels in: all are dropped before the agent writes its own. */
export const TRACE_HEADERS: readonly string[] = Object.freeze(['traceparent', 'tracestate', 'b3', 'x-b3-traceid', 'x-b3-spanid', 'x-b3-parentspanid', 'x-b3-sampled', 'x-b3-flags']);

const HEX32 = /^[0-9a-f]{32}$/;
const HEX16 = /^[0-9a-f]{16}$/;
const ZERO32 = '0'.repeat(32);
const ZERO16 = '0'.repeat(16);

/** One value of a header that must appear once: a repeated field is as good as none. */
function single(headers: Headers, name: string): string | undefined {
  const v = headers[name];
  return typeof v === 'string' ? v : undefined;
}

/**
 * W3C Trace Context `traceparent` (version 00, and later versions read as 00 by their first four fields, as the
 * specification asks): lowercase hex, neither id all zeros, version ff invalid.
 */
export function parseTraceparent(value: string): { traceId: string; spanId: string; sampled: boolean } | undefined {
  const v = value.trim();
  if (v.length < 55) return undefined;
  const version = v.slice(0, 2);
  if (!/^[0-9a-f]{2}$/.test(version) || version === 'ff') return undefined;
  if (version === '00' ? v.length !== 55 : v.length > 55 && v[55] !== '-') return undefined;
  if (v[2] !== '-' || v[35] !== '-' || v[52] !== '-') return undefined;
  const traceId = v.slice(3, 35);
  const spanId = v.slice(36, 52);
  const flags = v.slice(53, 55);
  if (!HEX32.test(traceId) || !HEX16.test(spanId) || !/^[0-9a-f]{2}$/.test(flags)) return undefined;
  if (traceId === ZERO32 || spanId === ZERO16) return undefined;
  return { traceId, spanId, sampled: (parseInt(flags, 16) & 1) === 1 };
}

/** W3C `tracestate`: at most 32 list members `key=value` within 512 characters; anything else is dropped whole. */
export function parseTracestate(value: string | string[] | undefined): string | undefined {
  if (value === undefined) return undefined;
  const joined = Array.isArray(value) ? value.join(',') : value;
  if (joined.length > 512) return undefined;
  const members = joined.split(',').map((m) => m.trim()).filter((m) => m.length > 0);
  if (members.length === 0 || members.length > 32) return undefined;
  const keys = new Set<string>();
  for (const m of members) {
    const eq = m.indexOf('=');
    if (eq <= 0) return undefined;
    const key = m.slice(0, eq);
    const val = m.slice(eq + 1);
    if (!/^(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})$/.test(key)) return undefined;
    if (!/^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$/.test(val)) return undefined;
    if (keys.has(key)) return undefined;
    keys.add(key);
  }
  return members.join(',');
}

/** A B3 trace id: 16 or 32 lowercase hex, not all zeros; a 64-bit one is widened to 128 bits as W3C needs. */
function b3TraceId(v: string): { id: string; short: boolean } | undefined {
  if (HEX32.test(v)) return v === ZERO32 ? undefined : { id: v, short: false };
  if (HEX16.test(v)) return v === ZERO16 ? undefined : { id: ZERO16 + v, short: true };
  return undefined;
}

/** B3's sampling state: '1'/'true' sampled, '0'/'false' not, 'd' (debug) sampled; anything else invalid. */
function b3Sampled(v: string): boolean | 'invalid' {
  if (v === '1' || v === 'd' || v === 'true') return true;
  if (v === '0' || v === 'false') return false;
  return 'invalid';
}

/** `b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]`; a lone `0` or `1`/`d` carries a decision and no ids. */
export function parseB3Single(value: string): { traceId: string; spanId: string; sampled: boolean | undefined; short: boolean } | 'deny' | undefined {
  const v = value.trim();
  if (v === '0') return 'deny';
  const parts = v.split('-');
  if (parts.length < 2 || parts.length > 4) return undefined;
  const trace = b3TraceId(parts[0]!);
  const spanId = parts[1]!;
  if (!trace || !HEX16.test(spanId) || spanId === ZERO16) return undefined;
  let sampled: boolean | undefined;
  if (parts.length >= 3) {
    const s = b3Sampled(parts[2]!);
    if (s === 'invalid') return undefined;
    sampled = s;
  }
  if (parts.length === 4 && !HEX16.test(parts[3]!)) return undefined;
  return { traceId: trace.id, spanId, sampled, short: trace.short };
}

/** The `x-b3-*` headers: trace and span ids both or neither; X-B3-Flags: 1 (debug) means sampled. */
export function parseB3Multi(headers: Headers): { traceId: string; spanId: string; sampled: boolean | undefined; short: boolean } | 'deny' | undefined {
  const traceId = single(headers, 'x-b3-traceid');
  const spanId = single(headers, 'x-b3-spanid');
  const sampledText = single(headers, 'x-b3-sampled');
  const debug = single(headers, 'x-b3-flags') === '1';
  let sampled: boolean | undefined = debug ? true : undefined;
  if (!debug && sampledText !== undefined) {
    const s = b3Sampled(sampledText.trim().toLowerCase());
    if (s === 'invalid') return undefined;
    sampled = s;
  }
  if (traceId === undefined || spanId === undefined) return sampled === false ? 'deny' : undefined;
  const trace = b3TraceId(traceId.trim());
  const span = spanId.trim();
  if (!trace || !HEX16.test(span) || span === ZERO16) return undefined;
  const parent = single(headers, 'x-b3-parentspanid');
  if (parent !== undefined && !HEX16.test(parent.trim())) return undefined;
  return { traceId: trace.id, spanId: span, sampled, short: trace.short };
}

/**
 * The caller's context: W3C first, then B3 single, then B3 multi (the first valid one wins, as OpenTelemetry's
 * composite propagator reads them). B3's "do not sample" without ids (`b3: 0`, `x-b3-sampled: 0` alone) is a
 * decision with no parent.
 */
export function extract(headers: Headers): Extracted {
  const b3Single = single(headers, 'b3');
  const s = b3Single !== undefined ? parseB3Single(b3Single) : undefined;
  const m = s === undefined && (headers['x-b3-traceid'] !== undefined || headers['x-b3-sampled'] !== undefined) ? parseB3Multi(headers) : undefined;
  const b3Parsed = s ?? m;
  const b3 = b3Parsed === undefined ? undefined : { multi: s === undefined, short: b3Parsed !== 'deny' && b3Parsed.short };
  const tp = single(headers, 'traceparent');
  const w3c = tp !== undefined ? parseTraceparent(tp) : undefined;
  if (w3c) return { parent: { ...w3c, traceState: parseTracestate(headers.tracestate) }, b3, deny: false };
  if (b3Parsed === 'deny') return { parent: undefined, b3, deny: true };
  if (b3Parsed) return { parent: { traceId: b3Parsed.traceId, spanId: b3Parsed.spanId, sampled: b3Parsed.sampled }, b3, deny: false };
  return { parent: undefined, b3, deny: false };
}

/**
 * Writes the context for the next hop: every trace header the caller sent is dropped first (so nothing malformed is
 * passed on), then `traceparent` (and the caller's valid `tracestate`), and B3 in the form the caller used.
 */
export function inject(headers: Headers, ctx: OutgoingContext, b3: B3Form | undefined): void {
  for (const h of TRACE_HEADERS) if (headers[h] !== undefined) delete headers[h];
  headers.traceparent = `00-${ctx.traceId}-${ctx.spanId}-${ctx.sampled ? '01' : '00'}`;
  if (ctx.traceState) headers.tracestate = ctx.traceState;
  if (!b3) return;
  const traceId = b3.short && ctx.traceId.startsWith(ZERO16) ? ctx.traceId.slice(16) : ctx.traceId;
  if (b3.multi) {
    headers['x-b3-traceid'] = traceId;
    headers['x-b3-spanid'] = ctx.spanId;
    if (ctx.parentSpanId) headers['x-b3-parentspanid'] = ctx.parentSpanId;
    headers['x-b3-sampled'] = ctx.sampled ? '1' : '0';
  } else {
    headers.b3 = `${traceId}-${ctx.spanId}-${ctx.sampled ? '1' : '0'}${ctx.parentSpanId ? `-${ctx.parentSpanId}` : ''}`;
  }
}
