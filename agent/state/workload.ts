// The state's view of a pod: who it is (identity, workload name), where it is (IP, node, netns), whether it is meshed.
import { MESH_ANNOTATION, NETNS_ANNOTATION } from '../constants.js';
import { spiffeId } from '../identity/spiffe.js';
import type { Namespace, Pod } from '../model/objects.js';

export interface Workload {
  /** namespace/name of the pod. */
  readonly key: string;
  /** metadata.uid: tells one incarnation of a pod name from the next. */
  readonly uid: string | undefined;
  readonly namespace: string;
  readonly pod: string;
  /** Canonical workload name (app label, owner, or pod name): the metrics label. */
  readonly name: string;
  readonly serviceAccount: string;
  readonly identity: string;
  readonly ip: string | undefined;
  readonly node: string | undefined;
  readonly netnsPath: string | undefined;
  readonly labels: Readonly<Record<string, string>>;
  readonly meshed: boolean;
}

/** Opt-in: `enabled` on the Namespace or Pod; `disabled` on the Pod wins over the Namespace. */
export function isMeshed(pod: Pod, ns: Namespace | undefined): boolean {
  const podMode = pod.metadata.annotations?.[MESH_ANNOTATION];
  if (podMode === 'disabled') return false;
  if (podMode === 'enabled') return true;
  return ns?.metadata.annotations?.[MESH_ANNOTATION] === 'enabled';
}

export function workloadName(pod: Pod): string {
  const labels = pod.metadata.labels ?? {};
  const named = labels['app.kubernetes.io/name'] ?? labels['app'];
  if (named) return named;
  const owner = pod.metadata.ownerReferences?.[0];
  if (owner?.kind === 'ReplicaSet') return owner.name.replace(/-[a-z0-9]{5,10}$/, '');
  if (owner) return owner.name;
  return pod.metadata.name;
}

export function toWorkload(pod: Pod, ns: Namespace | undefined, trustDomain: string): Workload {
  const namespace = pod.metadata.namespace ?? 'default';
  const serviceAccount = pod.spec.serviceAccountName ?? 'default';
  return Object.freeze({
    key: `${namespace}/${pod.metadata.name}`,
    uid: pod.metadata.uid,
    namespace,
    pod: pod.metadata.name,
    name: workloadName(pod),
    serviceAccount,
    identity: spiffeId(trustDomain, namespace, serviceAccount),
    ip: pod.status?.podIP ?? pod.status?.podIPs?.[0]?.ip,
    node: pod.spec.nodeName,
    netnsPath: pod.metadata.annotations?.[NETNS_ANNOTATION],
    labels: Object.freeze({ ...(pod.metadata.labels ?? {}) }),
    meshed: isMeshed(pod, ns),
  });
}

/**
 * Where a pod's captured connection came from, for records and access lines: the accepted socket's peer address, or
 * the pod's own address when that peer is loopback. In eBPF capture mode the outbound programs send the app's connect
 * to 127.0.0.1:15001, so the socket shows 127.0.0.1 where nft's redirect showed the address the packet left with.
 */
export function sourceAddress(pod: Workload, peer: string | undefined): string | undefined {
  if (peer === undefined || !(peer.startsWith('127.') || peer === '::1' || peer.startsWith('::ffff:127.'))) return peer;
  return pod.ip ?? peer;
}
