// Policy compilation: invalid objects refused with the object and field named, the last valid version kept in
// force, statuses, and the describe() view of what applies to a workload.
import { describe, expect, it } from 'vitest';
import { compilePolicies, describe as describePolicies, formatDescription, type PolicySet } from '../../../agent/security/index.js';
import { API, PEERS, compileAny, http, objects, policies, request, tcp } from '../../security/helpers.js';

const ap = (name: string, spec: string, extraMeta = '') => `
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ${name}, namespace: shop${extraMeta}}
spec:
${spec}
`;

function errorsOf(spec: string): string[] {
  return [...compileAny(ap('bad', spec)).errors];
}

describe('invalid AuthorizationPolicies are refused with the object and field named', () => {
  const cases: [string, string, RegExp][] = [
    ['CUSTOM action', '  action: CUSTOM\n  provider: {name: ext}', /AuthorizationPolicy shop\/bad: spec.action: CUSTOM \(external authorization\) is not supported/],
    ['unknown action', '  action: REJECT', /spec.action: must be ALLOW, DENY or AUDIT/],
    ['unknown field in a source (a typo must not widen a rule)', '  rules: [{from: [{source: {principal: ["x"]}}]}]', /spec.rules\[0\].from\[0\].source.principal: unknown field/],
    ['unknown spec field', '  rule: []', /spec.rule: unknown field/],
    ['empty source', '  rules: [{from: [{source: {}}]}]', /spec.rules\[0\].from\[0\].source: must not be empty/],
    ['empty from list', '  rules: [{from: []}]', /spec.rules\[0\].from: must not be empty/],
    ['empty operation', '  rules: [{to: [{operation: {}}]}]', /spec.rules\[0\].to\[0\].operation: must not be empty/],
    ['bad CIDR', '  rules: [{from: [{source: {ipBlocks: ["10.0.0.0/33"]}}]}]', /ipBlocks\[0\]: "10.0.0.0\/33": prefix length must be 0 to 32/],
    ['not an address', '  rules: [{from: [{source: {notIpBlocks: ["ten.0.0.1"]}}]}]', /notIpBlocks\[0\]: "ten.0.0.1" is not an IP address/],
    ['bad port', '  rules: [{to: [{operation: {ports: ["http"]}}]}]', /ports\[0\]: "http" is not a port number/],
    ['port 0', '  rules: [{to: [{operation: {notPorts: ["0"]}}]}]', /notPorts\[0\]: "0" is not a port number/],
    ['"*" inside a value', '  rules: [{to: [{operation: {paths: ["/api/*/items"]}}]}]', /paths: "\/api\/\*\/items": "\*" is allowed only as the first or the last character \(for one path segment, use the template "\{\*\}"\)/],
    ['path that normalizes to another', '  rules: [{to: [{operation: {paths: ["/a/../admin"]}}]}]', /paths\[0\]: "\/a\/..\/admin" can never match: .*"\/admin"/],
    ['path with a double slash', '  rules: [{to: [{operation: {notPaths: ["//admin*"]}}]}]', /notPaths\[0\]: "\/\/admin\*" can never match/],
    ['path with an encoded unreserved character', '  rules: [{to: [{operation: {paths: ["/%61dmin"]}}]}]', /paths\[0\]: "\/%61dmin" can never match/],
    ['path that requests can never have', '  rules: [{to: [{operation: {paths: ["/admin%2Fx"]}}]}]', /can never match: a request with this path is refused/],
    ['relative path', '  rules: [{to: [{operation: {paths: ["admin"]}}]}]', /paths\[0\]: "admin" can never match: request paths start with "\/"/],
    ['bad path template', '  rules: [{to: [{operation: {paths: ["/a/{**}/b/{*}"]}}]}]', /"\{\*\*\}" must be the last operator/],
    ['JWT key', '  rules: [{when: [{key: "request.auth.claims[iss]", values: ["x"]}]}]', /when\[0\].key: request.auth.claims\[iss\] needs request authentication \(JWT/],
    ['requestPrincipals', '  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]', /source.requestPrincipals: needs request authentication/],
    ['remoteIpBlocks', '  rules: [{from: [{source: {remoteIpBlocks: ["1.2.3.4"]}}]}]', /remoteIpBlocks: not supported: Trellis does not read X-Forwarded-For/],
    ['unknown condition key', '  rules: [{when: [{key: source.user, values: ["x"]}]}]', /when\[0\].key: unknown attribute "source.user"/],
    ['condition without values', '  rules: [{when: [{key: source.ip}]}]', /when\[0\]: needs values or notValues/],
    ['serviceAccounts with principals', '  rules: [{from: [{source: {serviceAccounts: ["shop/web"], principals: ["*"]}}]}]', /cannot be combined with principals or namespaces/],
    ['serviceAccount with a wildcard', '  rules: [{from: [{source: {serviceAccounts: ["shop/*"]}}]}]', /serviceAccounts\[0\]: "shop\/\*" must be NAMESPACE\/NAME/],
    ['empty value', '  rules: [{from: [{source: {namespaces: [""]}}]}]', /namespaces: an empty string never matches/],
    ['targetRef', '  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}', /spec.targetRef: not supported/],
    ['rules not a list', '  rules: {from: []}', /spec.rules: must be a list/],
  ];
  for (const [name, spec, re] of cases) {
    it(name, () => {
      const errors = errorsOf(spec);
      expect(errors.some((e) => re.test(e)), errors.join('\n')).toBe(true);
    });
  }

  it('a dry-run policy is refused rather than enforced', () => {
    const set = compileAny(ap('dry', '  action: DENY\n  rules: [{}]', ', annotations: {istio.io/dry-run: "true"}'));
    expect(set.errors[0]).toMatch(/dry-run policies are not supported/);
    expect(tcp(set, PEERS.web, 80)).toMatchObject({ allowed: true });
  });

  it('reports every problem of an object, not only the first', () => {
    const errors = errorsOf('  action: CUSTOM\n  rules: [{to: [{operation: {ports: ["x"], paths: ["a"]}}]}]');
    expect(errors).toHaveLength(3);
  });

  it('valid policies of the same set are unaffected and the status says which is which', () => {
    const set = compileAny(ap('good', '  rules: [{}]') + '---' + ap('bad', '  selector: {matchLabels: {app: other}}\n  action: CUSTOM'));
    expect(set.statuses.map((s) => [s.name, s.accepted, s.reason, s.fellBack])).toEqual([
      ['bad', false, 'Invalid', false],
      ['good', true, 'Accepted', false],
    ]);
    expect(tcp(set, PEERS.web, 80)).toMatchObject({ allowed: true, policy: 'shop/good' });
  });

  it('an invalid policy with no valid version never fails open: DENY (or an unknown action) denies what it selects, ALLOW allows nothing', () => {
    const deny = compileAny(ap('good', '  rules: [{}]') + '---' + ap('bad', '  action: CUSTOM'));
    expect(deny.statuses[0]!.message).toMatch(/denies every connection and request to every workload of its namespace/);
    expect(tcp(deny, PEERS.web, 80)).toMatchObject({ allowed: false, policy: 'shop/bad' });
    const allow = compileAny(ap('bad', '  rules: [{from: [{source: {principal: ["typo"]}}]}]'));
    expect(allow.statuses[0]!.message).toMatch(/ALLOW that matches nothing/);
    expect(tcp(allow, PEERS.web, 80)).toMatchObject({ allowed: false, code: 'denied_no_allow_match' });
    const audit = compileAny(ap('bad', '  action: AUDIT\n  rules: [{bogus: 1}]'));
    expect(tcp(audit, PEERS.web, 80)).toMatchObject({ allowed: true, code: 'allowed_no_policy' });
  });
});

describe('the last valid version stays in force', () => {
  const v1 = ap('allow-web', '  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]}]', ', uid: u-1, generation: 1');
  const v2bad = ap('allow-web', '  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/batch"]}, ipBlocks: []}]}]', ', uid: u-1, generation: 2');

  it('an invalid update keeps the previous version, and says so', () => {
    const first = policies(v1);
    const second = compilePolicies(objects(v2bad), { trustDomain: 'cluster.local', previous: first });
    expect(second.errors[0]).toMatch(/AuthorizationPolicy shop\/allow-web: spec.rules\[0\].from\[0\].ipBlocks: unknown field/);
    expect(second.statuses[0]).toMatchObject({ accepted: false, fellBack: true, generation: 2 });
    expect(second.statuses[0]!.message).toMatch(/last valid version stays in force/);
    expect(tcp(second, PEERS.web, 80)).toMatchObject({ allowed: true, policy: 'shop/allow-web' });
    expect(tcp(second, PEERS.batch, 80)).toMatchObject({ allowed: false });
    // And again on the next compile: the fallback is carried forward.
    const third = compilePolicies(objects(v2bad), { trustDomain: 'cluster.local', previous: second });
    expect(tcp(third, PEERS.web, 80)).toMatchObject({ allowed: true });
  });

  it('a valid update replaces it', () => {
    const first = policies(v1);
    const v2 = ap('allow-web', '  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/batch"]}}]}]', ', uid: u-1, generation: 2');
    const second = compilePolicies(objects(v2), { trustDomain: 'cluster.local', previous: first });
    expect(tcp(second, PEERS.batch, 80).allowed).toBe(true);
    expect(tcp(second, PEERS.web, 80).allowed).toBe(false);
  });

  it('a re-created object (another uid) does not inherit the old version', () => {
    const first = policies(v1);
    const recreated = v2bad.replace('uid: u-1', 'uid: u-2');
    const second = compilePolicies(objects(recreated), { trustDomain: 'cluster.local', previous: first });
    expect(second.statuses[0]).toMatchObject({ accepted: false, fellBack: false });
    // Not the old rules; its fail-closed reading (an ALLOW matching nothing) instead.
    expect(tcp(second, PEERS.web, 80)).toMatchObject({ allowed: false, code: 'denied_no_allow_match' });
  });

  it('a deleted object is gone, even if it was last good', () => {
    const first = policies(v1);
    const second = compilePolicies([], { trustDomain: 'cluster.local', previous: first });
    expect(second.lastGood.size).toBe(0);
    expect(tcp(second, PEERS.batch, 80)).toMatchObject({ allowed: true, code: 'allowed_no_policy' });
  });

  it('a PeerAuthentication falls back the same way', () => {
    const pa = (mode: string) => `
apiVersion: security.trellis.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: ${mode}}}
`;
    const first = policies(pa('STRICT'));
    const second = compilePolicies(objects(pa('STRIKT')), { trustDomain: 'cluster.local', previous: first });
    expect(second.errors[0]).toMatch(/PeerAuthentication shop\/default: spec.mtls.mode: must be one of/);
    expect(tcp(second, PEERS.plaintext, 80)).toMatchObject({ allowed: false, code: 'denied_plaintext' });
  });
});

describe('compiled output', () => {
  it('is frozen', () => {
    const set = policies(ap('p', '  rules: [{}]'));
    expect(Object.isFrozen(set)).toBe(true);
    const p = set.authorization.get('shop')![0]!;
    expect(Object.isFrozen(p)).toBe(true);
    expect(Object.isFrozen(p.rules)).toBe(true);
    expect(Object.isFrozen(p.decisions[0])).toBe(true);
  });

  it('ignores other kinds', () => {
    const set = policies(`
apiVersion: v1
kind: Namespace
metadata: {name: shop}
`);
    expect(set.statuses).toEqual([]);
  });
});

describe('describe', () => {
  const set: PolicySet = compileAny(`
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: mesh-audit, namespace: trellis-system}
spec:
  action: AUDIT
  rules: [{to: [{operation: {methods: ["DELETE"]}}]}]
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
    to: [{operation: {ports: ["8080"], paths: ["/api/*"]}}]
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-dev, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: ["dev"]}}]}]
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec: {selector: {matchLabels: {app: batch}}, action: CUSTOM}
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: billing}
spec: {action: CUSTOM}
---
apiVersion: security.trellis.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  mtls: {mode: STRICT}
  portLevelMtls: {"9000": {mode: PERMISSIVE}}
`);

  it('lists the policies that apply, in the order they are checked, as JSON-able data', () => {
    const v = describePolicies(set, API);
    expect(JSON.parse(JSON.stringify(v))).toEqual(v);
    expect(v.authorization.map((p) => [p.action, p.policy, p.scope])).toEqual([
      ['DENY', 'shop/deny-dev', 'namespace'],
      ['ALLOW', 'shop/allow-web', 'workload'],
      ['AUDIT', 'trellis-system/mesh-audit', 'mesh'],
    ]);
    expect(v.authorization[1]!.rules).toEqual([
      { index: 0, text: 'from principals [cluster.local/ns/shop/sa/web]; to ports [8080] and paths [/api/*]', httpFields: 'paths' },
    ]);
    expect(v.defaultOutcome).toMatch(/denied unless an ALLOW policy matches \(shop\/allow-web\)/);
    expect(v.peerAuthentication).toMatchObject({ mode: 'STRICT', modeFrom: 'shop/api', ports: { '9000': 'PERMISSIVE' } });
    expect(v.problems).toHaveLength(1);
    expect(v.problems[0]).toMatch(/AuthorizationPolicy shop\/broken: spec.action/);
  });

  it('reads as text', () => {
    const text = formatDescription(describePolicies(set, API));
    expect(text).toContain('Workload shop/api-7d9f');
    expect(text).toContain('mTLS: STRICT (from PeerAuthentication shop/api); port 9000: PERMISSIVE');
    expect(text).toContain('DENY shop/deny-dev [namespace]');
    expect(text).toContain('ALLOW shop/allow-web [workload selector app=api]');
    expect(text).toContain('rule 0: from principals [cluster.local/ns/shop/sa/web]; to ports [8080] and paths [/api/*]  [HTTP only: paths; on opaque TCP never matches]');
    expect(text).toContain('Otherwise: denied unless an ALLOW policy matches');
    expect(text).toContain('Problems:');
  });

  it('says when nothing applies', () => {
    const text = formatDescription(describePolicies(policies(''), API));
    expect(text).toContain('no policy selects this workload; everything is allowed');
    expect(text).toContain('mTLS: PERMISSIVE (default)');
  });

  it('agrees with evaluation', () => {
    expect(http(set, PEERS.web, 8080, request('DELETE', '/api/x'))).toMatchObject({ allowed: true, audit: true, auditPolicy: 'trellis-system/mesh-audit' });
  });
});
