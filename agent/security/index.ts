// Authorization at the destination: the policy set the store compiled (agent/model/policy/) evaluated per
// connection (evaluateConnection) and per HTTP/gRPC request (evaluateRequest, on the normalized path), and the
// decision as metrics and the audit line carry it.
export { normalizeTarget, normalizePath, type NormalizeOptions, type NormalizedTarget } from '../model/normalize.js';
export {
  compilePolicies,
  pendingPolicies,
  PolicySet,
  DEFAULT_ROOT_NAMESPACE,
  type CompilePoliciesOptions,
  type PolicyStatus,
  type PolicyKind,
  type PolicyWorkload,
} from '../model/policy/policy-set.js';
export type { AuthzDecision, DecisionCode, AuthzAction } from '../model/policy/types.js';
export type { MtlsMode } from '../model/policy/peer-authentication.js';
export {
  evaluateConnection,
  evaluateRequest,
  modeFor,
  type ConnectionInput,
  type ConnectionContext,
  type ConnectionVerdict,
} from './evaluate.js';
export type { RequestAttributes } from './rules.js';
export { countDecision, decisionFields, type ConnectionAuthz } from './decisions.js';
export { describe, formatDescription, type WorkloadPoliciesView, type AuthorizationPolicyView } from './describe.js';
