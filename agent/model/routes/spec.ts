// Route compilation, first step: reads an HTTPRoute/GRPCRoute/FaultInjection spec (untrusted: from a file or
// the API server) into typed values, enforcing the Gateway API's schema and CEL rules. Every problem names
// its field (spec.rules[1].matches[0].path.value) so the error says exactly what to fix.
import { parseFaultDuration, parseGatewayDuration } from './duration.js';
import { compileRe2 } from './regex.js';
import type {
  FaultAbort,
  HeaderModifier,
  HeaderValue,
  ParentReference,
  PathModifier,
  RedirectStatus,
  RequestRedirect,
  RetryPolicy,
  RouteKind,
  RouteTimeouts,
  UrlRewrite,
} from './types.js';

/** Reason the route is not accepted, as Gateway API names it. */
export type IssueReason = 'UnsupportedValue' | 'IncompatibleFilters';

export interface Issue {
  readonly path: string;
  readonly message: string;
  readonly reason: IssueReason;
}

export interface ParsedParentRef extends ParentReference {
  readonly path: string;
}

export interface ParsedObjectRef {
  readonly group: string;
  readonly kind: string;
  readonly name: string;
  readonly namespace?: string;
  readonly port?: number;
  readonly path: string;
}

export interface ParsedBackendRef extends ParsedObjectRef {
  readonly weight: number;
  readonly filters: readonly ParsedFilter[];
}

export type ParsedFilter =
  | { readonly type: 'RequestHeaderModifier' | 'ResponseHeaderModifier'; readonly modifier: HeaderModifier; readonly path: string }
  | { readonly type: 'URLRewrite'; readonly rewrite: UrlRewrite; readonly path: string }
  | { readonly type: 'RequestRedirect'; readonly redirect: RequestRedirect; readonly path: string }
  | { readonly type: 'RequestMirror'; readonly backendRef: ParsedObjectRef; readonly percent: number; readonly path: string }
  | { readonly type: 'ExtensionRef'; readonly group: string; readonly kind: string; readonly name: string; readonly path: string };

export interface ValueMatch {
  /** Lowercased for headers; as written for query parameters (their names are case-sensitive). */
  readonly name: string;
  readonly type: 'Exact' | 'RegularExpression';
  readonly value: string;
  readonly regex?: RegExp;
}

export interface ParsedHttpMatch {
  readonly path: { readonly type: 'Exact' | 'PathPrefix' | 'RegularExpression'; readonly value: string; readonly regex?: RegExp };
  readonly method?: string;
  readonly headers: readonly ValueMatch[];
  readonly queryParams: readonly ValueMatch[];
}

export interface ParsedGrpcMatch {
  readonly method?: {
    readonly type: 'Exact' | 'RegularExpression';
    readonly service?: string;
    readonly method?: string;
    readonly serviceRegex?: RegExp;
    readonly methodRegex?: RegExp;
  };
  readonly headers: readonly ValueMatch[];
}

export interface ParsedRule {
  readonly index: number;
  readonly name?: string;
  /** HTTPRoute: the matches, defaulted (no matches = PathPrefix "/"). */
  readonly http: readonly ParsedHttpMatch[];
  /** GRPCRoute: the matches; empty matches every call. */
  readonly grpc: readonly ParsedGrpcMatch[];
  readonly filters: readonly ParsedFilter[];
  readonly backendRefs: readonly ParsedBackendRef[];
  readonly timeouts: RouteTimeouts;
  readonly retry?: RetryPolicy;
}

export interface ParsedRoute {
  readonly kind: RouteKind;
  readonly namespace: string;
  readonly name: string;
  /** namespace/name */
  readonly key: string;
  readonly uid?: string;
  readonly generation?: number;
  /** creationTimestamp in ms; +Infinity when absent (objects from files), so such routes sort last by age. */
  readonly createdMs: number;
  readonly parentRefs: readonly ParsedParentRef[];
  /** spec.hostnames: unused for Service parents (GEP-1294); for an EgressNetwork parent, the declared hosts it takes. */
  readonly hostnames: readonly string[];
  readonly rules: readonly ParsedRule[];
}

export type ParseResult =
  | { readonly ok: true; readonly route: ParsedRoute }
  | { readonly ok: false; readonly issues: readonly Issue[]; readonly parentRefs: readonly ParsedParentRef[] };

export interface RouteObjectLike {
  readonly kind: string;
  readonly metadata: {
    readonly name: string;
    readonly namespace?: string;
    readonly uid?: string;
    readonly generation?: unknown;
    readonly creationTimestamp?: unknown;
  };
  readonly spec: Record<string, unknown>;
}

// Patterns from the Gateway API types (apis/v1).
const HEADER_NAME = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;
const HEADER_VALUE = /^[!-~]+([\t ]?[!-~]+)*$/;
const PATH_CHARS = /^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$/;
const HOSTNAME = /^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const PRECISE_HOSTNAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const GROUP = /^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const KIND = /^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$/;
const NAMESPACE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const SECTION_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const GRPC_SERVICE = /^\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$/i;
const GRPC_METHOD = /^[A-Za-z_][A-Za-z_0-9]*$/;
const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'] as const;
const REDIRECT_CODES: readonly RedirectStatus[] = [301, 302, 303, 307, 308];

export const TRELLIS_TRAFFIC_GROUP = 'traffic.trellis.dev';

/** gRPC status names (google.rpc.Code) to their numbers, for FaultInjection aborts. */
export const GRPC_STATUS_CODES: Readonly<Record<string, number>> = Object.freeze({
  OK: 0, CANCELLED: 1, UNKNOWN: 2, INVALID_ARGUMENT: 3, DEADLINE_EXCEEDED: 4, NOT_FOUND: 5, ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7, RESOURCE_EXHAUSTED: 8, FAILED_PRECONDITION: 9, ABORTED: 10, OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12, INTERNAL: 13, UNAVAILABLE: 14, DATA_LOSS: 15, UNAUTHENTICATED: 16,
});

type Obj = Record<string, unknown>;

/** Collects problems with their field paths; the readers return undefined for a value they refused. */
class Reader {
  readonly issues: Issue[] = [];

  fail(path: string, message: string, reason: IssueReason = 'UnsupportedValue'): undefined {
    this.issues.push({ path, message, reason });
    return undefined;
  }

  object(v: unknown, path: string, allowed: readonly string[], unsupported: Readonly<Record<string, string>> = {}): Obj | undefined {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return this.fail(path, 'must be an object');
    const o = v as Obj;
    for (const key of Object.keys(o)) {
      if (o[key] === undefined || o[key] === null) continue;
      if (key in unsupported) this.fail(`${path}.${key}`, unsupported[key]!);
      else if (!allowed.includes(key)) this.fail(`${path}.${key}`, `unknown field (known here: ${allowed.join(', ')})`);
    }
    return o;
  }

  string(
    o: Obj,
    key: string,
    path: string,
    opts: { required?: boolean; min?: number; max?: number; pattern?: RegExp; patternText?: string; oneOf?: readonly string[] } = {},
  ): string | undefined {
    const v = o[key];
    const p = `${path}.${key}`;
    if (v === undefined || v === null) return opts.required ? this.fail(p, 'is required') : undefined;
    if (typeof v !== 'string') return this.fail(p, 'must be a string');
    if (opts.oneOf && !opts.oneOf.includes(v)) return this.fail(p, `must be one of ${opts.oneOf.join(', ')} (got "${v}")`);
    if (opts.min !== undefined && v.length < opts.min) return this.fail(p, opts.min === 1 ? 'must not be empty' : `must be at least ${opts.min} characters`);
    if (opts.max !== undefined && v.length > opts.max) return this.fail(p, `must be at most ${opts.max} characters`);
    if (opts.pattern && !opts.pattern.test(v)) return this.fail(p, `must match ${opts.patternText ?? opts.pattern.source} (got "${v}")`);
    return v;
  }

  int(o: Obj, key: string, path: string, opts: { required?: boolean; min: number; max: number }): number | undefined {
    const v = o[key];
    const p = `${path}.${key}`;
    if (v === undefined || v === null) return opts.required ? this.fail(p, 'is required') : undefined;
    if (typeof v !== 'number' || !Number.isInteger(v)) return this.fail(p, 'must be an integer');
    if (v < opts.min || v > opts.max) return this.fail(p, `must be between ${opts.min} and ${opts.max} (got ${v})`);
    return v;
  }

  array(o: Obj, key: string, path: string, max: number): readonly unknown[] {
    const v = o[key];
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) {
      this.fail(`${path}.${key}`, 'must be a list');
      return [];
    }
    if (v.length > max) this.fail(`${path}.${key}`, `must have at most ${max} entries (has ${v.length})`);
    return v;
  }

  duration(o: Obj, key: string, path: string): number | undefined {
    const v = this.string(o, key, path);
    if (v === undefined) return undefined;
    const ms = parseGatewayDuration(v);
    if (ms === undefined) return this.fail(`${path}.${key}`, `must be a Gateway API duration like "10s", "1m30s" or "500ms" (GEP-2257), got "${v}"`);
    return ms;
  }

  regex(pattern: string, path: string): RegExp | undefined {
    const re = compileRe2(pattern);
    return typeof re === 'string' ? this.fail(path, re) : re;
  }
}

export function parseRoute(obj: RouteObjectLike): ParseResult {
  const r = new Reader();
  const kind = obj.kind as RouteKind;
  const namespace = obj.metadata.namespace ?? 'default';
  const spec = r.object(obj.spec, 'spec', ['parentRefs', 'hostnames', 'rules']) ?? {};
  const parentRefs = parseParentRefs(r, spec);
  const hostnames: string[] = [];
  for (const [i, h] of r.array(spec, 'hostnames', 'spec', 16).entries()) {
    // Validated so typos surface; used only by EgressNetwork parents: GEP-1294 says mesh routes SHOULD NOT act on
    // hostnames of Services.
    if (typeof h !== 'string' || h.length > 253 || !HOSTNAME.test(h)) r.fail(`spec.hostnames[${i}]`, 'must be a hostname (RFC 1123, optionally prefixed with "*.")');
    else hostnames.push(h);
  }
  const rawRules = r.array(spec, 'rules', 'spec', 16);
  const rules: ParsedRule[] = [];
  const names = new Set<string>();
  let totalMatches = 0;
  rawRules.forEach((raw, i) => {
    const rule = kind === 'GRPCRoute' ? parseGrpcRule(r, raw, i) : parseHttpRule(r, raw, i);
    if (!rule) return;
    totalMatches += kind === 'GRPCRoute' ? rule.grpc.length : rule.http.length;
    if (rule.name !== undefined) {
      if (names.has(rule.name)) r.fail(`spec.rules[${i}].name`, `rule name "${rule.name}" is used by another rule of this route; names must be unique`);
      names.add(rule.name);
    }
    rules.push(rule);
  });
  if (rawRules.length === 0 && kind === 'HTTPRoute') {
    // The API server defaults an absent rules list to one rule matching PathPrefix "/" with no backends.
    rules.push(defaultHttpRule());
  }
  if (totalMatches > 128) r.fail('spec.rules', `the rules have ${totalMatches} matches in all; at most 128 are allowed`);
  if (r.issues.length > 0) return { ok: false, issues: r.issues, parentRefs };
  return {
    ok: true,
    route: {
      kind,
      namespace,
      name: obj.metadata.name,
      key: `${namespace}/${obj.metadata.name}`,
      uid: obj.metadata.uid,
      generation: typeof obj.metadata.generation === 'number' ? obj.metadata.generation : undefined,
      createdMs: creationMs(obj.metadata.creationTimestamp),
      parentRefs,
      hostnames,
      rules,
    },
  };
}

function creationMs(ts: unknown): number {
  if (typeof ts === 'string') {
    const ms = Date.parse(ts);
    if (Number.isFinite(ms)) return ms;
  }
  if (ts instanceof Date && Number.isFinite(ts.getTime())) return ts.getTime();
  return Number.POSITIVE_INFINITY;
}

function defaultHttpRule(): ParsedRule {
  return { index: 0, http: [{ path: { type: 'PathPrefix', value: '/' }, headers: [], queryParams: [] }], grpc: [], filters: [], backendRefs: [], timeouts: {} };
}

function parseParentRefs(r: Reader, spec: Obj): ParsedParentRef[] {
  const out: ParsedParentRef[] = [];
  const seen = new Set<string>();
  r.array(spec, 'parentRefs', 'spec', 32).forEach((raw, i) => {
    const path = `spec.parentRefs[${i}]`;
    const o = r.object(raw, path, ['group', 'kind', 'namespace', 'name', 'sectionName', 'port']);
    if (!o) return;
    // Gateway API defaults: group gateway.networking.k8s.io, kind Gateway. A Service parent must say group "".
    const group = r.string(o, 'group', path, { max: 253, pattern: GROUP, patternText: 'a DNS subdomain or ""' }) ?? 'gateway.networking.k8s.io';
    const kind = r.string(o, 'kind', path, { min: 1, max: 63, pattern: KIND }) ?? 'Gateway';
    const namespace = r.string(o, 'namespace', path, { min: 1, max: 63, pattern: NAMESPACE, patternText: 'a DNS-1123 label' });
    const name = r.string(o, 'name', path, { required: true, min: 1, max: 253 });
    const sectionName = r.string(o, 'sectionName', path, { min: 1, max: 253, pattern: SECTION_NAME, patternText: 'a DNS subdomain' });
    const port = r.int(o, 'port', path, { min: 1, max: 65535 });
    if (name === undefined) return;
    const id = `${group}/${kind}/${namespace ?? ''}/${name}/${sectionName ?? ''}/${port ?? ''}`;
    if (seen.has(id)) r.fail(path, 'duplicates another parentRef (set sectionName or port to tell them apart)');
    seen.add(id);
    out.push({ group, kind, namespace, name, sectionName, port, path });
  });
  return out;
}

const HTTP_RULE_FIELDS = ['name', 'matches', 'filters', 'backendRefs', 'timeouts', 'retry'];
const GRPC_RULE_FIELDS = ['name', 'matches', 'filters', 'backendRefs'];
const UNSUPPORTED_RULE_FIELDS = { sessionPersistence: 'session persistence is not supported by Trellis; remove the field' };

function parseHttpRule(r: Reader, raw: unknown, index: number): ParsedRule | undefined {
  const path = `spec.rules[${index}]`;
  const o = r.object(raw, path, HTTP_RULE_FIELDS, UNSUPPORTED_RULE_FIELDS);
  if (!o) return undefined;
  const name = r.string(o, 'name', path, { min: 1, max: 253, pattern: SECTION_NAME, patternText: 'a DNS subdomain' });
  const rawMatches = r.array(o, 'matches', path, 64);
  const http = rawMatches.length === 0
    ? [{ path: { type: 'PathPrefix' as const, value: '/' }, headers: [], queryParams: [] }]
    : rawMatches.map((m, j) => parseHttpMatch(r, m, `${path}.matches[${j}]`)).filter((m): m is ParsedHttpMatch => m !== undefined);
  const filters = parseFilters(r, o, path, 'HTTPRoute', 'rule');
  const backendRefs = parseBackendRefs(r, o, path, 'HTTPRoute');
  checkRuleFilters(r, path, filters, http, backendRefs.length);
  const timeouts = parseTimeouts(r, o, path);
  const retry = parseRetry(r, o, path);
  return { index, name, http, grpc: [], filters, backendRefs, timeouts, retry };
}

function parseGrpcRule(r: Reader, raw: unknown, index: number): ParsedRule | undefined {
  const path = `spec.rules[${index}]`;
  const o = r.object(raw, path, GRPC_RULE_FIELDS, {
    ...UNSUPPORTED_RULE_FIELDS,
    timeouts: 'GRPCRoute rules have no timeouts in gateway.networking.k8s.io/v1; use an HTTPRoute for this port to set them',
    retry: 'GRPCRoute rules have no retry in gateway.networking.k8s.io/v1; use an HTTPRoute for this port to set it',
  });
  if (!o) return undefined;
  const name = r.string(o, 'name', path, { min: 1, max: 253, pattern: SECTION_NAME, patternText: 'a DNS subdomain' });
  const grpc = r.array(o, 'matches', path, 8)
    .map((m, j) => parseGrpcMatch(r, m, `${path}.matches[${j}]`))
    .filter((m): m is ParsedGrpcMatch => m !== undefined);
  const filters = parseFilters(r, o, path, 'GRPCRoute', 'rule');
  const backendRefs = parseBackendRefs(r, o, path, 'GRPCRoute');
  checkFilterCounts(r, path, filters);
  return { index, name, http: [], grpc, filters, backendRefs, timeouts: {} };
}

function parseHttpMatch(r: Reader, raw: unknown, path: string): ParsedHttpMatch | undefined {
  const o = r.object(raw, path, ['path', 'headers', 'queryParams', 'method']);
  if (!o) return undefined;
  let pathMatch: ParsedHttpMatch['path'] = { type: 'PathPrefix', value: '/' };
  if (o.path !== undefined && o.path !== null) {
    const pp = `${path}.path`;
    const po = r.object(o.path, pp, ['type', 'value']);
    if (po) {
      const type = (r.string(po, 'type', pp, { oneOf: ['Exact', 'PathPrefix', 'RegularExpression'] }) ?? 'PathPrefix') as ParsedHttpMatch['path']['type'];
      const value = r.string(po, 'value', pp, { min: 1, max: 1024 }) ?? '/';
      if (type === 'RegularExpression') {
        const regex = r.regex(value, `${pp}.value`);
        if (regex) pathMatch = { type, value, regex };
      } else if (checkPathValue(r, value, `${pp}.value`)) {
        pathMatch = { type, value };
      }
    }
  }
  const method = r.string(o, 'method', path, { oneOf: HTTP_METHODS });
  const headers = parseValueMatches(r, o, 'headers', path, true);
  const queryParams = parseValueMatches(r, o, 'queryParams', path, false);
  return { path: pathMatch, method, headers, queryParams };
}

function checkPathValue(r: Reader, value: string, path: string): boolean {
  const problem = !value.startsWith('/') ? 'must start with "/"'
    : value.includes('//') ? 'must not contain "//"'
    : value.includes('/./') || value.endsWith('/.') ? 'must not contain a "." segment'
    : value.includes('/../') || value.endsWith('/..') ? 'must not contain a ".." segment'
    : /%2f/i.test(value) ? 'must not contain an encoded "/" (%2F)'
    : value.includes('#') ? 'must not contain "#"'
    : !PATH_CHARS.test(value) ? 'must contain only URL path characters (letters, digits, -._~!$&\'()*+,;=:@/ and %XX escapes)'
    : undefined;
  if (problem) r.fail(path, problem);
  return problem === undefined;
}

function parseValueMatches(r: Reader, o: Obj, key: 'headers' | 'queryParams', path: string, header: boolean): ValueMatch[] {
  const out: ValueMatch[] = [];
  const seen = new Set<string>();
  r.array(o, key, path, 16).forEach((raw, i) => {
    const p = `${path}.${key}[${i}]`;
    const m = r.object(raw, p, ['type', 'name', 'value']);
    if (!m) return;
    const type = (r.string(m, 'type', p, { oneOf: ['Exact', 'RegularExpression'] }) ?? 'Exact') as ValueMatch['type'];
    const rawName = r.string(m, 'name', p, { required: true, min: 1, max: 256, pattern: HEADER_NAME, patternText: 'an HTTP token' });
    const value = r.string(m, 'value', p, { required: true, min: 1, max: header ? 4096 : 1024 });
    if (rawName === undefined || value === undefined) return;
    const name = header ? rawName.toLowerCase() : rawName;
    // The spec: of several entries with one (equivalent) name only the first counts; the rest are ignored.
    if (seen.has(name)) return;
    seen.add(name);
    if (type === 'RegularExpression') {
      const regex = r.regex(value, `${p}.value`);
      if (regex) out.push({ name, type, value, regex });
    } else {
      out.push({ name, type, value });
    }
  });
  return out;
}

function parseGrpcMatch(r: Reader, raw: unknown, path: string): ParsedGrpcMatch | undefined {
  const o = r.object(raw, path, ['method', 'headers']);
  if (!o) return undefined;
  let method: ParsedGrpcMatch['method'];
  if (o.method !== undefined && o.method !== null) {
    const mp = `${path}.method`;
    const mo = r.object(o.method, mp, ['type', 'service', 'method']);
    if (mo) {
      const type = (r.string(mo, 'type', mp, { oneOf: ['Exact', 'RegularExpression'] }) ?? 'Exact') as 'Exact' | 'RegularExpression';
      const exact = type === 'Exact';
      const service = r.string(mo, 'service', mp, {
        min: 1, max: 1024, ...(exact ? { pattern: GRPC_SERVICE, patternText: 'a gRPC service name like "pkg.Service"' } : {}),
      });
      const name = r.string(mo, 'method', mp, {
        min: 1, max: 1024, ...(exact ? { pattern: GRPC_METHOD, patternText: 'a gRPC method name like "GetThing"' } : {}),
      });
      if (service === undefined && name === undefined && !r.issues.some((i) => i.path.startsWith(mp))) {
        r.fail(mp, 'one or both of service and method must be set');
      }
      method = exact
        ? { type, service, method: name }
        : {
            type,
            service,
            method: name,
            serviceRegex: service === undefined ? undefined : r.regex(service, `${mp}.service`),
            methodRegex: name === undefined ? undefined : r.regex(name, `${mp}.method`),
          };
    }
  }
  return { method, headers: parseValueMatches(r, o, 'headers', path, true) };
}

const FILTER_FIELDS: Record<string, string> = {
  RequestHeaderModifier: 'requestHeaderModifier',
  ResponseHeaderModifier: 'responseHeaderModifier',
  RequestMirror: 'requestMirror',
  RequestRedirect: 'requestRedirect',
  URLRewrite: 'urlRewrite',
  ExtensionRef: 'extensionRef',
  CORS: 'cors',
  ExternalAuth: 'externalAuth',
};

function parseFilters(r: Reader, o: Obj, path: string, kind: RouteKind, level: 'rule' | 'backend'): ParsedFilter[] {
  const out: ParsedFilter[] = [];
  const types = kind === 'GRPCRoute'
    ? ['RequestHeaderModifier', 'ResponseHeaderModifier', 'RequestMirror', 'ExtensionRef']
    : ['RequestHeaderModifier', 'ResponseHeaderModifier', 'RequestMirror', 'RequestRedirect', 'URLRewrite', 'ExtensionRef', 'CORS', 'ExternalAuth'];
  r.array(o, 'filters', path, 16).forEach((raw, i) => {
    const p = `${path}.filters[${i}]`;
    const f = r.object(raw, p, ['type', ...types.map((t) => FILTER_FIELDS[t]!)]);
    if (!f) return;
    const type = r.string(f, 'type', p, { required: true, oneOf: types });
    if (type === undefined) return;
    const field = FILTER_FIELDS[type]!;
    for (const t of types) {
      const other = FILTER_FIELDS[t]!;
      if (other !== field && f[other] !== undefined && f[other] !== null) r.fail(`${p}.${other}`, `must not be set when type is ${type}`);
    }
    if (f[field] === undefined || f[field] === null) {
      r.fail(`${p}.${field}`, `is required when type is ${type}`);
      return;
    }
    const fp = `${p}.${field}`;
    if (type === 'CORS' || type === 'ExternalAuth') {
      r.fail(p, `the ${type} filter is not supported by Trellis`);
      return;
    }
    if (level === 'backend' && type !== 'RequestHeaderModifier' && type !== 'ResponseHeaderModifier') {
      r.fail(p, `a ${type} filter is supported on the rule, not on a backendRef; move it to the rule's filters`);
      return;
    }
    switch (type) {
      case 'RequestHeaderModifier':
      case 'ResponseHeaderModifier': {
        const modifier = parseHeaderModifier(r, f[field], fp);
        if (modifier) out.push({ type, modifier, path: p });
        break;
      }
      case 'URLRewrite': {
        const u = r.object(f[field], fp, ['hostname', 'path']);
        if (!u) break;
        const hostname = r.string(u, 'hostname', fp, { min: 1, max: 253, pattern: PRECISE_HOSTNAME, patternText: 'a hostname (RFC 1123, no wildcard)' });
        const pm = u.path === undefined || u.path === null ? undefined : parsePathModifier(r, u.path, `${fp}.path`);
        out.push({ type, rewrite: { ...(hostname !== undefined ? { hostname } : {}), ...(pm ? { path: pm } : {}) }, path: p });
        break;
      }
      case 'RequestRedirect': {
        const rr = r.object(f[field], fp, ['scheme', 'hostname', 'path', 'port', 'statusCode']);
        if (!rr) break;
        const scheme = r.string(rr, 'scheme', fp, { oneOf: ['http', 'https'] }) as 'http' | 'https' | undefined;
        const hostname = r.string(rr, 'hostname', fp, { min: 1, max: 253, pattern: PRECISE_HOSTNAME, patternText: 'a hostname (RFC 1123, no wildcard)' });
        const pm = rr.path === undefined || rr.path === null ? undefined : parsePathModifier(r, rr.path, `${fp}.path`);
        const port = r.int(rr, 'port', fp, { min: 1, max: 65535 });
        let statusCode: RedirectStatus = 302;
        if (rr.statusCode !== undefined && rr.statusCode !== null) {
          if (!REDIRECT_CODES.includes(rr.statusCode as RedirectStatus)) r.fail(`${fp}.statusCode`, `must be one of ${REDIRECT_CODES.join(', ')}`);
          else statusCode = rr.statusCode as RedirectStatus;
        }
        out.push({
          type,
          redirect: {
            ...(scheme ? { scheme } : {}),
            ...(hostname !== undefined ? { hostname } : {}),
            ...(pm ? { path: pm } : {}),
            ...(port !== undefined ? { port } : {}),
            statusCode,
          },
          path: p,
        });
        break;
      }
      case 'RequestMirror': {
        const m = r.object(f[field], fp, ['backendRef', 'percent', 'fraction']);
        if (!m) break;
        const backendRef = parseObjectRef(r, m.backendRef, `${fp}.backendRef`);
        let percent = 100;
        const pct = r.int(m, 'percent', fp, { min: 0, max: 100 });
        if (pct !== undefined) percent = pct;
        if (m.fraction !== undefined && m.fraction !== null) {
          if (pct !== undefined) r.fail(fp, 'only one of percent and fraction may be set');
          const fr = r.object(m.fraction, `${fp}.fraction`, ['numerator', 'denominator']);
          if (fr) {
            const num = r.int(fr, 'numerator', `${fp}.fraction`, { required: true, min: 0, max: 2_147_483_647 });
            const den = r.int(fr, 'denominator', `${fp}.fraction`, { min: 1, max: 2_147_483_647 }) ?? 100;
            if (num !== undefined && num > den) r.fail(`${fp}.fraction`, 'numerator must be less than or equal to denominator');
            else if (num !== undefined) percent = (num / den) * 100;
          }
        }
        if (backendRef) out.push({ type, backendRef, percent, path: p });
        break;
      }
      case 'ExtensionRef': {
        const e = r.object(f[field], fp, ['group', 'kind', 'name']);
        if (!e) break;
        const group = r.string(e, 'group', fp, { max: 253, pattern: GROUP, patternText: 'a DNS subdomain or ""' }) ?? '';
        const kindName = r.string(e, 'kind', fp, { required: true, min: 1, max: 63, pattern: KIND });
        const name = r.string(e, 'name', fp, { required: true, min: 1, max: 253 });
        if (kindName !== undefined && name !== undefined) out.push({ type, group, kind: kindName, name, path: p });
        break;
      }
    }
  });
  return out;
}

function parseHeaderModifier(r: Reader, raw: unknown, path: string): HeaderModifier | undefined {
  const o = r.object(raw, path, ['set', 'add', 'remove']);
  if (!o) return undefined;
  const actions = new Map<string, string>();
  const claim = (name: string, action: string, p: string): boolean => {
    const prev = actions.get(name);
    if (prev) {
      r.fail(p, `header "${name}" already has an action (${prev}); a filter allows one action per header name`);
      return false;
    }
    actions.set(name, action);
    return true;
  };
  const values = (key: 'set' | 'add'): HeaderValue[] => {
    const out: HeaderValue[] = [];
    r.array(o, key, path, 16).forEach((raw, i) => {
      const p = `${path}.${key}[${i}]`;
      const h = r.object(raw, p, ['name', 'value']);
      if (!h) return;
      const name = r.string(h, 'name', p, { required: true, min: 1, max: 256, pattern: HEADER_NAME, patternText: 'an HTTP token' });
      const value = r.string(h, 'value', p, { required: true, min: 1, max: 4096, pattern: HEADER_VALUE, patternText: 'printable ASCII, single spaces or tabs between words' });
      if (name === undefined || value === undefined) return;
      const lower = name.toLowerCase();
      if (claim(lower, key, `${p}.name`)) out.push({ name: lower, value });
    });
    return out;
  };
  const set = values('set');
  const add = values('add');
  const remove: string[] = [];
  r.array(o, 'remove', path, 16).forEach((raw, i) => {
    const p = `${path}.remove[${i}]`;
    if (typeof raw !== 'string' || raw.length === 0 || raw.length > 256 || !HEADER_NAME.test(raw)) {
      r.fail(p, 'must be a header name (an HTTP token)');
      return;
    }
    const lower = raw.toLowerCase();
    if (claim(lower, 'remove', p)) remove.push(lower);
  });
  return { set, add, remove };
}

function parsePathModifier(r: Reader, raw: unknown, path: string): PathModifier | undefined {
  const o = r.object(raw, path, ['type', 'replaceFullPath', 'replacePrefixMatch']);
  if (!o) return undefined;
  const type = r.string(o, 'type', path, { required: true, oneOf: ['ReplaceFullPath', 'ReplacePrefixMatch'] });
  const full = r.string(o, 'replaceFullPath', path, { max: 1024 });
  const prefix = r.string(o, 'replacePrefixMatch', path, { max: 1024 });
  if (type === 'ReplaceFullPath') {
    if (prefix !== undefined) r.fail(`${path}.replacePrefixMatch`, 'must not be set when type is ReplaceFullPath');
    if (full === undefined) return r.fail(`${path}.replaceFullPath`, 'is required when type is ReplaceFullPath');
    if (!full.startsWith('/')) return r.fail(`${path}.replaceFullPath`, 'must start with "/"');
    return { type, replaceFullPath: full };
  }
  if (type === 'ReplacePrefixMatch') {
    if (full !== undefined) r.fail(`${path}.replaceFullPath`, 'must not be set when type is ReplacePrefixMatch');
    if (prefix === undefined) return r.fail(`${path}.replacePrefixMatch`, 'is required when type is ReplacePrefixMatch');
    if (prefix !== '' && !prefix.startsWith('/')) return r.fail(`${path}.replacePrefixMatch`, 'must start with "/" (or be empty)');
    return { type, replacePrefixMatch: prefix };
  }
  return undefined;
}

function parseObjectRef(r: Reader, raw: unknown, path: string): ParsedObjectRef | undefined {
  const o = r.object(raw, path, ['group', 'kind', 'name', 'namespace', 'port']);
  if (!o) return undefined;
  return readObjectRef(r, o, path);
}

function readObjectRef(r: Reader, o: Obj, path: string): ParsedObjectRef | undefined {
  const group = r.string(o, 'group', path, { max: 253, pattern: GROUP, patternText: 'a DNS subdomain or ""' }) ?? '';
  const kind = r.string(o, 'kind', path, { min: 1, max: 63, pattern: KIND }) ?? 'Service';
  const name = r.string(o, 'name', path, { required: true, min: 1, max: 253 });
  const namespace = r.string(o, 'namespace', path, { min: 1, max: 63, pattern: NAMESPACE, patternText: 'a DNS-1123 label' });
  const port = r.int(o, 'port', path, { min: 1, max: 65535 });
  if (group === '' && kind === 'Service' && port === undefined && o.port === undefined) r.fail(`${path}.port`, 'is required for a Service reference (the Service port)');
  if (name === undefined) return undefined;
  return { group, kind, name, namespace, port, path };
}

function parseBackendRefs(r: Reader, o: Obj, path: string, kind: RouteKind): ParsedBackendRef[] {
  const out: ParsedBackendRef[] = [];
  r.array(o, 'backendRefs', path, 16).forEach((raw, i) => {
    const p = `${path}.backendRefs[${i}]`;
    const b = r.object(raw, p, ['group', 'kind', 'name', 'namespace', 'port', 'weight', 'filters']);
    if (!b) return;
    const ref = readObjectRef(r, b, p);
    const weight = r.int(b, 'weight', p, { min: 0, max: 1_000_000 }) ?? 1;
    const filters = parseFilters(r, b, p, kind, 'backend');
    checkFilterCounts(r, p, filters);
    if (ref) out.push({ ...ref, weight, filters });
  });
  return out;
}

function checkFilterCounts(r: Reader, path: string, filters: readonly ParsedFilter[]): void {
  for (const t of ['RequestHeaderModifier', 'ResponseHeaderModifier', 'RequestRedirect', 'URLRewrite'] as const) {
    if (filters.filter((f) => f.type === t).length > 1) r.fail(`${path}.filters`, `the ${t} filter cannot be repeated`, 'IncompatibleFilters');
  }
  const faults = filters.filter((f) => f.type === 'ExtensionRef' && f.group === TRELLIS_TRAFFIC_GROUP && f.kind === 'FaultInjection');
  if (faults.length > 1) r.fail(`${path}.filters`, 'at most one FaultInjection may be referenced per rule', 'IncompatibleFilters');
}

function checkRuleFilters(r: Reader, path: string, filters: readonly ParsedFilter[], matches: readonly ParsedHttpMatch[], backends: number): void {
  checkFilterCounts(r, path, filters);
  const redirect = filters.find((f) => f.type === 'RequestRedirect');
  const rewrite = filters.find((f) => f.type === 'URLRewrite');
  if (redirect && rewrite) r.fail(`${path}.filters`, 'RequestRedirect and URLRewrite cannot be used in the same rule', 'IncompatibleFilters');
  if (redirect && backends > 0) r.fail(`${path}.backendRefs`, 'must be empty when the rule has a RequestRedirect filter (the redirect answers the request)', 'IncompatibleFilters');
  const prefixModifier =
    (redirect?.type === 'RequestRedirect' && redirect.redirect.path?.type === 'ReplacePrefixMatch') ||
    (rewrite?.type === 'URLRewrite' && rewrite.rewrite.path?.type === 'ReplacePrefixMatch');
  if (prefixModifier && (matches.length !== 1 || matches[0]!.path.type !== 'PathPrefix')) {
    r.fail(`${path}.matches`, 'a ReplacePrefixMatch path modifier needs exactly one match, with a PathPrefix path', 'IncompatibleFilters');
  }
}

function parseTimeouts(r: Reader, o: Obj, path: string): RouteTimeouts {
  if (o.timeouts === undefined || o.timeouts === null) return {};
  const p = `${path}.timeouts`;
  const t = r.object(o.timeouts, p, ['request', 'backendRequest']);
  if (!t) return {};
  const requestMs = r.duration(t, 'request', p);
  const backendRequestMs = r.duration(t, 'backendRequest', p);
  if (requestMs !== undefined && backendRequestMs !== undefined && requestMs !== 0 && (backendRequestMs === 0 || backendRequestMs > requestMs)) {
    r.fail(`${p}.backendRequest`, `must not be longer than the request timeout (${String(t.request)})`);
  }
  return { ...(requestMs !== undefined ? { requestMs } : {}), ...(backendRequestMs !== undefined ? { backendRequestMs } : {}) };
}

/** Retries after the first try when `attempts` is not set: one retry (the spec leaves the default to us). */
export const DEFAULT_RETRY_ATTEMPTS = 1;

function parseRetry(r: Reader, o: Obj, path: string): RetryPolicy | undefined {
  if (o.retry === undefined || o.retry === null) return undefined;
  const p = `${path}.retry`;
  const t = r.object(o.retry, p, ['codes', 'attempts', 'backoff']);
  if (!t) return undefined;
  const codes: number[] = [];
  r.array(t, 'codes', p, 64).forEach((c, i) => {
    if (typeof c !== 'number' || !Number.isInteger(c) || c < 400 || c > 599) r.fail(`${p}.codes[${i}]`, 'must be an HTTP status code between 400 and 599');
    else if (codes.includes(c)) r.fail(`${p}.codes[${i}]`, `${c} is listed twice`);
    else codes.push(c);
  });
  const attempts = r.int(t, 'attempts', p, { min: 0, max: 100 }) ?? DEFAULT_RETRY_ATTEMPTS;
  const backoffMs = r.duration(t, 'backoff', p);
  return { codes, attempts, ...(backoffMs !== undefined ? { backoffMs } : {}) };
}

export interface ParsedFault {
  readonly delayMs?: number;
  readonly delayPercent: number;
  readonly abort?: FaultAbort;
  readonly abortPercent: number;
}

/** A FaultInjection spec (Istio HTTPFaultInjection fields), or the problems with it. */
export function parseFaultInjection(spec: unknown): { ok: true; fault: ParsedFault } | { ok: false; issues: readonly Issue[] } {
  const r = new Reader();
  const o = r.object(spec, 'spec', ['delay', 'abort']) ?? {};
  let delayMs: number | undefined;
  let delayPercent = 100;
  let abort: FaultAbort | undefined;
  let abortPercent = 100;
  const percentage = (parent: Obj, p: string): number => {
    if (parent.percentage === undefined || parent.percentage === null) return 100;
    const po = r.object(parent.percentage, `${p}.percentage`, ['value']);
    const v = po?.value;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 100) {
      r.fail(`${p}.percentage.value`, 'must be a number from 0 to 100');
      return 0;
    }
    return v;
  };
  if (o.delay !== undefined && o.delay !== null) {
    const d = r.object(o.delay, 'spec.delay', ['fixedDelay', 'percentage']);
    if (d) {
      const text = r.string(d, 'fixedDelay', 'spec.delay', { required: true, max: 32 });
      if (text !== undefined) {
        delayMs = parseFaultDuration(text);
        if (delayMs === undefined) r.fail('spec.delay.fixedDelay', `must be a duration like "1.5s", "100ms" or "2m", got "${text}"`);
      }
      delayPercent = percentage(d, 'spec.delay');
    }
  }
  if (o.abort !== undefined && o.abort !== null) {
    const a = r.object(o.abort, 'spec.abort', ['httpStatus', 'grpcStatus', 'percentage']);
    if (a) {
      const http = r.int(a, 'httpStatus', 'spec.abort', { min: 200, max: 599 });
      const grpc = r.string(a, 'grpcStatus', 'spec.abort', { oneOf: Object.keys(GRPC_STATUS_CODES) });
      if ((a.httpStatus === undefined) === (a.grpcStatus === undefined)) r.fail('spec.abort', 'must set exactly one of httpStatus and grpcStatus');
      else if (http !== undefined) abort = { httpStatus: http };
      else if (grpc !== undefined) abort = { grpcStatus: GRPC_STATUS_CODES[grpc]!, grpcStatusName: grpc };
      abortPercent = percentage(a, 'spec.abort');
    }
  }
  if ((o.delay === undefined || o.delay === null) && (o.abort === undefined || o.abort === null)) r.fail('spec', 'must set delay, abort or both');
  if (r.issues.length > 0) return { ok: false, issues: r.issues };
  return { ok: true, fault: { ...(delayMs !== undefined ? { delayMs } : {}), delayPercent, ...(abort ? { abort } : {}), abortPercent } };
}
