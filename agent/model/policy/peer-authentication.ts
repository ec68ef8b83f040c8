// PeerAuthentication (security.trellis.dev/v1alpha1, Istio's fields): whether a workload's inbound accepts
// plaintext from clients outside the mesh. STRICT: plaintext on the inbound plaintext port is refused, only
// HBONE (mTLS) is served; PERMISSIVE (the default): both, plaintext labelled connection_security_policy="none";
// DISABLE: as PERMISSIVE on the inbound (Trellis still carries mesh callers over HBONE; DISABLE only says the
// workload does not require it). Pure: no I/O.
//
// Resolution for one workload and port, as Istio composes it: the workload-level policy (a selector matching
// the workload, in its namespace; the oldest if several), its portLevelMtls for the port, then its mtls.mode,
// then the namespace-level policy (no selector, oldest), then the mesh-wide one (no selector, in the root
// namespace), then PERMISSIVE. UNSET at any level means "inherit from the next". A policy with a selector in
// the root namespace is ignored by Istio; Trellis refuses it with a reason instead of ignoring it silently.
import type { KubeObject } from '../objects.js';
import { readSelector } from './authorization.js';
import type { Issue } from './types.js';

export type MtlsMode = 'STRICT' | 'PERMISSIVE' | 'DISABLE';
type ModeOrUnset = MtlsMode | 'UNSET';

export interface CompiledPeerAuthentication {
  /** namespace/name */
  readonly key: string;
  readonly namespace: string;
  readonly name: string;
  readonly uid: string | undefined;
  readonly generation: number | undefined;
  /** Milliseconds since the epoch; +Infinity when unknown (objects from files): ties go by name. */
  readonly created: number;
  readonly selector: Readonly<Record<string, string>> | undefined;
  readonly mode: ModeOrUnset;
  readonly ports: ReadonlyMap<number, ModeOrUnset>;
}

export type ParsedPeerAuthentication =
  | { readonly ok: true; readonly policy: CompiledPeerAuthentication }
  | { readonly ok: false; readonly issues: readonly Issue[] };

const MODES = ['UNSET', 'PERMISSIVE', 'STRICT', 'DISABLE'];

function readMode(v: unknown, path: string, add: (p: string, m: string) => void): ModeOrUnset {
  if (v === undefined || v === null) return 'UNSET';
  if (typeof v !== 'object' || Array.isArray(v)) {
    add(path, 'must be a mapping with mode');
    return 'UNSET';
  }
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (k !== 'mode') add(`${path}.${k}`, 'unknown field (known: mode)');
  if (o.mode === undefined || o.mode === null) return 'UNSET';
  if (typeof o.mode !== 'string' || !MODES.includes(o.mode)) {
    add(`${path}.mode`, `must be one of ${MODES.join(', ')}, not ${JSON.stringify(o.mode)}`);
    return 'UNSET';
  }
  return o.mode as ModeOrUnset;
}

export function parsePeerAuthentication(obj: KubeObject, rootNamespace: string): ParsedPeerAuthentication {
  const issues: Issue[] = [];
  const add = (path: string, message: string) => void issues.push({ path, message });
  const meta = obj.metadata as KubeObject['metadata'] & { generation?: unknown; creationTimestamp?: unknown };
  const namespace = meta.namespace ?? 'default';
  const spec = (obj as { spec?: unknown }).spec ?? {};
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) return { ok: false, issues: [{ path: 'spec', message: 'must be a mapping' }] };
  const s = spec as Record<string, unknown>;
  for (const k of Object.keys(s)) {
    if (k === 'portLevelTls') add('spec.portLevelTls', 'not supported: Trellis does not terminate TLS for the workload');
    else if (!['selector', 'mtls', 'portLevelMtls'].includes(k)) add(`spec.${k}`, 'unknown field (known: selector, mtls, portLevelMtls)');
  }
  const selector = readSelector(s.selector, 'spec.selector', add);
  const mode = readMode(s.mtls, 'spec.mtls', add);
  const ports = new Map<number, ModeOrUnset>();
  if (s.portLevelMtls !== undefined && s.portLevelMtls !== null) {
    const pl = s.portLevelMtls;
    if (typeof pl !== 'object' || Array.isArray(pl)) {
      add('spec.portLevelMtls', 'must be a mapping of port numbers to {mode}');
    } else {
      if (!selector) add('spec.portLevelMtls', 'needs a workload selector (spec.selector.matchLabels), as in Istio');
      for (const [k, v] of Object.entries(pl as Record<string, unknown>)) {
        const port = /^[0-9]{1,5}$/.test(k) ? Number(k) : NaN;
        if (!(port >= 1 && port <= 65535)) add(`spec.portLevelMtls.${k}`, 'keys must be port numbers from 1 to 65535');
        else ports.set(port, readMode(v, `spec.portLevelMtls.${k}`, add));
      }
    }
  }
  if (selector && namespace === rootNamespace) {
    add('spec.selector', `a PeerAuthentication with a selector in the root namespace ${rootNamespace} applies to nothing (Istio ignores it); put it in the workload's namespace, or drop the selector for a mesh-wide policy`);
  }
  if (issues.length > 0) return { ok: false, issues };
  const created = typeof meta.creationTimestamp === 'string' ? Date.parse(meta.creationTimestamp) : NaN;
  return {
    ok: true,
    policy: Object.freeze({
      key: `${namespace}/${meta.name}`,
      namespace,
      name: meta.name,
      uid: meta.uid,
      generation: typeof meta.generation === 'number' ? meta.generation : undefined,
      created: Number.isFinite(created) ? created : Number.POSITIVE_INFINITY,
      selector,
      mode,
      ports,
    }),
  };
}

/** Oldest first, then by name: Istio's precedence among policies at the same level. */
export function olderFirst(a: CompiledPeerAuthentication, b: CompiledPeerAuthentication): number {
  if (a.created !== b.created) return a.created < b.created ? -1 : 1;
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

/** The PeerAuthentication policies in force, indexed for resolution. */
export interface PeerAuthenticationIndex {
  readonly mesh: CompiledPeerAuthentication | undefined;
  /** Namespace-level policy per namespace (the oldest). */
  readonly namespaces: ReadonlyMap<string, CompiledPeerAuthentication>;
  /** Workload-level policies per namespace, oldest first. */
  readonly workloads: ReadonlyMap<string, readonly CompiledPeerAuthentication[]>;
  /** Policies that lost to an older one at the same level, with the one that won. */
  readonly shadowed: readonly { readonly policy: string; readonly by: string }[];
}

export function indexPeerAuthentications(policies: readonly CompiledPeerAuthentication[], rootNamespace: string): PeerAuthenticationIndex {
  const sorted = [...policies].sort(olderFirst);
  let mesh: CompiledPeerAuthentication | undefined;
  const namespaces = new Map<string, CompiledPeerAuthentication>();
  const workloads = new Map<string, CompiledPeerAuthentication[]>();
  const shadowed: { policy: string; by: string }[] = [];
  for (const p of sorted) {
    if (p.selector) {
      let l = workloads.get(p.namespace);
      if (!l) workloads.set(p.namespace, (l = []));
      l.push(p);
    } else if (p.namespace === rootNamespace) {
      if (mesh) shadowed.push({ policy: p.key, by: mesh.key });
      else mesh = p;
    } else {
      const have = namespaces.get(p.namespace);
      if (have) shadowed.push({ policy: p.key, by: have.key });
      else namespaces.set(p.namespace, p);
    }
  }
  return { mesh, namespaces, workloads, shadowed };
}

export interface WorkloadLabels {
  readonly namespace: string;
  readonly labels: Readonly<Record<string, string>>;
}

export function selects(selector: Readonly<Record<string, string>> | undefined, labels: Readonly<Record<string, string>>): boolean {
  if (!selector) return true;
  for (const k in selector) if (labels[k] !== selector[k]) return false;
  return true;
}

/** How a workload's mode was decided: per port overrides and the default, each with the policy that set it. */
export interface ResolvedPeerAuthentication {
  readonly mode: MtlsMode;
  /** namespace/name of the policy that set `mode`, undefined for the built-in PERMISSIVE default. */
  readonly modeFrom: string | undefined;
  readonly ports: ReadonlyMap<number, MtlsMode>;
  /** The policies that apply, most specific first. */
  readonly policies: readonly { readonly policy: string; readonly level: 'workload' | 'namespace' | 'mesh'; readonly mode: ModeOrUnset; readonly ports: Readonly<Record<string, ModeOrUnset>> }[];
}

export function resolvePeerAuthentication(index: PeerAuthenticationIndex, w: WorkloadLabels): ResolvedPeerAuthentication {
  const workload = index.workloads.get(w.namespace)?.find((p) => selects(p.selector, w.labels));
  const ns = index.namespaces.get(w.namespace);
  const chain: [CompiledPeerAuthentication | undefined, 'workload' | 'namespace' | 'mesh'][] = [[workload, 'workload'], [ns, 'namespace'], [index.mesh, 'mesh']];
  let mode: MtlsMode = 'PERMISSIVE';
  let modeFrom: string | undefined;
  for (const [p] of chain) {
    if (p && p.mode !== 'UNSET') {
      mode = p.mode;
      modeFrom = p.key;
      break;
    }
  }
  const ports = new Map<number, MtlsMode>();
  if (workload) for (const [port, m] of workload.ports) if (m !== 'UNSET') ports.set(port, m);
  const policies = chain
    .filter((c): c is [CompiledPeerAuthentication, 'workload' | 'namespace' | 'mesh'] => c[0] !== undefined)
    .map(([p, level]) => ({ policy: p.key, level, mode: p.mode, ports: Object.fromEntries([...p.ports].map(([k, v]) => [String(k), v])) }));
  return { mode, modeFrom, ports, policies };
}
