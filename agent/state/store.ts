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
} from '../sources/objects.js';
import { toWorkload, type Workload } from './workload.js';

export interface Endpoint {
  readonly ip: string;
  readonly port: number;
  readonly ready: boolean;
}

export interface ServicePortInfo {
  readonly name: string | undefined;
  readonly port: number;
  readonly appProtocol: string | undefined;
  readonly endpoints: readonly Endpoint[];
}

export interface ServiceInfo {
  /** namespace/name */
  readonly key: string;
  readonly namespace: string;
  readonly name: string;
  /** The FQDN used as destination_service. */
  readonly host: string;
  readonly vips: readonly string[];
  readonly ports: readonly ServicePortInfo[];
}

export class MeshState {
  readonly version: number;
  readonly workloads: ReadonlyMap<string, Workload>;
  readonly services: ReadonlyMap<string, ServiceInfo>;
  private readonly byIp: ReadonlyMap<string, Workload>;
  private readonly byVip: ReadonlyMap<string, ServiceInfo>;
  private readonly byEndpoint: ReadonlyMap<string, ServiceInfo>;

  constructor(version: number, workloads: Map<string, Workload>, services: Map<string, ServiceInfo>) {
    this.version = version;
    this.workloads = workloads;
    this.services = services;
    const byIp = new Map<string, Workload>();
    for (const w of workloads.values()) if (w.ip) byIp.set(w.ip, w);
    const byVip = new Map<string, ServiceInfo>();
    for (const s of services.values()) for (const vip of s.vips) byVip.set(vip, s);
    const byEndpoint = new Map<string, ServiceInfo>();
    for (const s of services.values()) {
      for (const p of s.ports) for (const e of p.endpoints) if (!byEndpoint.has(`${e.ip}:${e.port}`)) byEndpoint.set(`${e.ip}:${e.port}`, s);
    }
    this.byIp = byIp;
    this.byVip = byVip;
    this.byEndpoint = byEndpoint;
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
    return this.byEndpoint.get(`${ip}:${port}`);
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

  constructor(private readonly inputs: { trustDomain: string; logger: Logger }) {}

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
    const next = compile(objects, this.inputs.trustDomain, this.state.version + 1);
    const previous = this.state;
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
}

export function compile(objects: readonly KubeObject[], trustDomain: string, version: number): MeshState {
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
        const list = slicesByService.get(key) ?? [];
        list.push(o);
        slicesByService.set(key, list);
        break;
      }
    }
  }
  const workloads = new Map<string, Workload>();
  for (const pod of pods) {
    const w = toWorkload(pod, namespaces.get(pod.metadata.namespace ?? 'default'), trustDomain);
    workloads.set(w.key, w);
  }
  const compiled = new Map<string, ServiceInfo>();
  for (const svc of services) {
    const namespace = svc.metadata.namespace ?? 'default';
    const key = `${namespace}/${svc.metadata.name}`;
    const vips = [...new Set([svc.spec.clusterIP, ...(svc.spec.clusterIPs ?? [])])].filter(
      (ip): ip is string => !!ip && ip !== 'None',
    );
    const slices = slicesByService.get(key) ?? [];
    const ports = svc.spec.ports
      .filter((p) => (p.protocol ?? 'TCP') === 'TCP')
      .map((p): ServicePortInfo => ({
        name: p.name,
        port: p.port,
        appProtocol: p.appProtocol,
        endpoints: endpointsFor(slices, p.name),
      }));
    compiled.set(key, Object.freeze({
      key,
      namespace,
      name: svc.metadata.name,
      host: `${svc.metadata.name}.${namespace}.svc.cluster.local`,
      vips: Object.freeze(vips),
      ports: Object.freeze(ports),
    }));
  }
  return new MeshState(version, workloads, compiled);
}

/** EndpointSlice ports are matched to Service ports by name, as kube-proxy does. */
function endpointsFor(slices: EndpointSlice[], portName: string | undefined): Endpoint[] {
  const out: Endpoint[] = [];
  const seen = new Set<string>();
  for (const slice of slices) {
    if (slice.addressType === 'FQDN') continue;
    const sp = (slice.ports ?? []).find((p) => (p.name ?? '') === (portName ?? ''));
    if (!sp?.port) continue;
    for (const ep of slice.endpoints) {
      for (const ip of ep.addresses) {
        const id = `${ip}:${sp.port}`;
        if (seen.has(id)) continue;
        seen.add(id);
        out.push(Object.freeze({ ip, port: sp.port, ready: ep.conditions?.ready !== false }));
      }
    }
  }
  return out;
}
