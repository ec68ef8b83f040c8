// Who may tap over the agent's port (agent/tap/authorize.ts), in-process against a reviewer that answers as the API
// server would and records what it was asked: the refusals and their reasons, one access review per namespace the tap
// is confined to (every namespace when it names none), decisions reused for a while and never more than the bound.
// The same authorizer against a real API server and real RBAC: test/e2e/tap-cluster.test.ts.
import { describe, expect, it } from 'vitest';
import { TapApiError, TapAuthorizer, type AccessVerdict, type TapReviewer, type TapUser, type TokenVerdict } from '../../agent/tap/authorize.js';
import { tapNamespaces, type Match } from '../../agent/tap/match.js';

const ALICE: TapUser = { username: 'alice', uid: 'u1', groups: ['system:authenticated', 'dev'], extra: {} };

/** Tokens "alice" and "expired"; alice may watch tap in `allowed` (undefined in the set: cluster-wide). */
class Reviewer implements TapReviewer {
  readonly tokens: string[] = [];
  readonly asked: (string | undefined)[] = [];
  failWith: TapApiError | undefined;

  constructor(readonly allowed: Set<string | undefined>) {}

  async authenticate(token: string): Promise<TokenVerdict> {
    this.tokens.push(token);
    if (this.failWith) throw this.failWith;
    if (token === 'alice') return { authenticated: true, user: ALICE };
    return { authenticated: false, error: token === 'expired' ? 'token has expired' : undefined };
  }

  async mayWatch(user: TapUser, namespace: string | undefined): Promise<AccessVerdict> {
    expect(user).toEqual(ALICE);
    this.asked.push(namespace);
    return this.allowed.has(namespace) || this.allowed.has(undefined) ? { allowed: true, reason: 'RBAC: allowed' } : { allowed: false };
  }
}

function clock(start = 1_000_000) {
  const c = { t: start, now: () => c.t };
  return c;
}

const both = (ns: string, workload: string): Match => ({ any: { matches: [{ source: { namespace: ns, workload } }, { destination: { namespace: ns, workload } }] } });

describe('the namespaces a tap is confined to', () => {
  it('names the workload\'s namespace, the union over `any`, the narrowest member of `all`', () => {
    expect(tapNamespaces(both('shop', 'web'))).toEqual(['shop']);
    expect(tapNamespaces({ any: { matches: [{ source: { namespace: 'b' } }, { destination: { namespace: 'a' } }] } })).toEqual(['a', 'b']);
    expect(tapNamespaces({ all: { matches: [{ http: { method: 'GET' } }, both('shop', 'web'), { any: { matches: [{ source: { namespace: 'x' } }, { source: { namespace: 'y' } }] } }] } })).toEqual(['shop']);
    // `trellis tap shop/web --to pay/api`: what web calls in pay; confined to shop already.
    expect(tapNamespaces({ all: { matches: [both('shop', 'web'), { destination: { namespace: 'pay', workload: 'api' } }] } })).toEqual(['shop']);
  });

  it('confines nothing without a tree, a peer without a namespace, an HTTP field, a `not`, or an `any` with an open member', () => {
    expect(tapNamespaces(undefined)).toBeUndefined();
    expect(tapNamespaces({ source: { workload: 'web' } })).toBeUndefined();
    expect(tapNamespaces({ http: { pathPrefix: '/' } })).toBeUndefined();
    expect(tapNamespaces({ not: { source: { namespace: 'shop' } } })).toBeUndefined();
    expect(tapNamespaces({ any: { matches: [{ source: { namespace: 'shop' } }, { http: { method: 'GET' } }] } })).toBeUndefined();
    expect(tapNamespaces({ all: { matches: [{ http: { method: 'GET' } }, { not: { source: { namespace: 'shop' } } }] } })).toBeUndefined();
  });
});

describe('the tap authorizer', () => {
  it('refuses no token, a token that is not a bearer token, and an invalid one, with why', async () => {
    const reviewer = new Reviewer(new Set(['shop']));
    const authz = new TapAuthorizer({ reviewer, clock: clock() });
    expect(await authz.authorize(undefined, both('shop', 'web'))).toMatchObject({ code: 'EUNAUTHENTICATED', message: expect.stringMatching(/no bearer token/) });
    expect(await authz.authorize('Basic YWxpY2U=', both('shop', 'web'))).toMatchObject({ code: 'EUNAUTHENTICATED', message: expect.stringMatching(/not "Bearer <token>"/) });
    expect(await authz.authorize('Bearer expired', both('shop', 'web'))).toEqual({ code: 'EUNAUTHENTICATED', message: expect.stringMatching(/not valid \(API server: token has expired\)/) });
    expect(await authz.authorize('Bearer garbage', both('shop', 'web'))).toMatchObject({ code: 'EUNAUTHENTICATED' });
    expect(reviewer.asked).toEqual([]);
  });

  it('asks about every namespace the tap is confined to, and names the one refused and the binding that would allow it', async () => {
    const reviewer = new Reviewer(new Set(['shop']));
    const authz = new TapAuthorizer({ reviewer, clock: clock() });
    expect(await authz.authorize('Bearer alice', both('shop', 'web'))).toBeUndefined();
    const two: Match = { any: { matches: [{ source: { namespace: 'shop' } }, { destination: { namespace: 'pay' } }] } };
    const refused = await authz.authorize('bearer alice', two);
    expect(refused).toEqual({ code: 'EPERMISSION', message: expect.stringContaining('user alice may not watch tap.tap.trellis.dev in namespace pay') });
    expect(refused!.message).toContain('kubectl create rolebinding NAME -n pay --clusterrole=trellis-tap --user=alice');
    expect(reviewer.asked).toEqual(['shop', 'pay']);
    // A tap that names no namespace is a tap of all of them: a cluster-wide grant.
    const all = await authz.authorize('Bearer alice', { http: { method: 'GET' } });
    expect(all).toMatchObject({ code: 'EPERMISSION', message: expect.stringContaining('in all namespaces') });
    expect(all!.message).toContain('kubectl create clusterrolebinding');
    expect(reviewer.asked.at(-1)).toBeUndefined();
    expect(await new TapAuthorizer({ reviewer: new Reviewer(new Set([undefined])), clock: clock() }).authorize('Bearer alice', undefined)).toBeUndefined();
  });

  it('names a service account as kubectl takes it', async () => {
    const sa: TapUser = { username: 'system:serviceaccount:ci:robot', groups: [], extra: {} };
    const reviewer: TapReviewer = { authenticate: async () => ({ authenticated: true, user: sa }), mayWatch: async () => ({ allowed: false }) };
    const refused = await new TapAuthorizer({ reviewer, clock: clock() }).authorize('Bearer t', both('shop', 'web'));
    expect(refused!.message).toContain('--serviceaccount=ci:robot');
  });

  it('reuses answers for the TTL only, and holds at most maxEntries of each kind, the oldest leaving first', async () => {
    const reviewer = new Reviewer(new Set(['a', 'b', 'c', 'd']));
    const c = clock();
    const authz = new TapAuthorizer({ reviewer, clock: c, ttlMs: 10_000, maxEntries: 2 });
    for (let i = 0; i < 3; i++) expect(await authz.authorize('Bearer alice', both('a', 'web'))).toBeUndefined();
    expect(reviewer.tokens).toEqual(['alice']);
    expect(reviewer.asked).toEqual(['a']);
    // Refusals are cached too: a flood of garbage costs the API server one review per token per TTL.
    for (let i = 0; i < 3; i++) await authz.authorize('Bearer garbage', both('a', 'web'));
    expect(reviewer.tokens).toEqual(['alice', 'garbage']);
    c.t += 10_000;
    await authz.authorize('Bearer alice', both('a', 'web'));
    expect(reviewer.tokens).toEqual(['alice', 'garbage', 'alice']);
    expect(reviewer.asked).toEqual(['a', 'a']);
    // Bounded: b, c and d push a out (two entries at most); a is asked again.
    for (const ns of ['b', 'c', 'd']) await authz.authorize('Bearer alice', both(ns, 'web'));
    expect(authz.cached.access).toBe(2);
    await authz.authorize('Bearer alice', both('a', 'web'));
    expect(reviewer.asked).toEqual(['a', 'a', 'b', 'c', 'd', 'a']);
    for (let i = 0; i < 50; i++) await authz.authorize(`Bearer junk-${i}`, both('a', 'web'));
    expect(authz.cached).toEqual({ tokens: 2, access: 2 });
  });

  it('says the API server could not answer, and caches nothing of it', async () => {
    const reviewer = new Reviewer(new Set(['shop']));
    const authz = new TapAuthorizer({ reviewer, clock: clock() });
    reviewer.failWith = new TapApiError('EUNAVAILABLE', 'reviewing the caller\'s token: the API server is unreachable (ECONNREFUSED)');
    expect(await authz.authorize('Bearer alice', both('shop', 'web'))).toEqual({ code: 'EUNAVAILABLE', message: expect.stringMatching(/unreachable .*; retry$/) });
    reviewer.failWith = undefined;
    expect(await authz.authorize('Bearer alice', both('shop', 'web'))).toBeUndefined();
    expect(reviewer.tokens).toEqual(['alice', 'alice']);
  });
});

describe('the tap authorizer under a flood', () => {
  it('asks the API server at most reviewsPerSecond reviews a second; the others are told to retry, and nothing of theirs is cached', async () => {
    const reviewer = new Reviewer(new Set(['shop']));
    const c = clock();
    const authz = new TapAuthorizer({ reviewer, clock: c, reviewsPerSecond: 5 });
    const answers = [];
    for (let i = 0; i < 12; i++) answers.push(await authz.authorize(`Bearer made-up-${i}`, both('shop', 'web')));
    expect(reviewer.tokens).toHaveLength(5);
    expect(answers.slice(0, 5).every((a) => a?.code === 'EUNAUTHENTICATED')).toBe(true);
    expect(answers.slice(5).every((a) => a?.code === 'EUNAVAILABLE' && /at most 5 reviews a second.*; retry$/.test(a.message))).toBe(true);
    // A caller whose answers are cached is not held back; a second later the bound has room again.
    c.t += 1_000;
    expect(await authz.authorize('Bearer alice', both('shop', 'web'))).toBeUndefined();
    expect(reviewer.tokens.at(-1)).toBe('alice');
    expect(reviewer.asked).toEqual(['shop']);
  });
});
