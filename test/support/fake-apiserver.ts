// Test support: an in-process Kubernetes API server over plain HTTP, faithful to what client-node informers and
// typed calls use (list, watch with history/410/bookmarks/selectors, CRUD, TokenReview). Used by tests only.
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { PatchError, jsonPatch, mergePatch } from './fake-apiserver/patch.js';
import {
  RESOURCES,
  byKind,
  groupVersion,
  parseResourcePath,
  qualifiedResource,
  type ResourceType,
} from './fake-apiserver/resources.js';
import { SelectorError, parseFieldSelector, parseLabelSelector, type Matcher } from './fake-apiserver/selectors.js';

export interface TokenInfo {
  username: string; // e.g. 'system:serviceaccount:trellis-system:trellis-agent'
  uid?: string;
  groups?: string[];
  audiences: string[]; // a TokenReview with spec.audiences not intersecting these is unauthenticated
  expiresAt?: number; // ms epoch; after it the token is unauthenticated ("token has expired")
  pod?: { name: string; namespace: string; uid: string }; // bound pod -> status.user.extra pod-name / pod-uid
  node?: string; // -> status.user.extra['authentication.kubernetes.io/node-name']
}

export interface RecordedRequest {
  verb: 'get' | 'list' | 'watch' | 'create' | 'update' | 'patch' | 'delete';
  group: string;
  version: string;
  resource: string;
  subresource?: string;
  namespace?: string;
  name?: string;
  user?: string;
}

/** The audience of the API server itself: a TokenReview without spec.audiences checks against this one. */
export const FAKE_API_AUDIENCE = 'https://kubernetes.default.svc.cluster.local';

type Meta = {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  creationTimestamp?: string;
  generation?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
};
type Obj = { apiVersion?: string; kind?: string; metadata: Meta; spec?: unknown; status?: unknown } & Record<string, unknown>;

interface HistoryEvent {
  rv: number;
  rt: ResourceType;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  obj: Obj;
  /** The object before a MODIFIED, so a watch with a selector can tell "moved in" from "moved out". */
  prev?: Obj;
}

interface Watcher {
  rt: ResourceType;
  namespace?: string;
  matches: Matcher;
  res: http.ServerResponse;
  timers: NodeJS.Timeout[];
}

class HttpError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
  }
}

const BODY_LIMIT = 3 * 1024 * 1024;
const GENERATE_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789';

function rfc3339(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function clone<T>(v: T): T {
  return structuredClone(v);
}

export class FakeApiServer {
  readonly url: string;
  /** A token that is always accepted (username kubernetes-admin, group system:masters). */
  readonly adminToken: string;
  private readonly server: http.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly watchers = new Set<Watcher>();
  private readonly store = new Map<ResourceType, Map<string, Obj>>();
  private readonly tokens = new Map<string, TokenInfo>();
  private readonly recorded: RecordedRequest[] = [];
  private history: HistoryEvent[] = [];
  private rv = 100;
  /** Watches and continue tokens from a resourceVersion below this are gone (410). */
  private floor = 0;
  private paused = false;
  /** Resource requests are answered this much later (see setLatency). */
  private latencyMs = 0;
  /** Resources answered with 404, as for a CRD that is not installed. */
  private readonly hidden = new Set<string>();
  private nextClusterIp = 10;
  private readonly bookmarkIntervalMs: number;
  private readonly historyLimit: number;

  private constructor(server: http.Server, url: string, opts: { bookmarkIntervalMs?: number; historyLimit?: number }) {
    this.server = server;
    this.url = url;
    this.bookmarkIntervalMs = opts.bookmarkIntervalMs ?? 1000;
    this.historyLimit = opts.historyLimit ?? 5000;
    for (const rt of RESOURCES) this.store.set(rt, new Map());
    this.adminToken = `admin-${randomBytes(12).toString('hex')}`;
    this.tokens.set(this.adminToken, { username: 'kubernetes-admin', groups: ['system:masters', 'system:authenticated'], audiences: [FAKE_API_AUDIENCE] });
  }

  /**
   * `netnsPath`: listen on a socket opened inside that network namespace (e.g. a lab's fabric), so agents
   * running in the lab's node namespaces reach this in-process server.
   */
  static async start(opts: { host?: string; port?: number; netnsPath?: string; bookmarkIntervalMs?: number; historyLimit?: number } = {}): Promise<FakeApiServer> {
    const host = opts.host ?? '127.0.0.1';
    let self: FakeApiServer | undefined;
    const server = http.createServer((req, res) => void self!.handle(req, res));
    // Watches are long-lived; the real server does not cut requests at 5 minutes either.
    server.requestTimeout = 0;
    server.on('connection', (socket) => self!.onConnection(socket));
    if (opts.netnsPath) {
      const { listenInNetns } = await import('../../agent/native/index.js');
      await listenInNetns(server, opts.netnsPath, { host, port: opts.port ?? 6443 });
    } else {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(opts.port ?? 0, host, () => resolve());
      });
    }
    const addr = server.address() as net.AddressInfo;
    self = new FakeApiServer(server, `http://${host.includes(':') ? `[${host}]` : host}:${addr.port}`, opts);
    return self;
  }

  // ---- test controls ----

  /** Writes a kubeconfig (server url, bearer token) to `file`; returns the path. Tokens used here must be added with addToken. */
  writeKubeconfig(file: string, opts: { token?: string; namespace?: string } = {}): string {
    mkdirSync(path.dirname(file), { recursive: true });
    const config = {
      apiVersion: 'v1',
      kind: 'Config',
      // client-node refuses http:// servers unless TLS verification is declared off.
      clusters: [{ name: 'fake', cluster: { server: this.url, 'insecure-skip-tls-verify': true } }],
      users: [{ name: 'fake', user: { token: opts.token ?? this.adminToken } }],
      contexts: [{ name: 'fake', context: { cluster: 'fake', user: 'fake', ...(opts.namespace ? { namespace: opts.namespace } : {}) } }],
      'current-context': 'fake',
    };
    writeFileSync(file, stringifyYaml(config), { mode: 0o600 });
    return file;
  }

  /** Serve (false) or stop serving (true) a resource, as when its CRD is installed or removed. */
  setUninstalled(resource: string, uninstalled: boolean): void {
    if (uninstalled) this.hidden.add(resource);
    else this.hidden.delete(resource);
  }

  addToken(token: string, info: TokenInfo): void {
    this.tokens.set(token, clone(info));
  }

  requests(): RecordedRequest[] {
    return this.recorded.map((r) => ({ ...r }));
  }

  /** Creates or replaces an object as a controller or the kubelet would: stored as given (status included), no validation. */
  apply<T extends object>(obj: T): T {
    const o = clone(obj) as unknown as Obj;
    const rt = byKind(String(o.apiVersion), String(o.kind));
    if (!rt || rt.createOnly) throw new Error(`fake apiserver: ${String(o.apiVersion)} ${String(o.kind)} is not served (see fake-apiserver/resources.ts)`);
    if (!o.metadata?.name) throw new Error('fake apiserver: apply needs metadata.name');
    if (rt.namespaced) o.metadata.namespace ??= 'default';
    else delete o.metadata.namespace;
    const existing = this.objects(rt).get(keyOf(o));
    return this.write(rt, o, existing) as unknown as T;
  }

  remove(apiVersion: string, kind: string, namespace: string | undefined, name: string): void {
    const rt = byKind(apiVersion, kind);
    if (!rt) throw new Error(`fake apiserver: ${apiVersion} ${kind} is not served`);
    const key = `${rt.namespaced ? (namespace ?? 'default') : ''}/${name}`;
    if (this.objects(rt).has(key)) this.delete(rt, key);
  }

  get(apiVersion: string, kind: string, namespace: string | undefined, name: string): object | undefined {
    const rt = byKind(apiVersion, kind);
    if (!rt) return undefined;
    const o = this.objects(rt).get(`${rt.namespaced ? (namespace ?? 'default') : ''}/${name}`);
    return o ? withType(rt, o) : undefined;
  }

  /** Outage: every open connection is reset and new ones are reset on accept, until resume(). */
  pause(): void {
    this.paused = true;
    for (const s of this.sockets) s.resetAndDestroy();
  }

  resume(): void {
    this.paused = false;
  }

  /** Resource requests arriving from now on are handled `ms` later, as by a loaded API server; 0 for none. */
  setLatency(ms: number): void {
    this.latencyMs = ms;
  }

  /**
   * Forgets the watch history, as when the server's watch cache is rebuilt: open watches get an ERROR 410 event
   * and end, and any watch or continue token from an older resourceVersion gets 410 Expired. Clients must relist.
   */
  compact(): void {
    this.history = [];
    this.floor = this.rv;
    for (const w of [...this.watchers]) this.expire(w, this.rv - 1);
  }

  async close(): Promise<void> {
    for (const w of [...this.watchers]) this.dropWatcher(w);
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  /** The current global resourceVersion. */
  resourceVersion(): string {
    return String(this.rv);
  }

  // ---- storage and events ----

  private objects(rt: ResourceType): Map<string, Obj> {
    return this.store.get(rt)!;
  }

  private bump(): number {
    return ++this.rv;
  }

  /** Stores `o` (new or replacing `existing`), assigns server fields, records and sends the event. */
  private write(rt: ResourceType, o: Obj, existing: Obj | undefined): Obj {
    const rv = this.bump();
    o.apiVersion = groupVersion(rt);
    o.kind = rt.kind;
    o.metadata.uid = existing?.metadata.uid ?? o.metadata.uid ?? randomUUID();
    o.metadata.creationTimestamp = existing?.metadata.creationTimestamp ?? rfc3339(Date.now());
    o.metadata.resourceVersion = String(rv);
    if (!rt.builtin) {
      const changed = !existing || JSON.stringify(existing.spec) !== JSON.stringify(o.spec);
      o.metadata.generation = (existing?.metadata.generation ?? 0) + (changed ? 1 : 0);
    }
    this.defaults(rt, o);
    const key = keyOf(o);
    this.objects(rt).set(key, o);
    this.emit({ rv, rt, type: existing ? 'MODIFIED' : 'ADDED', obj: clone(o), ...(existing ? { prev: existing } : {}) });
    return withType(rt, o);
  }

  private delete(rt: ResourceType, key: string): Obj {
    const map = this.objects(rt);
    const old = map.get(key)!;
    // Deleting a namespace deletes its contents (the real server does it in the background).
    if (rt.kind === 'Namespace') {
      for (const other of RESOURCES) {
        if (!other.namespaced) continue;
        for (const k of [...this.objects(other).keys()]) if (k.startsWith(`${old.metadata.name}/`)) this.delete(other, k);
      }
    }
    map.delete(key);
    const gone = clone(old);
    const rv = this.bump();
    gone.metadata.resourceVersion = String(rv);
    this.emit({ rv, rt, type: 'DELETED', obj: gone });
    return withType(rt, gone);
  }

  /** What the real server's defaulting and admission add (namespace label, service account, ClusterIP, port defaults). */
  private defaults(rt: ResourceType, o: Obj): void {
    if (rt.kind === 'Namespace') {
      o.metadata.labels = { ...o.metadata.labels, 'kubernetes.io/metadata.name': o.metadata.name! };
      const spec = (o.spec ??= {}) as Record<string, unknown>;
      spec.finalizers ??= ['kubernetes'];
      o.status ??= { phase: 'Active' };
    } else if (rt.kind === 'Pod') {
      const spec = (o.spec ??= {}) as Record<string, unknown>;
      spec.serviceAccountName ??= 'default';
      spec.serviceAccount ??= spec.serviceAccountName;
    } else if (rt.kind === 'Service') {
      const spec = (o.spec ??= {}) as Record<string, unknown>;
      spec.type ??= 'ClusterIP';
      if (spec.type !== 'ExternalName') {
        if (!spec.clusterIP) spec.clusterIP = this.allocateClusterIp();
        spec.clusterIPs ??= [spec.clusterIP];
      }
      for (const p of (spec.ports ?? []) as Record<string, unknown>[]) {
        p.protocol ??= 'TCP';
        p.targetPort ??= p.port;
      }
    }
  }

  private allocateClusterIp(): string {
    const used = new Set([...this.objects(byKind('v1', 'Service')!).values()].map((s) => (s.spec as { clusterIP?: string }).clusterIP));
    for (;;) {
      const n = this.nextClusterIp++;
      const ip = `10.96.${(n >> 8) & 255}.${n & 255}`;
      if (!used.has(ip)) return ip;
    }
  }

  private emit(ev: HistoryEvent): void {
    this.history.push(ev);
    if (this.history.length > this.historyLimit) this.floor = this.history.shift()!.rv;
    for (const w of this.watchers) if (w.rt === ev.rt) this.deliver(w, ev);
  }

  /** Sends one stored event to one watch, as the real server sees it through the watch's selectors. */
  private deliver(w: Watcher, ev: HistoryEvent): void {
    const inScope = (o: Obj) => (!w.namespace || o.metadata.namespace === w.namespace) && w.matches(o);
    const now = inScope(ev.obj);
    let type: string | undefined;
    if (ev.type === 'ADDED') type = now ? 'ADDED' : undefined;
    else if (ev.type === 'DELETED') type = now ? 'DELETED' : undefined;
    else {
      const before = ev.prev ? inScope(ev.prev) : false;
      type = now && before ? 'MODIFIED' : now ? 'ADDED' : before ? 'DELETED' : undefined;
    }
    // Stored event objects already carry kind/apiVersion and are never mutated: no copy needed.
    if (type) w.res.write(`${JSON.stringify({ type, object: ev.obj })}\n`);
  }

  private expire(w: Watcher, requested: number): void {
    const status = statusObject(410, 'Expired', `too old resource version: ${requested} (${this.floor})`);
    w.res.end(`${JSON.stringify({ type: 'ERROR', object: status })}\n`);
    this.dropWatcher(w);
  }

  private dropWatcher(w: Watcher): void {
    for (const t of w.timers) clearInterval(t);
    this.watchers.delete(w);
  }

  // ---- HTTP ----

  private onConnection(socket: net.Socket): void {
    if (this.paused) {
      socket.resetAndDestroy();
      return;
    }
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    try {
      await this.route(req, res);
    } catch (err) {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const e = err instanceof HttpError ? err : new HttpError(500, 'InternalError', `Internal error occurred: ${(err as Error).message}`);
      sendJson(res, e.code, statusObject(e.code, e.reason, e.message, e.details));
    }
  }

  private authenticate(req: http.IncomingMessage): TokenInfo | undefined {
    const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
    const info = m ? this.tokens.get(m[1]!) : undefined;
    if (!info || (info.expiresAt !== undefined && info.expiresAt <= Date.now())) return undefined;
    return info;
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://fake');
    const method = req.method ?? 'GET';
    const parsed = parseResourcePath(url.pathname);
    const user = this.authenticate(req);

    if (!parsed) {
      if (['/version', '/healthz', '/readyz', '/livez'].includes(url.pathname)) {
        if (url.pathname === '/version') sendJson(res, 200, { major: '1', minor: '33', gitVersion: 'v1.33.0-fake', platform: 'linux/amd64' });
        else sendText(res, 200, 'ok');
        return;
      }
      if (!user) throw unauthorized();
      const doc = discovery(url.pathname, this.url);
      if (doc) {
        sendJson(res, 200, doc);
        return;
      }
      throw new HttpError(404, 'NotFound', 'the server could not find the requested resource');
    }

    const { rt, namespace, name, subresource } = parsed;
    const watch = ['true', '1'].includes(url.searchParams.get('watch') ?? '');
    const verb = verbOf(method, !!name, watch);
    this.recorded.push({
      verb: verb ?? 'get',
      group: rt.group,
      version: rt.version,
      resource: rt.resource,
      ...(subresource ? { subresource } : {}),
      ...(namespace !== undefined ? { namespace } : {}),
      ...(name !== undefined ? { name } : {}),
      ...(user ? { user: user.username } : {}),
    });
    if (!user) throw unauthorized();
    if (this.latencyMs > 0) await new Promise((resolve) => setTimeout(resolve, this.latencyMs));
    if (this.hidden.has(rt.resource)) throw new HttpError(404, 'NotFound', 'the server could not find the requested resource');
    if (!verb) throw new HttpError(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`);
    if (subresource && (subresource !== 'status' || !rt.status)) {
      throw new HttpError(404, 'NotFound', 'the server could not find the requested resource');
    }
    if (rt.createOnly && verb !== 'create') {
      throw new HttpError(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`);
    }
    if (!rt.namespaced && namespace !== undefined) throw new HttpError(404, 'NotFound', 'the server could not find the requested resource');

    switch (verb) {
      case 'list':
        return this.list(rt, namespace, url, res);
      case 'watch':
        return this.watch(rt, namespace, name, url, req, res);
      case 'get':
        return sendJson(res, 200, this.mustGet(rt, namespace, name!));
      case 'create':
        if (rt.namespaced && namespace === undefined) throw new HttpError(405, 'MethodNotAllowed', 'create needs a namespaced path: /namespaces/NS/...');
        return this.create(rt, namespace, url, await readJson(req), res);
      case 'update':
        return this.update(rt, namespace, name!, subresource, url, await readJson(req), res);
      case 'patch':
        return this.patch(rt, namespace, name!, subresource, url, req, res);
      case 'delete':
        return this.deleteItem(rt, namespace, name!, url, await readJson(req, true), res);
    }
  }

  private mustGet(rt: ResourceType, namespace: string | undefined, name: string): Obj {
    const o = this.objects(rt).get(`${namespace ?? ''}/${name}`);
    if (!o) throw notFound(rt, name);
    return withType(rt, o);
  }

  private select(rt: ResourceType, namespace: string | undefined, url: URL): Matcher {
    try {
      const labels = parseLabelSelector(url.searchParams.get('labelSelector'));
      const fields = parseFieldSelector(url.searchParams.get('fieldSelector'), rt);
      return (o) => (namespace === undefined || o.metadata?.namespace === namespace) && labels(o) && fields(o);
    } catch (err) {
      if (err instanceof SelectorError) throw new HttpError(400, 'BadRequest', err.message);
      throw err;
    }
  }

  private list(rt: ResourceType, namespace: string | undefined, url: URL, res: http.ServerResponse): void {
    const matches = this.select(rt, namespace, url);
    const rvParam = url.searchParams.get('resourceVersion');
    if (url.searchParams.get('resourceVersionMatch') === 'Exact' && rvParam && Number(rvParam) < this.floor) {
      throw new HttpError(410, 'Expired', `too old resource version: ${rvParam} (${this.floor})`);
    }
    let start = '';
    let listRv = this.rv;
    const cont = url.searchParams.get('continue');
    if (cont) {
      let token: { rv: number; start: string };
      try {
        token = JSON.parse(Buffer.from(cont, 'base64url').toString()) as { rv: number; start: string };
      } catch {
        throw new HttpError(400, 'BadRequest', 'continue key is not valid: illegal base64 data');
      }
      if (token.rv < this.floor) {
        throw new HttpError(
          410,
          'Expired',
          'The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.',
        );
      }
      start = token.start;
      listRv = token.rv;
    }
    const all = [...this.objects(rt).entries()]
      .filter(([k, o]) => k > start && matches(o))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const limit = Number(url.searchParams.get('limit') ?? 0);
    const page = limit > 0 ? all.slice(0, limit) : all;
    const more = all.length - page.length;
    const metadata: Record<string, unknown> = { resourceVersion: String(listRv) };
    if (more > 0) {
      metadata.continue = Buffer.from(JSON.stringify({ rv: listRv, start: page.at(-1)![0] })).toString('base64url');
      metadata.remainingItemCount = more;
    }
    sendJson(res, 200, {
      kind: `${rt.kind}List`,
      apiVersion: groupVersion(rt),
      metadata,
      items: page.map(([, o]) => listItem(rt, o)),
    });
  }

  private watch(
    rt: ResourceType,
    namespace: string | undefined,
    name: string | undefined,
    url: URL,
    req: http.IncomingMessage,
    res: http.ServerResponse,
  ): void {
    const selected = this.select(rt, namespace, url);
    // A watch on an item is a watch of the collection restricted to that name.
    const matches: Matcher = name === undefined ? selected : (o) => o.metadata?.name === name && selected(o);
    const rvParam = url.searchParams.get('resourceVersion') ?? '';
    if (rvParam !== '' && !/^\d+$/.test(rvParam)) throw new HttpError(400, 'BadRequest', `invalid resource version: ${rvParam}`);
    const from = rvParam === '' ? 0 : Number(rvParam);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked', 'Cache-Control': 'no-cache, private' });
    res.flushHeaders();
    const w: Watcher = { rt, ...(namespace !== undefined ? { namespace } : {}), matches, res, timers: [] };
    req.on('close', () => this.dropWatcher(w));
    if (from === 0) {
      // "Start at most recent": the current state as ADDED events, then changes.
      const items = [...this.objects(rt).values()].filter((o) => (!namespace || o.metadata.namespace === namespace) && matches(o));
      for (const o of items) res.write(`${JSON.stringify({ type: 'ADDED', object: withType(rt, o) })}\n`);
      if (url.searchParams.get('sendInitialEvents') === 'true' && isTrue(url.searchParams.get('allowWatchBookmarks'))) {
        res.write(`${JSON.stringify({ type: 'BOOKMARK', object: this.bookmark(rt, { 'k8s.io/initial-events-end': 'true' }) })}\n`);
      }
    } else if (from < this.floor) {
      this.expire(w, from);
      return;
    } else {
      for (const ev of this.history) if (ev.rt === rt && ev.rv > from) this.deliver(w, ev);
    }
    this.watchers.add(w);
    if (isTrue(url.searchParams.get('allowWatchBookmarks'))) {
      const tick = () => res.write(`${JSON.stringify({ type: 'BOOKMARK', object: this.bookmark(rt) })}\n`);
      w.timers.push(setInterval(tick, this.bookmarkIntervalMs).unref());
    }
    const timeout = Number(url.searchParams.get('timeoutSeconds') ?? 0);
    if (timeout > 0) {
      w.timers.push(
        setTimeout(() => {
          this.dropWatcher(w);
          res.end();
        }, timeout * 1000).unref(),
      );
    }
  }

  private bookmark(rt: ResourceType, annotations?: Record<string, string>): object {
    return {
      kind: rt.kind,
      apiVersion: groupVersion(rt),
      metadata: { resourceVersion: String(this.rv), ...(annotations ? { annotations } : {}) },
    };
  }

  private create(rt: ResourceType, namespace: string | undefined, url: URL, body: unknown, res: http.ServerResponse): void {
    const o = this.checkBody(rt, namespace, body);
    if (rt.createOnly) {
      sendJson(res, 201, this.tokenReview(o));
      return;
    }
    if (!o.metadata.name) {
      if (!o.metadata.generateName) throw invalid(rt, '', 'metadata.name: Required value: name or generateName is required');
      do {
        o.metadata.name = o.metadata.generateName + [...randomBytes(5)].map((b) => GENERATE_ALPHABET[b % GENERATE_ALPHABET.length]).join('');
      } while (this.objects(rt).has(keyOf(o)));
    }
    if (this.objects(rt).has(keyOf(o))) {
      throw new HttpError(409, 'AlreadyExists', `${qualifiedResource(rt)} "${o.metadata.name}" already exists`, details(rt, o.metadata.name));
    }
    delete o.metadata.resourceVersion;
    delete o.metadata.uid;
    if (url.searchParams.get('dryRun') === 'All') {
      sendJson(res, 201, withType(rt, o));
      return;
    }
    sendJson(res, 201, this.write(rt, o, undefined));
  }

  private update(
    rt: ResourceType,
    namespace: string | undefined,
    name: string,
    subresource: string | undefined,
    url: URL,
    body: unknown,
    res: http.ServerResponse,
  ): void {
    const o = this.checkBody(rt, namespace, body);
    if (o.metadata.name !== name) throw new HttpError(400, 'BadRequest', 'the name of the object does not match the name on the URL');
    const existing = this.objects(rt).get(keyOf(o));
    if (!existing) throw notFound(rt, name);
    sendJson(res, 200, this.replace(rt, existing, o, subresource, url));
  }

  /** Shared by PUT and PATCH: optimistic concurrency, status subresource rules, then write. */
  private replace(rt: ResourceType, existing: Obj, next: Obj, subresource: string | undefined, url: URL): Obj {
    const want = next.metadata.resourceVersion;
    if (want && want !== existing.metadata.resourceVersion) {
      throw new HttpError(
        409,
        'Conflict',
        `Operation cannot be fulfilled on ${qualifiedResource(rt)} "${existing.metadata.name}": the object has been modified; please apply your changes to the latest version and try again`,
        details(rt, existing.metadata.name!),
      );
    }
    let o: Obj;
    if (subresource === 'status') {
      o = { ...clone(existing), status: next.status };
    } else {
      o = next;
      if (rt.status) {
        if (existing.status === undefined) delete o.status;
        else o.status = clone(existing.status);
      }
    }
    if (url.searchParams.get('dryRun') === 'All') return withType(rt, o);
    return this.write(rt, o, existing);
  }

  private async patch(
    rt: ResourceType,
    namespace: string | undefined,
    name: string,
    subresource: string | undefined,
    url: URL,
    req: http.IncomingMessage,
    res: http.ServerResponse,
  ): Promise<void> {
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim();
    const text = await readText(req);
    const key = `${namespace ?? ''}/${name}`;
    const existing = this.objects(rt).get(key);
    let patch: unknown;
    try {
      patch = type === 'application/apply-patch+yaml' ? parseYaml(text) : JSON.parse(text);
    } catch (err) {
      throw new HttpError(400, 'BadRequest', `error decoding patch: ${(err as Error).message}`);
    }
    if (type === 'application/apply-patch+yaml') {
      if (!url.searchParams.get('fieldManager')) throw new HttpError(400, 'BadRequest', 'PATCH apply requires fieldManager to be set');
      if (!existing) {
        const o = this.checkBody(rt, namespace, patch);
        o.metadata.name = name;
        sendJson(res, 201, this.write(rt, o, undefined));
        return;
      }
    }
    if (!existing) throw notFound(rt, name);
    let next: unknown;
    try {
      if (type === 'application/json-patch+json') next = jsonPatch(withType(rt, existing), patch);
      else if (['application/merge-patch+json', 'application/strategic-merge-patch+json', 'application/apply-patch+yaml'].includes(type)) {
        next = mergePatch(withType(rt, existing), patch);
      } else {
        throw new HttpError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml`);
      }
    } catch (err) {
      if (err instanceof PatchError) throw new HttpError(err.code, err.code === 400 ? 'BadRequest' : 'Invalid', err.message);
      throw err;
    }
    const o = this.checkBody(rt, namespace, next);
    // The patched object keeps the stored resourceVersion unless the patch sets one: then it is a precondition.
    if (o.metadata.name !== name) throw new HttpError(400, 'BadRequest', 'a patch may not change metadata.name');
    sendJson(res, 200, this.replace(rt, existing, o, subresource, url));
  }

  private deleteItem(rt: ResourceType, namespace: string | undefined, name: string, url: URL, body: unknown, res: http.ServerResponse): void {
    const key = `${namespace ?? ''}/${name}`;
    const existing = this.objects(rt).get(key);
    if (!existing) throw notFound(rt, name);
    const pre = (body as { preconditions?: { uid?: string; resourceVersion?: string } } | undefined)?.preconditions;
    if ((pre?.uid && pre.uid !== existing.metadata.uid) || (pre?.resourceVersion && pre.resourceVersion !== existing.metadata.resourceVersion)) {
      throw new HttpError(409, 'Conflict', `Operation cannot be fulfilled on ${qualifiedResource(rt)} "${name}": the precondition does not match`, details(rt, name));
    }
    if (url.searchParams.get('dryRun') === 'All') {
      sendJson(res, 200, withType(rt, existing));
      return;
    }
    sendJson(res, 200, this.delete(rt, key));
  }

  /** The body of a create/update: an object of this type in this namespace, with kind/apiVersion defaulted from the URL. */
  private checkBody(rt: ResourceType, namespace: string | undefined, body: unknown): Obj {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      throw new HttpError(400, 'BadRequest', 'the body of the request must be a JSON object');
    }
    const o = clone(body) as Obj;
    if (o.apiVersion !== undefined && o.apiVersion !== groupVersion(rt)) {
      throw new HttpError(400, 'BadRequest', `the API version in the data (${String(o.apiVersion)}) does not match the expected API version (${groupVersion(rt)})`);
    }
    if (o.kind !== undefined && o.kind !== rt.kind) {
      throw new HttpError(400, 'BadRequest', `the kind in the data (${String(o.kind)}) does not match the expected kind (${rt.kind})`);
    }
    o.metadata = (typeof o.metadata === 'object' && o.metadata !== null ? o.metadata : {}) as Meta;
    if (rt.namespaced) {
      if (o.metadata.namespace !== undefined && o.metadata.namespace !== namespace) {
        throw new HttpError(400, 'BadRequest', 'the namespace of the provided object does not match the namespace sent on the request');
      }
      if (namespace !== undefined) o.metadata.namespace = namespace;
    }
    return o;
  }

  private tokenReview(review: Obj): object {
    const spec = (review.spec ?? {}) as { token?: string; audiences?: string[] };
    const out = { kind: 'TokenReview', apiVersion: 'authentication.k8s.io/v1', metadata: { creationTimestamp: null }, spec };
    const info = spec.token ? this.tokens.get(spec.token) : undefined;
    // Like the real server: an unauthenticated review omits `authenticated` and names the reason in `error`.
    if (!info) return { ...out, status: { user: {}, error: '[invalid bearer token, token lookup failed]' } };
    if (info.expiresAt !== undefined && info.expiresAt <= Date.now()) {
      return { ...out, status: { user: {}, error: '[invalid bearer token, service account token has expired]' } };
    }
    const wanted = spec.audiences?.length ? spec.audiences : [FAKE_API_AUDIENCE];
    const audiences = wanted.filter((a) => info.audiences.includes(a));
    if (audiences.length === 0) {
      return {
        ...out,
        status: { user: {}, error: `[invalid bearer token, token audiences ${JSON.stringify(info.audiences)} is invalid for the target audiences ${JSON.stringify(wanted)}]` },
      };
    }
    const sa = /^system:serviceaccount:([^:]+):([^:]+)$/.exec(info.username);
    const groups = info.groups ?? (sa ? ['system:serviceaccounts', `system:serviceaccounts:${sa[1]}`, 'system:authenticated'] : ['system:authenticated']);
    const extra: Record<string, string[]> = {};
    if (info.pod) {
      extra['authentication.kubernetes.io/pod-name'] = [info.pod.name];
      extra['authentication.kubernetes.io/pod-uid'] = [info.pod.uid];
    }
    if (info.node) extra['authentication.kubernetes.io/node-name'] = [info.node];
    const user = { username: info.username, ...(info.uid ? { uid: info.uid } : {}), groups, ...(Object.keys(extra).length ? { extra } : {}) };
    return { ...out, status: { authenticated: true, user, audiences } };
  }
}

// ---- helpers ----

function keyOf(o: Obj): string {
  return `${o.metadata.namespace ?? ''}/${o.metadata.name}`;
}

function withType(rt: ResourceType, o: Obj): Obj {
  return { apiVersion: groupVersion(rt), kind: rt.kind, ...clone(o) };
}

/** The real server omits kind/apiVersion on items of built-in lists; custom resources keep them. */
function listItem(rt: ResourceType, o: Obj): Obj {
  const c = clone(o) as Partial<Obj>;
  if (rt.builtin) {
    delete c.kind;
    delete c.apiVersion;
    return c as Obj;
  }
  return withType(rt, o);
}

function isTrue(v: string | null): boolean {
  return v === 'true' || v === '1';
}

function verbOf(method: string, item: boolean, watch: boolean): RecordedRequest['verb'] | undefined {
  switch (method) {
    case 'GET':
      return watch ? 'watch' : item ? 'get' : 'list';
    case 'POST':
      return item ? undefined : 'create';
    case 'PUT':
      return item ? 'update' : undefined;
    case 'PATCH':
      return item ? 'patch' : undefined;
    case 'DELETE':
      return item ? 'delete' : undefined;
    default:
      return undefined;
  }
}

function details(rt: ResourceType, name: string): Record<string, unknown> {
  return { name, ...(rt.group ? { group: rt.group } : {}), kind: rt.resource };
}

function statusObject(code: number, reason: string, message: string, det?: Record<string, unknown>): object {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, ...(det ? { details: det } : {}), code };
}

function notFound(rt: ResourceType, name: string): HttpError {
  return new HttpError(404, 'NotFound', `${qualifiedResource(rt)} "${name}" not found`, details(rt, name));
}

function invalid(rt: ResourceType, name: string, message: string): HttpError {
  return new HttpError(422, 'Invalid', `${rt.kind} "${name}" is invalid: ${message}`, details(rt, name));
}

function unauthorized(): HttpError {
  return new HttpError(401, 'Unauthorized', 'Unauthorized');
}

function sendJson(res: http.ServerResponse, code: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function sendText(res: http.ServerResponse, code: number, body: string): void {
  res.writeHead(code, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

async function readText(req: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > BODY_LIMIT) throw new HttpError(413, 'RequestEntityTooLarge', 'the request body is too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readJson(req: http.IncomingMessage, optional = false): Promise<unknown> {
  const text = await readText(req);
  if (!text.trim()) {
    if (optional) return undefined;
    throw new HttpError(400, 'BadRequest', 'the request body is empty');
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, 'BadRequest', `couldn't get version/kind; json parse error: ${(err as Error).message}`);
  }
}

/** Discovery documents (/api, /apis, /api/v1, /apis/G, /apis/G/V), enough for kubectl and KubernetesObjectApi. */
function discovery(pathname: string, serverUrl: string): object | undefined {
  const p = pathname.replace(/\/+$/, '');
  const groups = new Map<string, string[]>();
  for (const rt of RESOURCES) if (rt.group) groups.set(rt.group, [...new Set([...(groups.get(rt.group) ?? []), rt.version])]);
  const groupDoc = (name: string) => {
    const versions = groups.get(name)!.map((v) => ({ groupVersion: `${name}/${v}`, version: v }));
    return { name, versions, preferredVersion: versions[0] };
  };
  if (p === '/api') {
    return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: new URL(serverUrl).host }] };
  }
  if (p === '/apis') return { kind: 'APIGroupList', apiVersion: 'v1', groups: [...groups.keys()].map(groupDoc) };
  const g = /^\/apis\/([^/]+)$/.exec(p);
  if (g && groups.has(g[1]!)) return { kind: 'APIGroup', apiVersion: 'v1', ...groupDoc(g[1]!) };
  const gv = /^\/api\/(v1)$/.exec(p) ?? /^\/apis\/([^/]+\/[^/]+)$/.exec(p);
  if (!gv) return undefined;
  const resources = RESOURCES.filter((rt) => groupVersion(rt) === gv[1]);
  if (!resources.length) return undefined;
  return {
    kind: 'APIResourceList',
    apiVersion: 'v1',
    groupVersion: gv[1],
    resources: resources.flatMap((rt) => {
      const verbs = rt.createOnly ? ['create'] : ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'];
      const main = { name: rt.resource, singularName: rt.singular, namespaced: rt.namespaced, kind: rt.kind, verbs, ...(rt.shortNames ? { shortNames: rt.shortNames } : {}) };
      return rt.status
        ? [main, { name: `${rt.resource}/status`, singularName: '', namespaced: rt.namespaced, kind: rt.kind, verbs: ['get', 'patch', 'update'] }]
        : [main];
    }),
  };
}
