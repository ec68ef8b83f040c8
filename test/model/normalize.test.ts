// Path normalization: the canonical form routing and authorization both see, each option, and the inputs that
// must be refused rather than guessed at.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { normalizePath, normalizeTarget, type NormalizedTarget } from '../../agent/model/normalize.js';
import { fuzz, fuzzTimeout } from '../support/fuzz.js';

function path(t: string, opts?: Parameters<typeof normalizeTarget>[1]): string {
  const r = normalizeTarget(t, opts);
  if (!r.ok) throw new Error(`${t} refused: ${r.reason}`);
  return r.path;
}

function refused(r: NormalizedTarget): string {
  if (r.ok) throw new Error(`expected a refusal, got ${r.path}`);
  expect(r.status).toBe(400);
  return r.reason;
}

describe('normalizeTarget', () => {
  it('leaves canonical paths alone and splits the query off without touching it', () => {
    expect(normalizeTarget('/api/v1/items')).toEqual({ ok: true, path: '/api/v1/items', query: undefined });
    expect(normalizeTarget('/a?x=%2F&y=../z')).toEqual({ ok: true, path: '/a', query: 'x=%2F&y=../z' });
    expect(normalizeTarget('/a?')).toEqual({ ok: true, path: '/a', query: '' });
    expect(path('/pkg.Service/Method')).toBe('/pkg.Service/Method');
    expect(path('/.well-known/openid')).toBe('/.well-known/openid');
    expect(path('/a/..b/.c')).toBe('/a/..b/.c');
  });

  it('decodes unreserved characters once and uppercases the other escapes', () => {
    expect(path('/%61%62%63%2D%2e%5F%7E%30')).toBe('/abc-._~0');
    expect(path('/a%3ab%20c')).toBe('/a%3Ab%20c');
    expect(path('/%252F')).toBe('/%252F'); // no double decoding
    expect(path('/%e2%82%ac')).toBe('/%E2%82%AC');
    // An encoded ";" is data: kept encoded, even when literal parameters are refused.
    expect(path('/a%3bb', { pathParameters: 'reject' })).toBe('/a%3Bb');
  });

  it('removes dot segments (RFC 3986 5.2.4), including encoded dots', () => {
    expect(path('/a/./b')).toBe('/a/b');
    expect(path('/a/b/../c')).toBe('/a/c');
    expect(path('/a/b/..')).toBe('/a/');
    expect(path('/a/.')).toBe('/a/');
    expect(path('/..')).toBe('/');
    expect(path('/../../x')).toBe('/x');
    expect(path('/%2e%2E/x')).toBe('/x');
    expect(path('/a/%2e/b')).toBe('/a/b');
  });

  it('merges slashes before removing dot segments, unless told not to', () => {
    expect(path('//a///b//')).toBe('/a/b/');
    expect(path('//')).toBe('/');
    expect(path('/a//../b')).toBe('/b');
    expect(path('//a//b', { mergeSlashes: false })).toBe('//a//b');
    expect(path('/a//../b', { mergeSlashes: false })).toBe('/a/b');
  });

  it('reads a backslash as a slash, or refuses it', () => {
    expect(path('\\a\\..\\b')).toBe('/b');
    expect(path('/a\\b')).toBe('/a/b');
    refused(normalizeTarget('/a\\b', { backslash: 'reject' }));
    refused(normalizeTarget('\\a', { backslash: 'reject' }));
  });

  it('refuses encoded slashes by default and keeps them encoded when asked', () => {
    expect(refused(normalizeTarget('/a%2fb'))).toMatch(/%2F/);
    expect(refused(normalizeTarget('/a%5Cb'))).toMatch(/%5C/);
    expect(path('/a%2fb/../c', { encodedSlash: 'keep' })).toBe('/c');
    expect(path('/a%2fb', { encodedSlash: 'keep' })).toBe('/a%2Fb');
    expect(path('/a%5cb', { encodedSlash: 'keep' })).toBe('/a%5Cb');
  });

  it('keeps ";" parameters in their segment, or refuses them', () => {
    expect(path('/a;v=1/b')).toBe('/a;v=1/b');
    expect(refused(normalizeTarget('/a;v=1', { pathParameters: 'reject' }))).toMatch(/;/);
  });

  it('refuses dot segments with parameters, a servlet traversal trick', () => {
    for (const t of ['/api/..;/admin', '/api/.;/admin', '/api/%2e%2e;x/admin', '/api/..%3b/admin']) {
      expect(refused(normalizeTarget(t)), t).toMatch(/dot segment/);
    }
  });

  it('refuses what cannot be a request path', () => {
    expect(refused(normalizeTarget(''))).toMatch(/empty/);
    expect(refused(normalizeTarget('a/b'))).toMatch(/origin-form/);
    expect(refused(normalizeTarget('http://x/a'))).toMatch(/origin-form/);
    expect(refused(normalizeTarget('*'))).toMatch(/origin-form/);
    expect(refused(normalizeTarget('/a#frag'))).toMatch(/#/);
    expect(refused(normalizeTarget('/a?x#frag'))).toMatch(/#/);
    expect(refused(normalizeTarget('/a%00'))).toMatch(/%00/);
    expect(refused(normalizeTarget('/a%zz'))).toMatch(/malformed/);
    expect(refused(normalizeTarget('/a%4'))).toMatch(/malformed/);
    expect(refused(normalizeTarget('/a%'))).toMatch(/malformed/);
    expect(refused(normalizeTarget('/a b'))).toMatch(/0x20/);
    expect(refused(normalizeTarget('/a\tb'))).toMatch(/0x09/);
    expect(refused(normalizeTarget('/caf\u00e9'))).toMatch(/percent-encoded/);
    expect(refused(normalizeTarget('/a?x=\u0001'))).toMatch(/query/);
  });

  it('is case-sensitive and keeps trailing slashes', () => {
    expect(path('/ADMIN')).toBe('/ADMIN');
    expect(path('/admin/')).toBe('/admin/');
  });

  it('is idempotent: a normalized path normalizes to itself', () => {
    const samples = ['//a/./b/../c//', '/%61/%2e%2e/b', '\\x\\y', '/a%3a/b;c/..', '/a/b/..', '/..'];
    for (const s of samples) {
      const once = path(s);
      expect(path(once), s).toBe(once);
    }
  });
});

describe('normalizePath', () => {
  it('refuses a query', () => {
    expect(refused(normalizePath('/a?b'))).toMatch(/\?/);
    expect(normalizePath('/a/../b')).toEqual({ ok: true, path: '/b', query: undefined });
  });
});

// Any target built from the pieces path tricks are made of: what is accepted is canonical (one leading "/", no
// empty, "." or ".." segment, no "\\", only uppercase escapes of reserved bytes) and normalizing it again changes
// nothing, so the router and the policy, which both see this one form, can never read it two ways.
describe('normalizeTarget (property, seeded)', () => {
  const piece = fc.constantFrom('/', '//', '.', '..', './', '../', 'a', 'admin', '%2e', '%2E%2e', '%2F', '%5C', '%41', '%61', '%3a', '%25', '%', '%4', '\\', ';', ';x', '..;', '~', '-', '_', '%7E', '%00', '#', '?', 'q=1', ' ');
  const target = fc.array(piece, { minLength: 1, maxLength: 12 }).map((ps) => `/${ps.join('')}`);
  it('accepts only canonical forms, and is idempotent', () => {
    let accepted = 0;
    fc.assert(
      fc.property(target, (t) => {
        const r = normalizeTarget(t);
        if (!r.ok) return;
        accepted++;
        const p = r.path;
        expect(p.startsWith('/'), t).toBe(true);
        expect(p, t).not.toMatch(/\/\/|\/\.{1,2}(\/|$)|\\/);
        // Unreserved characters are never left escaped; what is escaped is uppercase.
        for (const m of p.matchAll(/%([0-9A-Fa-f]{2})/g)) {
          expect(m[1], t).toBe(m[1]!.toUpperCase());
          const c = parseInt(m[1]!, 16);
          expect(/[A-Za-z0-9._~-]/.test(String.fromCharCode(c)), `${t} -> ${p}`).toBe(false);
        }
        const again = normalizeTarget(r.query === undefined ? p : `${p}?${r.query}`);
        expect(again, t).toEqual(r);
      }),
      fuzz(5000, 3986),
    );
    expect(accepted, 'the property saw accepted targets').toBeGreaterThan(100);
  }, fuzzTimeout());
});
