// In-process: reading and validating lab manifests, and the plan computed from them (addresses,
// VIPs, endpoints, realized objects, the ClusterIP ruleset), before any namespace exists.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse, stringify } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { loadManifests, parseManifestText, validateManifests } from '../../../lab/cluster/manifests.js';
import { kubeProxyRuleset } from '../../../lab/cluster/kubeproxy.js';
import { checkLabName, inCidr, labMatchesPrefix, labOfNetns } from '../../../lab/cluster/names.js';
import { planLab } from '../../../lab/cluster/plan.js';
import { fabricScript, nodeScript, podScript } from '../../../lab/cluster/topology.js';
import { clusterObjects, objectFileName } from '../../../lab/cluster/realized.js';
import type { KubeObject } from '../../../agent/model/objects.js';
import { validateObject } from '../../../agent/model/validate.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'trellis-lab-plan-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const f = path.join(tmp, name);
  writeFileSync(f, text);
  return f;
}

// Fixed, so the addresses below stay put; the demo's own manifest is checked for validity only.
const demo = path.join(import.meta.dirname, 'fixtures', 'two-nodes.yaml');
const demoManifest = path.join(import.meta.dirname, '../../../examples/demo/mesh.yaml');

function counter(): () => string {
  let n = 0;
  return () => `uid-${++n}`;
}

describe('manifests', () => {
  it('the demo manifest makes a lab whose every realized object the dir source accepts', async () => {
    const plan = planLab('demo1', await loadManifests(demoManifest), { uid: counter() });
    expect(plan.pods.length).toBeGreaterThan(0);
    for (const o of clusterObjects(plan)) {
      expect(validateObject(JSON.parse(JSON.stringify(o))), `${o.kind} ${o.metadata.name}`).toMatchObject({ ok: true });
    }
  });

  it('reads a manifest', async () => {
    const m = await loadManifests(demo);
    expect(m.namespaces.map((n) => n.object.metadata.name)).toEqual(['demo', 'plain']);
    expect(m.pods.map((p) => `${p.object.metadata.namespace}/${p.object.metadata.name}`)).toEqual([
      'demo/server',
      'demo/client',
      'demo/sink',
      'plain/outsider',
    ]);
    expect(m.services.map((s) => s.object.metadata.name)).toEqual(['server', 'sink']);
  });

  it('reads a directory and defaults the namespace', async () => {
    const dir = path.join(tmp, 'dir');
    mkdirSync(dir);
    writeFileSync(
      path.join(dir, 'a.yaml'),
      'apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: n1, containers: [{name: c}]}\n',
    );
    writeFileSync(path.join(dir, '.hidden.yaml'), 'not: [valid');
    writeFileSync(path.join(dir, 'notes.txt'), 'ignored');
    const m = await loadManifests(dir);
    expect(m.pods).toHaveLength(1);
    expect(m.pods[0]!.object.metadata.namespace).toBe('default');
  });

  it('names the file and document of a YAML syntax error', async () => {
    const f = file('broken.yaml', 'apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: [oops\n');
    await expect(loadManifests(f)).rejects.toThrow(/broken\.yaml, document 2: invalid YAML/);
  });

  it('requires spec.nodeName, naming file, object and field', async () => {
    const f = file('nonode.yaml', 'apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {containers: [{name: c}]}\n');
    await expect(loadManifests(f)).rejects.toThrow(/nonode\.yaml, document 1 \(Pod shop\/web\): field spec\.nodeName: is required/);
  });

  it('rejects unknown kinds and bad fields clearly', () => {
    const deploy = parseManifestText('d.yaml', 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n');
    expect(() => validateManifests(deploy)).toThrow(/d\.yaml, document 1: unsupported kind "Deployment"/);
    const badPort = parseManifestText(
      's.yaml',
      'apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 70000}]}\n',
    );
    expect(() => validateManifests(badPort)).toThrow(/s\.yaml, document 1 \(Service default\/s\): field spec\.ports\.0\.port/);
    const udp = parseManifestText(
      'u.yaml',
      'apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 53, protocol: UDP}]}\n',
    );
    expect(() => validateManifests(udp)).toThrow(/TCP Service ports only/);
    const args = parseManifestText(
      'a.yaml',
      'apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: n, containers: [{name: c, args: [x]}]}\n',
    );
    expect(() => validateManifests(args)).toThrow(/command: is required when args are given/);
    const twice = parseManifestText(
      't.yaml',
      'apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n',
    );
    expect(() => validateManifests(twice)).toThrow(/t\.yaml, document 2 \(Namespace a\): duplicate Namespace a, first defined in t\.yaml, document 1/);
  });

  it('accepts objects and leaves them unchanged', async () => {
    const pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'p' },
      spec: { nodeName: 'n', containers: [{ name: 'c' }] },
    } as KubeObject;
    const m = await loadManifests([pod]);
    expect(m.pods[0]!.where).toBe('object 1 (Pod default/p)');
    expect(pod.metadata.namespace).toBeUndefined();
  });
});

describe('plan', () => {
  it('places nodes, pods and VIPs and computes endpoints', async () => {
    const plan = planLab('demo1', await loadManifests(demo), { uid: counter() });
    expect(plan.nodes.map((n) => [n.name, n.index, n.netns, n.fabricIp, n.gatewayIp, n.podCidr])).toEqual([
      ['node-a', 1, 'trl-demo1-node-1', '172.30.0.11', '10.244.1.1', '10.244.1.0/24'],
      ['node-b', 2, 'trl-demo1-node-2', '172.30.0.12', '10.244.2.1', '10.244.2.0/24'],
    ]);
    expect(plan.pods.map((p) => [p.name, p.node, p.ip, p.netns, p.hostInterface, p.serviceAccount])).toEqual([
      ['server', 'node-b', '10.244.2.2', 'trl-demo1-pod-2-2', 'tp2', 'server'],
      ['client', 'node-a', '10.244.1.2', 'trl-demo1-pod-1-2', 'tp2', 'client'],
      ['sink', 'node-b', '10.244.2.3', 'trl-demo1-pod-2-3', 'tp3', 'sink'],
      ['outsider', 'node-a', '10.244.1.3', 'trl-demo1-pod-1-3', 'tp3', 'default'],
    ]);
    expect(plan.services.map((s) => [s.name, s.clusterIP, s.ports])).toEqual([
      ['server', '10.96.0.10', [{ name: 'http', port: 80, targetPort: 8080 }]],
      ['sink', '10.96.0.11', [{ name: 'tcp', port: 9000, targetPort: 9000 }]],
    ]);
    expect(plan.vips).toEqual([
      { service: 'demo/server', clusterIP: '10.96.0.10', port: 80, backends: [{ ip: '10.244.2.2', port: 8080 }] },
      { service: 'demo/sink', clusterIP: '10.96.0.11', port: 9000, backends: [{ ip: '10.244.2.3', port: 9000 }] },
    ]);
    const server = plan.pods[0]!;
    expect(server.containers).toEqual([
      {
        name: 'server',
        argv: ['trellis', 'tool', 'http-echo', '--port', '8080'],
        env: { POD_NAME: 'server', POD_NAMESPACE: 'demo', POD_IP: '10.244.2.2', NODE_NAME: 'node-b' },
      },
    ]);
    expect(server.object.metadata.annotations).toEqual({ 'trellis.dev/netns': '/var/run/netns/trl-demo1-pod-2-2' });
    expect(server.object.status).toMatchObject({ phase: 'Running', podIP: '10.244.2.2', podIPs: [{ ip: '10.244.2.2' }] });
    expect(plan.namespaces.map((n) => [n.metadata.name, n.metadata.annotations])).toEqual([
      ['demo', { 'trellis.dev/mesh': 'enabled' }],
      ['plain', undefined],
      ['default', undefined],
    ]);
  });

  it('writes objects the dir source accepts', async () => {
    const plan = planLab('demo1', await loadManifests(demo), { uid: counter() });
    const all: KubeObject[] = [...plan.namespaces, ...plan.pods.map((p) => p.object), ...plan.services.map((s) => s.object), ...plan.endpointSlices];
    for (const o of all) {
      const v = validateObject(JSON.parse(JSON.stringify(o)));
      expect(v, `${o.kind} ${o.metadata.name}`).toMatchObject({ ok: true });
    }
    const eps = plan.endpointSlices.find((e) => e.metadata.name === 'server-lab')!;
    expect(eps).toEqual({
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: {
        name: 'server-lab',
        namespace: 'demo',
        uid: expect.any(String),
        labels: { 'kubernetes.io/service-name': 'server' },
        ownerReferences: [{ kind: 'Service', name: 'server' }],
      },
      addressType: 'IPv4',
      endpoints: [
        {
          addresses: ['10.244.2.2'],
          conditions: { ready: true },
          nodeName: 'node-b',
          targetRef: { kind: 'Pod', name: 'server', namespace: 'demo' },
        },
      ],
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    });
    expect(objectFileName('Pod', 'server', 'demo')).toBe('pod-demo.server.yaml');
    expect(objectFileName('Namespace', 'demo')).toBe('ns-demo.yaml');
  });

  it('carries routes and policies through as written, policies before routes, with a uid', async () => {
    const text = `apiVersion: v1
kind: Pod
metadata: {name: p, namespace: app}
spec: {nodeName: n1, containers: [{name: c}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{filters: [{type: ExtensionRef, extensionRef: {group: traffic.trellis.dev, kind: FaultInjection, name: slow}}]}]
---
apiVersion: traffic.trellis.dev/v1alpha1
kind: FaultInjection
metadata: {name: slow, namespace: app}
spec: {delay: {fixedDelay: 200ms, percentage: {value: 100}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: callers}
spec: {parentRefs: [{group: "", kind: Service, name: echo, namespace: app}], rules: [{}]}
`;
    const m = validateManifests(parseManifestText('r.yaml', text));
    expect(m.extensions.map((e) => e.where)).toEqual([
      'r.yaml, document 2 (HTTPRoute app/split)',
      'r.yaml, document 3 (FaultInjection app/slow)',
      'r.yaml, document 4 (HTTPRoute callers/consumer)',
    ]);
    const plan = planLab('ext1', m, { uid: counter() });
    // A route's namespace exists as Kubernetes would require, even with nothing else in it.
    expect(plan.namespaces.map((n) => n.metadata.name).sort()).toEqual(['app', 'callers', 'default']);
    const objects = clusterObjects(plan).filter((o) => !['Namespace', 'Pod', 'Service', 'EndpointSlice'].includes(o.kind));
    expect(objects.map((o) => `${o.kind} ${o.metadata.name}`)).toEqual(['FaultInjection slow', 'HTTPRoute split', 'HTTPRoute consumer']);
    const split = plan.extensions.find((o) => o.metadata.name === 'split')!;
    expect(split.metadata.uid).toMatch(/^uid-/);
    expect(split.spec).toEqual(parse(text.split('---')[1]!).spec);
    for (const o of objects) expect(validateObject(JSON.parse(JSON.stringify(o))), `${o.kind} ${o.metadata.name}`).toMatchObject({ ok: true });
    expect(objectFileName('HTTPRoute', 'split', 'app')).toBe('httproute-app.split.yaml');
  });

  it('refuses an extension object at another apiVersion or without a spec', () => {
    const old = parseManifestText('o.yaml', 'apiVersion: gateway.networking.k8s.io/v1beta1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {}\n');
    expect(() => validateManifests(old)).toThrow(/o\.yaml, document 1 \(HTTPRoute default\/r\): field apiVersion: HTTPRoute is read at gateway\.networking\.k8s\.io\/v1/);
    const bare = parseManifestText('b.yaml', 'apiVersion: traffic.trellis.dev/v1alpha1\nkind: RetryBudget\nmetadata: {name: b}\n');
    expect(() => validateManifests(bare)).toThrow(/b\.yaml, document 1 \(RetryBudget default\/b\): field spec: is required/);
    const deploy = parseManifestText('d.yaml', 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n');
    expect(() => validateManifests(deploy)).toThrow(/the lab reads Namespace, Pod, Service and HTTPRoute, GRPCRoute, FaultInjection/);
    // A security policy without spec is allow-nothing, as the agents read it, not an error.
    const denyAll = parseManifestText('p.yaml', 'apiVersion: security.trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: app}\n');
    expect(validateManifests(denyAll).extensions[0]!.object.spec).toEqual({});
  });

  it('resolves named target ports per pod and splits slices like the endpoint controller', () => {
    const docs = parseManifestText(
      'x.yaml',
      `
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c, ports: [{name: web, containerPort: 9090}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.1.1
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: web, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: other}
spec: {selector: {app: none}, ports: [{port: 81}]}
`,
    );
    const plan = planLab('x', validateManifests(docs), { uid: counter() });
    expect(plan.services.map((s) => [s.name, s.clusterIP])).toEqual([
      ['web', '10.96.1.1'],
      ['other', '10.96.0.10'],
    ]);
    expect(plan.services[0]!.ports).toEqual([{ name: 'http', port: 80, targetPort: 8080, targetPortName: 'web', appProtocol: 'http' }]);
    expect(plan.vips[0]!.backends).toEqual([
      { ip: '10.244.1.2', port: 8080 },
      { ip: '10.244.2.2', port: 9090 },
    ]);
    expect(plan.endpointSlices.map((e) => [e.metadata.name, e.endpoints.map((p) => p.targetRef!.name), e.ports])).toEqual([
      ['web-lab', ['a'], [{ name: 'http', port: 8080, protocol: 'TCP', appProtocol: 'http' }]],
      ['web-lab-2', ['b'], [{ name: 'http', port: 9090, protocol: 'TCP', appProtocol: 'http' }]],
      ['web-lab-3', ['c'], []],
      ['other-lab', [], []],
    ]);
  });

  it('checks nodes and cluster IPs', () => {
    const pod = parseManifestText(
      'p.yaml',
      'apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: node-c, containers: [{name: c}]}\n',
    );
    expect(() => planLab('x', validateManifests(pod), { nodes: ['node-a', 'node-b'] })).toThrow(
      /p\.yaml, document 1 \(Pod default\/p\): field spec\.nodeName: "node-c" is not a lab node \(nodes: node-a, node-b\)/,
    );
    const svc = parseManifestText(
      's.yaml',
      'apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n',
    );
    expect(() => planLab('x', validateManifests(svc), { nodes: ['a'] })).toThrow(/10\.0\.0\.1 is outside the lab's Service range 10\.96\.0\.0\/16/);
    expect(() => planLab('x', validateManifests([]))).toThrow(/no nodes/);
  });

  it('builds scripts and a ruleset that only name lab namespaces', async () => {
    const plan = planLab('demo1', await loadManifests(demo), { uid: counter() });
    const nodeB = plan.nodes[1]!;
    expect(fabricScript(plan)).toContain('link add name n2 type veth peer name eth0 netns trl-demo1-node-2');
    const script = nodeScript(plan, nodeB, plan.pods.filter((p) => p.node === 'node-b'));
    expect(script).toContain('route add 10.244.1.0/24 via 172.30.0.11 dev eth0');
    expect(script).toContain('link add name tp3 type veth peer name eth0 netns trl-demo1-pod-2-3');
    expect(script).toContain('route add 10.244.2.3/32 dev tp3 src 10.244.2.1');
    expect(podScript(plan.pods[0]!)).toEqual([
      'link set lo up',
      'addr add 10.244.2.2/32 dev eth0',
      'link set eth0 up',
      'route add 169.254.1.1 dev eth0 scope link',
      'route add default via 169.254.1.1 dev eth0 onlink',
    ]);
    const rules = kubeProxyRuleset(plan, nodeB);
    expect(rules).toContain(
      'ip daddr 10.96.0.10 tcp dport 80 dnat ip to numgen random mod 1 map { 0 : 10.244.2.2 . 8080 } comment "demo/server:80"',
    );
    expect(rules).toContain('elements = { 10.244.2.2 . 10.244.2.2, 10.244.2.3 . 10.244.2.3 }');
    expect(rules).toContain('snat ip to 10.244.2.1');
  });
});

describe('names', () => {
  it('keeps lab names short and finds labs by prefix', () => {
    expect(checkLabName('ab12')).toBe('ab12');
    expect(() => checkLabName('Too-Long-Name')).toThrow(/invalid lab name/);
    expect(labOfNetns('trl-ab12-pod-1-2')).toBe('ab12');
    expect(labOfNetns('other')).toBeUndefined();
    expect(labMatchesPrefix('ab12', 'trl-')).toBe(true);
    expect(labMatchesPrefix('ab12', 'trl-ab12-')).toBe(true);
    expect(labMatchesPrefix('ab1', 'trl-ab12-')).toBe(false);
    expect(inCidr('10.96.0.10', '10.96.0.0/16')).toBe(true);
    expect(inCidr('10.96.255.255', '10.96.0.0/16')).toBe(false);
    expect(inCidr('10.97.0.1', '10.96.0.0/16')).toBe(false);
  });

  it('realized YAML parses back to the same object', async () => {
    const plan = planLab('demo1', await loadManifests(demo), { uid: counter() });
    const pod = plan.pods[0]!.object;
    expect(parse(stringify(pod))).toEqual(JSON.parse(JSON.stringify(pod)));
  });
});
