// `kube` source: client-node list/watch informers on the API server; any change becomes one full snapshot for the store.
// During an API server outage the last known state stays in force; afterwards the informers resume, or relist on 410.
import {
  CoreV1Api,
  CustomObjectsApi,
  DiscoveryV1Api,
  KubeConfig,
  ListWatch,
  Watch,
  type KubernetesListObject,
  type KubernetesObject,
} from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { Counter, Gauge } from 'prom-client';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import { TrellisError } from '../errors.js';
import type { Snapshot, SourceProblem } from './dir.js';
import { EXTENSION_KINDS, objectKey, type ExtensionKind, type KubeObject } from '../model/objects.js';
import { validateObject } from '../model/validate.js';
import { slimObject } from './kube-slim.js';
import { SnapshotPacer } from './pacer.js';

/** The typed clients a list function may use. */
export interface KubeApis {
  core: CoreV1Api;
  discovery: DiscoveryV1Api;
  custom: CustomObjectsApi;
}

type RawList = { metadata?: { resourceVersion?: string }; items: unknown[] };

export interface WatchedKind {
  kind: string;
  apiVersion: string;
  /** Cluster-wide collection path: the informer watches it; `list` must list the same collection. */
  path: string;
  list(apis: KubeApis, resourceVersion: string | undefined): Promise<RawList>;
}

/**
 * What the agent watches, one line per kind (the store must understand the kind: see validate.ts).
 * Pods are watched cluster-wide, not only this node's: a connection to a pod on another node needs that pod's
 * identity (service account) and mesh opt-in to choose HBONE or plain TCP, and EndpointSlices name remote pods.
 */
export const WATCHED_KINDS: readonly WatchedKind[] = [
  { kind: 'Namespace', apiVersion: 'v1', path: '/api/v1/namespaces', list: (a, rv) => a.core.listNamespace({ resourceVersion: rv }) },
  { kind: 'Pod', apiVersion: 'v1', path: '/api/v1/pods', list: (a, rv) => a.core.listPodForAllNamespaces({ resourceVersion: rv }) },
  { kind: 'Service', apiVersion: 'v1', path: '/api/v1/services', list: (a, rv) => a.core.listServiceForAllNamespaces({ resourceVersion: rv }) },
  {
    kind: 'EndpointSlice',
    apiVersion: 'discovery.k8s.io/v1',
    path: '/apis/discovery.k8s.io/v1/endpointslices',
    list: (a, rv) => a.discovery.listEndpointSliceForAllNamespaces({ resourceVersion: rv }),
  },
  custom('HTTPRoute', 'httproutes'),
  custom('GRPCRoute', 'grpcroutes'),
  custom('FaultInjection', 'faultinjections'),
  custom('RetryBudget', 'retrybudgets'),
  custom('EgressNetwork', 'egressnetworks'),
  custom('AuthorizationPolicy', 'authorizationpolicies'),
  custom('PeerAuthentication', 'peerauthentications'),
];

/** A custom resource (Gateway API, Trellis CRDs), listed cluster-wide at the version the agent reads. */
function custom(kind: ExtensionKind, plural: string): WatchedKind {
  const apiVersion = EXTENSION_KINDS[kind];
  const [group, version] = apiVersion.split('/') as [string, string];
  return {
    kind,
    apiVersion,
    path: `/apis/${apiVersion}/${plural}`,
    list: async (a, rv) => (await a.custom.listClusterCustomObject({ group, version, plural, resourceVersion: rv })) as RawList,
  };
}

export interface KubeSourceInputs {
  /** Path of a kubeconfig; the in-cluster config (service account token, KUBERNETES_SERVICE_HOST) when absent. */
  kubeconfig?: string;
  node: string;
  logger: Logger;
  clock?: Clock;
  /** Jitter for restart backoff; [0, 1). */
  random?: () => number;
  /** Called with every new full snapshot (the store diffs). Problems are those found since the previous snapshot. */
  onSnapshot: (snapshot: Snapshot) => void;
  /** Changes within this window go out as one snapshot. */
  debounceMs?: number;
  metrics?: {
    /** Set to configAgeSeconds() every second. */
    configAge?: Gauge<string>;
    /** Informer failures (list or watch), label `kind`. */
    watchErrors?: Counter<string>;
  };
}

const BACKOFF_MIN_MS = 200;
const BACKOFF_MAX_MS = 30_000;
/**
 * Watches ask the server to end them after 5 to 10 min (as client-go's reflectors do), so reconnects are spread
 * out; the server sends a bookmark every minute and one 2 s before that end. client-node gives up on a watch that
 * sends nothing for its inactivity timeout (30 s by default, shorter than the real server's minute between
 * bookmarks, so every quiet watch would be cut and reopened twice a minute): 90 s here, which is also how long a
 * dead connection can go unnoticed.
 */
const WATCH_TIMEOUT_MIN_S = 300;
const WATCH_INACTIVITY_MS = 90_000;

/** Exponential backoff with jitter for the n-th consecutive failure (n >= 1): 200 ms doubling to 30 s, +-25 %. */
export function backoffMs(failures: number, random: () => number): number {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.max(0, failures - 1));
  return Math.round(Math.min(BACKOFF_MAX_MS, Math.max(BACKOFF_MIN_MS, base * (0.75 + random() / 2))));
}

/** One informer and what the source knows about its kind. */
interface KindState {
  readonly spec: WatchedKind;
  readonly informer: ListWatch<KubernetesObject>;
  /** Last good (validated) version of every object, by object key. */
  readonly good: Map<string, KubeObject>;
  /** Listed at least once: the initial snapshot waits for every kind. */
  listed: boolean;
  /** The API server answered 404 for this kind: its CRD is not installed. */
  missing: boolean;
  /** When this informer last knew it was in sync (list, watch event, bookmark, watch accepted or ended by the server). */
  lastSync: number;
  /** A watch is open: the server pushes every change, so the view is current until it ends. */
  open: boolean;
  /** lastSync before the current watch request, restored if the server answers it with an ERROR event. */
  syncBeforeConnect: number;
  failures: number;
  restart: TimerHandle | undefined;
  /** Keys already warned about for an unknown apiVersion, so the warning is not repeated per event. */
  readonly warned: Set<string>;
}

interface WatchHooks {
  closed(): boolean;
  /** The informer is about to watch: its list (if any) has been applied. */
  watching(): void;
  accepted(): void;
  event(phase: string, obj: unknown): void;
  /** The watch ended: `clean` when the server closed it (its timeout), `error-event` after an ERROR event (410), `failed` otherwise. */
  ended(how: 'clean' | 'error-event' | 'failed'): void;
  /** [0, 1), for the watch timeout's jitter. */
  random(): number;
  /** Cuts an object down, in place, before the informer sees it (kube-slim.ts). */
  slim(obj: unknown): void;
}

/** client-node's Watch with bookmarks requested and the informer's progress reported to the source. */
class KindWatch extends Watch {
  private readonly hooks: WatchHooks;
  constructor(config: KubeConfig, hooks: WatchHooks) {
    super(config);
    this.hooks = hooks;
    // client-node 2.0 keeps this setting in a field its typings mark private (no option for it).
    (this as unknown as { requestTimeoutMs: number }).requestTimeoutMs = WATCH_INACTIVITY_MS;
  }

  override async watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: (phase: string, apiObj: unknown, watchObj?: unknown) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    // ListWatch does not re-check stop() after its list or reconnect delay; never open a watch once closed.
    if (this.hooks.closed()) return new AbortController();
    this.hooks.watching();
    let ended = false;
    let errored = false;
    const timeoutSeconds = WATCH_TIMEOUT_MIN_S + Math.floor(this.hooks.random() * WATCH_TIMEOUT_MIN_S);
    const controller = await super.watch(
      path,
      { ...queryParams, allowWatchBookmarks: true, timeoutSeconds },
      (phase, obj, raw) => {
        if (phase === 'ERROR') errored = true;
        else this.hooks.slim(obj);
        this.hooks.event(phase, obj);
        callback(phase, obj, raw);
      },
      (err) => {
        ended = true;
        this.hooks.ended(err ? 'failed' : errored ? 'error-event' : 'clean');
        done(err);
      },
    );
    if (!ended && !errored) this.hooks.accepted();
    return controller;
  }
}

export class KubeSource {
  private readonly inputs: KubeSourceInputs;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly logger: Logger;
  private readonly kinds: KindState[] = [];
  /** Problems found since the last snapshot. */
  private problems: SourceProblem[] = [];
  private timer: TimerHandle | undefined;
  private readonly pacer: SnapshotPacer;
  private ageTimer: TimerHandle | undefined;
  private closed = false;
  private synced = false;
  private startedAt = 0;
  private first: { resolve: () => void; reject: (err: Error) => void } | undefined;

  constructor(inputs: KubeSourceInputs) {
    this.inputs = inputs;
    this.clock = inputs.clock ?? systemClock;
    this.random = inputs.random ?? Math.random;
    this.pacer = new SnapshotPacer(inputs.debounceMs ?? 20);
    this.logger = inputs.logger.child({ source: 'kube', node: inputs.node });
  }

  /**
   * Starts every informer. Resolves once each has listed and the first snapshot was delivered; until then it keeps
   * retrying (an API server that is down at boot is waited for). Rejects with ECONFIG for an unusable kubeconfig.
   */
  async start(): Promise<void> {
    if (this.kinds.length) throw new Error('KubeSource.start() called twice');
    const config = loadKubeConfig(this.inputs.kubeconfig);
    const apis: KubeApis = {
      core: config.makeApiClient(CoreV1Api),
      discovery: config.makeApiClient(DiscoveryV1Api),
      custom: config.makeApiClient(CustomObjectsApi),
    };
    this.startedAt = this.clock.now();
    const ready = new Promise<void>((resolve, reject) => (this.first = { resolve, reject }));
    for (const spec of WATCHED_KINDS) this.kinds.push(this.makeKind(config, apis, spec));
    this.logger.info({ server: config.getCurrentCluster()?.server, kinds: WATCHED_KINDS.map((k) => k.kind) }, 'kube source: starting informers');
    for (const k of this.kinds) this.run(k);
    if (this.inputs.metrics?.configAge) this.tickAge();
    await ready;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.timer?.cancel();
    this.ageTimer?.cancel();
    for (const k of this.kinds) {
      k.restart?.cancel();
      void k.informer.stop().catch(() => undefined);
    }
    this.first?.reject(new TrellisError('ECLOSED', 'kube source closed before the first sync with the API server'));
    this.first = undefined;
  }

  /**
   * The object as the API server last sent it (status and resourceVersion included, invalid or not), for the status
   * writer, which compares what it would write with what the object holds.
   */
  cached(kind: string, namespace: string, name: string): KubernetesObject | undefined {
    return this.kinds.find((k) => k.spec.kind === kind)?.informer.get(name, namespace);
  }

  /**
   * Seconds since the source last knew it was in sync: the age of its stalest informer. An open watch is in sync
   * (the server pushes every change), and so is a kind whose CRD is not installed; the age rises from the last
   * sign of the server once a watch ends and cannot be opened again (an outage). A connection that dies silently
   * is noticed after WATCH_INACTIVITY_MS without a bookmark, and then counts from the last data it carried.
   */
  configAgeSeconds(): number {
    const now = this.clock.now();
    let oldest = now;
    for (const k of this.kinds) {
      if (k.open || k.missing) continue;
      oldest = Math.min(oldest, Number.isFinite(k.lastSync) ? k.lastSync : this.startedAt);
    }
    return Math.max(0, (now - oldest) / 1000);
  }

  private makeKind(config: KubeConfig, apis: KubeApis, spec: WatchedKind): KindState {
    let state: KindState;
    const watch = new KindWatch(config, {
      closed: () => this.closed,
      watching: () => this.guard(() => this.onWatching(state)),
      accepted: () =>
        this.guard(() => {
          state.open = true;
          this.markSync(state);
        }),
      event: (phase, obj) => this.guard(() => this.onWatchEvent(state, phase, obj)),
      ended: (how) =>
        this.guard(() => {
          if (state.open && how === 'clean') this.markSync(state);
          state.open = false;
        }),
      random: this.random,
      slim: (obj) => slimObject(spec.kind, obj),
    });
    const list = async (): Promise<KubernetesListObject<KubernetesObject>> => {
      if (state.listed) this.logger.info({ kind: spec.kind }, 'kube source: relisting (watch expired or restarted without a resourceVersion)');
      // The first list may come from the server's watch cache (resourceVersion 0); a relist must not go back in time.
      const raw = await spec.list(apis, state.listed ? undefined : '0');
      this.markSync(state);
      // Typed clients return model classes (Dates, no kind/apiVersion on items): make them plain API JSON.
      const items = (JSON.parse(JSON.stringify(raw.items)) as Record<string, unknown>[]).map((i) => {
        slimObject(spec.kind, i);
        return { ...i, apiVersion: spec.apiVersion, kind: spec.kind };
      });
      return { metadata: { resourceVersion: raw.metadata?.resourceVersion ?? '' }, items: items as KubernetesObject[] };
    };
    const informer = new ListWatch<KubernetesObject>(spec.path, watch, list, false, undefined, undefined, {
      delayFn: (ms) => new Promise<void>((resolve) => this.clock.after(ms, resolve)),
    });
    state = {
      spec,
      informer,
      good: new Map(),
      listed: false,
      missing: false,
      lastSync: -Infinity,
      open: false,
      syncBeforeConnect: -Infinity,
      failures: 0,
      restart: undefined,
      warned: new Set(),
    };
    // client-node swallows exceptions thrown by callbacks on the watch path: guard every one so none goes unheard.
    informer.on('add', (o) => this.guard(() => this.upsert(state, o)));
    informer.on('update', (o) => this.guard(() => this.upsert(state, o)));
    informer.on('delete', (o) => this.guard(() => this.remove(state, o)));
    informer.on('error', (err) => this.guard(() => this.onError(state, err)));
    return state;
  }

  /** (Re)starts an informer. ListWatch resumes from its last resourceVersion, or lists when it has none. */
  private run(k: KindState): void {
    if (this.closed) return;
    k.informer.start().catch((err: unknown) => this.guard(() => this.onError(k, err)));
  }

  private guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.logger.error({ err }, 'kube source: internal error while handling an informer callback');
    }
  }

  private markSync(k: KindState): void {
    if (k.failures > 0) {
      this.logger.info({ kind: k.spec.kind, failures: k.failures }, 'kube source: back in sync with the API server');
    }
    k.lastSync = this.clock.now();
    k.failures = 0;
  }

  private onWatching(k: KindState): void {
    k.syncBeforeConnect = k.lastSync;
    if (k.missing) {
      k.missing = false;
      this.logger.info({ kind: k.spec.kind }, `kube source: ${k.spec.kind} is served now`);
    }
    if (k.listed) return;
    k.listed = true;
    this.logger.debug({ kind: k.spec.kind, objects: k.good.size }, 'kube source: listed');
    if (!this.synced && this.kinds.every((x) => x.listed)) this.schedule();
  }

  private onWatchEvent(k: KindState, phase: string, obj: unknown): void {
    if (phase !== 'ERROR') {
      this.markSync(k);
      return;
    }
    // The server ends the watch after an ERROR; ListWatch relists on 410 and resumes otherwise.
    k.lastSync = k.syncBeforeConnect;
    const status = obj as { code?: number; reason?: string; message?: string };
    const msg = status.code === 410 ? 'kube source: watch expired (410); relisting' : 'kube source: watch ended with an error event; resuming';
    this.logger.info({ kind: k.spec.kind, code: status.code, reason: status.reason, message: status.message }, msg);
  }

  private onError(k: KindState, err: unknown): void {
    if (this.closed) return;
    const { code, message } = describeError(err);
    if (code === 404 && k.spec.path.startsWith('/apis/') && k.spec.kind in EXTENSION_KINDS) {
      return this.notInstalled(k);
    }
    k.failures++;
    const delay = backoffMs(k.failures, this.random);
    this.inputs.metrics?.watchErrors?.inc({ kind: k.spec.kind });
    // A long outage retries every 30 s per kind: warn on the first failure and every tenth, not on each retry.
    const level = k.failures === 1 || k.failures % 10 === 0 ? 'warn' : 'debug';
    this.logger[level](
      { kind: k.spec.kind, code, error: message, failures: k.failures, retryInMs: delay, configAgeSeconds: Math.round(this.configAgeSeconds()) },
      `kube source: ${k.spec.kind} list/watch failed; keeping the last known state and retrying${hint(code)}`,
    );
    k.restart?.cancel();
    k.restart = this.clock.after(delay, () => {
      k.restart = undefined;
      this.run(k);
    });
  }

  /**
   * A custom resource whose CRD is not installed (Gateway API, say) is an empty kind, not an outage: the first
   * sync goes on without it, and it is looked for again every 30 s.
   */
  private notInstalled(k: KindState): void {
    if (!k.missing) {
      k.missing = true;
      this.logger.info({ kind: k.spec.kind, path: k.spec.path }, `kube source: ${k.spec.kind} is not served by the API server (CRD not installed?); treated as empty and checked again every 30 s`);
    }
    k.lastSync = this.clock.now();
    if (k.good.size) {
      k.good.clear();
      if (this.synced) this.schedule();
    }
    if (!k.listed) {
      k.listed = true;
      if (!this.synced && this.kinds.every((x) => x.listed)) this.schedule();
    }
    k.restart?.cancel();
    k.restart = this.clock.after(BACKOFF_MAX_MS, () => {
      k.restart = undefined;
      this.run(k);
    });
  }

  private upsert(k: KindState, raw: KubernetesObject): void {
    if (this.closed) return;
    const spec = k.spec;
    const key = rawKey(spec.kind, raw);
    const apiVersion = raw.apiVersion ?? spec.apiVersion;
    if (apiVersion !== spec.apiVersion || (raw.kind ?? spec.kind) !== spec.kind) {
      // A newer version of a known kind would be read with the wrong schema: ignore it rather than guess.
      const warnKey = `${key}@${apiVersion}`;
      if (!k.warned.has(warnKey)) {
        k.warned.add(warnKey);
        this.logger.warn({ object: key, apiVersion, expected: spec.apiVersion }, 'kube source: object of an unknown apiVersion ignored');
      }
      return;
    }
    const v = validateObject({ ...raw, apiVersion: spec.apiVersion, kind: spec.kind });
    if (v.ok) {
      const id = objectKey(v.object);
      const before = k.good.get(id);
      k.good.set(id, v.object);
      // A status write (the agents' own: status-writer.ts) changes nothing the store reads from routes and policy
      // kinds; a snapshot for it would make every agent recompile once per write.
      if (before && spec.kind in EXTENSION_KINDS && sameButStatus(before, v.object)) return;
    } else {
      const problem: SourceProblem = { file: spec.path, object: key, reason: v.reason };
      this.problems.push(problem);
      this.logger.error(
        { file: problem.file, object: key, reason: v.reason, kept: k.good.has(key) ? 'last good version' : 'nothing' },
        'kube source: invalid object ignored; its last good version stays in force',
      );
    }
    this.changed();
  }

  private remove(k: KindState, raw: KubernetesObject): void {
    if (this.closed) return;
    if (k.good.delete(rawKey(k.spec.kind, raw))) this.changed();
  }

  private changed(): void {
    if (this.synced) this.schedule();
  }

  private schedule(): void {
    if (this.closed || this.timer) return;
    this.timer = this.clock.after(this.pacer.delay(this.clock.now()), () => {
      this.timer = undefined;
      this.emit();
    });
  }

  private emit(): void {
    if (this.closed) return;
    const started = this.clock.now();
    const objects: KubeObject[] = [];
    for (const k of this.kinds) for (const o of k.good.values()) objects.push(o);
    const problems = this.problems;
    this.problems = [];
    this.synced = true;
    try {
      this.inputs.onSnapshot({ objects, problems });
    } catch (err) {
      this.logger.error({ err }, 'kube source: applying a snapshot failed');
    }
    this.pacer.applied(started, this.clock.now());
    if (this.first) {
      this.logger.info({ objects: objects.length, ms: this.clock.now() - this.startedAt }, 'kube source: first sync done');
      this.first.resolve();
      this.first = undefined;
    }
  }

  private tickAge(): void {
    this.inputs.metrics?.configAge?.set(this.configAgeSeconds());
    this.ageTimer = this.clock.after(1000, () => this.tickAge());
  }
}

/** kind/namespace/name as the store keys objects (namespace defaulted like validate.ts does). */
function rawKey(kind: string, raw: KubernetesObject): string {
  const ns = raw.metadata?.namespace ?? (kind === 'Namespace' ? '' : 'default');
  return `${kind}/${ns}/${raw.metadata?.name ?? ''}`;
}

/** Equal but for status and the fields any write changes (resourceVersion, managedFields). */
function sameButStatus(a: KubeObject, b: KubeObject): boolean {
  const strip = (o: KubeObject) => JSON.stringify({ ...o, status: undefined, metadata: { ...o.metadata, resourceVersion: undefined, managedFields: undefined } });
  return strip(a) === strip(b);
}

/** The kubeconfig file, or the in-cluster config; ECONFIG with what to do when it is unusable. */
export function loadKubeConfig(file: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  const where = file ? `--kubeconfig ${file}` : 'in-cluster config';
  try {
    if (file) kc.loadFromFile(file);
    else kc.loadFromCluster();
  } catch (err) {
    throw new TrellisError('ECONFIG', `${where}: cannot load: ${(err as Error).message}; pass a readable kubeconfig file`, { cause: err });
  }
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new TrellisError('ECONFIG', `${where}: no current context with a cluster; set current-context in the kubeconfig`);
  if (!file && /undefined/.test(cluster.server)) {
    throw new TrellisError('ECONFIG', 'not running in a pod (no KUBERNETES_SERVICE_HOST/PORT): pass --kubeconfig FILE');
  }
  if (cluster.server.startsWith('http:') && !cluster.skipTLSVerify) {
    throw new TrellisError('ECONFIG', `${where}: server ${cluster.server} is plain http; use https, or set insecure-skip-tls-verify: true for this cluster (client-node refuses http otherwise)`);
  }
  return kc;
}

/** HTTP status (if any) and a one-line message from client-node's errors (ApiException, watch errors, fetch failures). */
function describeError(err: unknown): { code: number | undefined; message: string } {
  const e = err as { code?: unknown; statusCode?: unknown; message?: unknown; cause?: { code?: unknown; message?: unknown } };
  const code = typeof e?.statusCode === 'number' ? e.statusCode : typeof e?.code === 'number' ? e.code : undefined;
  let message = typeof e?.message === 'string' ? e.message.split('\n')[0]! : String(err);
  const cause = e?.cause;
  if (cause && (typeof cause.code === 'string' || typeof cause.message === 'string')) message += ` (${String(cause.code ?? cause.message)})`;
  return { code, message };
}

function hint(code: number | undefined): string {
  if (code === 401) return ': the API server refused the credentials; check the token in the kubeconfig or the agent ServiceAccount token';
  if (code === 403) return ': forbidden; the agent needs list and watch on what manifests/rbac/agent.yaml grants';
  return '';
}
