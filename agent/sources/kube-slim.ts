// Source edge, kube: what the agent keeps of each object the API server sends, cut down as it arrives (the
// informer's transform, as client-go's SetTransform is used). Every agent watches every Pod of the cluster; a Pod
// as the API server sends it is mostly what the agent never reads (managedFields, volumes, env, resources,
// tolerations, conditions), and 50 000 of them are most of an agent's memory. The cut is made in place on the
// freshly parsed object, before the informer caches it.

/** Annotations that copy a whole object (kubectl's client-side apply). */
const BULKY_ANNOTATIONS = ['kubectl.kubernetes.io/last-applied-configuration'];

type Plain = Record<string, unknown>;

function isPlain(v: unknown): v is Plain {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Drops in place what no part of the agent reads. Objects of other shapes are left as they are (validation reports
 * them). Kept for Pods: metadata, spec.nodeName, spec.serviceAccountName, spec.hostNetwork, each container's name
 * and ports, status.podIP, status.podIPs, status.phase, status.hostIP — what validate.ts checks and
 * state/workload.ts reads.
 */
export function slimObject(kind: string, obj: unknown): void {
  if (!isPlain(obj)) return;
  const meta = obj.metadata;
  if (isPlain(meta)) {
    delete meta.managedFields;
    const annotations = meta.annotations;
    if (isPlain(annotations)) for (const a of BULKY_ANNOTATIONS) delete annotations[a];
  }
  if (kind === 'Pod') slimPod(obj);
}

function slimPod(pod: Plain): void {
  const spec = pod.spec;
  if (isPlain(spec)) {
    const containers = Array.isArray(spec.containers)
      ? spec.containers.map((c: unknown) => (isPlain(c) ? pick(c, ['name', 'ports']) : c))
      : spec.containers;
    pod.spec = { ...pick(spec, ['nodeName', 'serviceAccountName', 'hostNetwork']), containers };
  }
  const status = pod.status;
  if (isPlain(status)) pod.status = pick(status, ['podIP', 'podIPs', 'phase', 'hostIP']);
}

function pick(o: Plain, keys: readonly string[]): Plain {
  const out: Plain = {};
  for (const k of keys) if (o[k] !== undefined) out[k] = o[k];
  return out;
}
