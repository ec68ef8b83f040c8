// The checks the inbound path makes against the policy set: evaluateConnection once per connection,
// evaluateRequest once per HTTP/gRPC request. Policy never fails open: before the first snapshot, for an unknown
// workload or an unreadable peer, the answer is "denied" with the reason.

import {
  ALLOWED_NO_POLICY,
  type Applicable,
  type PolicySet,
  type PolicyWorkload,
} from '../model/policy/policy-set.js';
import type { MtlsMode } from '../model/policy/peer-authentication.js';
import type { AuthzDecision, CompiledPolicy, CompiledRule } from '../model/policy/types.js';
import { Match, readPeer, ruleMatches, type Peer, type RequestAttributes } from './rules.js';

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

/**
 * A candidate's first rule that matched at L4 (>= 0, index in spec.rules), else -2 - index of its first undecided rule.
 * `wholeRule`: an ALLOW rule on opaque TCP that uses any HTTP field does not match at all, even when one of its
 * operations without HTTP fields matches (Istio skips the whole rule; an operation must not widen what it allows).
 */
function l4Outcome(c: Candidate, wholeRule = false): number {
  for (let i = 0; i < c.l4.length; i++) if (c.l4[i] === Match.Yes && !(wholeRule && c.rules[i]!.l7Fields !== '')) return c.rules[i]!.index;
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
    const r = l4Outcome(cand, l4Only);
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
