// The lab playing the kubelet against a real API server: a Node per lab node (and its Lease, renewed while the
// lab runs), Pods created with spec.nodeName and their status written through the status subresource, as a
// kubelet reports a running pod (phase, pod and host IPs, conditions, container statuses).
import type { ApiObject, KubeClient } from '../controlplane/client.js';
import { KubeApiError } from '../controlplane/client.js';
import type { Pod } from '../../agent/model/objects.js';
import type { LabNode } from './plan.js';

export const NODE_LEASE_NAMESPACE = 'kube-node-lease';
/** What a kubelet uses: the lease lasts 40 s and is renewed every 10 s. */
export const LEASE_DURATION_S = 40;
export const LEASE_RENEW_MS = 10_000;
/** Lab pods run no image; the API server still wants one. */
export const NO_IMAGE = 'trellis.dev/lab-no-image';

function now(): string {
  return new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** A Lease's renewTime is a MicroTime: RFC 3339 with microseconds. */
function microNow(): string {
  return new Date().toISOString().replace(/Z$/, '000Z');
}

/** Registers the node (labels and addresses as a kubelet sets them, Ready) and its Lease. */
export async function registerNode(client: KubeClient, node: LabNode): Promise<void> {
  const t = now();
  const body: ApiObject = {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: {
      name: node.name,
      labels: { 'kubernetes.io/hostname': node.name, 'kubernetes.io/os': 'linux', 'kubernetes.io/arch': 'amd64', 'trellis.dev/lab-node': 'true' },
    },
    spec: { podCIDR: node.podCidr, podCIDRs: [node.podCidr] },
  };
  const created = await client.create(body);
  await client.patch(
    { apiVersion: 'v1', kind: 'Node', name: node.name },
    {
      status: {
        addresses: [
          { type: 'InternalIP', address: node.fabricIp },
          { type: 'Hostname', address: node.name },
        ],
        conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'the lab plays the kubelet', lastHeartbeatTime: t, lastTransitionTime: t }],
        nodeInfo: { kubeletVersion: 'lab', operatingSystem: 'linux', architecture: 'amd64' },
      },
    },
    'strategic',
    'status',
  );
  await client.create({
    apiVersion: 'coordination.k8s.io/v1',
    kind: 'Lease',
    metadata: {
      name: node.name,
      namespace: NODE_LEASE_NAMESPACE,
      ownerReferences: [{ apiVersion: 'v1', kind: 'Node', name: node.name, uid: String(created.metadata.uid) }],
    },
    spec: { holderIdentity: node.name, leaseDurationSeconds: LEASE_DURATION_S, renewTime: microNow() },
  });
}

/** Renews the node's Lease, as the kubelet's heartbeat does. */
export async function renewLease(client: KubeClient, node: string): Promise<void> {
  await client.patch({ apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', namespace: NODE_LEASE_NAMESPACE, name: node }, { spec: { renewTime: microNow() } });
}

export interface RunningPod {
  /** The pod as the lab realized it (status, if any, is ignored: the API server resets it on create). */
  object: Pod;
  ip: string;
  hostIp: string;
  ready: boolean;
}

/** Creates the pod (an image filled in where the manifest has none), then reports it running. Returns the created uid. */
export async function createPod(client: KubeClient, p: RunningPod): Promise<string> {
  const uid = await createPodObject(client, p.object);
  await reportPodStatus(client, p);
  return uid;
}

/** Creates the pod as the scheduler leaves it for the kubelet (Pending, spec.nodeName set). Returns its uid. */
export async function createPodObject(client: KubeClient, object: Pod): Promise<string> {
  const { status: _status, ...rest } = object as Pod & { status?: unknown };
  const spec = { ...rest.spec, containers: rest.spec.containers.map((c) => ({ ...c, image: (c as { image?: string }).image ?? NO_IMAGE })) };
  const meta = { ...rest.metadata };
  delete meta.uid;
  const created = await client.create({ ...rest, metadata: meta, spec } as unknown as ApiObject);
  return String(created.metadata.uid);
}

/**
 * Writes the pod's whole status through the status subresource, as a kubelet reports it. A JSON merge patch, so the
 * lists are replaced: a strategic merge would merge podIPs by ip and keep the old address beside a new one (the
 * kubelet adds $setElementOrder directives for that). `ready` drives the Ready and ContainersReady conditions, and
 * with them the pod's EndpointSlice entries.
 */
export async function reportPodStatus(client: KubeClient, p: RunningPod): Promise<void> {
  const t = now();
  const ready = p.ready ? 'True' : 'False';
  const containers = p.object.spec.containers;
  const status = {
    phase: 'Running',
    hostIP: p.hostIp,
    hostIPs: [{ ip: p.hostIp }],
    podIP: p.ip,
    podIPs: [{ ip: p.ip }],
    startTime: t,
    qosClass: 'BestEffort',
    conditions: [
      { type: 'PodReadyToStartContainers', status: 'True', lastTransitionTime: t },
      { type: 'Initialized', status: 'True', lastTransitionTime: t },
      { type: 'Ready', status: ready, lastTransitionTime: t },
      { type: 'ContainersReady', status: ready, lastTransitionTime: t },
      { type: 'PodScheduled', status: 'True', lastTransitionTime: t },
    ],
    containerStatuses: containers.map((c) => ({
      name: c.name,
      image: (c as { image?: string }).image ?? NO_IMAGE,
      imageID: '',
      ready: p.ready,
      started: true,
      restartCount: 0,
      state: { running: { startedAt: t } },
    })),
  };
  await client.patch({ apiVersion: 'v1', kind: 'Pod', namespace: p.object.metadata.namespace, name: p.object.metadata.name }, { status }, 'merge', 'status');
}

/**
 * Deletes a pod at once: without a kubelet a graceful delete never finishes (the kubelet confirms it), so the lab
 * does what a kubelet's final status update would allow, a zero grace period.
 */
export async function deletePod(client: KubeClient, namespace: string, name: string): Promise<boolean> {
  return client.delete({ apiVersion: 'v1', kind: 'Pod', namespace, name }, { gracePeriodSeconds: 0 });
}

/** Creates the object, or leaves it be when it exists (ServiceAccounts the controller may have made first). */
export async function ensure(client: KubeClient, o: ApiObject): Promise<void> {
  try {
    await client.create(o);
  } catch (err) {
    if (!(err instanceof KubeApiError && err.status === 409)) throw err;
  }
}
