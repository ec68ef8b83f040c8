// The one store: sources hand it snapshots, it compiles them into an immutable MeshState and swaps it in.
// Lookups on the request path read the current MeshState only; nothing is computed there.
import type { Logger } from 'pino';
import {
  SERVICE_NAME_LABEL,
  type EndpointSlice,
  type KubeObject,
  type Namespace,
  type Pod,
  type Service,
} from '../model/objects.js';
import { compilePolicies, pendingPolicies, type PolicySet } from '../model/policy/policy-set.js';
import { compileEgressNetworks, EMPTY_EGRESS, type EgressTable } from '../model/egress.js';
import { compileRetryBudgets, type RetryBudgetSpec } from '../model/retry-budget.js';
import { compileRoutes, routeFor, type CompileResult, type CompiledRoutes } from '../model/routes/index.js';
import { compileServices, type ServiceInfo, type ServicePortInfo } from '../model/services.js';
import { toWorkload, type Workload } from './workload.js';

/** The L7 configuration compiled with a snapshot: routes per Service port and retry budgets per Service. */
export interface TrafficConfig {
  readonly routes: CompileResult;
  /** Service key (namespace/name) -> its budget; Services without one use RETRY_BUDGET_DEFAULTS. */
  readonly retryBudgets: ReadonlyMap<string, RetryBudgetSpec>;
  /** Invalid RetryBudget objects, one line each naming the object and field. */
  readonly budgetErrors: readonly string[];
  /** EgressNetworks per client namespace (model/egress.ts). */
  readonly egress: EgressTable;
  /** Invalid EgressNetwork objects, same format; an invalid one is not in force (its addresses are not governed). */
  readonly egressErrors: readonly string[];
}

/** One endpoint (IP and port): the first Service found there and every Service port it serves. */
interface EndpointEntry {
  readonly port: number;
  readonly service: ServiceInfo;
  ports: readonly ServicePortInfo[];
  /** The entry of another port on the same IP. */
  next: EndpointEntry | undefined;
}

const NO_PORTS: readonly ServicePortInfo[] = Object.freeze([]);

function endpointEntry(index: ReadonlyMap<string, EndpointEntry>, ip: string, port: number): EndpointEntry | undefined {
  let e = index.get(ip);
  while (e && e.port !== port) e = e.next;
  return e;
}

/**
 * Services in order, their ports in order: an endpoint's first Service, and its ports in that order. Most
 * endpoints serve one port of one Service; they share that port's one-element list.
 */
function indexEndpoints(services: ReadonlyMap<string, ServiceInfo>): Map<string, EndpointEntry> {
  const index = new Map<string, EndpointEntry>();
  for (const s of services.values()) {
    for (const p of s.ports) {
      let only: readonly ServicePortInfo[] | undefined;
      for (const e of p.endpoints) {
        let entry = index.get(e.ip);
        let last = entry;
        while (entry && entry.port !== e.port) {
          last = entry;
          entry = entry.next;
        }
        if (entry) {
          // Never the shared list: a copy with this port added.
          entry.ports = Object.freeze([...entry.ports, p]);
          continue;
        }
        only ??= Object.freeze([p]);
        const added: EndpointEntry = { port: e.port, service: s, ports: only, next: undefined };
        if (last) last.next = added;
        else index.set(e.ip, added);
      }
    }
  }
  return index;
}

export class MeshState {
  readonly version: number;
  readonly workloads: ReadonlyMap<string, Workload>;
  readonly services: ReadonlyMap<string, ServiceInfo>;
  readonly traffic: TrafficConfig;
  /** AuthorizationPolicy and PeerAuthentication in force; not ready (denies everything) before the first snapshot. */
  readonly policies: PolicySet;
  private readonly byIp: ReadonlyMap<string, Workload>;
  private readonly byVip: ReadonlyMap<string, ServiceInfo>;
  /** Endpoint IP -> what serves there, one entry per port (keyed by the IP alone: no "ip:port" string per endpoint). */
  private readonly byEndpoint: ReadonlyMap<string, EndpointEntry>;

  constructor(version: number, workloads: Map<string, Workload>, services: Map<string, ServiceInfo>, traffic?: TrafficConfig, policies?: PolicySet) {
    this.version = version;
    this.workloads = workloads;
    this.services = services;
    this.policies = policies ?? pendingPolicies();
    this.traffic = traffic ?? { routes: compileRoutes([], services), retryBudgets: new Map(), budgetErrors: [], egress: EMPTY_EGRESS, egressErrors: [] };
    const byIp = new Map<string, Workload>();
    for (const w of workloads.values()) if (w.ip) byIp.set(w.ip, w);
    const byVip = new Map<string, ServiceInfo>();
    for (const s of services.values()) for (const vip of s.vips) byVip.set(vip, s);
    this.byIp = byIp;
    this.byVip = byVip;
    this.byEndpoint = indexEndpoints(services);
  }

  static empty(): MeshState {
    return new MeshState(0, new Map(), new Map());
  }

  workloadByIp(ip: string): Workload | undefined {
    return this.byIp.get(ip);
  }

  serviceByVip(ip: string): ServiceInfo | undefined {
    return this.byVip.get(ip);
  }

  /** The service an endpoint belongs to (the destination reporter's destination_service). */
  serviceByEndpoint(ip: string, port: number): ServiceInfo | undefined {
    return endpointEntry(this.byEndpoint, ip, port)?.service;
  }

  /**
   * The Service a caller says it called (`host`), when this endpoint is one of its endpoints; otherwise the
   * endpoint's first Service, as serviceByEndpoint.
   */
  serviceCalled(ip: string, port: number, host: string | undefined): ServiceInfo | undefined {
    const first = this.serviceByEndpoint(ip, port);
    if (!host || !first || first.host === host) return first;
    // host is name.namespace.svc.<domain>: one lookup, then the check that the Service has this endpoint.
    const [name, namespace] = host.split('.', 2);
    const s = this.services.get(`${namespace}/${name}`);
    if (!s || s.host !== host) return first;
    for (const p of s.ports) for (const e of p.endpoints) if (e.ip === ip && e.port === port) return s;
    return first;
  }

  /** Every Service port an endpoint serves (for their declared protocols). */
  servicePortsByEndpoint(ip: string, port: number): readonly ServicePortInfo[] {
    return endpointEntry(this.byEndpoint, ip, port)?.ports ?? NO_PORTS;
  }

  /** The routes for a call to a Service port from a namespace (consumer routes win over producer routes). */
  routesFor(service: string, port: number, callerNamespace: string): CompiledRoutes | undefined {
    return routeFor(this.traffic.routes.table, { service, port, callerNamespace });
  }

  /** Pods scheduled on a node. */
  workloadsOnNode(node: string): Workload[] {
    return [...this.workloads.values()].filter((w) => w.node === node);
  }
}

export type StateListener = (next: MeshState, previous: MeshState) => void;

export class Store {
  private state = MeshState.empty();
  private readonly listeners = new Set<StateListener>();
  private synced = false;

  constructor(private readonly inputs: { trustDomain: string; logger: Logger; onInvalid?: (count: number) => void }) {}

  current(): MeshState {
    return this.state;
  }

  /** True once a source delivered its first full snapshot. */
  isSynced(): boolean {
    return this.synced;
  }

  subscribe(fn: StateListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** The single writer: replace everything a source knows, compile, swap, notify. */
  replace(objects: readonly KubeObject[]): MeshState {
    const next = compile(objects, this.inputs.trustDomain, this.state.version + 1, this.state);
    const previous = this.state;
    this.reportTraffic(next.traffic, previous.traffic);
    this.reportPolicies(next.policies, previous.policies);
    this.state = next;
    this.synced = true;
    for (const fn of this.listeners) {
      try {
        fn(next, previous);
      } catch (err) {
        this.inputs.logger.error({ err }, 'state listener failed');
      }
    }
    return next;
  }

  private reportPolicies(next: PolicySet, previous: PolicySet): void {
    const seen = new Set(previous.errors);
    const fresh = next.errors.filter((e) => !seen.has(e));
    for (const e of fresh) this.inputs.logger.warn({ reason: e }, 'policy rejected; its last valid version (if any) stays in force');
    if (fresh.length) this.inputs.onInvalid?.(fresh.length);
  }

  // Route and budget problems are logged once when they appear, not on every snapshot that still has them.
  private reportTraffic(next: TrafficConfig, previous: TrafficConfig): void {
    const seen = new Set([...previous.routes.errors, ...previous.routes.unresolved, ...previous.budgetErrors, ...previous.egressErrors]);
    const fresh = [...next.routes.errors, ...next.budgetErrors, ...next.egressErrors].filter((e) => !seen.has(e));
    const unresolved = next.routes.unresolved.filter((e) => !seen.has(e));
    for (const e of next.routes.errors) if (!seen.has(e)) this.inputs.logger.warn({ reason: e }, 'route rejected; its last valid version stays in force');
    for (const e of next.budgetErrors) if (!seen.has(e)) this.inputs.logger.warn({ reason: e }, 'retry budget rejected');
    for (const e of next.egressErrors) if (!seen.has(e)) this.inputs.logger.warn({ reason: e }, 'egress network rejected');
    for (const e of unresolved) this.inputs.logger.warn({ reason: e }, 'route reference does not resolve');
    if (fresh.length) this.inputs.onInvalid?.(fresh.length);
  }
}

export function compile(objects: readonly KubeObject[], trustDomain: string, version: number, previous?: MeshState): MeshState {
  const namespaces = new Map<string, Namespace>();
  const pods: Pod[] = [];
  const services: Service[] = [];
  const slicesByService = new Map<string, EndpointSlice[]>();
  for (const o of objects) {
    switch (o.kind) {
      case 'Namespace':
        namespaces.set(o.metadata.name, o);
        break;
      case 'Pod':
        pods.push(o);
        break;
      case 'Service':
        services.push(o);
        break;
      case 'EndpointSlice': {
        const svc = o.metadata.labels?.[SERVICE_NAME_LABEL];
        if (!svc) break;
        const key = `${o.metadata.namespace ?? 'default'}/${svc}`;
        const list = slicesByService.get(key);
        if (list) list.push(o);
        else slicesByService.set(key, [o]);
        break;
      }
    }
  }
  const workloads = new Map<string, Workload>();
  for (const pod of pods) {
    const w = toWorkload(pod, namespaces.get(pod.metadata.namespace ?? 'default'), trustDomain);
    workloads.set(w.key, w);
  }
  const compiled = compileServices(services, slicesByService);
  // EgressNetworks first: routes may attach to them.
  const egress = compileEgressNetworks(objects, previous?.traffic.egress);
  const routes = compileRoutes(objects, compiled, { ...(previous && { previous: previous.traffic.routes }), egress: egress.table });
  const budgets = compileRetryBudgets(objects, compiled);
  const policies = compilePolicies(objects, { trustDomain, ...(previous && { previous: previous.policies }) });
  return new MeshState(version, workloads, compiled, { routes, retryBudgets: budgets.budgets, budgetErrors: budgets.errors, egress: egress.table, egressErrors: egress.errors }, policies);
}
