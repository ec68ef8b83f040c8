// The policy set: AuthorizationPolicy and PeerAuthentication objects compiled once (when the store applies a
// snapshot) into an immutable PolicySet, and the checks the inbound path makes against it: evaluateConnection
// once per connection, evaluateRequest once per HTTP/gRPC request. An invalid object keeps its last valid version
// in force. Policy never fails open: before the first snapshot, for an unknown workload or an unreadable peer,
// the answer is "denied" with the reason.
import type { KubeObject } from '../sources/objects.js';
import {
  Match,
  parseAuthorizationPolicy,
  readPeer,
  ruleMatches,
  type AuthzDecision,
  type CompiledPolicy,
  type CompiledRule,
  type Issue,
  type Peer,
  type RequestAttributes,
} from './authz.js';
import {
  indexPeerAuthentications,
  parsePeerAuthentication,
  resolvePeerAuthentication,
  selects,
  type CompiledPeerAuthentication,
  type MtlsMode,
  type PeerAuthenticationIndex,
  type ResolvedPeerAuthentication,
} from './peer-auth.js';

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

const ALLOWED_NO_POLICY: AuthzDecision = Object.freeze({
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

// ---- evaluation ----

export interface ConnectionInput {
  /** The destination workload; undefined when the agent does not know it (denied). */
  readonly workload: PolicyWorkload | undefined;
  /** The peer's verified SPIFFE ID (spiffe://td/ns/x/sa/y) from HBONE mTLS; undefined for plaintext. */
  readonly sourceIdentity: string | undefined;
  readonly sourceIp: string | undefined;
  readonly destinationIp: string | undefined;
  /** The workload's port (the container port the connection goes to). */
  readonly destinationPort: number;
  /**
   * 'tcp': Trellis will not parse this connection; this is the only check, HTTP fields fail safe.
   * 'http': requests will be parsed and each checked with evaluateRequest; only what L4 alone decides is decided now.
   */
  readonly protocol: 'tcp' | 'http';
}

/** A policy's rules that the connection's L4 attributes leave possible, with how each fared at L4. */
interface Candidate {
  readonly policy: CompiledPolicy;
  readonly rules: readonly CompiledRule[];
  /** Match.Yes: matches whatever the request; Match.Unknown: its HTTP fields decide. */
  readonly l4: readonly Match[];
}

interface Candidates {
  readonly applicable: Applicable;
  readonly deny: readonly Candidate[];
  readonly allow: readonly Candidate[];
  readonly audit: readonly Candidate[];
}

/**
 * What evaluateRequest needs from the connection, parsed once: the peer, and the rules its L4 attributes leave
 * possible (the peer and ports do not change during a connection, so per request only those are checked).
 */
export class ConnectionContext {
  #set: PolicySet | undefined;
  #candidates: Candidates | undefined;

  constructor(
    readonly workload: PolicyWorkload,
    readonly peer: Peer,
  ) {}

  /** The candidates under `set`, recomputed when the policy set changed since the last call. */
  candidates(set: PolicySet): Candidates {
    if (this.#set !== set || !this.#candidates) {
      this.#candidates = candidatesFor(set.applicable(this.workload), this.peer);
      this.#set = set;
    }
    return this.#candidates;
  }
}

export interface ConnectionVerdict {
  readonly decision: AuthzDecision;
  /** For the connection's label connection_security_policy: "mutual_tls" or "none". */
  readonly mtlsMode: MtlsMode;
  /** Hand to evaluateRequest for every request (protocol 'http', allowed or not); for 'tcp', only when allowed. */
  readonly context: ConnectionContext | undefined;
}

function refusal(code: AuthzDecision['code'], reason: string): AuthzDecision {
  return { allowed: false, code, action: 'NONE', audit: false, failSafe: false, reason };
}

/** The mTLS mode for a workload's port (PERMISSIVE when no policy says otherwise; STRICT before the first snapshot). */
export function modeFor(policies: PolicySet, workload: PolicyWorkload, port: number): MtlsMode {
  if (!policies.ready) return 'STRICT';
  const r = policies.peerAuthenticationFor(workload);
  return r.ports.get(port) ?? r.mode;
}

function plaintextRefused(policies: PolicySet, w: PolicyWorkload, port: number, sourceIp: string | undefined): AuthzDecision {
  const r = policies.peerAuthenticationFor(w);
  const from = r.ports.has(port) ? `portLevelMtls ${port} of PeerAuthentication ${r.policies[0]?.policy}` : `PeerAuthentication ${r.modeFrom}`;
  return refusal(
    'denied_plaintext',
    `plaintext from ${sourceIp ?? 'an unknown address'} refused: ${w.key ?? w.namespace} port ${port} requires mutual TLS (${from} is STRICT); call it from a meshed workload, or set PERMISSIVE`,
  );
}

/** One check per connection, before any byte reaches the app. */
export function evaluateConnection(policies: PolicySet, input: ConnectionInput): ConnectionVerdict {
  const w = input.workload;
  if (!policies.ready) {
    return { decision: refusal('denied_not_ready', 'denied: the agent has not synced its policies yet (policy never fails open); retry shortly'), mtlsMode: 'STRICT', context: undefined };
  }
  if (!w) {
    return { decision: refusal('denied_unknown_workload', `denied: the destination ${input.destinationIp ?? ''}:${input.destinationPort} is not a workload this agent knows, so its policies cannot be evaluated`), mtlsMode: 'STRICT', context: undefined };
  }
  const mtlsMode = modeFor(policies, w, input.destinationPort);
  if (input.sourceIdentity === undefined && mtlsMode === 'STRICT') {
    return { decision: plaintextRefused(policies, w, input.destinationPort, input.sourceIp), mtlsMode, context: undefined };
  }
  const peer = readPeer(input.sourceIdentity, input.sourceIp, input.destinationIp, input.destinationPort);
  if (typeof peer === 'string') return { decision: refusal('denied_unreadable', `denied: ${peer}`), mtlsMode, context: undefined };
  const context = new ConnectionContext(w, peer);
  const decision = decideConnection(context.candidates(policies), input.protocol);
  // HTTP: every request is decided on its own against the policies of its time, so the context is kept even
  // when the connection's L4 attributes alone deny it (a later policy change may allow its next request).
  return { decision, mtlsMode, context: decision.allowed || input.protocol === 'http' ? context : undefined };
}

/**
 * One check per HTTP/gRPC request on an allowed connection. `policies` is the current set: a policy change
 * applies to the next request of a connection already open. `req.path` must be the normalized path.
 */
export function evaluateRequest(policies: PolicySet, connection: ConnectionContext, req: RequestAttributes): AuthzDecision {
  if (!policies.ready) return refusal('denied_not_ready', 'denied: the agent has not synced its policies yet (policy never fails open)');
  const { workload: w, peer } = connection;
  if (peer.principal === undefined && modeFor(policies, w, peer.destinationPort) === 'STRICT') {
    return plaintextRefused(policies, w, peer.destinationPort, undefined);
  }
  const c = connection.candidates(policies);
  let audit: CompiledPolicy | undefined;
  for (let i = 0; i < c.audit.length && !audit; i++) if (firstMatch(c.audit[i]!, peer, req) >= 0) audit = c.audit[i]!.policy;
  for (let i = 0; i < c.deny.length; i++) {
    const r = firstMatch(c.deny[i]!, peer, req);
    if (r >= 0) return withAudit(c.deny[i]!.policy.decisions[r]!, audit);
  }
  if (c.applicable.allow.length === 0) return withAudit(ALLOWED_NO_POLICY, audit);
  for (let i = 0; i < c.allow.length; i++) {
    const r = firstMatch(c.allow[i]!, peer, req);
    if (r >= 0) return withAudit(c.allow[i]!.policy.decisions[r]!, audit);
  }
  return withAudit(c.applicable.noAllowMatch, audit);
}

/** Index (in spec.rules) of the first candidate rule matching the request, or -1. */
function firstMatch(c: Candidate, peer: Peer, req: RequestAttributes): number {
  for (let i = 0; i < c.rules.length; i++) {
    const rule = c.rules[i]!;
    // A rule that matched at L4 and has no HTTP fields matches every request of the connection.
    if (c.l4[i] === Match.Yes || ruleMatches(rule, peer, req) === Match.Yes) return rule.index;
  }
  return -1;
}

function candidatesFor(a: Applicable, peer: Peer): Candidates {
  const filter = (list: readonly CompiledPolicy[]): Candidate[] => {
    const out: Candidate[] = [];
    for (const policy of list) {
      const rules: CompiledRule[] = [];
      const l4: Match[] = [];
      for (const rule of policy.rules) {
        const m = ruleMatches(rule, peer, undefined);
        if (m === Match.No) continue;
        rules.push(rule);
        l4.push(m);
      }
      if (rules.length > 0) out.push({ policy, rules, l4 });
    }
    return out;
  };
  return { applicable: a, deny: filter(a.deny), allow: filter(a.allow), audit: filter(a.audit) };
}

function withAudit(d: AuthzDecision, audit: CompiledPolicy | undefined): AuthzDecision {
  return audit ? { ...d, audit: true, auditPolicy: audit.key } : d;
}

/** A candidate's first rule that matched at L4 (>= 0, index in spec.rules), else -2 - index of its first undecided rule. */
function l4Outcome(c: Candidate): number {
  for (let i = 0; i < c.l4.length; i++) if (c.l4[i] === Match.Yes) return c.rules[i]!.index;
  return -2 - c.rules[0]!.index;
}

/**
 * The connection check, DENY first, then ALLOW. A rule undecided because of its HTTP fields is taken the safe
 * way on an opaque connection ('tcp'), or left to evaluateRequest on an HTTP one.
 */
function decideConnection(c: Candidates, protocol: 'tcp' | 'http'): AuthzDecision {
  const l4Only = protocol === 'tcp';
  let audit: CompiledPolicy | undefined;
  for (const cand of c.audit) {
    // AUDIT errs toward logging: an L4-only connection that may match is marked.
    if (l4Only || l4Outcome(cand) >= 0) {
      audit = cand.policy;
      break;
    }
  }
  // On an HTTP connection, rules left undecided by their HTTP fields wait for evaluateRequest.
  let denyPending: string | undefined;
  for (const cand of c.deny) {
    const r = l4Outcome(cand);
    if (r >= 0) return withAudit(cand.policy.decisions[r]!, audit);
    if (l4Only) return withAudit(cand.policy.failSafeDecisions[-2 - r]!, audit);
    denyPending ??= cand.policy.key;
  }
  if (c.applicable.allow.length === 0) {
    return denyPending ? pendingDecision(denyPending, audit) : withAudit(ALLOWED_NO_POLICY, audit);
  }
  let allowPending: string | undefined;
  let skipped: CompiledRule | undefined;
  let skippedPolicy: string | undefined;
  for (const cand of c.allow) {
    const r = l4Outcome(cand);
    if (r >= 0) return denyPending ? pendingDecision(denyPending, audit) : withAudit(cand.policy.decisions[r]!, audit);
    if (l4Only) {
      skipped ??= cand.rules[0];
      skippedPolicy ??= cand.policy.key;
    } else {
      allowPending ??= cand.policy.key;
    }
  }
  // Some ALLOW rule may still match once the request is known; if none can, every request would be denied: deny now.
  if (allowPending) return pendingDecision(denyPending ?? allowPending, audit);
  const noMatch = c.applicable.noAllowMatch;
  if (skipped) {
    return withAudit(
      {
        ...noMatch,
        failSafe: true,
        reason: `${noMatch.reason}; ALLOW policy ${skippedPolicy} rule ${skipped.index} uses HTTP fields (${skipped.l7Fields}) that cannot be checked on a connection Trellis does not parse, so it is taken as not matching (fail-safe)`,
      },
      audit,
    );
  }
  return withAudit(noMatch, audit);
}

function pendingDecision(policy: string, audit: CompiledPolicy | undefined): AuthzDecision {
  return {
    allowed: true,
    code: 'allowed_pending_request',
    action: 'NONE',
    audit: audit !== undefined,
    ...(audit ? { auditPolicy: audit.key } : {}),
    failSafe: false,
    reason: `connection allowed at L4; the HTTP rules of ${policy} decide each request`,
  };
}
