// Which policies apply to a workload and what they do, as plain data (JSON for `trellis ... -o json`) and as
// text for people. Reads a PolicySet; changes nothing.
import type { CompiledPolicy } from '../model/policy/types.js';
import type { MtlsMode } from '../model/policy/peer-authentication.js';
import type { PolicySet, PolicyStatus, PolicyWorkload } from '../model/policy/policy-set.js';

export interface AuthorizationPolicyView {
  readonly policy: string;
  readonly action: 'ALLOW' | 'DENY' | 'AUDIT';
  /** workload: selector in the workload's namespace; namespace: no selector; mesh: root namespace, no selector;
   * mesh-selector: root namespace with a selector (matching workloads of every namespace). */
  readonly scope: 'workload' | 'namespace' | 'mesh' | 'mesh-selector';
  readonly selector?: Readonly<Record<string, string>>;
  readonly rules: readonly { readonly index: number; readonly text: string; readonly httpFields?: string }[];
  /** The object is invalid now; this is its last valid version. */
  readonly lastGood: boolean;
}

export interface WorkloadPoliciesView {
  readonly workload: string;
  readonly namespace: string;
  readonly ready: boolean;
  /** DENY first, then ALLOW, then AUDIT: the order they are checked in. */
  readonly authorization: readonly AuthorizationPolicyView[];
  /** One sentence: what happens to a request no rule matches. */
  readonly defaultOutcome: string;
  readonly peerAuthentication: {
    readonly mode: MtlsMode;
    readonly modeFrom?: string;
    readonly ports: Readonly<Record<string, MtlsMode>>;
    readonly policies: readonly { readonly policy: string; readonly level: 'workload' | 'namespace' | 'mesh'; readonly mode: string; readonly ports: Readonly<Record<string, string>> }[];
  };
  /** Invalid policy objects in the workload's namespace and the root namespace. */
  readonly problems: readonly string[];
}

export function describe(policies: PolicySet, workload: PolicyWorkload): WorkloadPoliciesView {
  const a = policies.applicable(workload);
  const fellBack = new Set(policies.statuses.filter((s: PolicyStatus) => s.fellBack).map((s) => `${s.kind}/${s.namespace}/${s.name}`));
  const view = (p: CompiledPolicy): AuthorizationPolicyView => ({
    policy: p.key,
    action: p.action,
    scope: p.namespace === policies.rootNamespace && p.namespace !== workload.namespace
      ? (p.selector ? 'mesh-selector' : 'mesh')
      : p.selector ? 'workload' : 'namespace',
    ...(p.selector ? { selector: p.selector } : {}),
    rules: p.rules.map((r) => ({ index: r.index, text: r.text, ...(r.l7Fields ? { httpFields: r.l7Fields } : {}) })),
    lastGood: fellBack.has(`AuthorizationPolicy/${p.key}`),
  });
  const pa = policies.peerAuthenticationFor(workload);
  const namespaces = new Set([workload.namespace, policies.rootNamespace]);
  const defaultOutcome = !policies.ready
    ? 'everything is denied: the agent has not synced its policies yet'
    : a.allow.length > 0
      ? `denied unless an ALLOW policy matches (${a.allow.map((p) => p.key).join(', ')})`
      : 'allowed unless a DENY policy matches (no ALLOW policy selects this workload)';
  return {
    workload: workload.key ?? workload.namespace,
    namespace: workload.namespace,
    ready: policies.ready,
    authorization: [...a.deny, ...a.allow, ...a.audit].map(view),
    defaultOutcome,
    peerAuthentication: {
      mode: policies.ready ? pa.mode : 'STRICT',
      ...(pa.modeFrom ? { modeFrom: pa.modeFrom } : {}),
      ports: Object.fromEntries([...pa.ports].map(([k, v]) => [String(k), v])),
      policies: pa.policies,
    },
    problems: policies.errors.filter((e) => namespaces.has(/^\S+ ([^/]+)\//.exec(e)?.[1] ?? '')),
  };
}

/** The view as text, one policy per paragraph. */
export function formatDescription(v: WorkloadPoliciesView): string {
  const lines: string[] = [`Workload ${v.workload}`];
  if (!v.ready) lines.push('  Policies not synced yet: every connection is denied.');
  const pa = v.peerAuthentication;
  const ports = Object.entries(pa.ports).map(([p, m]) => `port ${p}: ${m}`).join(', ');
  lines.push(`  mTLS: ${pa.mode}${pa.modeFrom ? ` (from PeerAuthentication ${pa.modeFrom})` : ' (default)'}${ports ? `; ${ports}` : ''}`);
  if (v.authorization.length === 0) {
    lines.push('  Authorization: no policy selects this workload; everything is allowed.');
  } else {
    lines.push('  Authorization (DENY checked first, then ALLOW; AUDIT only marks):');
    for (const p of v.authorization) {
      const sel = p.selector ? ` selector ${Object.entries(p.selector).map(([k, val]) => `${k}=${val}`).join(',')}` : '';
      lines.push(`    ${p.action} ${p.policy} [${p.scope}${sel}]${p.lastGood ? ' (invalid now: last valid version in force)' : ''}`);
      if (p.rules.length === 0) lines.push(`      no rules: matches nothing${p.action === 'ALLOW' ? ' (so it denies everything not allowed by another ALLOW policy)' : ''}`);
      for (const r of p.rules) {
        lines.push(`      rule ${r.index}: ${r.text}${r.httpFields ? `  [HTTP only: ${r.httpFields}; on opaque TCP ${p.action === 'ALLOW' ? 'never matches' : 'matches on its other fields'}]` : ''}`);
      }
    }
    lines.push(`  Otherwise: ${v.defaultOutcome}`);
  }
  if (v.problems.length > 0) {
    lines.push('  Problems:');
    for (const e of v.problems) lines.push(`    ${e}`);
  }
  return lines.join('\n');
}
