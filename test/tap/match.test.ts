// The tap's match tree (agent/tap/match.ts): all/any/not over both peers and the HTTP fields, as `trellis tap`
// builds it and as tap.proto carries it; trees that cannot be matched are refused when the tap opens.
import { describe, expect, it } from 'vitest';
import { compileMatch, MAX_MATCH_NODES, type Match, type TapHttp, type TapPeer } from '../../agent/tap/match.js';
import type { Workload } from '../../agent/state/workload.js';

const workload = (ns: string, pod: string, name = pod): Workload =>
  ({ key: `${ns}/${pod}`, namespace: ns, pod, name, identity: `spiffe://cluster.local/ns/${ns}/sa/${name}`, meshed: true, labels: {} }) as unknown as Workload;

const web = workload('shop', 'web-7d9f', 'web');
const api = workload('shop', 'api-1', 'api');
const db = workload('data', 'db-0', 'db');
const peer = (w: Workload | undefined, port?: number, ip?: string): TapPeer => ({ workload: w, principal: w?.identity, port, ip });
const get = (path: string, authority = 'api.shop:80'): TapHttp => ({ method: 'GET', authority, path });

describe('tap match', () => {
  it('matches everything without a tree', () => {
    expect(compileMatch(undefined)(peer(web), peer(api), undefined, undefined)).toBe(true);
  });

  it('a peer matches on every field it sets: workload, pod, namespace, identity, port, ip', () => {
    const m = (source: Match['source']) => compileMatch({ source });
    expect(m({ workload: 'web' })(peer(web), peer(api), get('/'), undefined)).toBe(true);
    expect(m({ workload: 'api' })(peer(web), peer(api), get('/'), undefined)).toBe(false);
    expect(m({ pod: 'web-7d9f', namespace: 'shop' })(peer(web), peer(api), get('/'), undefined)).toBe(true);
    expect(m({ pod: 'web-7d9f', namespace: 'data' })(peer(web), peer(api), get('/'), undefined)).toBe(false);
    expect(m({ identity: 'spiffe://cluster.local/ns/shop/sa/web' })(peer(web), peer(api), undefined, undefined)).toBe(true);
    // A plaintext caller has no verified identity: an identity match never takes it.
    expect(m({ identity: 'spiffe://cluster.local/ns/shop/sa/web' })({ workload: web }, peer(api), undefined, undefined)).toBe(false);
    expect(m({ port: 4000 })(peer(web, 4000), peer(api), undefined, undefined)).toBe(true);
    expect(m({ ip: '10.0.0.1' })(peer(web, 1, '10.0.0.2'), peer(api), undefined, undefined)).toBe(false);
    // proto3's zero values ("" and 0) mean "any", as an unset field.
    expect(m({ workload: '', port: 0 })(peer(undefined), peer(api), undefined, undefined)).toBe(true);
    // A peer outside the mesh has no workload: a workload match never takes it.
    expect(m({ namespace: 'shop' })(peer(undefined), peer(api), undefined, undefined)).toBe(false);
  });

  it('trellis tap NS/WORKLOAD: the workload on either side, as a workload or a pod name', () => {
    // What viz/tap/request.ts builds for `trellis tap shop/web`.
    const target = { namespace: 'shop', workload: 'web' };
    const m = compileMatch({
      any: {
        matches: [
          { source: target },
          { source: { namespace: 'shop', pod: 'web' } },
          { destination: target },
          { destination: { namespace: 'shop', pod: 'web' } },
        ],
      },
    });
    expect(m(peer(web), peer(api), get('/'), undefined)).toBe(true);
    expect(m(peer(api), peer(web), get('/'), undefined)).toBe(true);
    expect(m(peer(api), peer(db), get('/'), undefined)).toBe(false);
  });

  it('HTTP fields: method, authority (any case), path prefix, route; never an opaque connection', () => {
    expect(compileMatch({ http: { method: 'get' } })(peer(web), peer(api), get('/'), undefined)).toBe(true);
    expect(compileMatch({ http: { method: 'POST' } })(peer(web), peer(api), get('/'), undefined)).toBe(false);
    expect(compileMatch({ http: { authority: 'API.shop:80' } })(peer(web), peer(api), get('/'), undefined)).toBe(true);
    const prefix = compileMatch({ http: { pathPrefix: '/api/' } });
    expect(prefix(peer(web), peer(api), get('/api/v1/items'), undefined)).toBe(true);
    expect(prefix(peer(web), peer(api), get('/apix'), undefined)).toBe(false);
    expect(prefix(peer(web), peer(api), undefined, undefined)).toBe(false);
    const route = compileMatch({ http: { route: 'shop/api-split' } });
    expect(route(peer(web), peer(api), get('/'), 'shop/api-split')).toBe(true);
    expect(route(peer(web), peer(api), get('/'), undefined)).toBe(false);
  });

  it('all, any and not compose', () => {
    // From web, to anything but db, and GET /admin...
    const m = compileMatch({
      all: { matches: [{ source: { workload: 'web' } }, { not: { destination: { workload: 'db' } } }, { http: { pathPrefix: '/admin' } }] },
    });
    expect(m(peer(web), peer(api), get('/admin/users'), undefined)).toBe(true);
    expect(m(peer(web), peer(db), get('/admin/users'), undefined)).toBe(false);
    expect(m(peer(web), peer(api), get('/users'), undefined)).toBe(false);
    expect(m(peer(api), peer(web), get('/admin'), undefined)).toBe(false);
  });

  it('refuses what it cannot match, saying which node', () => {
    const refused = (m: Match) => {
      try {
        compileMatch(m);
      } catch (err) {
        return `${(err as { code: string }).code} ${(err as Error).message}`;
      }
      return 'accepted';
    };
    expect(refused({})).toMatch(/^EINVAL match: set exactly one of/);
    expect(refused({ source: {}, http: { method: 'GET' } })).toMatch(/got source, http/);
    expect(refused({ all: { matches: [] } })).toMatch(/match.all: give at least one/);
    expect(refused({ any: { matches: [{ http: {} }] } })).toMatch(/match.any\[0\].http: set one of/);
    expect(refused({ http: { pathPrefix: 'admin' } })).toMatch(/starts with \//);
    expect(refused({ source: { port: 70000 } })).toMatch(/port 70000/);
    let deep: Match = { source: {} };
    for (let i = 0; i < 20; i++) deep = { not: deep };
    expect(refused(deep)).toMatch(/deeper than/);
    expect(refused({ any: { matches: Array.from({ length: MAX_MATCH_NODES }, () => ({ source: {} })) } })).toMatch(/more than/);
  });
});
