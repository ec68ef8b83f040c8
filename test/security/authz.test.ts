// AuthorizationPolicy semantics against Istio's documented behaviour: the matrix (peer x request x
// policy set), match forms, notX fields, conditions, address blocks, L4 fail-safe, AUDIT, scopes.
import { describe, expect, it } from 'vitest';
import { evaluateConnection, evaluateRequest, pendingPolicies, type AuthzDecision } from '../../agent/security/index.js';
import { API, PEERS, http, policies, request, tcp, type PeerSpec } from './helpers.js';

const ALLOW_WEB = `
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
    to: [{operation: {ports: ["8080"], paths: ["/api/*"]}}]
`;
const DENY_ADMIN = `
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
  - from: [{source: {namespaces: ["dev"]}}]
`;

type Peer = keyof typeof PEERS;
type Call = 'api' | 'admin' | 'otherPort';
const CALLS: Record<Call, { port: number; target: string }> = {
  api: { port: 8080, target: '/api/items' },
  admin: { port: 8080, target: '/admin' },
  otherPort: { port: 9090, target: '/api/items' },
};

function outcome(d: AuthzDecision): string {
  return d.allowed ? (d.code === 'allowed' ? `allow:${d.policy}` : 'allow') : d.code === 'denied' ? `deny:${d.policy}#${d.rule}` : 'deny';
}

describe('the policy matrix (Istio: DENY first, then ALLOW; no ALLOW policy means allow)', () => {
  // Expected outcome per peer and call. "allow" / "deny" alone: decided by default (no policy / no ALLOW match).
  const cases: Record<string, { yaml: string; expect: Record<Peer, Record<Call, string>> }> = {
    'ALLOW only': {
      yaml: ALLOW_WEB,
      expect: {
        web: { api: 'allow:shop/allow-web', admin: 'deny', otherPort: 'deny' },
        batch: { api: 'deny', admin: 'deny', otherPort: 'deny' },
        dev: { api: 'deny', admin: 'deny', otherPort: 'deny' },
        plaintext: { api: 'deny', admin: 'deny', otherPort: 'deny' },
      },
    },
    'DENY only': {
      yaml: DENY_ADMIN,
      expect: {
        web: { api: 'allow', admin: 'deny:shop/deny-admin#0', otherPort: 'allow' },
        batch: { api: 'allow', admin: 'deny:shop/deny-admin#0', otherPort: 'allow' },
        // The DENY rule on namespace dev is decided by L4 alone: the connection check refuses it.
        dev: { api: 'deny:shop/deny-admin#1', admin: 'deny:shop/deny-admin#1', otherPort: 'deny:shop/deny-admin#1' },
        plaintext: { api: 'allow', admin: 'deny:shop/deny-admin#0', otherPort: 'allow' },
      },
    },
    'ALLOW and DENY': {
      yaml: ALLOW_WEB + '---' + DENY_ADMIN,
      expect: {
        web: { api: 'allow:shop/allow-web', admin: 'deny:shop/deny-admin#0', otherPort: 'deny' },
        // No ALLOW rule can match these peers: the connection check refuses them before any request.
        batch: { api: 'deny', admin: 'deny', otherPort: 'deny' },
        // The DENY rule on namespace dev is decided by L4 alone: the connection check refuses it.
        dev: { api: 'deny:shop/deny-admin#1', admin: 'deny:shop/deny-admin#1', otherPort: 'deny:shop/deny-admin#1' },
        plaintext: { api: 'deny', admin: 'deny', otherPort: 'deny' },
      },
    },
  };
  for (const [name, c] of Object.entries(cases)) {
    it(name, () => {
      const set = policies(c.yaml);
      expect(set.errors).toEqual([]);
      const got: Record<string, Record<string, string>> = {};
      for (const peer of Object.keys(PEERS) as Peer[]) {
        got[peer] = {};
        for (const call of Object.keys(CALLS) as Call[]) {
          const { port, target } = CALLS[call];
          got[peer]![call] = outcome(http(set, PEERS[peer], port, request('GET', target)));
        }
      }
      expect(got).toEqual(c.expect);
    });
  }

  it('explains denials', () => {
    const set = policies(ALLOW_WEB + '---' + DENY_ADMIN);
    const none = http(set, PEERS.batch, 8080, request('GET', '/api/items'));
    expect(none).toMatchObject({ allowed: false, code: 'denied_no_allow_match', action: 'NONE', audit: false });
    expect(none.reason).toMatch(/ALLOW policies select this workload \(shop\/allow-web\) and none matched/);
    const deny = http(set, PEERS.web, 8080, request('GET', '/admin'));
    expect(deny).toMatchObject({ allowed: false, code: 'denied', action: 'DENY', policy: 'shop/deny-admin', rule: 0, failSafe: false });
    expect(deny.reason).toMatch(/denied by DENY policy shop\/deny-admin rule 0 \(to paths \[\/admin, \/admin\/\*\]\)/);
    const ok = http(set, PEERS.web, 8080, request('GET', '/api/items'));
    expect(ok).toMatchObject({ allowed: true, code: 'allowed', action: 'ALLOW', policy: 'shop/allow-web', rule: 0 });
  });

  it('per request, returns the decision built when the policy was compiled (nothing is allocated for it)', () => {
    const set = policies(ALLOW_WEB + '---' + DENY_ADMIN);
    const c = evaluateConnection(set, { workload: API, sourceIdentity: PEERS.web.identity, sourceIp: PEERS.web.ip, destinationIp: '10.244.0.10', destinationPort: 8080, protocol: 'http' });
    const a = evaluateRequest(set, c.context!, request('GET', '/api/a'));
    expect(evaluateRequest(set, c.context!, request('GET', '/api/b'))).toBe(a);
    expect(Object.isFrozen(a)).toBe(true);
    expect(evaluateRequest(set, c.context!, request('GET', '/admin'))).toBe(evaluateRequest(set, c.context!, request('GET', '/admin/x')));
  });

  it('on an HTTP port, decides at the connection what L4 alone decides and leaves the rest to each request', () => {
    const set = policies(ALLOW_WEB + '---' + DENY_ADMIN);
    const conn = (peer: PeerSpec, port: number) =>
      evaluateConnection(set, { workload: API, sourceIdentity: peer.identity, sourceIp: peer.ip, destinationIp: '10.244.0.10', destinationPort: port, protocol: 'http' });
    expect(conn(PEERS.web, 8080).decision).toMatchObject({ allowed: true, code: 'allowed_pending_request' });
    // The only ALLOW rule needs port 8080: nothing on 9090 can be allowed, the connection is refused at once.
    expect(conn(PEERS.web, 9090).decision).toMatchObject({ allowed: false, code: 'denied_no_allow_match' });
    expect(conn(PEERS.batch, 8080).decision).toMatchObject({ allowed: false, code: 'denied_no_allow_match' });
    expect(conn(PEERS.dev, 8080).decision).toMatchObject({ allowed: false, code: 'denied', policy: 'shop/deny-admin', rule: 1 });
    // The context stays, so that each request is decided again under the policies of its time.
    const denied = conn(PEERS.web, 9090);
    expect(denied.context).toBeDefined();
    expect(evaluateRequest(set, denied.context!, request('GET', '/api/x'))).toMatchObject({ allowed: false, code: 'denied_no_allow_match' });
  });
});

describe('L4 only (opaque TCP): rules with HTTP fields fail safe', () => {
  it('ALLOW: a rule with HTTP fields does not match, and the decision says so', () => {
    const set = policies(ALLOW_WEB);
    const d = tcp(set, PEERS.web, 8080);
    expect(d).toMatchObject({ allowed: false, code: 'denied_no_allow_match', failSafe: true });
    expect(d.reason).toMatch(/ALLOW policy shop\/allow-web rule 0 uses HTTP fields \(paths\).*taken as not matching \(fail-safe\)/);
  });

  it('DENY: a rule with HTTP fields matches on its L4 fields, and the decision says so', () => {
    const set = policies(DENY_ADMIN);
    for (const peer of [PEERS.web, PEERS.plaintext]) {
      const d = tcp(set, peer, 9090);
      expect(d).toMatchObject({ allowed: false, code: 'denied', policy: 'shop/deny-admin', rule: 0, failSafe: true });
      expect(d.reason).toMatch(/HTTP fields \(paths\) cannot be checked.*taken as matching \(fail-safe\)/);
    }
    // A rule decided by L4 alone wins over the fail-safe reading of an earlier one.
    expect(tcp(set, PEERS.dev, 9090)).toMatchObject({ code: 'denied', rule: 1, failSafe: false });
  });

  it('DENY scoped to a port (as Istio recommends) leaves other ports alone', () => {
    const set = policies(`
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-post, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {ports: ["8080"], methods: ["POST"]}}]
`);
    expect(tcp(set, PEERS.web, 8080)).toMatchObject({ allowed: false, failSafe: true });
    expect(tcp(set, PEERS.web, 5432)).toMatchObject({ allowed: true, code: 'allowed_no_policy' });
    expect(http(set, PEERS.web, 8080, request('GET', '/'))).toMatchObject({ allowed: true });
    expect(http(set, PEERS.web, 8080, request('POST', '/'))).toMatchObject({ allowed: false, failSafe: false });
  });

  it('when conditions on headers are HTTP fields too; L4 conditions are checked at L4', () => {
    const set = policies(`
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: tenant, namespace: shop}
spec:
  rules:
  - when:
    - {key: "request.headers[X-Tenant]", values: ["blue"]}
  - when:
    - {key: source.namespace, values: ["shop"]}
    - {key: destination.port, values: ["5432"]}
`);
    expect(tcp(set, PEERS.dev, 5432)).toMatchObject({ allowed: false, failSafe: true });
    expect(tcp(set, PEERS.web, 5432)).toMatchObject({ allowed: true, code: 'allowed', rule: 1 });
    expect(http(set, PEERS.dev, 8080, request('GET', '/', 'h', { 'x-tenant': 'blue' }))).toMatchObject({ allowed: true, rule: 0 });
  });

  it('a rule with only L4 fields is enforced on every connection', () => {
    const set = policies(`
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: db, namespace: shop}
spec:
  rules:
  - from: [{source: {namespaces: ["shop"]}}]
    to: [{operation: {ports: ["5432"]}}]
`);
    expect(tcp(set, PEERS.batch, 5432)).toMatchObject({ allowed: true, code: 'allowed', failSafe: false });
    expect(tcp(set, PEERS.dev, 5432)).toMatchObject({ allowed: false, code: 'denied_no_allow_match', failSafe: false });
    expect(tcp(set, PEERS.plaintext, 5432)).toMatchObject({ allowed: false });
  });
});

describe('rules', () => {
  const ns = (name: string, action: string, rules: string) => `
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ${name}, namespace: shop}
spec:
  action: ${action}
${rules}
`;

  it('an ALLOW policy with no rules (spec {} or no spec) matches nothing: allow-nothing', () => {
    for (const spec of ['spec: {}', '']) {
      const set = policies(`
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: shop}
${spec}
`);
      expect(set.errors).toEqual([]);
      expect(http(set, PEERS.web, 8080, request('GET', '/'))).toMatchObject({ allowed: false, code: 'denied_no_allow_match' });
      expect(tcp(set, PEERS.web, 5432)).toMatchObject({ allowed: false, code: 'denied_no_allow_match' });
    }
  });

  it('rules: [{}] matches everything: allow-all, deny-all', () => {
    const allowAll = policies(ns('allow-all', 'ALLOW', '  rules: [{}]') + '---' + ALLOW_WEB);
    expect(http(allowAll, PEERS.plaintext, 9090, request('GET', '/x'))).toMatchObject({ allowed: true, policy: 'shop/allow-all' });
    expect(tcp(allowAll, PEERS.plaintext, 9090)).toMatchObject({ allowed: true, policy: 'shop/allow-all' });
    const denyAll = policies(ns('deny-all', 'DENY', '  rules: [{}]') + '---' + ALLOW_WEB);
    expect(http(denyAll, PEERS.web, 8080, request('GET', '/api/x'))).toMatchObject({ allowed: false, policy: 'shop/deny-all', failSafe: false });
  });

  it('a DENY policy with no rules matches nothing', () => {
    const set = policies(ns('deny-nothing', 'DENY', ''));
    expect(http(set, PEERS.dev, 8080, request('GET', '/'))).toMatchObject({ allowed: true, code: 'allowed_no_policy' });
  });

  it('string match forms: exact, prefix, suffix, presence', () => {
    const set = policies(ns('forms', 'ALLOW', `
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/*"]}}]
    to: [{operation: {paths: ["/exact"]}}]
  - from: [{source: {principals: ["*/sa/web"]}}]
    to: [{operation: {paths: ["*.css"]}}]
  - from: [{source: {principals: ["*"]}}]
    to: [{operation: {paths: ["/pub/*"]}}]
`));
    const cases: [PeerSpec, string, boolean][] = [
      [PEERS.batch, '/exact', true],
      [PEERS.batch, '/exact/', false],
      [PEERS.dev, '/exact', false],
      [PEERS.dev, '/site.css', true],
      [PEERS.batch, '/site.css', false],
      [PEERS.dev, '/pub/a/b', true],
      [PEERS.dev, '/pub', false],
      // Presence needs an identity: plaintext has none.
      [PEERS.plaintext, '/pub/a', false],
    ];
    for (const [peer, path, allowed] of cases) expect(http(set, peer, 8080, request('GET', path)).allowed, `${peer.identity} ${path}`).toBe(allowed);
  });

  it('methods are case-sensitive, hosts are not', () => {
    const set = policies(ns('ops', 'ALLOW', `
  rules:
  - to: [{operation: {methods: ["GET", "HEAD"], hosts: ["API.shop.svc.cluster.local", "*.example.com"]}}]
`));
    expect(http(set, PEERS.web, 80, request('GET', '/', 'api.SHOP.svc.cluster.local')).allowed).toBe(true);
    expect(http(set, PEERS.web, 80, request('HEAD', '/', 'www.Example.COM')).allowed).toBe(true);
    expect(http(set, PEERS.web, 80, request('get', '/', 'api.shop.svc.cluster.local')).allowed).toBe(false);
    expect(http(set, PEERS.web, 80, request('GET', '/', 'example.com')).allowed).toBe(false);
  });

  it('path templates: {*} is one segment, {**} the rest', () => {
    const set = policies(ns('tpl', 'ALLOW', `
  rules:
  - to: [{operation: {paths: ["/users/{*}/orders", "/files/{**}"]}}]
`));
    const allowed = (p: string) => http(set, PEERS.web, 80, request('GET', p)).allowed;
    expect(allowed('/users/42/orders')).toBe(true);
    expect(allowed('/users/42/7/orders')).toBe(false);
    expect(allowed('/users//orders')).toBe(false);
    expect(allowed('/files/a/b/c.txt')).toBe(true);
    expect(allowed('/files')).toBe(false);
  });

  it('notX fields match when no value matches; for a plaintext peer a negative identity field always matches', () => {
    const set = policies(ns('nots', 'DENY', `
  rules:
  - from: [{source: {notNamespaces: ["shop"]}}]
    to: [{operation: {notMethods: ["GET"], notPaths: ["/health"], notPorts: ["9090"]}}]
  - from: [{source: {notPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/mtls-only/*"]}}]
`));
    const d = (peer: PeerSpec, port: number, method: string, path: string) => http(set, peer, port, request(method, path)).allowed;
    expect(d(PEERS.dev, 8080, 'POST', '/x')).toBe(false);
    expect(d(PEERS.dev, 8080, 'GET', '/x')).toBe(true);
    expect(d(PEERS.dev, 8080, 'POST', '/health')).toBe(true);
    expect(d(PEERS.dev, 9090, 'POST', '/x')).toBe(true);
    expect(d(PEERS.web, 8080, 'POST', '/x')).toBe(true);
    expect(d(PEERS.plaintext, 8080, 'POST', '/x')).toBe(false);
    // DENY notPrincipals ["*"]: Istio's way to refuse plaintext.
    expect(d(PEERS.plaintext, 8080, 'GET', '/mtls-only/a')).toBe(false);
    expect(d(PEERS.web, 8080, 'GET', '/mtls-only/a')).toBe(true);
  });

  it('inside a source every field must match; across sources any may', () => {
    const set = policies(ns('and-or', 'ALLOW', `
  rules:
  - from:
    - source: {namespaces: ["shop"], ipBlocks: ["10.244.1.5/32"]}
    - source: {principals: ["cluster.local/ns/dev/sa/web"]}
`));
    expect(http(set, PEERS.web, 80, request('GET', '/')).allowed).toBe(true);
    expect(http(set, PEERS.batch, 80, request('GET', '/')).allowed).toBe(false);
    expect(http(set, PEERS.dev, 80, request('GET', '/')).allowed).toBe(true);
  });

  it('serviceAccounts match namespace/name of the peer, whatever its trust domain', () => {
    const set = policies(ns('sa', 'ALLOW', `
  rules:
  - from: [{source: {serviceAccounts: ["shop/web"]}}]
  - from: [{source: {notServiceAccounts: ["shop/web", "shop/batch"]}}]
    to: [{operation: {ports: ["9090"]}}]
`));
    expect(tcp(set, PEERS.web, 8080).allowed).toBe(true);
    expect(tcp(set, { identity: 'spiffe://other.td/ns/shop/sa/web', ip: '10.0.0.1' }, 8080).allowed).toBe(true);
    expect(tcp(set, PEERS.batch, 8080).allowed).toBe(false);
    expect(tcp(set, PEERS.batch, 9090).allowed).toBe(false);
    expect(tcp(set, PEERS.dev, 9090).allowed).toBe(true);
    expect(tcp(set, PEERS.plaintext, 9090).allowed).toBe(true);
  });

  it('principals written with cluster.local name the mesh trust domain (Istio alias)', () => {
    const set = policies(ALLOW_WEB, { trustDomain: 'prod.example' });
    const peer = { identity: 'spiffe://prod.example/ns/shop/sa/web', ip: '10.244.1.5' };
    expect(http(set, peer, 8080, request('GET', '/api/x')).allowed).toBe(true);
    expect(http(set, PEERS.web, 8080, request('GET', '/api/x')).allowed).toBe(false);
  });
});

describe('when conditions', () => {
  const set = policies(`
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: when, namespace: shop}
spec:
  rules:
  - when:
    - {key: "request.headers[X-Tenant]", values: ["blue", "green-*"], notValues: ["green-test"]}
    - {key: source.principal, values: ["cluster.local/ns/shop/*"]}
  - when:
    - {key: source.ip, values: ["192.168.0.0/16"], notValues: ["192.168.1.9"]}
  - when:
    - {key: "request.headers[x-debug]", notValues: ["*"]}
    - {key: destination.ip, values: ["10.244.0.0/24"]}
    - {key: source.namespace, notValues: ["shop", "dev"]}
    - {key: destination.port, values: ["8443"]}
`);

  it('compiles', () => expect(set.errors).toEqual([]));

  it('headers: values and notValues, case-insensitive names, absent header', () => {
    const r = (headers: Record<string, string>) => http(set, PEERS.batch, 80, request('GET', '/', 'h', headers));
    expect(r({ 'x-tenant': 'blue' })).toMatchObject({ allowed: true, rule: 0 });
    expect(r({ 'X-TENANT': 'green-prod' })).toMatchObject({ allowed: true, rule: 0 });
    expect(r({ 'x-tenant': 'green-test' }).allowed).toBe(false);
    expect(r({ 'x-tenant': 'red' }).allowed).toBe(false);
    expect(r({}).allowed).toBe(false);
    expect(http(set, PEERS.dev, 80, request('GET', '/', 'h', { 'x-tenant': 'blue' })).allowed).toBe(false);
  });

  it('source.ip with a CIDR and an excluded address', () => {
    expect(http(set, { identity: undefined, ip: '192.168.7.1' }, 80, request('GET', '/'))).toMatchObject({ allowed: true, rule: 1 });
    expect(http(set, PEERS.plaintext, 80, request('GET', '/')).allowed).toBe(false);
  });

  it('notValues "*" on a header matches when the header is absent; destination and namespace conditions', () => {
    const other = { identity: 'spiffe://cluster.local/ns/ops/sa/x', ip: '10.9.9.9' };
    expect(http(set, other, 8443, request('GET', '/'))).toMatchObject({ allowed: true, rule: 2 });
    expect(http(set, other, 8443, request('GET', '/', 'h', { 'x-debug': '1' })).allowed).toBe(false);
    expect(http(set, other, 8080, request('GET', '/')).allowed).toBe(false);
    expect(http(set, PEERS.dev, 8443, request('GET', '/')).allowed).toBe(false);
  });
});

describe('address blocks', () => {
  const set = policies(`
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: nets, namespace: shop}
spec:
  rules:
  - from: [{source: {ipBlocks: ["10.244.0.0/16", "fd00:10:244::/48", "203.0.113.7"], notIpBlocks: ["10.244.9.0/24", "fd00:10:244:9::/64"]}}]
`);
  const at = (ip: string) => tcp(set, { identity: undefined, ip }, 80).allowed;

  it('IPv4 blocks and single addresses, with exclusions', () => {
    expect(at('10.244.1.5')).toBe(true);
    expect(at('10.244.255.255')).toBe(true);
    expect(at('10.245.0.1')).toBe(false);
    expect(at('10.244.9.3')).toBe(false);
    expect(at('203.0.113.7')).toBe(true);
    expect(at('203.0.113.8')).toBe(false);
  });

  it('IPv6 blocks, and IPv4 peers reported by a dual-stack socket', () => {
    expect(at('fd00:10:244:1::5')).toBe(true);
    expect(at('fd00:10:244:9::5')).toBe(false);
    expect(at('fd00:10:245::1')).toBe(false);
    expect(at('::ffff:10.244.1.5')).toBe(true);
    expect(at('::ffff:10.244.9.1')).toBe(false);
    // An IPv6 address never matches an IPv4 block by its low bits.
    expect(at('::af4:105')).toBe(false);
  });

  it('host bits of a block are ignored; /0 is everything of its family', () => {
    const wide = policies(`
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: wide, namespace: shop}
spec:
  rules:
  - from: [{source: {ipBlocks: ["10.244.1.77/16", "0.0.0.0/0"]}}]
`);
    expect(tcp(wide, { identity: undefined, ip: '8.8.8.8' }, 80).allowed).toBe(true);
    expect(tcp(wide, { identity: undefined, ip: '2001:db8::1' }, 80).allowed).toBe(false);
  });
});

describe('AUDIT', () => {
  const set = policies(`
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: audit-writes, namespace: shop}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {methods: ["POST", "DELETE"]}}]
---
${DENY_ADMIN}
`);

  it('marks matching requests and never changes the decision', () => {
    expect(http(set, PEERS.web, 80, request('POST', '/x'))).toMatchObject({ allowed: true, code: 'allowed_no_policy', audit: true, auditPolicy: 'shop/audit-writes' });
    expect(http(set, PEERS.web, 80, request('DELETE', '/admin'))).toMatchObject({ allowed: false, code: 'denied', audit: true, auditPolicy: 'shop/audit-writes' });
    expect(http(set, PEERS.web, 80, request('GET', '/x'))).toMatchObject({ allowed: true, audit: false });
    expect(http(set, PEERS.web, 80, request('GET', '/x')).auditPolicy).toBeUndefined();
  });

  it('at L4 only, marks what may match (audit errs toward logging)', () => {
    expect(tcp(set, PEERS.web, 5432)).toMatchObject({ audit: true, allowed: false });
  });
});

describe('scope', () => {
  const yaml = `
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-dev, namespace: trellis-system}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: ["dev"]}}]}]
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: mesh-v2-nothing, namespace: trellis-system}
spec:
  selector: {matchLabels: {version: v2}}
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: other-ns, namespace: billing}
spec: {}
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: only-db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
`;
  const set = policies(yaml);
  const v2 = { key: 'payments/pay-1', namespace: 'payments', labels: { app: 'pay', version: 'v2' } };
  const v1 = { key: 'payments/pay-0', namespace: 'payments', labels: { app: 'pay', version: 'v1' } };

  it('root namespace without selector: the whole mesh; with a selector: matching workloads of every namespace', () => {
    expect(tcp(set, PEERS.dev, 80, v1)).toMatchObject({ allowed: false, policy: 'trellis-system/mesh-deny-dev' });
    expect(tcp(set, PEERS.web, 80, v1)).toMatchObject({ allowed: true });
    expect(tcp(set, PEERS.web, 80, v2)).toMatchObject({ allowed: false, code: 'denied_no_allow_match' });
  });

  it("another namespace's policies and non-matching selectors do not apply", () => {
    expect(tcp(set, PEERS.web, 80, API)).toMatchObject({ allowed: true, code: 'allowed_no_policy' });
  });

  it('another root namespace can be configured', () => {
    const custom = policies(yaml, { rootNamespace: 'billing' });
    expect(tcp(custom, PEERS.web, 80, v1)).toMatchObject({ allowed: false, code: 'denied_no_allow_match' });
    expect(tcp(custom, PEERS.dev, 80, v1)).toMatchObject({ allowed: false, code: 'denied_no_allow_match' });
  });
});

describe('never fails open', () => {
  it('denies everything before the first snapshot', () => {
    const d = tcp(pendingPolicies(), PEERS.web, 80);
    expect(d).toMatchObject({ allowed: false, code: 'denied_not_ready' });
    expect(d.reason).toMatch(/not synced/);
  });

  it('denies a destination the agent does not know', () => {
    const v = evaluateConnection(policies(''), { workload: undefined, sourceIdentity: PEERS.web.identity, sourceIp: PEERS.web.ip, destinationIp: '10.1.1.1', destinationPort: 80, protocol: 'tcp' });
    expect(v.decision).toMatchObject({ allowed: false, code: 'denied_unknown_workload' });
    expect(v.context).toBeUndefined();
  });

  it('denies a peer whose identity or address cannot be read', () => {
    const set = policies('');
    expect(tcp(set, { identity: 'spiffe://cluster.local/web', ip: '10.0.0.1' }, 80)).toMatchObject({ allowed: false, code: 'denied_unreadable' });
    expect(tcp(set, { identity: undefined, ip: 'not-an-ip' }, 80)).toMatchObject({ allowed: false, code: 'denied_unreadable' });
  });

  it('a request is checked against the policy set given to evaluateRequest, not the one of its connection', () => {
    const c = evaluateConnection(policies(''), { workload: API, sourceIdentity: PEERS.web.identity, sourceIp: PEERS.web.ip, destinationIp: '10.244.0.10', destinationPort: 8080, protocol: 'http' });
    expect(c.decision).toMatchObject({ allowed: true, code: 'allowed_no_policy' });
    expect(evaluateRequest(policies(DENY_ADMIN), c.context!, request('GET', '/admin'))).toMatchObject({ allowed: false, policy: 'shop/deny-admin' });
    expect(evaluateRequest(pendingPolicies(), c.context!, request('GET', '/api'))).toMatchObject({ allowed: false, code: 'denied_not_ready' });
  });
});
