// The policy set: AuthorizationPolicy and PeerAuthentication objects compiled once (when the store applies a
// snapshot) into an immutable PolicySet, with per-workload lookups of what applies. An invalid object keeps its
// last valid version in force; one that never was valid stands as its fail-closed reading. agent/security/
// evaluates connections and requests against it.
import type { KubeObject } from '../objects.js';
import { parseAuthorizationPolicy } from './authorization.js';
import {
  indexPeerAuthentications,
  parsePeerAuthentication,
  resolvePeerAuthentication,
  selects,
  type CompiledPeerAuthentication,
  type PeerAuthenticationIndex,
  type ResolvedPeerAuthentication,
} from './peer-authentication.js';
import type { AuthzDecision, CompiledPolicy, Issue } from './types.js';

export const DEFAULT_ROOT_NAMESPACE = 'trellis-system';

/** The destination workload, as the state knows it (state/workload.ts Workload fits). */
export interface PolicyWorkload {
  readonly namespace: string;
  readonly labels: Readonly<Record<string, string>>;
  /** namespace/pod, for messages. */
  readonly key?: string;
}

export interface CompilePoliciesOptions {
  /** The mesh's trust domain ("cluster.local" in a principal names it, as in Istio). */
  readonly trustDomain: string;
  /** Policies here without a selector apply to the whole mesh. Default trellis-system. */
  readonly rootNamespace?: string;
  /** The previous result: an object that is invalid now keeps its last valid version in force. */
  readonly previous?: Pick<PolicySet, 'lastGood'>;
}

export type PolicyKind = 'AuthorizationPolicy' | 'PeerAuthentication';

/** One object's outcome, shaped for its status.conditions[type=Accepted]. */
export interface PolicyStatus {
  readonly kind: PolicyKind;
  readonly namespace: string;
  readonly name: string;
  readonly generation: number | undefined;
  readonly accepted: boolean;
  readonly reason: 'Accepted' | 'Invalid';
  readonly message: string;
  /** Invalid now, its last valid version stays in force. */
  readonly fellBack: boolean;
}

type LastGood = { readonly kind: 'AuthorizationPolicy'; readonly policy: CompiledPolicy } | { readonly kind: 'PeerAuthentication'; readonly policy: CompiledPeerAuthentication };

/** The AuthorizationPolicies that select one workload, split by action, with the decisions that do not depend on a rule. */
export interface Applicable {
  readonly deny: readonly CompiledPolicy[];
  readonly allow: readonly CompiledPolicy[];
  readonly audit: readonly CompiledPolicy[];
  readonly noAllowMatch: AuthzDecision;
}

/** The decision when no DENY policy matched and no ALLOW policy selects the workload. */
export const ALLOWED_NO_POLICY: AuthzDecision = Object.freeze({
  allowed: true,
  code: 'allowed_no_policy',
  action: 'NONE',
  audit: false,
  failSafe: false,
  reason: 'allowed: no DENY policy matched and no ALLOW policy selects this workload',
});

export class PolicySet {
  /** False only for the placeholder used before the first snapshot: every check denies. */
  readonly ready: boolean;
  readonly rootNamespace: string;
  /** Every AuthorizationPolicy in force (valid, or last valid), by namespace, sorted by name. */
  readonly authorization: ReadonlyMap<string, readonly CompiledPolicy[]>;
  readonly peerAuthentication: PeerAuthenticationIndex;
  /** One per object, sorted by kind, namespace, name. */
  readonly statuses: readonly PolicyStatus[];
  /** One line per problem: "AuthorizationPolicy shop/x: spec.rules[0].to[0].operation.paths[1]: ...". */
  readonly errors: readonly string[];
  /** Hand back as `previous` on the next compile. Keyed kind/namespace/name. */
  readonly lastGood: ReadonlyMap<string, LastGood>;

  // Per-workload lookups, computed once per workload object and policy set (the state's Workload objects are
  // immutable and replaced with every snapshot, so a WeakMap forgets them with the snapshot).
  readonly #applicable = new WeakMap<object, Applicable>();
  readonly #peerAuth = new WeakMap<object, ResolvedPeerAuthentication>();

  constructor(init: {
    ready: boolean;
    rootNamespace: string;
    authorization: Map<string, CompiledPolicy[]>;
    peerAuthentication: PeerAuthenticationIndex;
    statuses: PolicyStatus[];
    errors: string[];
    lastGood: Map<string, LastGood>;
  }) {
    this.ready = init.ready;
    this.rootNamespace = init.rootNamespace;
    this.authorization = init.authorization;
    this.peerAuthentication = init.peerAuthentication;
    this.statuses = Object.freeze(init.statuses);
    this.errors = Object.freeze(init.errors);
    this.lastGood = init.lastGood;
    Object.freeze(this);
  }

  /** The AuthorizationPolicies that select a workload: its namespace's, and the root namespace's (mesh-wide). */
  applicable(w: PolicyWorkload): Applicable {
    let a = this.#applicable.get(w);
    if (a) return a;
    const deny: CompiledPolicy[] = [];
    const allow: CompiledPolicy[] = [];
    const audit: CompiledPolicy[] = [];
    const scan = (ns: string) => {
      for (const p of this.authorization.get(ns) ?? []) {
        if (!selects(p.selector, w.labels)) continue;
        (p.action === 'DENY' ? deny : p.action === 'ALLOW' ? allow : audit).push(p);
      }
    };
    scan(w.namespace);
    if (w.namespace !== this.rootNamespace) scan(this.rootNamespace);
    const names = allow.map((p) => p.key).join(', ');
    const noAllowMatch: AuthzDecision = Object.freeze({
      allowed: false,
      code: 'denied_no_allow_match',
      action: 'NONE',
      audit: false,
      failSafe: false,
      reason: `denied: ALLOW policies select this workload (${names}) and none matched`,
    });
    a = Object.freeze({ deny, allow, audit, noAllowMatch });
    this.#applicable.set(w, a);
    return a;
  }

  /** The workload's PeerAuthentication outcome (mode per port, and where it came from). */
  peerAuthenticationFor(w: PolicyWorkload): ResolvedPeerAuthentication {
    let r = this.#peerAuth.get(w);
    if (!r) this.#peerAuth.set(w, (r = resolvePeerAuthentication(this.peerAuthentication, w)));
    return r;
  }
}

/** The set in force before the first snapshot: denies everything, and says why. */
export function pendingPolicies(rootNamespace = DEFAULT_ROOT_NAMESPACE): PolicySet {
  return new PolicySet({
    ready: false,
    rootNamespace,
    authorization: new Map(),
    peerAuthentication: indexPeerAuthentications([], rootNamespace),
    statuses: [],
    errors: [],
    lastGood: new Map(),
  });
}

/** Compiles every AuthorizationPolicy and PeerAuthentication among `objects` (other kinds are skipped). */
export function compilePolicies(objects: readonly KubeObject[], opts: CompilePoliciesOptions): PolicySet {
  const rootNamespace = opts.rootNamespace ?? DEFAULT_ROOT_NAMESPACE;
  const statuses: PolicyStatus[] = [];
  const errors: string[] = [];
  const lastGood = new Map<string, LastGood>();
  const authz: CompiledPolicy[] = [];
  const peerAuth: CompiledPeerAuthentication[] = [];

  for (const o of objects) {
    if (o.kind !== 'AuthorizationPolicy' && o.kind !== 'PeerAuthentication') continue;
    const kind: PolicyKind = o.kind;
    const meta = o.metadata as KubeObject['metadata'] & { generation?: unknown };
    const ns = meta.namespace ?? 'default';
    const objKey = `${kind}/${ns}/${meta.name}`;
    const generation = typeof meta.generation === 'number' ? meta.generation : undefined;
    const parsed: { ok: true; policy: CompiledPolicy | CompiledPeerAuthentication } | { ok: false; issues: readonly Issue[] } =
      kind === 'AuthorizationPolicy' ? parseAuthorizationPolicy(o, { trustDomain: opts.trustDomain }) : parsePeerAuthentication(o, rootNamespace);
    let inForce: LastGood | undefined;
    let fellBack = false;
    if (parsed.ok) {
      inForce = { kind, policy: parsed.policy } as LastGood;
      statuses.push({ kind, namespace: ns, name: meta.name, generation, accepted: true, reason: 'Accepted', message: 'valid; in force', fellBack: false });
    } else {
      errors.push(...parsed.issues.map((i) => `${kind} ${ns}/${meta.name}: ${i.path}: ${i.message}`));
      const previous = opts.previous?.lastGood.get(objKey);
      // A deleted and re-created object (another uid) does not inherit its predecessor's rules.
      if (previous && (previous.policy.uid === undefined || meta.uid === undefined || previous.policy.uid === meta.uid)) {
        inForce = previous;
        fellBack = true;
      }
      // Never fail open: an invalid AuthorizationPolicy with no valid version to fall back on stands in force
      // as its safe reading (ALLOW: allow-nothing; DENY or an unreadable action: deny everything selected).
      let standIn = '';
      if (!inForce && kind === 'AuthorizationPolicy') {
        const safe = failClosedStandIn(o, opts.trustDomain);
        if (safe) {
          inForce = { kind: 'AuthorizationPolicy', policy: safe.policy };
          standIn = safe.note;
        }
      }
      const message =
        parsed.issues.map((i) => `${i.path}: ${i.message}`).join('; ') +
        (fellBack ? '. The last valid version stays in force until this is fixed.' : standIn ? `. ${standIn}` : '. Not in force.');
      statuses.push({ kind, namespace: ns, name: meta.name, generation, accepted: false, reason: 'Invalid', message, fellBack });
    }
    if (!inForce) continue;
    lastGood.set(objKey, inForce);
    if (inForce.kind === 'AuthorizationPolicy') authz.push(inForce.policy);
    else peerAuth.push(inForce.policy);
  }

  const byNamespace = new Map<string, CompiledPolicy[]>();
  authz.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  for (const p of authz) {
    let l = byNamespace.get(p.namespace);
    if (!l) byNamespace.set(p.namespace, (l = []));
    l.push(p);
  }
  for (const l of byNamespace.values()) Object.freeze(l);
  const index = indexPeerAuthentications(peerAuth, rootNamespace);
  // A namespace- or mesh-level PeerAuthentication shadowed by an older one is valid but not in force: say so.
  for (const s of index.shadowed) {
    const i = statuses.findIndex((st) => st.kind === 'PeerAuthentication' && `${st.namespace}/${st.name}` === s.policy);
    const st = statuses[i];
    if (st?.accepted) statuses[i] = { ...st, message: `valid, but not in force: ${s.by} is older and applies at the same level (as in Istio, the oldest wins)` };
  }
  statuses.sort((a, b) => {
    const ka = `${a.kind}/${a.namespace}/${a.name}`;
    const kb = `${b.kind}/${b.namespace}/${b.name}`;
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  });
  return new PolicySet({ ready: true, rootNamespace, authorization: byNamespace, peerAuthentication: index, statuses, errors, lastGood });
}

/**
 * The fail-closed reading of an invalid AuthorizationPolicy: its selector (the whole namespace when even that
 * is unreadable) with ALLOW and no rules (allow-nothing), or DENY matching everything. AUDIT changes no decision
 * and has no stand-in.
 */
function failClosedStandIn(o: KubeObject, trustDomain: string): { policy: CompiledPolicy; note: string } | undefined {
  const spec = ((o as { spec?: unknown }).spec ?? {}) as Record<string, unknown>;
  const action = spec.action ?? 'ALLOW';
  if (action === 'AUDIT') return undefined;
  const deny = action !== 'ALLOW';
  const selector = spec.selector;
  const readable = (sel: unknown): boolean => {
    const labels = (sel as { matchLabels?: unknown } | undefined)?.matchLabels;
    return !!labels && typeof labels === 'object' && Object.values(labels).every((v) => typeof v === 'string') && Object.keys(sel as object).every((k) => k === 'matchLabels');
  };
  const standIn = {
    ...o,
    spec: { ...(readable(selector) && { selector }), action: deny ? 'DENY' : 'ALLOW', ...(deny && { rules: [{}] }) },
  } as KubeObject;
  const parsed = parseAuthorizationPolicy(standIn, { trustDomain });
  if (!parsed.ok) return undefined;
  const scope = readable(selector) ? 'the workloads it selects' : 'every workload of its namespace';
  return {
    policy: parsed.policy,
    note: deny
      ? `Until it is fixed it denies every connection and request to ${scope} (policy never fails open).`
      : `Until it is fixed it stands as an ALLOW that matches nothing for ${scope} (policy never fails open).`,
  };
}
