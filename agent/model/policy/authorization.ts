// AuthorizationPolicy (security.trellis.dev/v1alpha1, Istio's field names and semantics): the spec read into
// typed, pre-built matchers once per policy set (types.ts); agent/security/ evaluates them per connection and
// per request. Pure: no I/O, no clock.
//
// Semantics (Istio's): AUDIT policies only mark; DENY policies are checked first, any match denies; then, if
// ALLOW policies select the workload, the request must match one of them, else it is denied; with no ALLOW
// policy it is allowed. A policy matches if any rule matches; a rule matches if its from (any source), to
// (any operation) and when (every condition) all match; inside a source or operation every field given must
// match, any value of a field may match, and a notX field matches when no value matches. No rules: matches
// nothing (an ALLOW policy with no rules denies everything it selects); `rules: [{}]` matches everything.
//
// L4 only: on a connection whose bytes Trellis does not parse (opaque TCP), a rule that uses HTTP fields
// (methods, paths, hosts, request.headers) cannot be checked. It fails safe, as in Istio: for ALLOW it does not
// match, for DENY and AUDIT it matches (its HTTP fields are ignored, its L4 fields still apply), and the decision
// says so.
import type { KubeObject } from '../objects.js';
import { normalizePath } from '../normalize.js';
import { parseCidr, type Cidr } from './ip.js';
import { compileStringSet, type StringSet } from './strings.js';
import type { AuthzAction, AuthzDecision, CompiledPolicy, CompiledRule, Condition, Issue, OperationMatch, SourceMatch } from './types.js';

export interface ParseOptions {
  /** The mesh's trust domain: a principal written with "cluster.local" means this one, as in Istio. */
  readonly trustDomain: string;
}

export type ParsedPolicy = { readonly ok: true; readonly policy: CompiledPolicy } | { readonly ok: false; readonly issues: readonly Issue[] };

const SPEC_FIELDS = ['selector', 'action', 'rules', 'provider', 'targetRef', 'targetRefs'] as const;
const RULE_FIELDS = ['from', 'to', 'when'] as const;
const SOURCE_FIELDS = [
  'principals', 'notPrincipals', 'namespaces', 'notNamespaces', 'serviceAccounts', 'notServiceAccounts',
  'ipBlocks', 'notIpBlocks', 'remoteIpBlocks', 'notRemoteIpBlocks', 'requestPrincipals', 'notRequestPrincipals',
] as const;
const OPERATION_FIELDS = ['hosts', 'notHosts', 'ports', 'notPorts', 'methods', 'notMethods', 'paths', 'notPaths'] as const;
const CONDITION_FIELDS = ['key', 'values', 'notValues'] as const;
const NO_JWT = 'needs request authentication (JWT, Istio RequestAuthentication), which Trellis does not implement';
const NO_XFF = 'Trellis does not read X-Forwarded-For or PROXY protocol, so the remote address is the peer address; use ipBlocks / source.ip';

/** Reads and compiles one AuthorizationPolicy object; every problem names its field. */
export function parseAuthorizationPolicy(obj: KubeObject, opts: ParseOptions): ParsedPolicy {
  const issues: Issue[] = [];
  const add = (path: string, message: string) => void issues.push({ path, message });
  const meta = obj.metadata as KubeObject['metadata'] & { generation?: unknown };
  const namespace = meta.namespace ?? 'default';
  if (meta.annotations?.['istio.io/dry-run'] === 'true') {
    add('metadata.annotations[istio.io/dry-run]', 'dry-run policies are not supported: this policy would be enforced; remove the annotation, or the policy');
  }
  const spec = (obj as { spec?: unknown }).spec ?? {};
  if (!isMap(spec)) {
    add('spec', 'must be a mapping');
    return { ok: false, issues };
  }
  unknownFields(spec, 'spec', SPEC_FIELDS, add);
  if (spec.targetRef !== undefined || spec.targetRefs !== undefined) {
    add(spec.targetRef !== undefined ? 'spec.targetRef' : 'spec.targetRefs', 'not supported: Trellis has no gateways or waypoints to attach to; select workloads with spec.selector.matchLabels');
  }

  let action: AuthzAction = 'ALLOW';
  if (spec.action !== undefined) {
    if (spec.action === 'CUSTOM') add('spec.action', 'CUSTOM (external authorization) is not supported; use ALLOW, DENY or AUDIT');
    else if (spec.action === 'ALLOW' || spec.action === 'DENY' || spec.action === 'AUDIT') action = spec.action;
    else add('spec.action', `must be ALLOW, DENY or AUDIT, not ${JSON.stringify(spec.action)}`);
  }
  if (spec.provider !== undefined && spec.action !== 'CUSTOM') add('spec.provider', 'only used with action CUSTOM, which Trellis does not support');

  const selector = readSelector(spec.selector, 'spec.selector', add);

  const rules: CompiledRule[] = [];
  if (spec.rules !== undefined && spec.rules !== null) {
    if (!Array.isArray(spec.rules)) {
      add('spec.rules', 'must be a list');
    } else {
      spec.rules.forEach((r, i) => {
        const rule = readRule(r, `spec.rules[${i}]`, i, opts, add);
        if (rule) rules.push(rule);
      });
    }
  }
  if (issues.length > 0) return { ok: false, issues };
  const generation = typeof meta.generation === 'number' ? meta.generation : undefined;
  const key = `${namespace}/${meta.name}`;
  return {
    ok: true,
    policy: Object.freeze({
      key,
      namespace,
      name: meta.name,
      uid: meta.uid,
      generation,
      action,
      selector,
      rules: Object.freeze(rules),
      decisions: Object.freeze(rules.map((r) => ruleDecision(key, action, r, false))),
      failSafeDecisions: Object.freeze(action === 'ALLOW' ? [] : rules.map((r) => ruleDecision(key, action, r, true))),
    }),
  };
}

function ruleDecision(key: string, action: AuthzAction, r: CompiledRule, failSafe: boolean): AuthzDecision {
  const allowed = action !== 'DENY';
  const verb = allowed ? 'allowed' : 'denied';
  const reason = failSafe
    ? `${verb} by ${action} policy ${key} rule ${r.index} (${r.text}): its HTTP fields (${r.l7Fields}) cannot be checked on a connection Trellis does not parse, so the rule is taken as matching (fail-safe)`
    : `${verb} by ${action} policy ${key} rule ${r.index} (${r.text})`;
  return Object.freeze({
    allowed,
    code: allowed ? 'allowed' : 'denied',
    action: action === 'AUDIT' ? 'NONE' : action,
    policy: key,
    rule: r.index,
    audit: false,
    failSafe,
    reason,
  });
}

type Add = (path: string, message: string) => void;

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function unknownFields(o: Record<string, unknown>, path: string, known: readonly string[], add: Add): void {
  for (const k of Object.keys(o)) {
    if (!known.includes(k)) add(`${path}.${k}`, `unknown field (known: ${known.join(', ')}); an ignored field would change what the policy matches`);
  }
}

/** Shared with PeerAuthentication. */
export function readSelector(v: unknown, path: string, add: Add): Readonly<Record<string, string>> | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isMap(v)) {
    add(path, 'must be a mapping with matchLabels');
    return undefined;
  }
  unknownFields(v, path, ['matchLabels'], add);
  const ml = v.matchLabels;
  if (ml === undefined || ml === null) return undefined;
  if (!isMap(ml)) {
    add(`${path}.matchLabels`, 'must be a mapping of label names to values');
    return undefined;
  }
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(ml)) {
    if (typeof val !== 'string') add(`${path}.matchLabels.${k}`, 'label values must be strings');
    else out[k] = val;
  }
  return Object.keys(out).length > 0 ? Object.freeze(out) : undefined;
}

function readStrings(v: unknown, path: string, add: Add): string[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) {
    add(path, 'must be a list of strings');
    return undefined;
  }
  const out: string[] = [];
  v.forEach((s, i) => {
    if (typeof s !== 'string') add(`${path}[${i}]`, 'must be a string');
    else out.push(s);
  });
  // An empty list means the same as an absent field, as in Istio.
  return out.length > 0 ? out : undefined;
}

function readSet(v: unknown, path: string, add: Add, opts: Parameters<typeof compileStringSet>[1] = {}): StringSet | undefined {
  const list = readStrings(v, path, add);
  if (!list) return undefined;
  const set = compileStringSet(list, opts);
  if (typeof set === 'string') {
    add(path, set);
    return undefined;
  }
  return set;
}

function readCidrs(v: unknown, path: string, add: Add): Cidr[] | undefined {
  const list = readStrings(v, path, add);
  if (!list) return undefined;
  const out: Cidr[] = [];
  list.forEach((s, i) => {
    const c = parseCidr(s);
    if (typeof c === 'string') add(`${path}[${i}]`, c);
    else out.push(c);
  });
  return out;
}

function readPorts(v: unknown, path: string, add: Add): Set<number> | undefined {
  const list = readStrings(v, path, add);
  if (!list) return undefined;
  const out = new Set<number>();
  list.forEach((s, i) => {
    const n = /^[0-9]{1,5}$/.test(s) ? Number(s) : NaN;
    if (!(n >= 1 && n <= 65535)) add(`${path}[${i}]`, `"${s}" is not a port number (1 to 65535, as a string: "8080")`);
    else out.add(n);
  });
  return out;
}

function readServiceAccounts(v: unknown, path: string, add: Add): Set<string> | undefined {
  const list = readStrings(v, path, add);
  if (!list) return undefined;
  if (list.length > 16) add(path, 'at most 16 service accounts (as in Istio)');
  const out = new Set<string>();
  list.forEach((s, i) => {
    if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?\/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(s) || s.length > 320) {
      add(`${path}[${i}]`, `"${s}" must be NAMESPACE/NAME of a service account, without wildcards`);
    } else {
      out.add(s);
    }
  });
  return out;
}

/** Policy paths must be in the normalized form requests are compared in, or they would silently never match. */
function checkPaths(set: StringSet | undefined, path: string, add: Add): void {
  if (!set) return;
  set.patterns.forEach((p, i) => {
    if (p === '*') return;
    // Exact "/a", prefix "/a/*" and suffix "*.js" forms, templates with operators replaced: each must come out of
    // the normalizer unchanged when completed into a whole path.
    let sample = p.replace(/\{\*\*?\}/g, 'x');
    if (sample.endsWith('*')) sample = sample.slice(0, -1) + 'x';
    if (sample.startsWith('*')) sample = '/x' + sample.slice(1);
    if (!sample.startsWith('/')) {
      add(`${path}[${i}]`, `"${p}" can never match: request paths start with "/"`);
      return;
    }
    const n = normalizePath(sample);
    if (!n.ok) add(`${path}[${i}]`, `"${p}" can never match: a request with this path is refused (${n.reason})`);
    else if (n.path !== sample) add(`${path}[${i}]`, `"${p}" can never match: requests are compared after normalization, write it as it normalizes ("${n.path}"${p.endsWith('*') ? ' plus the "*"' : ''})`);
  });
}

function readSource(v: unknown, path: string, opts: ParseOptions, add: Add): SourceMatch | undefined {
  if (!isMap(v)) {
    add(path, 'must be a mapping (from: [{source: {...}}])');
    return undefined;
  }
  unknownFields(v, path, SOURCE_FIELDS, add);
  for (const f of ['requestPrincipals', 'notRequestPrincipals'] as const) if (v[f] !== undefined) add(`${path}.${f}`, NO_JWT);
  for (const f of ['remoteIpBlocks', 'notRemoteIpBlocks'] as const) if (v[f] !== undefined) add(`${path}.${f}`, `not supported: ${NO_XFF}`);
  const principalOpts = { rewrite: trustDomainAlias(opts.trustDomain) };
  const src: SourceMatch = {
    principals: readSet(v.principals, `${path}.principals`, add, principalOpts),
    notPrincipals: readSet(v.notPrincipals, `${path}.notPrincipals`, add, principalOpts),
    namespaces: readSet(v.namespaces, `${path}.namespaces`, add),
    notNamespaces: readSet(v.notNamespaces, `${path}.notNamespaces`, add),
    serviceAccounts: readServiceAccounts(v.serviceAccounts, `${path}.serviceAccounts`, add),
    notServiceAccounts: readServiceAccounts(v.notServiceAccounts, `${path}.notServiceAccounts`, add),
    ipBlocks: readCidrs(v.ipBlocks, `${path}.ipBlocks`, add),
    notIpBlocks: readCidrs(v.notIpBlocks, `${path}.notIpBlocks`, add),
  };
  if ((src.serviceAccounts || src.notServiceAccounts) && (src.principals || src.notPrincipals || src.namespaces || src.notNamespaces)) {
    add(path, 'serviceAccounts/notServiceAccounts cannot be combined with principals or namespaces in one source (as in Istio); use separate sources');
  }
  if (Object.values(src).every((f) => f === undefined)) add(path, 'must not be empty (omit `from` to match any source)');
  return src;
}

function readOperation(v: unknown, path: string, add: Add): OperationMatch | undefined {
  if (!isMap(v)) {
    add(path, 'must be a mapping (to: [{operation: {...}}])');
    return undefined;
  }
  unknownFields(v, path, OPERATION_FIELDS, add);
  const op = {
    ports: readPorts(v.ports, `${path}.ports`, add),
    notPorts: readPorts(v.notPorts, `${path}.notPorts`, add),
    methods: readSet(v.methods, `${path}.methods`, add),
    notMethods: readSet(v.notMethods, `${path}.notMethods`, add),
    paths: readSet(v.paths, `${path}.paths`, add, { pathTemplates: true }),
    notPaths: readSet(v.notPaths, `${path}.notPaths`, add, { pathTemplates: true }),
    hosts: readSet(v.hosts, `${path}.hosts`, add, { caseInsensitive: true }),
    notHosts: readSet(v.notHosts, `${path}.notHosts`, add, { caseInsensitive: true }),
  };
  checkPaths(op.paths, `${path}.paths`, add);
  checkPaths(op.notPaths, `${path}.notPaths`, add);
  if (Object.values(op).every((f) => f === undefined)) add(path, 'must not be empty (omit `to` to match any operation)');
  const l7 = !!(op.methods || op.notMethods || op.paths || op.notPaths || op.hosts || op.notHosts);
  return { ...op, l7 };
}

function readCondition(v: unknown, path: string, opts: ParseOptions, add: Add): Condition | undefined {
  if (!isMap(v)) {
    add(path, 'must be a mapping with key and values or notValues');
    return undefined;
  }
  unknownFields(v, path, CONDITION_FIELDS, add);
  const key = v.key;
  if (typeof key !== 'string' || key.length === 0) {
    add(`${path}.key`, 'required: an attribute name such as request.headers[x-tenant], source.ip, source.namespace, source.principal, destination.port');
    return undefined;
  }
  if (v.values === undefined && v.notValues === undefined) add(path, 'needs values or notValues');
  const vp = `${path}.values`;
  const np = `${path}.notValues`;
  const header = /^request\.headers\[([^\]]+)\]$/.exec(key);
  if (header) {
    const name = header[1]!.toLowerCase();
    if (!/^:?[a-z0-9!#$%&'*+\-.^_`|~]+$/.test(name)) {
      add(`${path}.key`, `"${header[1]}" is not a header name`);
      return undefined;
    }
    return { kind: 'header', name, values: readSet(v.values, vp, add), notValues: readSet(v.notValues, np, add) };
  }
  switch (key) {
    case 'source.ip':
    case 'destination.ip':
      return { kind: key === 'source.ip' ? 'sourceIp' : 'destinationIp', values: readCidrs(v.values, vp, add), notValues: readCidrs(v.notValues, np, add) };
    case 'source.principal': {
      const o = { rewrite: trustDomainAlias(opts.trustDomain) };
      return { kind: 'principal', values: readSet(v.values, vp, add, o), notValues: readSet(v.notValues, np, add, o) };
    }
    case 'source.namespace':
      return { kind: 'namespace', values: readSet(v.values, vp, add), notValues: readSet(v.notValues, np, add) };
    case 'destination.port':
      return { kind: 'destinationPort', values: readPorts(v.values, vp, add), notValues: readPorts(v.notValues, np, add) };
    case 'remote.ip':
      add(`${path}.key`, `remote.ip is not supported: ${NO_XFF}`);
      return undefined;
    case 'connection.sni':
      add(`${path}.key`, 'connection.sni is not supported: the mesh tunnel does not carry the SNI of the inner connection');
      return undefined;
  }
  if (key.startsWith('request.auth.')) add(`${path}.key`, `${key} ${NO_JWT}`);
  else if (key.startsWith('experimental.')) add(`${path}.key`, `${key}: Envoy-specific attributes are not supported`);
  else add(`${path}.key`, `unknown attribute "${key}" (supported: request.headers[NAME], source.ip, source.namespace, source.principal, destination.ip, destination.port)`);
  return undefined;
}

function readRule(v: unknown, path: string, index: number, opts: ParseOptions, add: Add): CompiledRule | undefined {
  if (!isMap(v)) {
    add(path, 'must be a mapping (use {} for a rule that matches everything)');
    return undefined;
  }
  unknownFields(v, path, RULE_FIELDS, add);
  const readList = <T>(field: 'from' | 'to' | 'when', read: (item: unknown, p: string) => T | undefined): T[] | undefined => {
    const list = v[field];
    if (list === undefined || list === null) return undefined;
    if (!Array.isArray(list)) {
      add(`${path}.${field}`, 'must be a list');
      return undefined;
    }
    // Istio: an empty from/to list is an error, not "any" (it would read as "nothing").
    if (list.length === 0 && field !== 'when') add(`${path}.${field}`, `must not be empty (omit \`${field}\` to match any ${field === 'from' ? 'source' : 'operation'})`);
    const out: T[] = [];
    list.forEach((item, i) => {
      const r = read(item, `${path}.${field}[${i}]`);
      if (r !== undefined) out.push(r);
    });
    return out;
  };
  const from = readList('from', (item, p) => {
    if (!isMap(item)) return void add(p, 'must be a mapping with source');
    unknownFields(item, p, ['source'], add);
    return readSource(item.source, `${p}.source`, opts, add);
  });
  const to = readList('to', (item, p) => {
    if (!isMap(item)) return void add(p, 'must be a mapping with operation');
    unknownFields(item, p, ['operation'], add);
    return readOperation(item.operation, `${p}.operation`, add);
  });
  const when = readList('when', (item, p) => readCondition(item, p, opts, add)) ?? [];

  const l7: string[] = [];
  for (const op of to ?? []) {
    for (const f of ['methods', 'notMethods', 'paths', 'notPaths', 'hosts', 'notHosts'] as const) if (op[f] && !l7.includes(f)) l7.push(f);
  }
  for (const c of when) if (c.kind === 'header' && !l7.includes(`request.headers[${c.name}]`)) l7.push(`request.headers[${c.name}]`);
  const rule: CompiledRule = {
    index,
    ...(from ? { from: Object.freeze(from) } : {}),
    ...(to ? { to: Object.freeze(to) } : {}),
    when: Object.freeze(when),
    l7Fields: l7.join(', '),
    text: describeRule(from, to, when),
  };
  return Object.freeze(rule);
}

/** "cluster.local/ns/x/sa/y" names the local trust domain, whatever it is called (Istio's alias). */
function trustDomainAlias(trustDomain: string): (p: string) => string {
  return (p) => (trustDomain !== 'cluster.local' && p.startsWith('cluster.local/') ? trustDomain + p.slice('cluster.local'.length) : p);
}

// ---- descriptions ----

function list(name: string, s: StringSet | ReadonlySet<unknown> | readonly Cidr[] | undefined): string | undefined {
  if (!s) return undefined;
  const items = 'patterns' in s ? s.patterns : Array.isArray(s) ? (s as readonly Cidr[]).map((c) => c.text) : [...(s as ReadonlySet<unknown>)].map(String);
  return `${name} [${items.join(', ')}]`;
}

function describeRule(from: readonly SourceMatch[] | undefined, to: readonly OperationMatch[] | undefined, when: readonly Condition[]): string {
  const parts: string[] = [];
  if (from) {
    parts.push('from ' + from.map((s) => Object.entries(s).map(([k, v]) => list(k, v)).filter(Boolean).join(' and ')).join(' or '));
  }
  if (to) {
    parts.push('to ' + to.map((o) => Object.entries(o).filter(([k]) => k !== 'l7').map(([k, v]) => list(k, v)).filter(Boolean).join(' and ')).join(' or '));
  }
  if (when.length > 0) {
    const key = (c: Condition) =>
      c.kind === 'header' ? `request.headers[${c.name}]` : { principal: 'source.principal', namespace: 'source.namespace', sourceIp: 'source.ip', destinationIp: 'destination.ip', destinationPort: 'destination.port' }[c.kind];
    parts.push('when ' + when.map((c) => [list(`${key(c)} in`, c.values), list(`${key(c)} not in`, c.notValues)].filter(Boolean).join(' and ')).join(' and '));
  }
  return parts.length > 0 ? parts.join('; ') : 'any request';
}
