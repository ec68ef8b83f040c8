// The path bypass corpus against a DENY on /admin and an ALLOW on /api/*: every spelling of /admin is either
// refused (400), or normalized to /admin and denied, or is a different path that the app receives as such.
// The request goes through normalizeTarget then the policy, as the data path will do it, and the normalized
// path is what the app is sent: the policy and the app never disagree on which path was asked.
import { describe, expect, it } from 'vitest';
import { normalizeTarget, type AuthzDecision, type NormalizeOptions, type PolicySet } from '../../agent/security/index.js';
import { PEERS, http, policies } from './helpers.js';

const DENY_ADMIN = (paths: string) => `
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ${paths}}}]}]
`;
const ALLOW_API = `
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-api, namespace: shop}
spec:
  rules: [{to: [{operation: {paths: ["/api/*"]}}]}]
`;

type Outcome = { status: 400; reason: string } | { path: string; decision: AuthzDecision };

function send(set: PolicySet, target: string, opts?: NormalizeOptions): Outcome {
  const n = normalizeTarget(target, opts);
  if (!n.ok) return { status: n.status, reason: n.reason };
  return { path: n.path, decision: http(set, PEERS.web, 8080, { method: 'GET', path: n.path, host: 'api', headers: () => undefined }) };
}

function summary(o: Outcome): string {
  if ('status' in o) return '400';
  const d = o.decision;
  return `${o.path} ${d.allowed ? 'allowed' : d.code === 'denied' ? `denied by ${d.policy}` : 'denied (no ALLOW match)'}`;
}

// Each spelling, and what happens to it with DENY ["/admin"] + ALLOW ["/api/*"]. Decisions:
//  - //admin, /./admin, /api/../admin, /%61dmin, \admin: the same resource as /admin; normalized to it, denied.
//  - /admin%2F: an encoded slash is refused (a backend that decodes it would see /admin/).
//  - /admin%00: NUL is always refused; /admin#x: a fragment is not part of a request target, refused.
//  - /admin;x: kept as its own path (Istio does not strip ";" either). It is not /admin to the policy, and the
//    app receives "/admin;x"; an app that strips parameters (Java servlet containers) would serve /admin, so
//    for those: write the DENY as "/admin*", or set pathParameters: 'reject'.
//  - /admin/: a different path ("/admin" does not match it, as in Istio); write DENY ["/admin", "/admin/*"].
//  - /ADMIN: paths are case-sensitive; an app that folds case needs the policy to name every case it serves.
//  - /api/..;/admin: refused, the servlet traversal trick.
// With the ALLOW on /api/* in place, the three "different paths" are denied anyway: none of the corpus is allowed.
const CORPUS: Record<string, string> = {
  '//admin': '/admin denied by shop/deny-admin',
  '/./admin': '/admin denied by shop/deny-admin',
  '/api/../admin': '/admin denied by shop/deny-admin',
  '/%61dmin': '/admin denied by shop/deny-admin',
  '/admin%2F': '400',
  '/admin;x': '/admin;x denied (no ALLOW match)',
  '/admin/': '/admin/ denied (no ALLOW match)',
  '/ADMIN': '/ADMIN denied (no ALLOW match)',
  '\\admin': '/admin denied by shop/deny-admin',
  '/admin%00': '400',
  '/admin#x': '400',
  '/api/..;/admin': '400',
  '/api/%2e%2e/admin': '/admin denied by shop/deny-admin',
  '/api/%2E%2E%2Fadmin': '400',
  '/api\\..\\admin': '/admin denied by shop/deny-admin',
  '/api/./../admin/.': '/admin/ denied (no ALLOW match)',
};

describe('bypass corpus: DENY /admin, ALLOW /api/*', () => {
  const set = policies(DENY_ADMIN('["/admin"]') + '---' + ALLOW_API);

  for (const [target, expected] of Object.entries(CORPUS)) {
    it(JSON.stringify(target), () => {
      const o = send(set, target);
      expect(summary(o)).toBe(expected);
      if (!('status' in o)) expect(o.decision.allowed).toBe(false);
    });
  }

  it('the ALLOW still allows /api/* and only that', () => {
    expect(summary(send(set, '/api/items'))).toBe('/api/items allowed');
    expect(summary(send(set, '/api//items/./x'))).toBe('/api/items/x allowed');
    expect(summary(send(set, '/api'))).toBe('/api denied (no ALLOW match)');
  });
});

describe('bypass corpus: DENY only', () => {
  it('only genuinely different paths get through, and they reach the app as themselves', () => {
    const set = policies(DENY_ADMIN('["/admin"]'));
    const allowed: string[] = [];
    for (const target of Object.keys(CORPUS)) {
      const o = send(set, target);
      if ('status' in o || !o.decision.allowed) continue;
      expect(o.path).not.toBe('/admin');
      allowed.push(o.path);
    }
    expect(allowed.sort()).toEqual(['/ADMIN', '/admin/', '/admin/', '/admin;x']);
  });

  it('written as Istio recommends ("/admin", "/admin/*"), the trailing-slash forms are denied too', () => {
    const set = policies(DENY_ADMIN('["/admin", "/admin/*"]'));
    expect(summary(send(set, '/admin/'))).toBe('/admin/ denied by shop/deny-admin');
    expect(summary(send(set, '/api/./../admin/.'))).toBe('/admin/ denied by shop/deny-admin');
    expect(summary(send(set, '/admin/x/../y'))).toBe('/admin/y denied by shop/deny-admin');
  });

  it('a prefix "/admin*" also covers parameters, for apps that strip them', () => {
    const set = policies(DENY_ADMIN('["/admin*"]'));
    expect(summary(send(set, '/admin;jsessionid=1'))).toBe('/admin;jsessionid=1 denied by shop/deny-admin');
  });

  it('pathParameters: reject refuses them outright', () => {
    const set = policies(DENY_ADMIN('["/admin"]'));
    expect(summary(send(set, '/admin;x', { pathParameters: 'reject' }))).toBe('400');
  });

  it('encodedSlash: keep sends /admin%2F as a path of its own', () => {
    const set = policies(DENY_ADMIN('["/admin", "/admin/*"]'));
    expect(summary(send(set, '/admin%2f', { encodedSlash: 'keep' }))).toBe('/admin%2F allowed');
  });
});
