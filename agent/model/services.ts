// Services as the data path reads them: each Service's ClusterIPs and TCP ports, every port with its endpoints
// from the Service's EndpointSlices (matched by port name, as kube-proxy does). Compiled once per snapshot.
import type { EndpointSlice, Service } from './objects.js';

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

/** Every Service compiled, keyed namespace/name; `slicesByService` holds each Service's EndpointSlices. */
export function compileServices(services: readonly Service[], slicesByService: ReadonlyMap<string, readonly EndpointSlice[]>): Map<string, ServiceInfo> {
  const compiled = new Map<string, ServiceInfo>();
  for (const svc of services) {
    const namespace = svc.metadata.namespace ?? 'default';
    const name = svc.metadata.name;
    const key = `${namespace}/${name}`;
    compiled.set(key, Object.freeze({
      key,
      namespace,
      name,
      host: `${name}.${namespace}.svc.cluster.local`,
      vips: Object.freeze(vipsOf(svc)),
      ports: Object.freeze(portsOf(svc, slicesByService.get(key))),
    }));
  }
  return compiled;
}

/** ClusterIP then clusterIPs, each once, without "None". */
function vipsOf(svc: Service): string[] {
  const vips: string[] = [];
  const add = (ip: string | undefined) => {
    if (ip && ip !== 'None' && !vips.includes(ip)) vips.push(ip);
  };
  add(svc.spec.clusterIP);
  for (const ip of svc.spec.clusterIPs ?? []) add(ip);
  return vips;
}

/** The Service's TCP ports with their endpoints. */
function portsOf(svc: Service, slices: readonly EndpointSlice[] = []): ServicePortInfo[] {
  const ports: ServicePortInfo[] = [];
  for (const p of svc.spec.ports) {
    if ((p.protocol ?? 'TCP') !== 'TCP') continue;
    ports.push({ name: p.name, port: p.port, appProtocol: p.appProtocol, endpoints: endpointsFor(slices, p.name) });
  }
  return ports;
}

/** Up to this many endpoints, a duplicate is looked for in the list itself; beyond, in a set of "ip:port". */
const SCAN_FOR_DUPLICATES = 32;

/** EndpointSlice ports are matched to Service ports by name, as kube-proxy does; an ip:port is listed once. */
function endpointsFor(slices: readonly EndpointSlice[], portName: string | undefined): Endpoint[] {
  const out: Endpoint[] = [];
  let seen: Set<string> | undefined;
  for (const slice of slices) {
    if (slice.addressType === 'FQDN') continue;
    const sp = (slice.ports ?? []).find((p) => (p.name ?? '') === (portName ?? ''));
    if (!sp?.port) continue;
    const port = sp.port;
    for (const ep of slice.endpoints) {
      const ready = ep.conditions?.ready !== false;
      for (const ip of ep.addresses) {
        if (seen) {
          const id = `${ip}:${port}`;
          if (seen.has(id)) continue;
          seen.add(id);
        } else if (out.some((e) => e.ip === ip && e.port === port)) continue;
        out.push(Object.freeze({ ip, port, ready }));
        if (!seen && out.length > SCAN_FOR_DUPLICATES) seen = new Set(out.map((e) => `${e.ip}:${e.port}`));
      }
    }
  }
  return out;
}
