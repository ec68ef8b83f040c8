// An authorization decision as the rest of the agent reports it: one count in trellis_authz_decisions_total and
// the `authz` fields of the audit line; and a connection's check kept so each of its requests can re-run it.
import type { PolicySet } from '../model/policy/policy-set.js';
import type { AuthzDecision } from '../model/policy/types.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { ConnectionInput, ConnectionVerdict } from './evaluate.js';

/** The connection's check and what it was made from, so that a request can re-run it under newer policies. */
export interface ConnectionAuthz {
  verdict: ConnectionVerdict;
  readonly input: ConnectionInput;
  policies: PolicySet;
}

/** trellis_authz_decisions_total, once per connection or request decision. */
export function countDecision(metrics: Metrics, d: AuthzDecision, level: 'connection' | 'request'): void {
  metrics.authzDecisions.inc({ decision: d.allowed ? 'allow' : 'deny', action: d.action, policy: d.policy ?? '', reason: d.code, level });
}

/** The decision as the audit line carries it. */
export function decisionFields(d: AuthzDecision): Record<string, unknown> {
  return {
    authz: {
      decision: d.allowed ? 'allow' : 'deny',
      code: d.code,
      action: d.action,
      policy: d.policy,
      rule: d.rule,
      audit: d.audit || undefined,
      audit_policy: d.auditPolicy,
      fail_safe: d.failSafe || undefined,
      reason: d.allowed ? undefined : d.reason,
    },
  };
}
