// Route compilation: HTTPRoute/GRPCRoute objects (GAMMA: parentRefs name Services; or an EgressNetwork, for its
// declared hosts) + the Services they name -> a frozen RouteTable per Service port, for producer routes and per caller
// namespace for consumer routes, and Gateway API status for each route. Pure: no I/O, no clock; the store calls it
// when it compiles a snapshot.
import type { EgressTable } from '../egress.js';
import type { KubeObject } from '../objects.js';
import type { ServiceInfo } from '../services.js';
import {
  compareRanked,
  compileGrpcMatch,
  compileHttpMatch,
  describeGrpcMatch,
  describeHttpMatch,
  grpcMatchRank,
  httpMatchRank,
  type RankedEntry,
} from './match.js';
import {
  TRELLIS_TRAFFIC_GROUP,
  parseFaultInjection,
  parseRoute,
  type Issue,
  type ParsedFault,
  type ParsedFilter,
  type ParsedObjectRef,
  type ParsedParentRef,
  type ParsedRoute,
  type ParsedRule,
  type RouteObjectLike,
} from './spec.js';
import type {
  CompiledBackend,
  CompiledFilter,
  CompiledRoutes,
  CompiledRule,
  FaultInjectionStatus,
  FaultSpec,
  GrpcRequestInfo,
  HeaderModifier,
  HttpRequestInfo,
  MatchEntry,
  MatchedRule,
  ParentReference,
  PortRoutes,
  RouteCondition,
  RouteKind,
  RouteParentStatus,
  RouteStatus,
  RouteTable,
  ServiceBackend,
} from './types.js';

export const DEFAULT_CONTROLLER_NAME = 'trellis.dev/mesh';

export interface CompileOptions {
  /** status.parents[].controllerName. */
  readonly controllerName?: string;
  /** The previous result: a route that is invalid now keeps its last valid version in force. */
  readonly previous?: Pick<CompileResult, 'lastGood'>;
  /**
   * backendRefs (and mirrors) to a Service in another namespace than the route's. GEP-1294 lets mesh routes do
   * this without a ReferenceGrant; Trellis is stricter by default ('deny': ResolvedRefs=False, RefNotPermitted,
   * 500 for that share) except for a backendRef to one of the route's own parent Services (a consumer route
   * sending to the Service it is attached to). 'allow' follows GEP-1294.
   */
  readonly crossNamespaceBackends?: 'deny' | 'allow';
  /** The EgressNetworks routes may attach to (parentRef group traffic.trellis.dev, kind EgressNetwork). */
  readonly egress?: EgressTable;
}

/**
 * The route table's key for the routes of an EgressNetwork's declared host (`*` for a route without hostnames, which
 * takes every declared host): looked up as a Service key is, never equal to one (a Service key has one slash).
 */
export function egressRouteKey(network: string, host: string): string {
  return `EgressNetwork:${network}:${host}`;
}

const isEgressParent = (p: { group: string; kind: string }) => p.group === TRELLIS_TRAFFIC_GROUP && p.kind === 'EgressNetwork';
const isHandledParent = (p: { group: string; kind: string }) => (p.group === '' && p.kind === 'Service') || isEgressParent(p);

export interface CompileResult {
  readonly table: RouteTable;
  /** One per HTTPRoute/GRPCRoute object, sorted by kind, namespace, name. */
  readonly statuses: readonly RouteStatus[];
  /** One per FaultInjection object. */
  readonly faults: readonly FaultInjectionStatus[];
  /** Invalid objects: one line per problem, naming the object and field ("HTTPRoute demo/x: spec.rules[1]...: ..."). */
  readonly errors: readonly string[];
  /** References that did not resolve (missing Service, FaultInjection...), same format. */
  readonly unresolved: readonly string[];
  /** The valid routes in force, by kind/namespace/name; hand back as `previous` on the next compile. */
  readonly lastGood: ReadonlyMap<string, ParsedRoute>;
}

/** A ReadonlyMap that cannot be changed after construction (Object.freeze does not stop Map.set). */
export class FrozenMap<K, V> implements ReadonlyMap<K, V> {
  readonly #map: Map<K, V>;
  constructor(entries?: Iterable<readonly [K, V]>) {
    this.#map = new Map(entries);
    Object.freeze(this);
  }
  get size(): number {
    return this.#map.size;
  }
  get(key: K): V | undefined {
    return this.#map.get(key);
  }
  has(key: K): boolean {
    return this.#map.has(key);
  }
  forEach(fn: (value: V, key: K, map: ReadonlyMap<K, V>) => void, thisArg?: unknown): void {
    this.#map.forEach((v, k) => fn.call(thisArg, v, k, this));
  }
  entries(): MapIterator<[K, V]> {
    return this.#map.entries();
  }
  keys(): MapIterator<K> {
    return this.#map.keys();
  }
  values(): MapIterator<V> {
    return this.#map.values();
  }
  [Symbol.iterator](): MapIterator<[K, V]> {
    return this.#map[Symbol.iterator]();
  }
}

const EMPTY_TABLE: RouteTable = Object.freeze({ services: new FrozenMap<string, ReadonlyMap<number, PortRoutes>>() });

/** The routes for one call: the caller namespace's consumer routes when it has any for this port, else the producer routes. */
export function routeFor(
  table: RouteTable,
  call: { readonly service: string; readonly port: number; readonly callerNamespace: string },
): CompiledRoutes | undefined {
  const port = table.services.get(call.service)?.get(call.port);
  if (!port) return undefined;
  return port.consumers.get(call.callerNamespace) ?? port.producer;
}

interface Unresolved {
  readonly reason: string;
  readonly message: string;
}

interface FaultRecord {
  readonly fault?: ParsedFault;
  readonly problem?: string;
}

interface Target {
  readonly service: Pick<ServiceInfo, 'key'>;
  readonly port: number;
  readonly scope: 'producer' | 'consumer';
}

interface ParentOutcome {
  readonly parentRef: ParsedParentRef;
  readonly accepted: boolean;
  readonly reason: string;
  readonly message: string;
  readonly targets: readonly Target[];
}

interface Group {
  readonly scope: 'producer' | 'consumer';
  readonly namespace: string;
  readonly service: string;
  readonly port: number;
  readonly http: RankedEntry<HttpRequestInfo>[];
  readonly grpc: RankedEntry<GrpcRequestInfo>[];
  readonly routes: Set<string>;
}

export function compileRoutes(
  objects: readonly KubeObject[],
  services: ReadonlyMap<string, ServiceInfo>,
  opts: CompileOptions = {},
): CompileResult {
  const controllerName = opts.controllerName ?? DEFAULT_CONTROLLER_NAME;
  const errors: string[] = [];
  const unresolvedLines: string[] = [];

  // FaultInjection objects first: rules resolve their ExtensionRef filters against them.
  const faults = new Map<string, FaultRecord>();
  const faultStatuses: FaultInjectionStatus[] = [];
  const routeObjects: RouteObjectLike[] = [];
  for (const o of objects) {
    if (o.kind === 'HTTPRoute' || o.kind === 'GRPCRoute') routeObjects.push(o as unknown as RouteObjectLike);
    if (o.kind !== 'FaultInjection') continue;
    const meta = o.metadata as RouteObjectLike['metadata'];
    const ns = meta.namespace ?? 'default';
    const parsed = parseFaultInjection((o as { spec?: unknown }).spec);
    const generation = typeof meta.generation === 'number' ? meta.generation : undefined;
    if (parsed.ok) {
      faults.set(`${ns}/${meta.name}`, { fault: parsed.fault });
      faultStatuses.push({ namespace: ns, name: meta.name, generation, condition: condition('Accepted', true, 'Accepted', 'valid; in force for the rules that reference it', generation) });
    } else {
      const lines = parsed.issues.map((i) => `FaultInjection ${ns}/${meta.name}: ${i.path}: ${i.message}`);
      errors.push(...lines);
      const message = parsed.issues.map((i) => `${i.path}: ${i.message}`).join('; ');
      faults.set(`${ns}/${meta.name}`, { problem: message });
      faultStatuses.push({ namespace: ns, name: meta.name, generation, condition: condition('Accepted', false, 'Invalid', message, generation) });
    }
  }

  const groups = new Map<string, Group>();
  const statuses: RouteStatus[] = [];
  const lastGood = new Map<string, ParsedRoute>();
  // Statuses are finished once every route is placed: a GRPCRoute placed later can displace an HTTPRoute.
  const finishers: ((conflicted: ReadonlySet<string>) => RouteStatus)[] = [];

  for (const obj of routeObjects) {
    const kind = obj.kind as RouteKind;
    const ns = obj.metadata.namespace ?? 'default';
    const name = obj.metadata.name;
    const objKey = `${kind}/${ns}/${name}`;
    const generation = typeof obj.metadata.generation === 'number' ? obj.metadata.generation : undefined;
    const parsed = parseRoute(obj);
    let route: ParsedRoute | undefined;
    let invalid: readonly Issue[] | undefined;
    let fellBack = false;
    if (parsed.ok) {
      route = parsed.route;
    } else {
      invalid = parsed.issues;
      errors.push(...parsed.issues.map((i) => `${kind} ${ns}/${name}: ${i.path}: ${i.message}`));
      const previous = opts.previous?.lastGood.get(objKey);
      if (previous && (previous.uid === undefined || obj.metadata.uid === undefined || previous.uid === obj.metadata.uid)) {
        route = previous;
        fellBack = true;
      }
    }
    if (route) lastGood.set(objKey, route);

    // An invalid route reports on the parentRefs it names now (those that could be read), else on its last valid ones.
    const refs = parsed.ok ? parsed.route.parentRefs : parsed.parentRefs.length > 0 ? parsed.parentRefs : (route?.parentRefs ?? []);
    const ignoredParents = refs
      .filter((p) => !isHandledParent(p))
      .map((p) => ({
        parentRef: publicRef(p),
        reason: `${p.path}: parent ${p.group || 'core'}/${p.kind} is not handled by Trellis (mesh routes attach to Services: group "", kind Service; or to an EgressNetwork: group ${TRELLIS_TRAFFIC_GROUP})`,
      }));

    let compiledRules: readonly CompiledRule[] = [];
    let unresolved: Unresolved[] = [];
    let outcomes: ParentOutcome[] = [];
    if (route) {
      const resolved = resolveRoute(route, services, faults, opts);
      compiledRules = resolved.rules;
      unresolved = resolved.unresolved;
      outcomes = route.parentRefs
        .filter(isHandledParent)
        .map((p) => (isEgressParent(p) ? resolveEgressParent(route, p, opts.egress) : resolveParent(route, p, services)));
      for (const u of unresolved) unresolvedLines.push(`${kind} ${ns}/${name}: ${u.message}`);
      for (const outcome of outcomes) {
        for (const t of outcome.targets) addToGroup(groups, route, compiledRules, t);
      }
    }

    finishers.push((conflicted) => {
      let parents: RouteParentStatus[];
      if (invalid) {
        const reason = invalid[0]!.reason;
        const message = invalid.map((i) => `${i.path}: ${i.message}`).join('; ') +
          (fellBack ? '. The last valid version of this route stays in force until this is fixed.' : '');
        parents = refs
          .filter(isHandledParent)
          .map((p) => ({ parentRef: publicRef(p), controllerName, conditions: [condition('Accepted', false, reason, message, generation)] }));
      } else {
        const resolvedRefs = unresolved.length === 0
          ? condition('ResolvedRefs', true, 'ResolvedRefs', 'all references resolved', generation)
          : condition('ResolvedRefs', false, unresolved[0]!.reason, unresolved.map((u) => u.message).join('; '), generation);
        parents = outcomes.map((o) => {
          let accepted = condition('Accepted', o.accepted, o.reason, o.message, generation);
          if (o.accepted && o.targets.every((t) => conflicted.has(`${objKey}|${t.service.key}|${t.port}`))) {
            accepted = condition('Accepted', false, 'Conflicted',
              `a GRPCRoute attached to ${o.targets.map((t) => `${t.service.key}:${t.port}`).join(', ')} takes precedence over HTTPRoutes on the same Service port (GEP-1294)`, generation);
          }
          return { parentRef: publicRef(o.parentRef), controllerName, conditions: [accepted, resolvedRefs] };
        });
      }
      return {
        kind,
        namespace: ns,
        name,
        generation,
        parents,
        ignoredParents,
        errors: invalid ? invalid.map((i) => `${kind} ${ns}/${name}: ${i.path}: ${i.message}`) : [],
        unresolved: unresolved.map((u) => `${kind} ${ns}/${name}: ${u.message}`),
        fellBack,
      };
    });
  }

  // GEP-1294: on one Service port, GRPCRoutes win over HTTPRoutes (within the same producer/consumer group).
  const conflicted = new Set<string>();
  for (const g of groups.values()) {
    if (g.grpc.length > 0 && g.http.length > 0) {
      for (const e of g.http) conflicted.add(`HTTPRoute/${e.routeKey}|${g.service}|${g.port}`);
      g.http.length = 0;
    }
  }
  for (const finish of finishers) statuses.push(finish(conflicted));
  statuses.sort((a, b) => cmp(`${a.kind}/${a.namespace}/${a.name}`, `${b.kind}/${b.namespace}/${b.name}`));
  faultStatuses.sort((a, b) => cmp(`${a.namespace}/${a.name}`, `${b.namespace}/${b.name}`));

  return {
    table: buildTable(groups),
    statuses: deepFreeze(statuses),
    faults: deepFreeze(faultStatuses),
    errors: Object.freeze(errors),
    unresolved: Object.freeze(unresolvedLines),
    lastGood: new FrozenMap(lastGood),
  };
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function condition<T extends RouteCondition['type']>(type: T, ok: boolean, reason: string, message: string, generation: number | undefined): RouteCondition & { type: T } {
  return { type, status: ok ? 'True' : 'False', reason, message, ...(generation !== undefined ? { observedGeneration: generation } : {}) };
}

function publicRef(p: ParsedParentRef): ParentReference {
  return {
    group: p.group,
    kind: p.kind,
    ...(p.namespace !== undefined ? { namespace: p.namespace } : {}),
    name: p.name,
    ...(p.sectionName !== undefined ? { sectionName: p.sectionName } : {}),
    ...(p.port !== undefined ? { port: p.port } : {}),
  };
}

function resolveParent(route: ParsedRoute, ref: ParsedParentRef, services: ReadonlyMap<string, ServiceInfo>): ParentOutcome {
  const ns = ref.namespace ?? route.namespace;
  const key = `${ns}/${ref.name}`;
  const refuse = (message: string): ParentOutcome => ({ parentRef: ref, accepted: false, reason: 'NoMatchingParent', message: `${ref.path}: ${message}`, targets: [] });
  const svc = services.get(key);
  if (!svc) return refuse(`Service ${key} not found`);
  if (svc.vips.length === 0) return refuse(`Service ${key} is headless (no ClusterIP); mesh routes apply to calls to a ClusterIP`);
  let ports = svc.ports;
  if (ref.port !== undefined) ports = ports.filter((p) => p.port === ref.port);
  if (ref.sectionName !== undefined) ports = ports.filter((p) => p.name === ref.sectionName);
  if (ports.length === 0) {
    const want = [ref.port !== undefined ? `port ${ref.port}` : '', ref.sectionName !== undefined ? `named "${ref.sectionName}"` : ''].filter(Boolean).join(' ');
    return refuse(`Service ${key} has no TCP port ${want}`);
  }
  const scope = ns === route.namespace ? 'producer' : 'consumer';
  const portList = ports.map((p) => p.port).join(', ');
  return {
    parentRef: ref,
    accepted: true,
    reason: 'Accepted',
    message: scope === 'producer'
      ? `applies to every caller of Service ${key} port ${portList}`
      : `applies to callers in namespace ${route.namespace} of Service ${key} port ${portList} (consumer route)`,
    targets: ports.map((p) => ({ service: svc, port: p.port, scope })),
  };
}

/**
 * An EgressNetwork parent: of the route's own namespace (an EgressNetwork governs its namespace's pods), with a port
 * (egress has no Service ports to default to), and each of the route's hostnames a host the EgressNetwork declares
 * (none: every declared host). Targets are table keys (egressRouteKey), as a Service key is.
 */
function resolveEgressParent(route: ParsedRoute, ref: ParsedParentRef, egress: EgressTable | undefined): ParentOutcome {
  const ns = ref.namespace ?? route.namespace;
  const key = `${ns}/${ref.name}`;
  const refuse = (message: string): ParentOutcome => ({ parentRef: ref, accepted: false, reason: 'NoMatchingParent', message: `${ref.path}: ${message}`, targets: [] });
  if (ns !== route.namespace) return refuse(`EgressNetwork ${key} is in another namespace; an EgressNetwork governs its own namespace's pods, so attach the route from namespace ${ns}`);
  const network = egress?.byNamespace.get(ns)?.find((e) => e.name === ref.name);
  if (!network || network.standIn) return refuse(network ? `EgressNetwork ${key} is invalid` : `EgressNetwork ${key} not found`);
  if (ref.port === undefined) return refuse('a port is required for an EgressNetwork parent (the port the clients dial, e.g. 80)');
  if (ref.sectionName !== undefined) return refuse('sectionName is not supported for an EgressNetwork parent');
  const declared = new Set([...network.exact.keys(), ...network.wildcards.map((w) => w.name)]);
  const unknown = route.hostnames.filter((h) => !declared.has(h));
  if (unknown.length > 0) return refuse(`${unknown.join(', ')} ${unknown.length === 1 ? 'is' : 'are'} not declared in EgressNetwork ${key} (spec.hosts: ${[...declared].join(', ') || 'none'})`);
  const hosts = route.hostnames.length > 0 ? route.hostnames : ['*'];
  return {
    parentRef: ref,
    accepted: true,
    reason: 'Accepted',
    message: `applies to plaintext HTTP from namespace ${ns} to ${route.hostnames.length > 0 ? route.hostnames.join(', ') : 'every host declared'} in EgressNetwork ${key}, port ${ref.port}`,
    targets: hosts.map((h) => ({ service: { key: egressRouteKey(key, h) }, port: ref.port!, scope: 'producer' as const })),
  };
}

function addToGroup(groups: Map<string, Group>, route: ParsedRoute, rules: readonly CompiledRule[], t: Target): void {
  const callers = t.scope === 'producer' ? '*' : route.namespace;
  const key = `${callers}|${t.service.key}|${t.port}`;
  let g = groups.get(key);
  if (!g) {
    g = { scope: t.scope, namespace: route.namespace, service: t.service.key, port: t.port, http: [], grpc: [], routes: new Set() };
    groups.set(key, g);
  }
  // Two parentRefs of one route can name the same port (one with port, one without): add its rules once.
  if (g.routes.has(`${route.kind}/${route.key}`)) return;
  g.routes.add(`${route.kind}/${route.key}`);
  route.rules.forEach((parsedRule, ri) => {
    const rule = rules[ri]!;
    if (route.kind === 'HTTPRoute') {
      parsedRule.http.forEach((m, mi) => {
        const matched: MatchedRule = { rule, pathPrefix: m.path.type === 'PathPrefix' ? m.path.value : undefined, match: describeHttpMatch(m) };
        g.http.push(ranked(route, parsedRule, mi, httpMatchRank(m), { test: compileHttpMatch(m), matched }));
      });
    } else if (parsedRule.grpc.length === 0) {
      const matched: MatchedRule = { rule, pathPrefix: undefined, match: 'any' };
      g.grpc.push(ranked(route, parsedRule, 0, [0, 0, 0], { test: () => true, matched }));
    } else {
      parsedRule.grpc.forEach((m, mi) => {
        const matched: MatchedRule = { rule, pathPrefix: undefined, match: describeGrpcMatch(m) };
        g.grpc.push(ranked(route, parsedRule, mi, grpcMatchRank(m), { test: compileGrpcMatch(m), matched }));
      });
    }
  });
}

function ranked<Req>(route: ParsedRoute, rule: ParsedRule, matchIndex: number, rank: readonly number[], entry: MatchEntry<Req>): RankedEntry<Req> {
  return { rank, createdMs: route.createdMs, routeKey: route.key, ruleIndex: rule.index, matchIndex, entry };
}

function buildTable(groups: Map<string, Group>): RouteTable {
  if (groups.size === 0) return EMPTY_TABLE;
  const byService = new Map<string, Map<number, { producer?: CompiledRoutes; consumers: Map<string, CompiledRoutes> }>>();
  for (const g of groups.values()) {
    const grpc = g.grpc.length > 0;
    g.grpc.sort(compareRanked);
    g.http.sort(compareRanked);
    const order: readonly { routeKey: string }[] = grpc ? g.grpc : g.http;
    if (order.length === 0) continue;
    const routeOrder: string[] = [];
    for (const e of order) if (!routeOrder.includes(e.routeKey)) routeOrder.push(e.routeKey);
    const compiled: CompiledRoutes = deepFreeze({
      kind: grpc ? 'GRPCRoute' : 'HTTPRoute',
      service: g.service,
      port: g.port,
      scope: g.scope,
      namespace: g.namespace,
      routes: routeOrder,
      http: grpc ? [] : g.http.map((e) => e.entry),
      grpc: g.grpc.map((e) => e.entry),
    });
    let ports = byService.get(g.service);
    if (!ports) byService.set(g.service, (ports = new Map()));
    let slot = ports.get(g.port);
    if (!slot) ports.set(g.port, (slot = { consumers: new Map() }));
    if (g.scope === 'producer') slot.producer = compiled;
    else slot.consumers.set(g.namespace, compiled);
  }
  const services = new FrozenMap(
    [...byService].map(([svc, ports]) => [
      svc,
      new FrozenMap([...ports].map(([port, slot]): [number, PortRoutes] => [
        port,
        Object.freeze({ ...(slot.producer ? { producer: slot.producer } : {}), consumers: new FrozenMap(slot.consumers) }),
      ])),
    ] as const),
  );
  return Object.freeze({ services });
}

function resolveRoute(
  route: ParsedRoute,
  services: ReadonlyMap<string, ServiceInfo>,
  faults: ReadonlyMap<string, FaultRecord>,
  opts: CompileOptions,
): { rules: CompiledRule[]; unresolved: Unresolved[] } {
  const unresolved: Unresolved[] = [];
  const parentServices = new Set(route.parentRefs.filter((p) => p.group === '' && p.kind === 'Service').map((p) => `${p.namespace ?? route.namespace}/${p.name}`));

  const resolveService = (ref: ParsedObjectRef): { svc: ServiceInfo; port: number } | Unresolved => {
    if (ref.group !== '' || ref.kind !== 'Service') {
      return { reason: 'InvalidKind', message: `${ref.path}: ${ref.group || 'core'}/${ref.kind} is not supported as a backend (only Services, group "")` };
    }
    const ns = ref.namespace ?? route.namespace;
    const key = `${ns}/${ref.name}`;
    const svc = services.get(key);
    if (!svc) return { reason: 'BackendNotFound', message: `${ref.path}: Service ${key} not found` };
    if (ns !== route.namespace && opts.crossNamespaceBackends !== 'allow' && !parentServices.has(key)) {
      return {
        reason: 'RefNotPermitted',
        message: `${ref.path}: Service ${key} is in another namespace; a cross-namespace backendRef needs a ReferenceGrant, which Trellis does not support yet (move the route to namespace ${ns} or reference a Service in ${route.namespace})`,
      };
    }
    const port = ref.port!;
    if (!svc.ports.some((p) => p.port === port)) return { reason: 'BackendNotFound', message: `${ref.path}: Service ${key} has no TCP port ${port}` };
    return { svc, port };
  };

  const compileFilter = (f: ParsedFilter): { filter: CompiledFilter } | { failure: Unresolved; fatal: boolean } => {
    switch (f.type) {
      case 'RequestHeaderModifier':
      case 'ResponseHeaderModifier':
        return { filter: { type: f.type, modifier: f.modifier } };
      case 'URLRewrite':
        return { filter: { type: f.type, rewrite: f.rewrite } };
      case 'RequestRedirect':
        return { filter: { type: f.type, redirect: f.redirect } };
      case 'RequestMirror': {
        const res = resolveService(f.backendRef);
        // The spec: an unresolved mirror is dropped, not answered with an error.
        if ('reason' in res) return { failure: { reason: res.reason, message: `${res.message} (the mirror is not sent)` }, fatal: false };
        return { filter: { type: f.type, mirror: { backend: serviceBackend(res.svc, res.port, 0, []), percent: f.percent } } };
      }
      case 'ExtensionRef': {
        if (f.group !== TRELLIS_TRAFFIC_GROUP || f.kind !== 'FaultInjection') {
          return {
            failure: {
              reason: 'InvalidKind',
              message: `${f.path}.extensionRef: ${f.group || 'core'}/${f.kind} is not a filter Trellis knows (supported: ${TRELLIS_TRAFFIC_GROUP}/FaultInjection); requests of this rule are answered 500`,
            },
            fatal: true,
          };
        }
        const source = `${route.namespace}/${f.name}`;
        const rec = faults.get(source);
        if (!rec?.fault) {
          return {
            failure: rec
              ? { reason: 'InvalidFaultInjection', message: `${f.path}.extensionRef: FaultInjection ${source} is invalid (${rec.problem}); requests of this rule are answered 500` }
              : { reason: 'BackendNotFound', message: `${f.path}.extensionRef: FaultInjection ${source} not found; requests of this rule are answered 500` },
            fatal: true,
          };
        }
        const fault: FaultSpec = { source, ...rec.fault };
        return { filter: { type: 'FaultInjection', fault } };
      }
    }
  };

  const rules = route.rules.map((r): CompiledRule => {
    let error: CompiledRule['error'];
    const filters: CompiledFilter[] = [];
    for (const f of r.filters) {
      const c = compileFilter(f);
      if ('failure' in c) {
        unresolved.push(c.failure);
        // A filter that cannot be applied must not be skipped: the rule answers 500 (spec, ExtensionRef).
        if (c.fatal) error ??= { status: 500, reason: c.failure.message };
      } else {
        filters.push(c.filter);
      }
    }
    const backends = r.backendRefs.map((b): CompiledBackend => {
      const res = resolveService(b);
      if ('reason' in res) {
        unresolved.push({ reason: res.reason, message: `${res.message} (its share, weight ${b.weight}, is answered 500)` });
        return { kind: 'Error', weight: b.weight, status: 500, grpcStatus: 14, reason: res.message };
      }
      const backendFilters: CompiledFilter[] = [];
      for (const f of b.filters) {
        if (f.type === 'RequestHeaderModifier' || f.type === 'ResponseHeaderModifier') backendFilters.push({ type: f.type, modifier: f.modifier });
      }
      return serviceBackend(res.svc, res.port, b.weight, backendFilters);
    });
    const cumulativeWeights: number[] = [];
    let total = 0;
    for (const b of backends) cumulativeWeights.push((total += b.weight));

    const pick = <T extends CompiledFilter['type']>(type: T) => filters.find((f) => f.type === type) as Extract<CompiledFilter, { type: T }> | undefined;
    const requestHeaders = pick('RequestHeaderModifier')?.modifier;
    const responseHeaders = pick('ResponseHeaderModifier')?.modifier;
    const rewrite = pick('URLRewrite')?.rewrite;
    const redirect = pick('RequestRedirect')?.redirect;
    const fault = pick('FaultInjection')?.fault;
    const mirrors = filters.filter((f): f is Extract<CompiledFilter, { type: 'RequestMirror' }> => f.type === 'RequestMirror').map((f) => f.mirror);
    return deepFreeze({
      routeKind: route.kind,
      route: route.key,
      name: r.name ?? String(r.index),
      index: r.index,
      timeouts: r.timeouts,
      ...(r.retry ? { retry: r.retry } : {}),
      filters,
      ...(requestHeaders ? { requestHeaders } : {}),
      ...(responseHeaders ? { responseHeaders } : {}),
      ...(rewrite ? { rewrite } : {}),
      ...(redirect ? { redirect } : {}),
      mirrors,
      ...(fault ? { fault } : {}),
      ...(error ? { error } : {}),
      backends,
      totalWeight: total,
      cumulativeWeights,
    });
  });
  return { rules, unresolved };
}

function serviceBackend(svc: ServiceInfo, port: number, weight: number, filters: CompiledFilter[]): ServiceBackend {
  const req = filters.find((f) => f.type === 'RequestHeaderModifier') as { modifier: HeaderModifier } | undefined;
  const res = filters.find((f) => f.type === 'ResponseHeaderModifier') as { modifier: HeaderModifier } | undefined;
  return {
    kind: 'Service',
    weight,
    service: svc.key,
    namespace: svc.namespace,
    name: svc.name,
    port,
    host: svc.host,
    filters,
    ...(req ? { requestHeaders: req.modifier } : {}),
    ...(res ? { responseHeaders: res.modifier } : {}),
  };
}

/** Freezes plain objects and arrays, recursively; leaves functions, RegExps and class instances alone. */
export function deepFreeze<T>(value: T): T {
  if (typeof value !== 'object' || value === null || Object.isFrozen(value)) return value;
  const proto = Object.getPrototypeOf(value);
  if (!Array.isArray(value) && proto !== Object.prototype && proto !== null) return value;
  Object.freeze(value);
  for (const v of Object.values(value as object)) deepFreeze(v);
  return value;
}
