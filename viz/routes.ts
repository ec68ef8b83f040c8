// `trellis routes svc/NAME`: per HTTPRoute/GRPCRoute rule and backend of a Service, what the callers' agents did over
// a window (success rate, RPS, latency) and the split they actually made against the weights configured. The
// metrics name the route, the rule and the backend chosen (route_namespace, route_name, route_rule,
// destination_service on reporter="source"), not the Service a route is attached to: which routes belong to the
// Service comes from the route objects themselves, compiled as the agent compiles them.
import { statSync } from 'node:fs';
import pino from 'pino';
import { DEFAULT_TRUST_DOMAIN } from '../agent/constants.js';
import type { CompiledRule } from '../agent/model/routes/index.js';
import type { KubeObject, Service } from '../agent/model/objects.js';
import { DirSource, type Snapshot } from '../agent/sources/dir.js';
import { compile, type MeshState } from '../agent/state/store.js';
import { VizError } from './errors.js';
import { latencyQuantile, literal, sumRate, type Matchers } from './promql.js';
import { failed, finite, quantile, serviceOf, share, type QueryContext } from './query.js';
import type { VectorSample } from './prom/client.js';

/** The label of calls to the Service that no route took. */
export const DEFAULT_ROUTE = '[default]';

export interface ConfiguredBackend {
  /** What the table shows: the Service's name (namespace/name outside the route's namespace), or why it is invalid. */
  readonly name: string;
  /** FQDN, the destination_service label; undefined for a backendRef that does not resolve (answered 500). */
  readonly host: string | undefined;
  readonly weight: number;
  /** weight / the rule's total weight. */
  readonly share: number;
}

export interface ConfiguredRule {
  /** namespace/name of the route. */
  readonly route: string;
  /** The rule's name, or its index (what route_rule holds). */
  readonly rule: string;
  /** The first match that selects the rule, as the agent describes it. */
  readonly match: string;
  readonly backends: readonly ConfiguredBackend[];
}

export interface RouteRow {
  /** namespace/name, or DEFAULT_ROUTE. */
  readonly route: string;
  readonly rule: string;
  readonly backend: string;
  readonly match: string;
  /** The configured share of the rule's requests; null for a backend no longer configured (or the default). */
  readonly weight: number | null;
  /** The share of the rule's requests this backend got in the window; null without requests. */
  readonly split: number | null;
  readonly rps: number;
  readonly successRate: number | null;
  readonly latency: { readonly p50: number | null; readonly p95: number | null; readonly p99: number | null };
}

/** A ClusterIP for Services written without one (manifests before the API server gave them one). */
const UNASSIGNED_CLUSTER_IP = '0.0.0.1';

/**
 * The Services and routes of a directory (the agent's dir source format: a lab's realized objects, or YAML a user
 * saved), compiled as the agent compiles them. Routes apply to calls to a ClusterIP, and the agent compiles none
 * for a Service without one; a Service written without spec.clusterIP (not headless: that is "None") gets a
 * placeholder here, so manifests as written show their routes too.
 */
export async function loadRouteState(dir: string): Promise<MeshState> {
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch (err) {
    throw new VizError('ENOENT', `--dir ${dir}: ${(err as Error).message}`);
  }
  // DirSource would create a missing directory; a typo must not look like a mesh without routes.
  if (!isDir) throw new VizError('ENOTDIR', `--dir ${dir}: not a directory`);
  let snapshot: Snapshot | undefined;
  const source = new DirSource({ dir, logger: pino({ level: 'silent' }), onSnapshot: (s) => (snapshot = s) });
  try {
    await source.start();
  } finally {
    source.close();
  }
  const objects = (snapshot?.objects ?? []).map((o) => {
    if (o.kind !== 'Service') return o;
    const svc = o as Service;
    if (svc.spec.clusterIP || svc.spec.clusterIPs?.length) return o;
    return { ...svc, spec: { ...svc.spec, clusterIP: UNASSIGNED_CLUSTER_IP } } as KubeObject;
  });
  return compile(objects, DEFAULT_TRUST_DOMAIN, 1);
}

/** The rules of every route attached to the Service (producer routes and consumer routes of any namespace). */
export function configuredRules(state: MeshState, namespace: string, name: string): ConfiguredRule[] {
  const key = `${namespace}/${name}`;
  if (!state.services.has(key)) {
    const others = [...state.services.keys()].filter((k) => k.startsWith(`${namespace}/`)).map((k) => k.slice(namespace.length + 1)).sort();
    const hint = others.length ? `Services in ${namespace}: ${others.slice(0, 10).join(', ')}${others.length > 10 ? ', ...' : ''}` : `no Service in namespace ${namespace}`;
    throw new VizError('ENODATA', `no Service ${key} (${hint}): check the name and -n`);
  }
  const seen = new Map<string, ConfiguredRule>();
  const ports = state.traffic.routes.table.services.get(key);
  for (const port of ports?.values() ?? []) {
    for (const compiled of [port.producer, ...port.consumers.values()]) {
      if (!compiled) continue;
      for (const entry of [...compiled.http, ...compiled.grpc]) {
        const rule = entry.matched.rule;
        const id = `${rule.route}|${rule.name}`;
        if (!seen.has(id)) seen.set(id, describeRule(rule, entry.matched.match));
      }
    }
  }
  return [...seen.values()].sort((a, b) => a.route.localeCompare(b.route) || ruleOrder(a.rule, b.rule));
}

function describeRule(rule: CompiledRule, match: string): ConfiguredRule {
  const routeNs = rule.route.split('/')[0];
  const backends = rule.backends.map((b): ConfiguredBackend => {
    const s = rule.totalWeight > 0 ? b.weight / rule.totalWeight : 0;
    if (b.kind === 'Error') return { name: `(invalid: ${b.reason})`, host: undefined, weight: b.weight, share: s };
    return { name: b.namespace === routeNs ? b.name : `${b.namespace}/${b.name}`, host: b.host, weight: b.weight, share: s };
  });
  return { route: rule.route, rule: rule.name, match, backends };
}

function ruleOrder(a: string, b: string): number {
  const [x, y] = [Number(a), Number(b)];
  return Number.isInteger(x) && Number.isInteger(y) ? x - y : a.localeCompare(b);
}

const BY = ['route_namespace', 'route_name', 'route_rule', 'destination_service'];

/** Routed requests of the Service's routes, and calls to the Service no route took; as the callers' agents saw them. */
export function routesQueries(namespace: string, name: string, rules: readonly ConfiguredRule[], ctx: Pick<QueryContext, 'source'>): Record<string, string> {
  const routes = [...new Set(rules.map((r) => r.route))];
  const out: Record<string, string> = {};
  const add = (prefix: string, m: Matchers) => {
    out[`${prefix}requests`] = sumRate('requests', [...BY, 'response_code', 'grpc_response_status', 'request_protocol'], m, ctx.source);
    for (const q of [50, 95, 99]) out[`${prefix}p${q}`] = latencyQuantile(q / 100, BY, m, ctx.source);
  };
  if (routes.length) {
    add('routed_', {
      reporter: 'source',
      route_namespace: { re: [...new Set(routes.map((r) => literal(r.split('/')[0]!)))].join('|') },
      route_name: { re: [...new Set(routes.map((r) => literal(r.split('/')[1]!)))].join('|') },
    });
  }
  add('default_', { reporter: 'source', route_name: '', destination_service: { re: `${literal(name)}\\.${literal(namespace)}\\.svc\\..+` } });
  return out;
}

export async function routes(namespace: string, name: string, rules: readonly ConfiguredRule[], ctx: QueryContext): Promise<RouteRow[]> {
  const q = routesQueries(namespace, name, rules, ctx);
  const keys = Object.keys(q);
  const answers = await Promise.all(keys.map((k) => ctx.query(q[k]!)));
  return assembleRoutes(namespace, rules, Object.fromEntries(keys.map((k, i) => [k, answers[i]!])));
}

interface Acc {
  rps: number;
  ok: number;
  quantiles: Partial<Record<'p50' | 'p95' | 'p99', number>>;
}

/** Rows from the configured rules and the answers of routesQueries; `namespace` is the Service's. */
export function assembleRoutes(namespace: string, rules: readonly ConfiguredRule[], r: Readonly<Record<string, readonly VectorSample[]>>): RouteRow[] {
  const wanted = new Set(rules.map((x) => x.route));
  // route|rule|host -> observed
  const seen = new Map<string, Acc>();
  const accFor = (route: string, rule: string, host: string): Acc => {
    const k = `${route}|${rule}|${host}`;
    let a = seen.get(k);
    if (!a) seen.set(k, (a = { rps: 0, ok: 0, quantiles: {} }));
    return a;
  };
  const routeOf = (l: Readonly<Record<string, string>>, prefix: string) => (prefix === 'default_' ? DEFAULT_ROUTE : `${l.route_namespace}/${l.route_name}`);
  for (const prefix of ['routed_', 'default_']) {
    for (const s of r[`${prefix}requests`] ?? []) {
      const route = routeOf(s.labels, prefix);
      if (prefix === 'routed_' && !wanted.has(route)) continue;
      const a = accFor(route, prefix === 'default_' ? '' : (s.labels.route_rule ?? ''), s.labels.destination_service ?? '');
      const v = finite(s.value);
      a.rps += v;
      if (!failed(s.labels)) a.ok += v;
    }
    for (const q of ['p50', 'p95', 'p99'] as const) {
      for (const s of r[`${prefix}${q}`] ?? []) {
        const route = routeOf(s.labels, prefix);
        if (prefix === 'routed_' && !wanted.has(route)) continue;
        accFor(route, prefix === 'default_' ? '' : (s.labels.route_rule ?? ''), s.labels.destination_service ?? '').quantiles[q] = s.value;
      }
    }
  }
  // The rule's requests in the window, over every backend it sent to: what the split is a share of.
  const ruleTotal = new Map<string, number>();
  for (const [k, a] of seen) {
    const rk = k.slice(0, k.lastIndexOf('|'));
    ruleTotal.set(rk, (ruleTotal.get(rk) ?? 0) + a.rps);
  }
  const row = (route: string, rule: string, backend: string, match: string, weight: number | null, a: Acc | undefined): RouteRow => {
    const total = ruleTotal.get(`${route}|${rule}`) ?? 0;
    return {
      route,
      rule,
      backend,
      match,
      weight,
      split: a ? share(a.rps, total) : total > 0 ? 0 : null,
      rps: a?.rps ?? 0,
      successRate: a ? share(a.ok, a.rps) : null,
      latency: { p50: quantile(a?.quantiles.p50), p95: quantile(a?.quantiles.p95), p99: quantile(a?.quantiles.p99) },
    };
  };
  const out: RouteRow[] = [];
  const used = new Set<string>();
  for (const c of rules) {
    if (c.backends.length === 0) {
      out.push(row(c.route, c.rule, '-', c.match, null, undefined));
      continue;
    }
    for (const b of c.backends) {
      const k = `${c.route}|${c.rule}|${b.host ?? ''}`;
      used.add(k);
      out.push(row(c.route, c.rule, b.name, c.match, b.share, b.host === undefined ? undefined : seen.get(k)));
    }
  }
  // What the metrics hold beyond the configuration: backends of an earlier version of a route, and the calls no route took.
  for (const [k, a] of [...seen].sort(([x], [y]) => x.localeCompare(y))) {
    if (used.has(k)) continue;
    const [route, rule, host] = k.split('|') as [string, string, string];
    const svc = serviceOf(host);
    const routeNs = route === DEFAULT_ROUTE ? namespace : route.split('/')[0];
    const backend = svc ? (svc.namespace === routeNs ? svc.name : `${svc.namespace}/${svc.name}`) : host;
    out.push({ ...row(route, rule, backend, route === DEFAULT_ROUTE ? '(no route)' : '(not configured now)', null, a), rule: rule || '-' });
  }
  return out;
}
