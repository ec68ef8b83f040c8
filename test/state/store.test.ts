import { describe, expect, it } from 'vitest';
import { compile } from '../../agent/state/store.js';
import { resolveOutbound } from '../../agent/proxy/resolve.js';
import type { KubeObject } from '../../agent/sources/objects.js';

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
