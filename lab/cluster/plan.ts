// What a lab will be, computed before anything is made: nodes, pod addresses, Service VIPs, endpoints
// (as the endpoint controller would compute them) and the realized objects the agents' `dir` source reads.
import { randomUUID } from 'node:crypto';
import { LabError } from '../errors.js';
import { NETNS_ANNOTATION } from '../../agent/constants.js';
import { SERVICE_NAME_LABEL, type EndpointSlice, type ExtensionObject, type Namespace, type Pod, type Service } from '../../agent/model/objects.js';
import type { LabManifests } from './manifests.js';
import {
  FIRST_POD_HOST,
  FIRST_SERVICE_IP,
  MAX_NODES,
  MAX_PODS_PER_NODE,
  SERVICE_NET,
  inCidr,
  intToIp,
  ipToInt,
  netnsPath,
  nodeFabricIp,
  nodeGatewayIp,
  nodeNetns,
  nodePodCidr,
  podHostInterface,
  podIp,
  podNetns,
} from './names.js';

export interface LabNode {
  name: string;
  /** i: the node's number, from 1. */
  index: number;
  netns: string;
  netnsPath: string;
  /** 172.30.0.(10+i): where the agent's metrics and health ports answer. */
  fabricIp: string;
  /** 10.244.i.1: the node's own address in its pod CIDR; kubelet-style probes come from it. */
  gatewayIp: string;
  podCidr: string;
}

export interface LabPod {
  namespace: string;
  name: string;
  node: string;
  netns: string;
  netnsPath: string;
  ip: string;
  serviceAccount: string;
  labels: Record<string, string>;
}

export interface LabServicePort {
  name?: string;
  port: number;
  /** The resolved target port; for a named targetPort, the first endpoint's (0 when no endpoint has it). */
  targetPort: number;
  targetPortName?: string;
  appProtocol?: string;
}

export interface LabService {
  namespace: string;
  name: string;
  /** The VIP, or "None" for a headless Service. */
  clusterIP: string;
  ports: LabServicePort[];
}

export interface PlannedContainer {
  name: string;
  argv: string[];
  env: Record<string, string>;
}

export interface PlannedPod extends LabPod {
  /** j: the pod's host number on its node, from 2. */
  index: number;
  nodeIndex: number;
  /** The pod's veth end in the node netns. */
  hostInterface: string;
  /** Containers that have a command; the others run nothing (the image is ignored). */
  containers: PlannedContainer[];
  /** What `exec` in this pod sees: the pod variables and the first container's env. */
  env: Record<string, string>;
  object: Pod;
}

export interface Backend {
  ip: string;
  port: number;
}

/** One Service port as kube-proxy sees it: VIP:port and where it goes. */
export interface VipRule {
  service: string;
  clusterIP: string;
  port: number;
  backends: Backend[];
}

export interface LabPlan {
  name: string;
  nodes: LabNode[];
  pods: PlannedPod[];
  /** `object` as the dir source reads it (VIP and defaults filled in), `source` as the manifest wrote it. */
  services: (LabService & { object: Service; source: Service })[];
  namespaces: Namespace[];
  endpointSlices: EndpointSlice[];
  /** Routes and policies, as written plus a uid; the lab only carries them to the agents. */
  extensions: ExtensionObject[];
  vips: VipRule[];
}

export interface PlanOptions {
  /** The lab's nodes, in order; default: the distinct spec.nodeName values, sorted. */
  nodes?: string[];
  /** Source of object uids (injected so plans are reproducible in tests). */
  uid?: () => string;
}

export function planLab(name: string, m: LabManifests, opts: PlanOptions = {}): LabPlan {
  const uid = opts.uid ?? randomUUID;
  const nodes = planNodes(name, m, opts.nodes);
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const pods = planPods(name, m, byName, uid);
  const services = planServices(m, pods, uid);
  return {
    name,
    nodes,
    pods,
    services: services.map((s) => s.service),
    namespaces: planNamespaces(m, uid),
    endpointSlices: services.flatMap((s) => s.slices),
    extensions: m.extensions.map(({ object }) => ({ ...object, metadata: { ...object.metadata, uid: uid() } })),
    vips: services.flatMap((s) => s.vips),
  };
}

function planNodes(lab: string, m: LabManifests, given: string[] | undefined): LabNode[] {
  let names: string[];
  if (given && given.length > 0) {
    names = given;
    const dup = names.find((n, k) => names.indexOf(n) !== k);
    if (dup) throw planError(`node "${dup}" is listed twice in --nodes`);
    const bad = names.find((n) => !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(n) || n.length > 253);
    if (bad !== undefined) throw planError(`invalid node name "${bad}": use lowercase letters, digits, "-" and "."`);
  } else {
    names = [...new Set(m.pods.map((p) => p.object.spec.nodeName!))].sort();
  }
  if (names.length === 0) throw planError('no nodes: give Pods with spec.nodeName, or name the nodes with --nodes a,b');
  if (names.length > MAX_NODES) throw planError(`${names.length} nodes: the lab has room for ${MAX_NODES}`);
  const known = new Set(names);
  for (const p of m.pods) {
    if (!known.has(p.object.spec.nodeName!)) {
      throw planError(
        `${p.where}: field spec.nodeName: "${p.object.spec.nodeName}" is not a lab node (nodes: ${names.join(', ')}); ` +
          'add it to --nodes or fix the Pod',
      );
    }
  }
  return names.map((node, k) => {
    const i = k + 1;
    const netns = nodeNetns(lab, i);
    return {
      name: node,
      index: i,
      netns,
      netnsPath: netnsPath(netns),
      fabricIp: nodeFabricIp(i),
      gatewayIp: nodeGatewayIp(i),
      podCidr: nodePodCidr(i),
    };
  });
}

function planPods(lab: string, m: LabManifests, nodes: Map<string, LabNode>, uid: () => string): PlannedPod[] {
  const next = new Map<string, number>();
  return m.pods.map(({ object: src, where }) => {
    const node = nodes.get(src.spec.nodeName!)!;
    const j = next.get(node.name) ?? FIRST_POD_HOST;
    if (j - FIRST_POD_HOST >= MAX_PODS_PER_NODE) {
      throw planError(`${where}: node ${node.name} already has ${MAX_PODS_PER_NODE} pods, the most a lab node holds`);
    }
    next.set(node.name, j + 1);
    return planPod(lab, node, j, src, uid(), { netnsAnnotation: true });
  });
}

/**
 * One pod as host j of its node. With `netnsAnnotation`, the object names its netns (trellis.dev/netns) for the
 * agents, as the lab does for the pods it starts itself; without, the agents learn it as from a kubelet: from the CNI
 * plugin or by the pod's IP.
 */
export function planPod(lab: string, node: LabNode, j: number, src: Pod, uid: string, opts: { netnsAnnotation: boolean }): PlannedPod {
  const netns = podNetns(lab, node.index, j);
  const ip = podIp(node.index, j);
  const namespace = src.metadata.namespace ?? 'default';
  const name = src.metadata.name;
  const serviceAccount = src.spec.serviceAccountName ?? 'default';
  const podEnv = { POD_NAME: name, POD_NAMESPACE: namespace, POD_IP: ip, NODE_NAME: node.name };
  const containers = src.spec.containers.map((c) => ({
    name: c.name,
    argv: [...(c.command ?? []), ...(c.args ?? [])],
    env: { ...containerEnv(c), ...podEnv },
  }));
  // Beyond the fields Trellis reads, the status carries what kubectl would show for a running pod.
  const status = {
    phase: 'Running',
    hostIP: node.fabricIp,
    podIP: ip,
    podIPs: [{ ip }],
    conditions: [{ type: 'Ready', status: 'True' }],
  };
  const object: Pod = {
    ...src,
    metadata: {
      ...src.metadata,
      namespace,
      uid,
      ...((opts.netnsAnnotation || src.metadata.annotations) && {
        annotations: { ...src.metadata.annotations, ...(opts.netnsAnnotation && { [NETNS_ANNOTATION]: netnsPath(netns) }) },
      }),
    },
    spec: { ...src.spec, nodeName: node.name, serviceAccountName: serviceAccount },
    status,
  };
  return {
    namespace,
    name,
    node: node.name,
    netns,
    netnsPath: netnsPath(netns),
    ip,
    serviceAccount,
    labels: { ...src.metadata.labels },
    index: j,
    nodeIndex: node.index,
    hostInterface: podHostInterface(j),
    containers: containers.filter((c) => c.argv.length > 0),
    env: containers[0]!.env,
    object,
  };
}

function containerEnv(c: Pod['spec']['containers'][number]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of (c as { env?: { name: string; value?: string }[] }).env ?? []) env[e.name] = e.value ?? '';
  return env;
}

interface PlannedServiceParts {
  service: LabService & { object: Service; source: Service };
  slices: EndpointSlice[];
  vips: VipRule[];
}

function planServices(m: LabManifests, pods: PlannedPod[], uid: () => string): PlannedServiceParts[] {
  const vips = allocateVips(m);
  return m.services.map(({ object: src }, k) => {
    const namespace = src.metadata.namespace!;
    const name = src.metadata.name;
    const clusterIP = vips[k]!;
    const selected = src.spec.selector ? pods.filter((p) => p.namespace === namespace && matches(src.spec.selector!, p.labels)) : [];
    // Per pod: each Service port's target on that pod, or undefined when a named targetPort is missing there.
    const targets = selected.map((p) => ({ pod: p, ports: src.spec.ports.map((sp) => resolveTargetPort(sp, p.object)) }));
    const ports: LabServicePort[] = src.spec.ports.map((sp, n) => {
      const named = typeof sp.targetPort === 'string' ? sp.targetPort : undefined;
      const resolved = named === undefined ? (sp.targetPort ?? sp.port) : (targets.find((t) => t.ports[n] !== undefined)?.ports[n] ?? 0);
      return {
        ...(sp.name !== undefined && { name: sp.name }),
        port: sp.port,
        targetPort: resolved as number,
        ...(named !== undefined && { targetPortName: named }),
        ...(sp.appProtocol !== undefined && { appProtocol: sp.appProtocol }),
      };
    });
    const spec = { ...src.spec, type: 'ClusterIP', clusterIP, clusterIPs: [clusterIP] };
    const object: Service = { ...src, metadata: { ...src.metadata, namespace, uid: uid() }, spec };
    const slices = src.spec.selector ? endpointSlices(object, targets, uid) : [];
    const vipRules: VipRule[] =
      clusterIP === 'None'
        ? []
        : src.spec.ports.map((sp, n) => ({
            service: `${namespace}/${name}`,
            clusterIP,
            port: sp.port,
            backends: targets.flatMap((t) => (t.ports[n] === undefined ? [] : [{ ip: t.pod.ip, port: t.ports[n] }])),
          }));
    return { service: { namespace, name, clusterIP, ports, object, source: src }, slices, vips: vipRules };
  });
}

function allocateVips(m: LabManifests): string[] {
  const taken = new Map<string, string>();
  for (const { object: s, where } of m.services) {
    const ip = s.spec.clusterIP;
    if (ip === undefined || ip === 'None') continue;
    if (!inCidr(ip, SERVICE_NET)) {
      throw planError(`${where}: field spec.clusterIP: ${ip} is outside the lab's Service range ${SERVICE_NET}`);
    }
    const other = taken.get(ip);
    if (other) throw planError(`${where}: field spec.clusterIP: ${ip} is already used by ${other}`);
    taken.set(ip, where);
  }
  let next = ipToInt(FIRST_SERVICE_IP);
  const last = ipToInt('10.96.255.254');
  return m.services.map(({ object: s, where }) => {
    if (s.spec.clusterIP !== undefined) return s.spec.clusterIP;
    while (taken.has(intToIp(next))) next++;
    if (next > last) throw planError(`${where}: no free address left in ${SERVICE_NET}`);
    const ip = intToIp(next++);
    taken.set(ip, where);
    return ip;
  });
}

function matches(selector: Record<string, string>, labels: Record<string, string>): boolean {
  const entries = Object.entries(selector);
  return entries.length > 0 && entries.every(([k, v]) => labels[k] === v);
}

function resolveTargetPort(sp: Service['spec']['ports'][number], pod: Pod): number | undefined {
  const target = sp.targetPort ?? sp.port;
  if (typeof target === 'number') return target;
  for (const c of pod.spec.containers) {
    const found = c.ports?.find((p) => p.name === target && (p.protocol ?? 'TCP') === 'TCP');
    if (found) return found.containerPort;
  }
  return undefined;
}

/**
 * Like the endpoint controller: pods whose resolved ports agree share a slice; a pod lacking a named
 * target port is listed without that port. The first slice is `<svc>-lab`, any others `<svc>-lab-<n>`.
 */
function endpointSlices(
  svc: Service,
  targets: { pod: PlannedPod; ports: (number | undefined)[] }[],
  uid: () => string,
): EndpointSlice[] {
  const groups = new Map<string, typeof targets>();
  for (const t of targets) {
    const key = t.ports.map((p) => p ?? '-').join(',');
    groups.set(key, [...(groups.get(key) ?? []), t]);
  }
  if (groups.size === 0) groups.set('', []);
  const ns = svc.metadata.namespace!;
  return [...groups.values()].map((members, k) => {
    const ports = svc.spec.ports.flatMap((sp, n) => {
      const port = members[0]?.ports[n];
      if (port === undefined) return [];
      return [
        {
          ...(sp.name !== undefined && { name: sp.name }),
          port,
          protocol: 'TCP',
          ...(sp.appProtocol !== undefined && { appProtocol: sp.appProtocol }),
        },
      ];
    });
    return {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: {
        name: k === 0 ? `${svc.metadata.name}-lab` : `${svc.metadata.name}-lab-${k + 1}`,
        namespace: ns,
        uid: uid(),
        labels: { [SERVICE_NAME_LABEL]: svc.metadata.name },
        ownerReferences: [{ kind: 'Service', name: svc.metadata.name }],
      },
      addressType: 'IPv4',
      endpoints: members.map(({ pod }) => ({
        addresses: [pod.ip],
        conditions: { ready: true },
        nodeName: pod.node,
        targetRef: { kind: 'Pod', name: pod.name, namespace: pod.namespace },
      })),
      ports,
    };
  });
}

function planNamespaces(m: LabManifests, uid: () => string): Namespace[] {
  const out = new Map<string, Namespace>();
  for (const { object } of m.namespaces) {
    out.set(object.metadata.name, { ...object, metadata: { ...object.metadata, uid: uid() } });
  }
  // Kubernetes would refuse objects in a namespace that does not exist; the lab makes it, unannotated.
  const implied = [
    'default',
    ...[...m.pods, ...m.services, ...m.extensions].map((o) => o.object.metadata.namespace!),
  ];
  for (const name of implied) {
    if (!out.has(name)) out.set(name, { apiVersion: 'v1', kind: 'Namespace', metadata: { name, uid: uid() } });
  }
  return [...out.values()];
}

function planError(message: string): LabError {
  return new LabError('EMANIFEST', message);
}
