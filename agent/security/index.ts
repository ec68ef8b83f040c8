// Authorization and peer authentication for the inbound path (not wired yet): AuthorizationPolicy and
// PeerAuthentication compiled into a PolicySet when state is applied; per connection evaluateConnection, per
// HTTP/gRPC request normalizeTarget then evaluateRequest. One path normalization for routing and policy.
export { normalizeTarget, normalizePath, type NormalizeOptions, type NormalizedTarget } from './normalize.js';
export {
  compilePolicies,
  pendingPolicies,
  evaluateConnection,
  evaluateRequest,
  modeFor,
  PolicySet,
  DEFAULT_ROOT_NAMESPACE,
  type CompilePoliciesOptions,
  type ConnectionInput,
  type ConnectionContext,
  type ConnectionVerdict,
  type PolicyStatus,
  type PolicyKind,
  type PolicyWorkload,
} from './policies.js';
export { describe, formatDescription, type WorkloadPoliciesView, type AuthorizationPolicyView } from './describe.js';
export type { AuthzDecision, DecisionCode, RequestAttributes, AuthzAction } from './authz.js';
export type { MtlsMode } from './peer-auth.js';
