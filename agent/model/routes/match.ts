// Route compilation and lookup: turns parsed matches into closures at compile time, orders them by the Gateway
// API precedence rules, and finds the rule for a request on the request path without allocating.
import type { ParsedGrpcMatch, ParsedHttpMatch, ValueMatch } from './spec.js';
import type { CompiledRoutes, GrpcRequestInfo, HttpRequestInfo, MatchEntry, MatchedRule } from './types.js';

/** The rule whose match has precedence for this request, or undefined (the router answers 404). */
export function matchRequest(routes: CompiledRoutes, req: HttpRequestInfo): MatchedRule | undefined {
  const entries = routes.http;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    if (e.test(req)) return e.matched;
  }
  return undefined;
}

/** GRPCRoute lookup by service, method and headers; undefined when no rule matches (UNIMPLEMENTED). */
export function matchGrpc(routes: CompiledRoutes, req: GrpcRequestInfo): MatchedRule | undefined {
  const entries = routes.grpc;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    if (e.test(req)) return e.matched;
  }
  return undefined;
}

type StringTest = (value: string) => boolean;

function valueTest(m: ValueMatch): StringTest {
  if (m.regex) {
    const re = m.regex;
    return (v) => re.test(v);
  }
  const want = m.value;
  return (v) => v === want;
}

/** PathPrefix on whole segments: "/v2" matches "/v2", "/v2/" and "/v2/x", never "/v2example"; a trailing "/" is ignored. */
export function pathPrefixTest(prefix: string): StringTest {
  const p = trimTrailingSlash(prefix);
  if (p === '') return () => true;
  const withSlash = `${p}/`;
  return (path) => path === p || path.startsWith(withSlash);
}

export function trimTrailingSlash(path: string): string {
  let end = path.length;
  while (end > 0 && path.charCodeAt(end - 1) === 47 /* / */) end--;
  return path.slice(0, end);
}

function pathTest(m: ParsedHttpMatch): StringTest {
  const { type, value, regex } = m.path;
  if (type === 'Exact') return (path) => path === value;
  if (type === 'RegularExpression' && regex) return (path) => regex.test(path);
  return pathPrefixTest(value);
}

function queryFirst(query: HttpRequestInfo['query'], name: string): string | undefined {
  if (query instanceof URLSearchParams) return query.get(name) ?? undefined;
  return (query as Readonly<Record<string, readonly string[] | undefined>>)[name]?.[0];
}

export function compileHttpMatch(m: ParsedHttpMatch): (req: HttpRequestInfo) => boolean {
  const path = pathTest(m);
  const method = m.method;
  const headerNames = m.headers.map((h) => h.name);
  const headerTests = m.headers.map(valueTest);
  // Query parameters: the spec recommends the first value when a parameter repeats.
  const queryNames = m.queryParams.map((q) => q.name);
  const queryTests = m.queryParams.map(valueTest);
  return (req) => {
    if (method !== undefined && req.method !== method) return false;
    if (!path(req.path)) return false;
    for (let i = 0; i < headerNames.length; i++) {
      const v = req.headers(headerNames[i]!);
      if (v === undefined || !headerTests[i]!(v)) return false;
    }
    for (let i = 0; i < queryNames.length; i++) {
      const v = queryFirst(req.query, queryNames[i]!);
      if (v === undefined || !queryTests[i]!(v)) return false;
    }
    return true;
  };
}

export function compileGrpcMatch(m: ParsedGrpcMatch): (req: GrpcRequestInfo) => boolean {
  const mm = m.method;
  let service: StringTest | undefined;
  let method: StringTest | undefined;
  if (mm) {
    if (mm.type === 'RegularExpression') {
      const sre = mm.serviceRegex;
      const mre = mm.methodRegex;
      if (sre) service = (v) => sre.test(v);
      if (mre) method = (v) => mre.test(v);
    } else {
      // A leading "." (fully-qualified proto name) names the same service.
      const s = mm.service?.startsWith('.') ? mm.service.slice(1) : mm.service;
      const me = mm.method;
      if (s !== undefined) service = (v) => v === s;
      if (me !== undefined) method = (v) => v === me;
    }
  }
  const headerNames = m.headers.map((h) => h.name);
  const headerTests = m.headers.map(valueTest);
  return (req) => {
    if (service && !service(req.service)) return false;
    if (method && !method(req.method)) return false;
    for (let i = 0; i < headerNames.length; i++) {
      const v = req.headers(headerNames[i]!);
      if (v === undefined || !headerTests[i]!(v)) return false;
    }
    return true;
  };
}

/**
 * Precedence of one HTTP match, compared element by element, larger first:
 * path kind (Exact > PathPrefix > RegularExpression; the spec leaves regex placement to implementations,
 * this is Istio's order), path length, method set, number of header matches, number of query matches.
 */
export function httpMatchRank(m: ParsedHttpMatch): readonly number[] {
  const kind = m.path.type === 'Exact' ? 3 : m.path.type === 'PathPrefix' ? 2 : 1;
  const len = m.path.type === 'PathPrefix' ? trimTrailingSlash(m.path.value).length : m.path.value.length;
  return [kind, len, m.method ? 1 : 0, m.headers.length, m.queryParams.length];
}

/**
 * Precedence of one gRPC match: characters in the matching service, then method, then header matches.
 * Regular expressions count as zero characters, so exact names win over patterns (implementation-specific).
 */
export function grpcMatchRank(m: ParsedGrpcMatch): readonly number[] {
  const exact = m.method?.type !== 'RegularExpression';
  const service = exact ? (m.method?.service?.replace(/^\./, '').length ?? 0) : 0;
  const method = exact ? (m.method?.method?.length ?? 0) : 0;
  return [service, method, m.headers.length];
}

/** One match of one rule of one route, with everything the ordering needs. */
export interface RankedEntry<Req> {
  readonly rank: readonly number[];
  readonly createdMs: number;
  readonly routeKey: string;
  readonly ruleIndex: number;
  readonly matchIndex: number;
  readonly entry: MatchEntry<Req>;
}

/** Order: rank (larger first), then the oldest route, then namespace/name, then rule order, then match order. */
export function compareRanked<Req>(a: RankedEntry<Req>, b: RankedEntry<Req>): number {
  for (let i = 0; i < a.rank.length; i++) {
    const d = (b.rank[i] ?? 0) - (a.rank[i] ?? 0);
    if (d !== 0) return d;
  }
  if (a.createdMs !== b.createdMs) {
    if (a.createdMs === Number.POSITIVE_INFINITY) return 1;
    if (b.createdMs === Number.POSITIVE_INFINITY) return -1;
    return a.createdMs - b.createdMs;
  }
  if (a.routeKey !== b.routeKey) return a.routeKey < b.routeKey ? -1 : 1;
  if (a.ruleIndex !== b.ruleIndex) return a.ruleIndex - b.ruleIndex;
  return a.matchIndex - b.matchIndex;
}

export function describeHttpMatch(m: ParsedHttpMatch): string {
  const parts = [`${m.path.type} ${m.path.value}`];
  if (m.method) parts.push(`method ${m.method}`);
  for (const h of m.headers) parts.push(`header ${h.name}${h.type === 'Exact' ? '=' : '~'}${h.value}`);
  for (const q of m.queryParams) parts.push(`query ${q.name}${q.type === 'Exact' ? '=' : '~'}${q.value}`);
  return parts.join(', ');
}

export function describeGrpcMatch(m: ParsedGrpcMatch): string {
  const parts: string[] = [];
  if (m.method) {
    const op = m.method.type === 'Exact' ? '=' : '~';
    if (m.method.service !== undefined) parts.push(`service${op}${m.method.service}`);
    if (m.method.method !== undefined) parts.push(`method${op}${m.method.method}`);
  }
  for (const h of m.headers) parts.push(`header ${h.name}${h.type === 'Exact' ? '=' : '~'}${h.value}`);
  return parts.length ? parts.join(', ') : 'any';
}
