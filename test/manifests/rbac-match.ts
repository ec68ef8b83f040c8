// Test support: Kubernetes RBAC evaluation for the Roles and bindings in manifests/, so a test can check recorded
// API requests against them (what the API server's RBAC authorizer would decide, for the rule forms we use).
import type { KubeObject } from './load.js';

export interface ApiRequest {
  verb: string;
  group: string;
  resource: string;
  subresource?: string;
  namespace?: string;
  name?: string;
  user?: string;
}

export interface Rule {
  apiGroups?: string[];
  resources?: string[];
  verbs: string[];
  resourceNames?: string[];
  nonResourceURLs?: string[];
}

/** The rules of one role as they reach a user through one binding: cluster-wide, or in the binding's namespace. */
export interface Grant {
  /** "ClusterRole/x via ClusterRoleBinding/y", for messages. */
  via: string;
  /** undefined: every namespace and cluster-scoped resources (a ClusterRole through a ClusterRoleBinding). */
  namespace: string | undefined;
  rules: Rule[];
}

interface Binding extends KubeObject {
  roleRef: { apiGroup: string; kind: 'Role' | 'ClusterRole'; name: string };
  subjects?: { kind: string; name: string; namespace?: string; apiGroup?: string }[];
}

/** The username the API server gives a subject. */
function subjectUser(s: { kind: string; name: string; namespace?: string }): string | undefined {
  if (s.kind === 'ServiceAccount') return `system:serviceaccount:${s.namespace}:${s.name}`;
  if (s.kind === 'User') return s.name;
  return undefined;
}

/** Everything `username` may do according to the objects (Groups are not modelled: the one group binding, tap discovery for system:authenticated, is checked in manifests.test.ts). */
export function grantsFor(objects: readonly KubeObject[], username: string): Grant[] {
  const grants: Grant[] = [];
  for (const b of objects.filter((o): o is Binding => o.kind === 'RoleBinding' || o.kind === 'ClusterRoleBinding')) {
    if (!(b.subjects ?? []).some((s) => subjectUser(s) === username)) continue;
    // A RoleBinding's Role lives in the binding's namespace; a ClusterRole is cluster-scoped.
    const role = objects.find(
      (o) => o.kind === b.roleRef.kind && o.metadata.name === b.roleRef.name && (o.kind === 'ClusterRole' || o.metadata.namespace === b.metadata.namespace),
    ) as (KubeObject & { rules?: Rule[] }) | undefined;
    if (!role) throw new Error(`${b.kind} ${b.metadata.name} refers to a missing ${b.roleRef.kind} ${b.roleRef.name}`);
    grants.push({
      via: `${role.kind}/${role.metadata.name} via ${b.kind}/${b.metadata.name}`,
      namespace: b.kind === 'RoleBinding' ? b.metadata.namespace : undefined,
      rules: role.rules ?? [],
    });
  }
  return grants;
}

/** Does this rule allow the request, ignoring where the rule applies (see allows)? */
export function ruleAllows(rule: Rule, req: ApiRequest): boolean {
  if (rule.nonResourceURLs) return false;
  const resource = req.subresource ? `${req.resource}/${req.subresource}` : req.resource;
  if (!(rule.apiGroups ?? []).includes(req.group)) return false;
  if (!(rule.resources ?? []).includes(resource)) return false;
  if (!rule.verbs.includes(req.verb)) return false;
  if (rule.resourceNames?.length) {
    // A create has no name yet, and a list or watch has one only through fieldSelector=metadata.name=...
    if (req.verb === 'create' || !req.name) return false;
    return rule.resourceNames.includes(req.name);
  }
  return true;
}

/** Does the grant reach the request's namespace? A namespaced grant never covers cluster-scoped resources. */
export function grantCovers(grant: Grant, req: ApiRequest): boolean {
  return grant.namespace === undefined || req.namespace === grant.namespace;
}

/** The (grant, rule) pairs that allow the request; empty means the API server answers 403. */
export function allowedBy(grants: readonly Grant[], req: ApiRequest): { grant: Grant; rule: Rule }[] {
  return grants.flatMap((grant) => (grantCovers(grant, req) ? grant.rules.filter((rule) => ruleAllows(rule, req)).map((rule) => ({ grant, rule })) : []));
}

/** One permission a rule hands out: a single group, resource, verb and (if the rule names them) resource name. */
export interface Permission {
  grant: Grant;
  rule: Rule;
  group: string;
  resource: string;
  verb: string;
  name?: string;
}

export function permissions(grant: Grant): Permission[] {
  const out: Permission[] = [];
  for (const rule of grant.rules) {
    for (const group of rule.apiGroups ?? []) {
      for (const resource of rule.resources ?? []) {
        for (const verb of rule.verbs) {
          const names = rule.resourceNames?.length ? rule.resourceNames : [undefined];
          for (const name of names) out.push({ grant, rule, group, resource, verb, ...(name ? { name } : {}) });
        }
      }
    }
  }
  return out;
}

/** Whether a request used exactly this permission (and the grant reaches it). */
export function uses(req: ApiRequest, p: Permission): boolean {
  const resource = req.subresource ? `${req.resource}/${req.subresource}` : req.resource;
  return (
    grantCovers(p.grant, req) &&
    req.group === p.group &&
    resource === p.resource &&
    req.verb === p.verb &&
    (p.name === undefined || req.name === p.name) &&
    ruleAllows(p.rule, req)
  );
}

/** A rule that would allow the request, as YAML-ish text for a failure message. */
export function suggestRule(req: ApiRequest): string {
  const resource = req.subresource ? `${req.resource}/${req.subresource}` : req.resource;
  const where = req.namespace ? `a Role in ${req.namespace} (or a ClusterRole if every namespace is meant)` : 'a ClusterRole';
  const name = req.name && req.verb !== 'create' ? `, resourceNames: [${req.name}]` : '';
  return `${where}: {apiGroups: ["${req.group}"], resources: [${resource}], verbs: [${req.verb}]${name}}`;
}
