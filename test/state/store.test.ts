import { describe, expect, it } from 'vitest';
import type { ServicePortInfo } from '../../agent/model/services.js';
import { compile, type MeshState } from '../../agent/state/store.js';
import { resolveOutbound } from '../../agent/proxy/resolve.js';
import type { EndpointSlice, KubeObject, Service } from '../../agent/model/objects.js';
import { mulberry32 } from '../support/prng.js';

const objects: KubeObject[] = [
  { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', annotations: { 'trellis.dev/mesh': 'enabled' } } },
  { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'plain' } },
  {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name: 'server-1', namespace: 'demo', labels: { app: 'server' } },
    spec: { nodeName: 'b', serviceAccountName: 'server', containers: [{ name: 'c' }] },
    status: { podIP: '10.244.2.2' },
  },
  {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name: 'opted-out', namespace: 'demo', annotations: { 'trellis.dev/mesh': 'disabled' } },
    spec: { nodeName: 'b', containers: [{ name: 'c' }] },
    status: { podIP: '10.244.2.3' },
  },
  {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name: 'opted-in', namespace: 'plain', annotations: { 'trellis.dev/mesh': 'enabled' } },
    spec: { nodeName: 'a', containers: [{ name: 'c' }] },
    status: { podIP: '10.244.1.2' },
  },
  {
    apiVersion: 'v1', kind: 'Service', metadata: { name: 'server', namespace: 'demo' },
    spec: { clusterIP: '10.96.0.10', selector: { app: 'server' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }, { name: 'empty', port: 81 }] },
  },
  {
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice',
    metadata: { name: 'server-x', namespace: 'demo', labels: { 'kubernetes.io/service-name': 'server' } },
    addressType: 'IPv4',
    ports: [{ name: 'http', port: 8080 }],
    endpoints: [{ addresses: ['10.244.2.2'], conditions: { ready: true } }, { addresses: ['10.244.2.9'], conditions: { ready: false } }],
  },
];

describe('store', () => {
  const state = compile(objects, 'cluster.local', 1);

  it('derives opt-in from namespace and pod annotations, pod wins', () => {
    expect(state.workloads.get('demo/server-1')!.meshed).toBe(true);
    expect(state.workloads.get('demo/opted-out')!.meshed).toBe(false);
    expect(state.workloads.get('plain/opted-in')!.meshed).toBe(true);
  });

  it('gives workloads SPIFFE identities and canonical names', () => {
    const w = state.workloadByIp('10.244.2.2')!;
    expect(w.identity).toBe('spiffe://cluster.local/ns/demo/sa/server');
    expect(w.name).toBe('server');
    expect(state.workloads.get('demo/opted-out')!.identity).toBe('spiffe://cluster.local/ns/demo/sa/default');
  });

  it('resolves a ClusterIP to a ready endpoint over HBONE', () => {
    const t = resolveOutbound(state, { address: '10.96.0.10', port: 80 }, () => 0.99);
    expect(t).toMatchObject({ kind: 'hbone', ip: '10.244.2.2', port: 8080 });
    if (t.kind === 'hbone') expect(t.service!.host).toBe('server.demo.svc.cluster.local');
  });

  it('sends unmeshed and unknown destinations as plain TCP', () => {
    expect(resolveOutbound(state, { address: '10.244.2.3', port: 9 }, Math.random)).toMatchObject({ kind: 'passthrough', ip: '10.244.2.3' });
    expect(resolveOutbound(state, { address: '192.0.2.1', port: 443 }, Math.random)).toMatchObject({ kind: 'passthrough', ip: '192.0.2.1' });
  });

  it('fails clearly for a port the service lacks or with no endpoints', () => {
    expect(resolveOutbound(state, { address: '10.96.0.10', port: 82 }, Math.random)).toMatchObject({ kind: 'fail', reason: 'no_service_port' });
    const t = resolveOutbound(state, { address: '10.96.0.10', port: 81 }, Math.random);
    expect(t).toMatchObject({ kind: 'fail', reason: 'no_endpoints' });
  });
});

/**
 * The Services and endpoint lookups as the plain reading of Kubernetes gives them, written the simple way:
 * what compile() must agree with however it gets there.
 */
function reference(objects: readonly KubeObject[]) {
  const services = new Map<string, unknown>();
  const byEndpoint = new Map<string, string>();
  const portsByEndpoint = new Map<string, { service: string; name: string | undefined }[]>();
  for (const svc of objects.filter((o): o is Service => o.kind === 'Service')) {
    const namespace = svc.metadata.namespace ?? 'default';
    const key = `${namespace}/${svc.metadata.name}`;
    const slices = objects.filter(
      (o): o is EndpointSlice => o.kind === 'EndpointSlice' && (o.metadata.namespace ?? 'default') === namespace && o.metadata.labels?.['kubernetes.io/service-name'] === svc.metadata.name,
    );
    const ports = svc.spec.ports
      .filter((p) => (p.protocol ?? 'TCP') === 'TCP')
      .map((p) => {
        const endpoints: { ip: string; port: number; ready: boolean }[] = [];
        for (const slice of slices.filter((sl) => sl.addressType !== 'FQDN')) {
          const sp = (slice.ports ?? []).find((x) => (x.name ?? '') === (p.name ?? ''));
          if (!sp?.port) continue;
          for (const ep of slice.endpoints) {
            for (const ip of ep.addresses) {
              if (!endpoints.some((e) => e.ip === ip && e.port === sp.port)) endpoints.push({ ip, port: sp.port, ready: ep.conditions?.ready !== false });
            }
          }
        }
        for (const e of endpoints) {
          const id = `${e.ip}|${e.port}`;
          if (!byEndpoint.has(id)) byEndpoint.set(id, key);
          portsByEndpoint.set(id, [...(portsByEndpoint.get(id) ?? []), { service: key, name: p.name }]);
        }
        return { name: p.name, port: p.port, appProtocol: p.appProtocol, endpoints };
      });
    const vips = [...new Set([svc.spec.clusterIP, ...(svc.spec.clusterIPs ?? [])])].filter((ip) => !!ip && ip !== 'None');
    services.set(key, { key, namespace, name: svc.metadata.name, host: `${svc.metadata.name}.${namespace}.svc.cluster.local`, vips, ports });
  }
  return { services, byEndpoint, portsByEndpoint };
}

/** Random Services and EndpointSlices over small pools of names, IPs and ports, so that they collide. */
function randomObjects(random: () => number): KubeObject[] {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
  const ips = ['10.0.0.1', '10.0.0.2', '10.0.0.3', 'fd00::1', 'fd00::1:8', '10.0.0.4'];
  const portNames = [undefined, 'http', 'grpc'];
  const objects: KubeObject[] = [];
  for (let i = 0; i < 1 + Math.floor(random() * 5); i++) {
    objects.push({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: `s${i}`, ...(random() < 0.8 && { namespace: pick(['a', 'default']) }) },
      spec: {
        ...(random() < 0.8 && { clusterIP: pick(['10.96.0.1', '10.96.0.2', 'None', 'fd00:96::1']) }),
        ...(random() < 0.5 && { clusterIPs: Array.from({ length: Math.floor(random() * 3) }, () => pick(['10.96.0.1', '10.96.0.3', 'None', 'fd00:96::1'])) }),
        ports: Array.from({ length: 1 + Math.floor(random() * 3) }, () => ({
          ...(random() < 0.7 && { name: pick(portNames)! }),
          ...(random() < 0.3 && { protocol: pick(['TCP', 'UDP']) }),
          ...(random() < 0.3 && { appProtocol: pick(['http', 'tcp']) }),
          port: pick([80, 81, 443]),
        })),
      },
    });
  }
  for (let i = 0; i < Math.floor(random() * 6); i++) {
    const big = random() < 0.1;
    objects.push({
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name: `e${i}`, ...(random() < 0.8 && { namespace: pick(['a', 'default']) }), ...(random() < 0.9 && { labels: { 'kubernetes.io/service-name': `s${Math.floor(random() * 3)}` } }) },
      addressType: pick(['IPv4', 'IPv4', 'IPv6', 'FQDN']),
      ...(random() < 0.9 && {
        ports: Array.from({ length: Math.floor(random() * 3) }, () => ({ ...(random() < 0.7 && { name: pick(portNames)! }), ...(random() < 0.9 && { port: pick([8080, 8081, 9000]) }) })),
      }),
      // Big slices: more endpoints than compile() scans for duplicates, with duplicates among them.
      endpoints: Array.from({ length: big ? 40 + Math.floor(random() * 40) : Math.floor(random() * 4) }, (_, k) => ({
        addresses: big ? [`10.1.${k % 37}.1`] : Array.from({ length: 1 + Math.floor(random() * 2) }, () => pick(ips)),
        ...(random() < 0.7 && { conditions: { ...(random() < 0.8 && { ready: random() < 0.7 }) } }),
      })),
    });
  }
  return objects;
}

function lookups(state: MeshState, ip: string, port: number) {
  const named = (ports: readonly ServicePortInfo[]) => ports.map((p) => ({ service: [...state.services.values()].find((s) => s.ports.includes(p))!.key, name: p.name }));
  return { service: state.serviceByEndpoint(ip, port)?.key, ports: named(state.servicePortsByEndpoint(ip, port)) };
}

/** Services n/one (port 80: 10.0.0.1, 10.0.0.2) and n/two (port 81: 10.0.0.2), both to port 8080. */
function twoServices(): MeshState {
  const svc = (name: string, port: number): KubeObject => ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'n' }, spec: { ports: [{ name: 'p', port }] } });
  const slice = (name: string, ips: string[]): KubeObject => ({
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: `${name}-1`, namespace: 'n', labels: { 'kubernetes.io/service-name': name } },
    addressType: 'IPv4',
    ports: [{ name: 'p', port: 8080 }],
    endpoints: ips.map((ip) => ({ addresses: [ip] })),
  });
  return compile([svc('one', 80), slice('one', ['10.0.0.1', '10.0.0.2']), svc('two', 81), slice('two', ['10.0.0.2'])], 'cluster.local', 1);
}

describe('store: Services and endpoints', () => {
  it('agrees with the plain reading on random Services and EndpointSlices (seeded)', () => {
    const random = mulberry32(7_2025);
    let endpoints = 0;
    for (let n = 0; n < 1500; n++) {
      const objects = randomObjects(random);
      const state = compile(objects, 'cluster.local', 1);
      const ref = reference(objects);
      expect(JSON.parse(JSON.stringify([...state.services]))).toStrictEqual(JSON.parse(JSON.stringify([...ref.services])));
      const candidates = new Set<string>(ref.byEndpoint.keys());
      for (const ip of ['10.0.0.1', 'fd00::1', 'fd00::1:8', '192.0.2.1']) for (const port of [8080, 8081, 9000, 80]) candidates.add(`${ip}|${port}`);
      for (const id of candidates) {
        const [ip, port] = id.split('|') as [string, string];
        expect(lookups(state, ip, Number(port)), id).toStrictEqual({ service: ref.byEndpoint.get(id), ports: ref.portsByEndpoint.get(id) ?? [] });
      }
      endpoints += ref.byEndpoint.size;
    }
    expect(endpoints).toBeGreaterThan(1500);
  });

  it('shares one list among the endpoints of one port and never changes it for another', () => {
    const state = twoServices();
    expect(state.servicePortsByEndpoint('10.0.0.1', 8080).map((p) => p.port)).toEqual([80]);
    expect(state.servicePortsByEndpoint('10.0.0.2', 8080).map((p) => p.port)).toEqual([80, 81]);
    expect(state.serviceByEndpoint('10.0.0.2', 8080)?.key).toBe('n/one');
    expect(state.servicePortsByEndpoint('10.0.0.2', 8081)).toEqual([]);
    expect(Object.isFrozen(state.servicePortsByEndpoint('10.0.0.1', 8080))).toBe(true);
  });

  it('names the Service a caller called when the endpoint is one of its own, the first one otherwise', () => {
    const state = twoServices();
    const called = (ip: string, host?: string) => state.serviceCalled(ip, 8080, host)?.key;
    expect(called('10.0.0.2', 'two.n.svc.cluster.local')).toBe('n/two');
    expect(called('10.0.0.2', 'one.n.svc.cluster.local')).toBe('n/one');
    expect(called('10.0.0.2')).toBe('n/one');
    // A Service that does not have this endpoint, or does not exist, is not believed.
    expect(called('10.0.0.1', 'two.n.svc.cluster.local')).toBe('n/one');
    expect(called('10.0.0.2', 'three.n.svc.cluster.local')).toBe('n/one');
    expect(called('10.0.0.2', 'two.n.svc.other.domain')).toBe('n/one');
    expect(called('10.0.0.9', 'two.n.svc.cluster.local')).toBeUndefined();
  });
});
