// The fake API server, spoken to with plain fetch: list/watch semantics, selectors, 410, bookmarks, CRUD, auth.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ApiException, AuthenticationV1Api, CoreV1Api, KubeConfig, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { parse as parseYaml } from 'yaml';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FAKE_API_AUDIENCE, FakeApiServer } from './fake-apiserver.js';

type Event = { type: string; object: { kind?: string; code?: number; reason?: string; metadata: { name?: string; resourceVersion?: string; annotations?: Record<string, string> } } };

const pod = (name: string, more: { ns?: string; node?: string; labels?: Record<string, string>; ip?: string } = {}) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace: more.ns ?? 'demo', ...(more.labels ? { labels: more.labels } : {}) },
  spec: { nodeName: more.node ?? 'node-a', containers: [{ name: 'c' }] },
  status: { podIP: more.ip ?? '10.244.1.2' },
});

/** Reads a watch stream line by line. */
class WatchStream {
  private buf = '';
  private readonly events: Event[] = [];
  private ended = false;
  private readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  private pumping: Promise<void>;
  constructor(readonly response: Response) {
    this.reader = response.body!.getReader();
    this.pumping = this.pump();
  }
  private async pump(): Promise<void> {
    const dec = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await this.reader.read();
        if (done) break;
        this.buf += dec.decode(value, { stream: true });
        let i: number;
        while ((i = this.buf.indexOf('\n')) >= 0) {
          this.events.push(JSON.parse(this.buf.slice(0, i)) as Event);
          this.buf = this.buf.slice(i + 1);
        }
      }
    } catch {
      // reset by the server: counts as the end
    }
    this.ended = true;
  }
  async next(timeoutMs = 2000): Promise<Event> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const e = this.events.shift();
      if (e) return e;
      if (this.ended) throw new Error('watch ended');
      await new Promise((r) => setTimeout(r, 5));
    }
    throw new Error('no watch event in time');
  }
  async end(timeoutMs = 2000): Promise<void> {
    await Promise.race([this.pumping, new Promise((_, rej) => setTimeout(() => rej(new Error('watch did not end')), timeoutMs))]);
  }
  close(): void {
    void this.reader.cancel().catch(() => undefined);
  }
}

describe('fake API server', () => {
  let api: FakeApiServer;
  const streams: WatchStream[] = [];
  const auth = () => ({ Authorization: `Bearer ${api.adminToken}` });
  const get = (p: string, headers: Record<string, string> = auth()) => fetch(`${api.url}${p}`, { headers });
  const json = async <T = Record<string, unknown>>(p: string) => (await (await get(p)).json()) as T;
  const send = (method: string, p: string, body: unknown, contentType = 'application/json') =>
    fetch(`${api.url}${p}`, { method, headers: { ...auth(), 'Content-Type': contentType }, body: JSON.stringify(body) });
  const watch = async (p: string) => {
    const res = await get(p);
    expect(res.status).toBe(200);
    const s = new WatchStream(res);
    streams.push(s);
    return s;
  };

  beforeEach(async () => {
    api = await FakeApiServer.start({ bookmarkIntervalMs: 50, historyLimit: 50 });
  });
  afterEach(async () => {
    for (const s of streams.splice(0)) s.close();
    await api.close();
  });

  it('refuses unknown and missing tokens with 401, serves /version without one', async () => {
    expect((await get('/api/v1/pods', {})).status).toBe(401);
    const r = await get('/api/v1/pods', { Authorization: 'Bearer nope' });
    expect(r.status).toBe(401);
    expect(await r.json()).toMatchObject({ kind: 'Status', reason: 'Unauthorized', code: 401 });
    expect((await get('/version', {})).status).toBe(200);
    api.addToken('short', { username: 'u', audiences: [FAKE_API_AUDIENCE], expiresAt: Date.now() - 1 });
    expect((await get('/api/v1/pods', { Authorization: 'Bearer short' })).status).toBe(401);
  });

  it('lists like the real server: XList, resourceVersion, built-in items without kind, custom resources with it', async () => {
    api.apply(pod('a'));
    api.apply(pod('b', { ns: 'other' }));
    api.apply({ apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r', namespace: 'demo' }, spec: {} });
    const list = await json<{ kind: string; apiVersion: string; metadata: { resourceVersion: string }; items: Record<string, unknown>[] }>('/api/v1/pods');
    expect(list.kind).toBe('PodList');
    expect(list.apiVersion).toBe('v1');
    expect(list.metadata.resourceVersion).toBe(api.resourceVersion());
    expect(list.items.map((i) => (i.metadata as { name: string }).name)).toEqual(['a', 'b']);
    expect(list.items[0]).not.toHaveProperty('kind');
    expect(list.items[0]!.metadata).toMatchObject({ uid: expect.any(String), resourceVersion: expect.any(String), creationTimestamp: expect.stringMatching(/Z$/) });
    const ns = await json<{ items: unknown[] }>('/api/v1/namespaces/other/pods');
    expect(ns.items).toHaveLength(1);
    const routes = await json<{ kind: string; items: Record<string, unknown>[] }>('/apis/gateway.networking.k8s.io/v1/httproutes');
    expect(routes.kind).toBe('HTTPRouteList');
    expect(routes.items[0]).toMatchObject({ kind: 'HTTPRoute', apiVersion: 'gateway.networking.k8s.io/v1', metadata: { generation: 1 } });
    const item = await json('/api/v1/namespaces/demo/pods/a');
    expect(item).toMatchObject({ kind: 'Pod', apiVersion: 'v1', spec: { serviceAccountName: 'default' } });
    const missing = await get('/api/v1/namespaces/demo/pods/zz');
    expect(missing.status).toBe(404);
    expect(await missing.json()).toMatchObject({ kind: 'Status', reason: 'NotFound', message: 'pods "zz" not found', details: { name: 'zz', kind: 'pods' }, code: 404 });
  });

  it('pages lists with limit/continue and expires old continue tokens', async () => {
    for (const n of ['a', 'b', 'c']) api.apply(pod(n));
    const first = await json<{ metadata: { continue?: string; remainingItemCount?: number }; items: unknown[] }>('/api/v1/pods?limit=2');
    expect(first.items).toHaveLength(2);
    expect(first.metadata.remainingItemCount).toBe(1);
    const rest = await json<{ metadata: { continue?: string }; items: { metadata: { name: string } }[] }>(`/api/v1/pods?limit=2&continue=${first.metadata.continue}`);
    expect(rest.items.map((i) => i.metadata.name)).toEqual(['c']);
    expect(rest.metadata.continue).toBeUndefined();
    api.apply(pod('d'));
    api.compact();
    const gone = await get(`/api/v1/pods?limit=2&continue=${first.metadata.continue}`);
    expect(gone.status).toBe(410);
    expect(await gone.json()).toMatchObject({ reason: 'Expired', code: 410 });
  });

  it('applies label selectors (equality and set-based) and field selectors, and rejects unsupported fields', async () => {
    api.apply(pod('a', { labels: { app: 'web', tier: 'front' } }));
    api.apply(pod('b', { labels: { app: 'db' }, node: 'node-b' }));
    api.apply(pod('c', { labels: {} }));
    const names = async (q: string) => (await json<{ items: { metadata: { name: string } }[] }>(`/api/v1/pods?${q}`)).items.map((i) => i.metadata.name);
    expect(await names('labelSelector=app%3Dweb')).toEqual(['a']);
    expect(await names('labelSelector=app!%3Dweb')).toEqual(['b', 'c']);
    expect(await names(`labelSelector=${encodeURIComponent('app in (web,db)')}`)).toEqual(['a', 'b']);
    expect(await names(`labelSelector=${encodeURIComponent('app notin (web),tier')}`)).toEqual([]);
    expect(await names(`labelSelector=${encodeURIComponent('!app')}`)).toEqual(['c']);
    expect(await names('fieldSelector=spec.nodeName%3Dnode-b')).toEqual(['b']);
    expect(await names('fieldSelector=metadata.name!%3Da,metadata.namespace%3Ddemo')).toEqual(['b', 'c']);
    const bad = await get('/api/v1/pods?fieldSelector=spec.foo%3Dx');
    expect(bad.status).toBe(400);
    expect(await bad.json()).toMatchObject({ message: 'field label not supported: spec.foo' });
  });

  it('watches from a resourceVersion: replays history, then streams ADDED/MODIFIED/DELETED', async () => {
    api.apply(pod('a'));
    const rv = api.resourceVersion();
    api.apply(pod('b'));
    const w = await watch(`/api/v1/pods?watch=1&resourceVersion=${rv}`);
    expect(await w.next()).toMatchObject({ type: 'ADDED', object: { kind: 'Pod', metadata: { name: 'b' } } });
    api.apply(pod('a', { ip: '10.244.1.9' }));
    const mod = await w.next();
    expect(mod).toMatchObject({ type: 'MODIFIED', object: { metadata: { name: 'a' } } });
    api.remove('v1', 'Pod', 'demo', 'a');
    const del = await w.next();
    expect(del).toMatchObject({ type: 'DELETED', object: { metadata: { name: 'a' } } });
    expect(Number(del.object.metadata.resourceVersion)).toBeGreaterThan(Number(mod.object.metadata.resourceVersion));
    // Without a resourceVersion: the current state as ADDED first.
    const w2 = await watch('/api/v1/namespaces/demo/pods?watch=true');
    expect(await w2.next()).toMatchObject({ type: 'ADDED', object: { metadata: { name: 'b' } } });
  });

  it('sends an object leaving a watch selector as DELETED and one entering it as ADDED', async () => {
    api.apply(pod('a', { labels: { mesh: 'on' } }));
    const w = await watch(`/api/v1/pods?watch=1&resourceVersion=${api.resourceVersion()}&labelSelector=mesh%3Don`);
    api.apply(pod('a', { labels: { mesh: 'off' } }));
    expect(await w.next()).toMatchObject({ type: 'DELETED', object: { metadata: { name: 'a' } } });
    api.apply(pod('b', { labels: { mesh: 'off' } }));
    api.apply(pod('a', { labels: { mesh: 'on' } }));
    expect(await w.next()).toMatchObject({ type: 'ADDED', object: { metadata: { name: 'a' } } });
    const wf = await watch(`/api/v1/pods?watch=1&resourceVersion=${api.resourceVersion()}&fieldSelector=spec.nodeName%3Dnode-b`);
    api.apply(pod('a', { node: 'node-b', labels: { mesh: 'on' } }));
    expect(await wf.next()).toMatchObject({ type: 'ADDED', object: { metadata: { name: 'a' } } });
  });

  it('sends bookmarks only when asked, with the current resourceVersion', async () => {
    api.apply(pod('a'));
    const w = await watch(`/api/v1/pods?watch=1&resourceVersion=${api.resourceVersion()}&allowWatchBookmarks=true`);
    const b = await w.next();
    expect(b).toMatchObject({ type: 'BOOKMARK', object: { kind: 'Pod', metadata: { resourceVersion: api.resourceVersion() } } });
    const plain = await watch(`/api/v1/pods?watch=1&resourceVersion=${api.resourceVersion()}`);
    await expect(plain.next(300)).rejects.toThrow(/no watch event/);
  });

  it('ends a watch after timeoutSeconds', async () => {
    const w = await watch(`/api/v1/pods?watch=1&resourceVersion=${api.resourceVersion()}&timeoutSeconds=1`);
    const t0 = Date.now();
    await w.end(3000);
    expect(Date.now() - t0).toBeGreaterThan(800);
  });

  it('answers a watch from a forgotten resourceVersion with ERROR 410 Expired; compact() ends open watches so', async () => {
    api.apply(pod('a'));
    const old = api.resourceVersion();
    const open = await watch(`/api/v1/pods?watch=1&resourceVersion=${old}`);
    for (let i = 0; i < 60; i++) api.apply(pod(`p${i}`)); // more than historyLimit (50)
    for (let i = 0; i < 60; i++) await open.next(); // a live watch still saw every event
    const w = await watch(`/api/v1/pods?watch=1&resourceVersion=${old}`);
    expect(await w.next()).toMatchObject({ type: 'ERROR', object: { kind: 'Status', code: 410, reason: 'Expired' } });
    await w.end();
    api.compact();
    expect(await open.next()).toMatchObject({ type: 'ERROR', object: { code: 410 } });
    await open.end();
    const exact = await get(`/api/v1/pods?resourceVersion=${old}&resourceVersionMatch=Exact`);
    expect(exact.status).toBe(410);
  });

  it('creates, updates (with conflicts), patches and deletes through REST', async () => {
    const cm = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'c' }, data: { a: '1' } };
    const created = await send('POST', '/api/v1/namespaces/demo/configmaps', cm);
    expect(created.status).toBe(201);
    const body = (await created.json()) as { metadata: { namespace: string; resourceVersion: string } };
    expect(body.metadata.namespace).toBe('demo');
    expect((await send('POST', '/api/v1/namespaces/demo/configmaps', cm)).status).toBe(409);
    const upd = await send('PUT', '/api/v1/namespaces/demo/configmaps/c', { ...cm, metadata: { ...cm.metadata, resourceVersion: body.metadata.resourceVersion }, data: { a: '2' } });
    expect(upd.status).toBe(200);
    const stale = await send('PUT', '/api/v1/namespaces/demo/configmaps/c', { ...cm, metadata: { ...cm.metadata, resourceVersion: body.metadata.resourceVersion } });
    expect(stale.status).toBe(409);
    expect(await stale.json()).toMatchObject({ reason: 'Conflict' });
    const merged = await send('PATCH', '/api/v1/namespaces/demo/configmaps/c', { data: { b: '3' } }, 'application/merge-patch+json');
    expect(await merged.json()).toMatchObject({ data: { a: '2', b: '3' } });
    const jp = await send('PATCH', '/api/v1/namespaces/demo/configmaps/c', [{ op: 'remove', path: '/data/a' }], 'application/json-patch+json');
    expect(((await jp.json()) as { data: unknown }).data).toEqual({ b: '3' });
    const gen = await send('POST', '/api/v1/namespaces/demo/events', { metadata: { generateName: 'ev-' }, involvedObject: { kind: 'Pod', name: 'a' }, reason: 'X' });
    expect(((await gen.json()) as { metadata: { name: string } }).metadata.name).toMatch(/^ev-[a-z0-9]{5}$/);
    const del = await fetch(`${api.url}/api/v1/namespaces/demo/configmaps/c`, { method: 'DELETE', headers: auth() });
    expect(del.status).toBe(200);
    expect(api.get('v1', 'ConfigMap', 'demo', 'c')).toBeUndefined();
    // The status subresource: PUT of the object keeps status, PUT of /status changes only status.
    api.apply(pod('a'));
    const p = (await json('/api/v1/namespaces/demo/pods/a')) as ReturnType<typeof pod>;
    await send('PUT', '/api/v1/namespaces/demo/pods/a', { ...p, status: { podIP: '10.0.0.1' }, metadata: { ...p.metadata, labels: { x: 'y' } } });
    expect(api.get('v1', 'Pod', 'demo', 'a')).toMatchObject({ metadata: { labels: { x: 'y' } }, status: { podIP: '10.244.1.2' } });
    await send('PATCH', '/api/v1/namespaces/demo/pods/a/status', { status: { podIP: '10.0.0.1' } }, 'application/merge-patch+json');
    expect(api.get('v1', 'Pod', 'demo', 'a')).toMatchObject({ status: { podIP: '10.0.0.1' } });
  });

  it('reviews tokens: audiences, bound pod and node, expiry, unknown tokens', async () => {
    api.addToken('agent-token', {
      username: 'system:serviceaccount:trellis-system:trellis-agent',
      audiences: ['trellis'],
      pod: { name: 'agent-x', namespace: 'trellis-system', uid: 'u-1' },
      node: 'node-a',
    });
    api.addToken('old', { username: 'system:serviceaccount:a:b', audiences: ['trellis'], expiresAt: Date.now() - 1000 });
    const review = async (token: string, audiences?: string[]) => {
      const r = await send('POST', '/apis/authentication.k8s.io/v1/tokenreviews', { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, ...(audiences ? { audiences } : {}) } });
      expect(r.status).toBe(201);
      return ((await r.json()) as { status: Record<string, unknown> }).status;
    };
    expect(await review('agent-token', ['trellis'])).toEqual({
      authenticated: true,
      audiences: ['trellis'],
      user: {
        username: 'system:serviceaccount:trellis-system:trellis-agent',
        groups: ['system:serviceaccounts', 'system:serviceaccounts:trellis-system', 'system:authenticated'],
        extra: {
          'authentication.kubernetes.io/pod-name': ['agent-x'],
          'authentication.kubernetes.io/pod-uid': ['u-1'],
          'authentication.kubernetes.io/node-name': ['node-a'],
        },
      },
    });
    const wrongAud = await review('agent-token', ['other']);
    expect(wrongAud.authenticated).toBeUndefined();
    expect(String(wrongAud.error)).toMatch(/audiences/);
    expect(String((await review('agent-token')).error)).toMatch(/audiences/); // default audience: the API server's
    expect(String((await review('old', ['trellis'])).error)).toMatch(/token has expired/);
    expect(String((await review('nope', ['trellis'])).error)).toMatch(/invalid bearer token/);
    expect((await get('/apis/authentication.k8s.io/v1/tokenreviews')).status).toBe(405);
  });

  it('records requests with the verb the authorizer would see and the user', async () => {
    api.addToken('t', { username: 'system:serviceaccount:trellis-system:trellis-agent', audiences: [FAKE_API_AUDIENCE] });
    const h = { Authorization: 'Bearer t' };
    await get('/api/v1/pods', h);
    await get('/api/v1/namespaces/demo/pods/x', h);
    const w = await get('/apis/discovery.k8s.io/v1/endpointslices?watch=1', h);
    await w.body!.cancel();
    await send('POST', '/api/v1/namespaces/demo/events', { metadata: { name: 'e' } });
    expect(api.requests()).toEqual([
      { verb: 'list', group: '', version: 'v1', resource: 'pods', user: 'system:serviceaccount:trellis-system:trellis-agent' },
      { verb: 'get', group: '', version: 'v1', resource: 'pods', namespace: 'demo', name: 'x', user: 'system:serviceaccount:trellis-system:trellis-agent' },
      { verb: 'watch', group: 'discovery.k8s.io', version: 'v1', resource: 'endpointslices', user: 'system:serviceaccount:trellis-system:trellis-agent' },
      { verb: 'create', group: '', version: 'v1', resource: 'events', namespace: 'demo', user: 'kubernetes-admin' },
    ]);
  });

  it('pause() resets open watches and refuses new connections until resume()', async () => {
    const w = await watch(`/api/v1/pods?watch=1&resourceVersion=${api.resourceVersion()}`);
    api.pause();
    await w.end();
    await expect(get('/api/v1/pods')).rejects.toThrow();
    api.apply(pod('during-outage'));
    api.resume();
    const list = await json<{ items: unknown[] }>('/api/v1/pods');
    expect(list.items).toHaveLength(1);
  });

  it('serves client-node typed calls: create, merge patch, 404 as ApiException, TokenReview', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'trellis-fakeapi-'));
    try {
      api.addToken('sa', { username: 'system:serviceaccount:trellis-system:trellis-identity', audiences: [FAKE_API_AUDIENCE] });
      api.addToken('caller', { username: 'system:serviceaccount:demo:client', audiences: ['trellis'], pod: { name: 'client', namespace: 'demo', uid: 'u' }, node: 'node-a' });
      const kc = new KubeConfig();
      kc.loadFromFile(api.writeKubeconfig(path.join(dir, 'kubeconfig'), { token: 'sa' }));
      const core = kc.makeApiClient(CoreV1Api);
      await core.createNamespacedConfigMap({ namespace: 'demo', body: { metadata: { name: 'c' }, data: { a: '1' } } });
      const patched = await core.patchNamespacedConfigMap(
        { namespace: 'demo', name: 'c', body: { data: { b: '2' } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
      expect(patched.data).toEqual({ a: '1', b: '2' });
      const err = await core.readNamespacedPod({ namespace: 'demo', name: 'nope' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ApiException);
      expect((err as ApiException<unknown>).code).toBe(404);
      const review = await kc.makeApiClient(AuthenticationV1Api).createTokenReview({ body: { spec: { token: 'caller', audiences: ['trellis'] } } });
      expect(review.status).toMatchObject({ authenticated: true, user: { username: 'system:serviceaccount:demo:client', extra: { 'authentication.kubernetes.io/node-name': ['node-a'] } } });
      expect(api.requests().map((r) => `${r.verb} ${r.resource} ${r.user}`)).toEqual([
        'create configmaps system:serviceaccount:trellis-system:trellis-identity',
        'patch configmaps system:serviceaccount:trellis-system:trellis-identity',
        'get pods system:serviceaccount:trellis-system:trellis-identity',
        'create tokenreviews system:serviceaccount:trellis-system:trellis-identity',
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serves discovery and writes a kubeconfig client-node accepts', async () => {
    const res = await json<{ resources: { name: string; namespaced: boolean }[] }>('/api/v1');
    expect(res.resources).toContainEqual(expect.objectContaining({ name: 'pods', namespaced: true }));
    const groups = await json<{ groups: { name: string }[] }>('/apis');
    expect(groups.groups.map((g) => g.name)).toContain('security.trellis.dev');
    const dir = mkdtempSync(path.join(tmpdir(), 'trellis-fakeapi-'));
    try {
      const file = api.writeKubeconfig(path.join(dir, 'sub', 'kubeconfig'), { token: 't1', namespace: 'ns1' });
      const cfg = parseYaml(readFileSync(file, 'utf8')) as { clusters: { cluster: Record<string, unknown> }[]; users: { user: { token: string } }[] };
      expect(cfg.clusters[0]!.cluster).toEqual({ server: api.url, 'insecure-skip-tls-verify': true });
      expect(cfg.users[0]!.user.token).toBe('t1');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
