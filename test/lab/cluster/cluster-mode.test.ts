// Root-only: the lab's cluster mode without agents. A real control plane in the fabric netns (etcd, kube-apiserver,
// kube-controller-manager, built from source), Trellis installed into it with kubectl, and the lab playing the
// kubelet: Nodes and Leases, Pods and their status, Services with the ClusterIP the real allocator chose (and the
// ClusterIP emulation following it), EndpointSlices from the real controller, routes and policies through the API.
import { execFileSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab, sweep } from '../../../lab/cluster/lab.js';
import { SERVICE_NET, inCidr } from '../../../lab/cluster/names.js';
import type { ApiObject } from '../../../lab/controlplane/client.js';
import type { ExtensionObject } from '../../../agent/model/objects.js';
import { requireRoot } from '../../support/root.js';
import { until } from '../../support/until.js';

const name = `k${Array.from({ length: 4 }, () => 'abcdefghijklmnopqrstuvwxyz0123456789'[randomInt(36)]).join('')}`;
const stateRoot = mkdtempSync(path.join(os.tmpdir(), 'trellis-lab-'));

const SERVER = `require('net').createServer((s) => s.end(process.env.POD_NAME + ' ' + s.remoteAddress.replace('::ffff:', '') + '\\n')).listen(+process.argv[1])`;
const CLIENT = `const s = require('net').connect({ host: process.argv[1], port: +process.argv[2] });
let out = ''; s.on('data', (d) => (out += d)); s.on('end', () => { process.stdout.write(out); process.exit(0); });
s.on('error', (e) => { process.stdout.write(e.code); process.exit(2); });
s.setTimeout(3000, () => { process.stdout.write('TIMEOUT'); process.exit(3); });`;

const manifest = `
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations: {trellis.dev/mesh: enabled}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, labels: {app: server}}
spec:
  nodeName: node-b
  serviceAccountName: server
  containers:
    - name: server
      command: [node, -e, ${JSON.stringify(SERVER)}, "8080"]
      ports: [{name: tcp, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: shop}
spec:
  selector: {app: server}
  ports: [{name: tcp, port: 80, targetPort: tcp}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  nodeName: node-a
  containers: [{name: client, command: [sleep, infinity]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-server, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: server, port: 80}]
  rules: [{backendRefs: [{name: server, port: 80}]}]
`;

type Obj = ApiObject & { spec?: Record<string, unknown>; status?: Record<string, unknown> };

interface HostSnapshot {
  addr: unknown;
  route: unknown;
  nft: string;
}

function hostSnapshot(): HostSnapshot {
  const addr = JSON.parse(execFileSync('ip', ['-j', 'addr'], { encoding: 'utf8' })) as { addr_info?: Record<string, unknown>[] }[];
  for (const link of addr) for (const a of link.addr_info ?? []) for (const k of Object.keys(a)) if (k.endsWith('life_time')) delete a[k];
  return {
    addr,
    route: JSON.parse(execFileSync('ip', ['-j', 'route', 'show', 'table', 'all'], { encoding: 'utf8' })),
    nft: execFileSync('nft', ['list', 'ruleset'], { encoding: 'utf8' }),
  };
}

function markedPids(lab: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      if (readFileSync(`/proc/${p}/environ`, 'latin1').split('\0').includes(`TRELLIS_LAB=${lab}`)) {
        if (!/\) Z /.test(readFileSync(`/proc/${p}/stat`, 'utf8'))) out.push(Number(p));
      }
    } catch {
      // Exited while we looked.
    }
  }
  return out;
}

describe('lab in cluster mode (root)', () => {
  let lab: Lab | undefined;
  let before: HostSnapshot;

  beforeAll(async () => {
    requireRoot('lab cluster-mode tests');
    before = hostSnapshot();
    const file = path.join(stateRoot, 'shop.yaml');
    writeFileSync(file, manifest);
    const t0 = Date.now();
    lab = await Lab.up(file, { name, stateRoot, agents: false, cluster: { leaseRenewMs: 500 } });
    const cp = lab.controlPlane;
    const mem = cp.memoryMb();
    process.stderr.write(
      `lab ${name} in cluster mode: up in ${Date.now() - t0} ms; control plane ${cp.timings.total} ms ` +
        `(etcd ${cp.timings.etcd}, kube-apiserver ${cp.timings['kube-apiserver']}, kube-controller-manager ${cp.timings['kube-controller-manager']} ms); ` +
        `RSS etcd ${mem.etcd} MB, kube-apiserver ${mem['kube-apiserver']} MB, kube-controller-manager ${mem['kube-controller-manager']} MB\n`,
    );
  });

  afterAll(async () => {
    try {
      await lab?.down();
      expect(markedPids(name)).toEqual([]);
    } finally {
      await sweep({ prefix: `trl-${name}-`, stateRoot }).catch(() => []);
      rmSync(stateRoot, { recursive: true, force: true });
    }
  });

  it('installs Trellis as docs/install.md does: CRDs established, RBAC, and the workloads no kubelet runs', async () => {
    const crds = await lab!.kube.list<Obj>({ apiVersion: 'apiextensions.k8s.io/v1', kind: 'CustomResourceDefinition' });
    const established = crds.items
      .filter((c) => ((c.status?.['conditions'] ?? []) as { type: string; status: string }[]).some((x) => x.type === 'Established' && x.status === 'True'))
      .map((c) => c.metadata.name)
      .sort();
    expect(established).toEqual([
      'authorizationpolicies.security.trellis.dev',
      'egressnetworks.traffic.trellis.dev',
      'faultinjections.traffic.trellis.dev',
      'gatewayclasses.gateway.networking.k8s.io',
      'gateways.gateway.networking.k8s.io',
      'grpcroutes.gateway.networking.k8s.io',
      'httproutes.gateway.networking.k8s.io',
      'peerauthentications.security.trellis.dev',
      'referencegrants.gateway.networking.k8s.io',
      'retrybudgets.traffic.trellis.dev',
    ]);
    const r = await lab!.controlPlane.kubectl(['get', 'clusterrole/trellis-agent', 'clusterrole/trellis-identity', 'daemonset/trellis-agent', 'deployment/trellis-identity', '-n', 'trellis-system', '-o', 'name']);
    expect(r.stdout.trim().split('\n')).toEqual(['clusterrole.rbac.authorization.k8s.io/trellis-agent', 'clusterrole.rbac.authorization.k8s.io/trellis-identity', 'daemonset.apps/trellis-agent', 'deployment.apps/trellis-identity']);
    // No DaemonSet or ReplicaSet controller runs: the lab runs the agents and the identity service itself.
    const system = await lab!.kube.list({ apiVersion: 'v1', kind: 'Pod', namespace: 'trellis-system' });
    expect(system.items).toEqual([]);
    expect(await lab!.kube.get({ apiVersion: 'v1', kind: 'Secret', namespace: 'trellis-system', name: 'trellis-ca' })).toBeDefined();
  });

  it('registers a Node per lab node, ready, with a Lease it renews', async () => {
    const nodes = await lab!.kube.list<Obj>({ apiVersion: 'v1', kind: 'Node' });
    expect(nodes.items.map((n) => [n.metadata.name, (n.status?.['addresses'] as { type: string; address: string }[])[0]!.address, n.spec?.['podCIDR']])).toEqual([
      ['node-a', '172.30.0.11', '10.244.1.0/24'],
      ['node-b', '172.30.0.12', '10.244.2.0/24'],
    ]);
    const lease = () => lab!.kube.get<Obj>({ apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', namespace: 'kube-node-lease', name: 'node-a' });
    const first = String((await lease())!.spec!['renewTime']);
    await until('the lease to be renewed', async () => String((await lease())!.spec!['renewTime']) !== first, 5000);
  });

  it('creates the pods through the API with spec.nodeName and reports them running and ready, as a kubelet', async () => {
    const pod = await lab!.kube.get<Obj>({ apiVersion: 'v1', kind: 'Pod', namespace: 'shop', name: 'server' });
    expect(pod!.spec).toMatchObject({ nodeName: 'node-b', serviceAccountName: 'server' });
    expect(pod!.metadata['annotations']).toMatchObject({ 'trellis.dev/netns': `/var/run/netns/${lab!.pod('shop/server').netns}` });
    expect(pod!.status).toMatchObject({ phase: 'Running', podIP: lab!.pod('shop/server').ip, podIPs: [{ ip: lab!.pod('shop/server').ip }], hostIP: '172.30.0.12' });
    const conditions = Object.fromEntries((pod!.status!['conditions'] as { type: string; status: string }[]).map((c) => [c.type, c.status]));
    expect(conditions).toMatchObject({ Ready: 'True', ContainersReady: 'True', PodScheduled: 'True' });
    const get = await lab!.controlPlane.kubectl(['get', 'pods', '-n', 'shop', '--no-headers', '-o', 'custom-columns=NAME:.metadata.name,READY:.status.containerStatuses[0].ready,NODE:.spec.nodeName']);
    expect(get.stdout.trim().split('\n').map((l) => l.split(/\s+/))).toEqual([
      ['client', 'true', 'node-a'],
      ['server', 'true', 'node-b'],
    ]);
    // The pods' service accounts exist (the ServiceAccount admission plugin refuses a pod without its account).
    expect(await lab!.kube.get({ apiVersion: 'v1', kind: 'ServiceAccount', namespace: 'shop', name: 'server' })).toBeDefined();
  });

  it('gives each Service the ClusterIP the real allocator chose, and the ClusterIP emulation follows it', async () => {
    const svc = await lab!.kube.get<Obj>({ apiVersion: 'v1', kind: 'Service', namespace: 'shop', name: 'server' });
    const vip = String(svc!.spec!['clusterIP']);
    expect(inCidr(vip, SERVICE_NET)).toBe(true);
    expect(lab!.services.map((s) => [s.name, s.clusterIP])).toEqual([['server', vip]]);
    expect((await Lab.attach(name, stateRoot)).services[0]!.clusterIP).toBe(vip);
    const r = await until('the VIP to answer', async () => {
      const x = await lab!.exec('shop/client', ['node', '-e', CLIENT, vip, '80']);
      return x.code === 0 ? x : undefined;
    });
    expect(r.stdout.trim()).toBe(`server ${lab!.pod('shop/client').ip}`);
  });

  it('leaves the EndpointSlices to the controller, and readiness drives them', async () => {
    const slices = async () =>
      (
        await lab!.kube.list<Obj & { endpoints?: { addresses: string[]; conditions: { ready: boolean }; nodeName?: string; targetRef?: { name: string } }[] }>(
          { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', namespace: 'shop' },
          { labelSelector: 'kubernetes.io/service-name=server' },
        )
      ).items;
    const [slice] = await slices();
    expect(slice!.metadata['labels']).toMatchObject({ 'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io' });
    expect(slice!.endpoints).toMatchObject([{ addresses: [lab!.pod('shop/server').ip], conditions: { ready: true }, nodeName: 'node-b', targetRef: { name: 'server' } }]);
    expect(slice!['ports']).toEqual([{ name: 'tcp', port: 8080, protocol: 'TCP' }]);
    // The lab's own record has no EndpointSlice in cluster mode.
    expect(readdirSync(lab!.clusterDir).filter((f) => f.startsWith('eps-'))).toEqual([]);
    await lab!.setPodReady('shop/server', false);
    await until('the endpoint to turn not ready', async () => (await slices())[0]!.endpoints!.every((e) => e.conditions.ready === false));
    await lab!.setPodReady('shop/server', true);
    await until('the endpoint to turn ready', async () => (await slices())[0]!.endpoints!.every((e) => e.conditions.ready === true));
  });

  it('applies and removes routes and policies through the API, from this process or another', async () => {
    const l = lab!;
    const ref = { apiVersion: 'traffic.trellis.dev/v1alpha1', kind: 'FaultInjection', namespace: 'shop', name: 'slow' };
    const fault = { apiVersion: ref.apiVersion, kind: ref.kind, metadata: { name: 'slow', namespace: 'shop' }, spec: { delay: { fixedDelay: '200ms', percentage: { value: 100 } } } } as ExtensionObject;
    const filters = [{ type: 'ExtensionRef', extensionRef: { group: 'traffic.trellis.dev', kind: 'FaultInjection', name: 'slow' } }];
    const route = {
      apiVersion: 'gateway.networking.k8s.io/v1',
      kind: 'HTTPRoute',
      metadata: { name: 'to-server', namespace: 'shop' },
      spec: {
        parentRefs: [{ group: '', kind: 'Service', name: 'server', port: 80 }],
        rules: [{ filters, backendRefs: [{ name: 'server', port: 80 }] }],
      },
    } as ExtensionObject;
    const routeRef = { apiVersion: route.apiVersion, kind: route.kind, namespace: 'shop', name: 'to-server' };
    const before = await l.kube.get(routeRef);
    await l.apply([route, fault]);
    const after = await l.kube.get<Obj>(routeRef);
    // Updated in place (server-side apply), not recreated.
    expect(after!.metadata.uid).toBe(before!.metadata.uid);
    expect((after!.spec!['rules'] as { filters: unknown[] }[])[0]!.filters).toEqual(filters);
    expect(await l.kube.get(ref)).toBeDefined();
    expect(await l.remove('FaultInjection', 'shop', 'slow')).toBe(true);
    expect(await l.kube.get(ref)).toBeUndefined();
    // Another process reaches the same API server through the lab's state.
    const other = await Lab.attach(name, stateRoot);
    await other.apply([fault]);
    expect(await l.kube.get(ref)).toBeDefined();
    expect(await other.remove('FaultInjection', 'shop', 'slow')).toBe(true);
    expect(await l.kube.get(ref)).toBeUndefined();
    // The API server's own validation refuses what its schemas refuse.
    const bad = { ...fault, spec: { delay: { fixedDelay: '200ms', percentage: { value: 150 } } } } as ExtensionObject;
    await expect(l.apply([bad])).rejects.toMatchObject({ code: 'EKUBE', status: 422 });
  });

  it('sets annotations of pods and namespaces through the API', async () => {
    await lab!.setPodAnnotation('shop/client', 'trellis.dev/mesh', 'disabled');
    await lab!.setNamespaceAnnotation('default', 'trellis.dev/mesh', 'enabled');
    const pod = await lab!.kube.get({ apiVersion: 'v1', kind: 'Pod', namespace: 'shop', name: 'client' });
    expect(pod!.metadata['annotations']).toMatchObject({ 'trellis.dev/mesh': 'disabled' });
    const ns = await lab!.kube.get({ apiVersion: 'v1', kind: 'Namespace', name: 'default' });
    expect(ns!.metadata['annotations']).toMatchObject({ 'trellis.dev/mesh': 'enabled' });
    await lab!.setPodAnnotation('shop/client', 'trellis.dev/mesh', null);
    const again = await lab!.kube.get({ apiVersion: 'v1', kind: 'Pod', namespace: 'shop', name: 'client' });
    expect((again!.metadata['annotations'] as Record<string, string>)['trellis.dev/mesh']).toBeUndefined();
  });

  it('leaves the host netns unchanged, and down stops the control plane and removes everything', async () => {
    expect(hostSnapshot()).toEqual(before);
    const l = lab!;
    const cpPids = Object.values(l.controlPlane.record().processes).map((p) => p!.pid);
    expect(cpPids).toHaveLength(3);
    const t0 = Date.now();
    await l.down();
    process.stderr.write(`lab ${name} in cluster mode: down in ${Date.now() - t0} ms\n`);
    lab = undefined;
    expect(markedPids(name)).toEqual([]);
    expect(cpPids.filter((pid) => existsSync(`/proc/${pid}`))).toEqual([]);
    expect(readdirSync('/var/run/netns').filter((n) => n.startsWith(`trl-${name}-`))).toEqual([]);
    expect(existsSync(l.stateDir)).toBe(false);
    expect(hostSnapshot()).toEqual(before);
  });
});
