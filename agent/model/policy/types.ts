// What an AuthorizationPolicy compiles to: pre-built matchers per rule, and the decisions each rule gives when it
// matches (built once, so evaluation allocates nothing). The evaluation itself is agent/security/rules.ts.
import type { Cidr } from './ip.js';
import type { StringSet } from './strings.js';

export type AuthzAction = 'ALLOW' | 'DENY' | 'AUDIT';

export interface Issue {
  /** Field path from the object root: spec.rules[0].to[1].operation.paths[2]. */
  readonly path: string;
  readonly message: string;
}

export interface SourceMatch {
  readonly principals?: StringSet;
  readonly notPrincipals?: StringSet;
  readonly namespaces?: StringSet;
  readonly notNamespaces?: StringSet;
  /** "namespace/name" of the peer's service account (trust domain not compared). */
  readonly serviceAccounts?: ReadonlySet<string>;
  readonly notServiceAccounts?: ReadonlySet<string>;
  readonly ipBlocks?: readonly Cidr[];
  readonly notIpBlocks?: readonly Cidr[];
}

export interface OperationMatch {
  readonly ports?: ReadonlySet<number>;
  readonly notPorts?: ReadonlySet<number>;
  readonly methods?: StringSet;
  readonly notMethods?: StringSet;
  readonly paths?: StringSet;
  readonly notPaths?: StringSet;
  /** Lowercased patterns: hosts compare case-insensitively. */
  readonly hosts?: StringSet;
  readonly notHosts?: StringSet;
  /** Uses a field that needs the request (methods, paths, hosts and their notX). */
  readonly l7: boolean;
}

export type Condition =
  | { readonly kind: 'header'; readonly name: string; readonly values?: StringSet; readonly notValues?: StringSet }
  | { readonly kind: 'principal' | 'namespace'; readonly values?: StringSet; readonly notValues?: StringSet }
  | { readonly kind: 'sourceIp' | 'destinationIp'; readonly values?: readonly Cidr[]; readonly notValues?: readonly Cidr[] }
  | { readonly kind: 'destinationPort'; readonly values?: ReadonlySet<number>; readonly notValues?: ReadonlySet<number> };

export interface CompiledRule {
  readonly index: number;
  /** undefined: any source. */
  readonly from?: readonly SourceMatch[];
  /** undefined: any operation. */
  readonly to?: readonly OperationMatch[];
  readonly when: readonly Condition[];
  /** The HTTP-only fields the rule uses ("methods, paths"), or "" when it is L4 only. */
  readonly l7Fields: string;
  /** One line, for describe() and reasons. */
  readonly text: string;
}

/** Why a connection or request is allowed or denied: one stable code (metrics, logs) and a sentence for people. */
export type DecisionCode =
  /** No DENY policy matched and no ALLOW policy selects the workload. */
  | 'allowed_no_policy'
  /** An ALLOW policy matched. */
  | 'allowed'
  /** Connection on an HTTP port: its L4 checks passed, some rules need the request; evaluateRequest decides. */
  | 'allowed_pending_request'
  /** A DENY policy matched (failSafe: only because its HTTP fields could not be checked). */
  | 'denied'
  /** ALLOW policies select the workload and none matched. */
  | 'denied_no_allow_match'
  /** Plaintext to a workload and port whose PeerAuthentication is STRICT. */
  | 'denied_plaintext'
  /** No policy set yet (the agent has not synced its sources): policy never fails open. */
  | 'denied_not_ready'
  /** The destination is not a workload the agent knows. */
  | 'denied_unknown_workload'
  /** The peer's identity or addresses could not be read. */
  | 'denied_unreadable';

export interface AuthzDecision {
  readonly allowed: boolean;
  readonly code: DecisionCode;
  /** The action of the policy that decided; NONE when no policy did (default allow, no ALLOW match, errors). */
  readonly action: 'ALLOW' | 'DENY' | 'NONE';
  /** namespace/name of the policy that decided. */
  readonly policy?: string;
  /** Index in its spec.rules of the rule that matched. */
  readonly rule?: number;
  /** An AUDIT policy matched: the request goes to the audit log. Never changes `allowed`. */
  readonly audit: boolean;
  /** namespace/name of the (first) AUDIT policy that matched. */
  readonly auditPolicy?: string;
  /** The decision rests on a rule whose HTTP fields could not be checked (L4 only) and was taken the safe way. */
  readonly failSafe: boolean;
  readonly reason: string;
}

export interface CompiledPolicy {
  /** namespace/name */
  readonly key: string;
  readonly namespace: string;
  readonly name: string;
  readonly uid: string | undefined;
  readonly generation: number | undefined;
  readonly action: AuthzAction;
  /** undefined or empty: every workload of the namespace (of the mesh, in the root namespace). */
  readonly selector: Readonly<Record<string, string>> | undefined;
  readonly rules: readonly CompiledRule[];
  /** The decision when rule i matches (ALLOW: allowed, DENY: denied), built once so evaluation allocates nothing. */
  readonly decisions: readonly AuthzDecision[];
  /** DENY and AUDIT: the decision when rule i matches on its L4 fields and its HTTP fields could not be checked. */
  readonly failSafeDecisions: readonly AuthzDecision[];
}
