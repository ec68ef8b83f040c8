// Source edge, the way back: what the store decided about routes and Trellis policy objects (Accepted, and for
// routes ResolvedRefs, with the reason naming the field) is written to their status subresource (kube source only).
//
// Every agent compiles the same objects into the same statuses, and every agent may write them: no leader election
// (no Lease, no extra RBAC), and no single agent whose loss stops status. What keeps N agents from N writes:
// - a write goes out only when the object holds something else than what this agent computed;
// - it goes out after a random delay (spreadMs): the first agent to wake writes, the others see that write through
//   their informers before they wake and find nothing left to do;
// - it is preconditioned on the resourceVersion it was compared with: an agent that raced gets 409 Conflict, reads
//   the object once more, and writes only if it still differs;
// - writes are rate limited and bounded in flight; a failed one is retried with backoff, and every snapshot
//   compares again. Counted in trellis_status_writes_total{kind,outcome}, one count per PATCH sent.
import { CustomObjectsApi, PatchStrategy, setHeaderOptions, type KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { Counter, type Registry } from 'prom-client';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import { DEFAULT_CONTROLLER_NAME } from '../model/routes/index.js';
import type { ConditionStatus, RouteParentStatus } from '../model/routes/types.js';
import type { MeshState } from '../state/store.js';
import { WATCHED_KINDS, loadKubeConfig } from './kube.js';
import { EXTENSION_KINDS, type ExtensionKind } from '../model/objects.js';

export interface ObjectRef {
  readonly kind: ExtensionKind;
  readonly namespace: string;
  readonly name: string;
}

/** A metav1.Condition before it is written: lastTransitionTime is stamped against what the object holds. */
export interface ConditionValue {
  readonly type: string;
  readonly status: ConditionStatus;
  readonly reason: string;
  readonly message: string;
  readonly observedGeneration?: number;
}

/** What one object's status should hold, as far as Trellis owns it. */
export type DesiredStatus =
  /** HTTPRoute/GRPCRoute: our entries of status.parents (other controllers' entries are kept). */
  | { readonly shape: 'parents'; readonly ref: ObjectRef; readonly parents: readonly RouteParentStatus[] }
  /**
   * Trellis CRDs: the Accepted entry of status.conditions (other types are kept). `generationFromObject`: the
   * compiled result does not carry the generation (RetryBudget); the object's own is used.
   */
  | { readonly shape: 'conditions'; readonly ref: ObjectRef; readonly accepted: ConditionValue; readonly generationFromObject?: boolean };

/** Gateway API caps status.parents at 32 entries and messages at 32768 characters (so do the Trellis CRDs). */
const MAX_PARENTS = 32;
const MAX_MESSAGE = 32_768;
const RETRY_MIN_MS = 1_000;
const RETRY_MAX_MS = 300_000;

export const STATUS_WRITES_METRIC = 'trellis_status_writes_total';

export type WriteOutcome = 'written' | 'conflict' | 'not_found' | 'error';

function objectId(ref: ObjectRef): string {
  return `${ref.kind}/${ref.namespace}/${ref.name}`;
}

function clip(message: string): string {
  return message.length > MAX_MESSAGE ? `${message.slice(0, MAX_MESSAGE - 3)}...` : message;
}

/** Every status the state calls for, by kind/namespace/name. */
export function desiredStatuses(state: MeshState): Map<string, DesiredStatus> {
  const out = new Map<string, DesiredStatus>();
  const put = (d: DesiredStatus) => out.set(objectId(d.ref), d);
  for (const s of state.traffic.routes.statuses) {
    const parents = s.parents.map((p) => ({ ...p, conditions: p.conditions.map((c) => ({ ...c, message: clip(c.message) })) }));
    put({ shape: 'parents', ref: { kind: s.kind, namespace: s.namespace, name: s.name }, parents });
  }
  for (const f of state.traffic.routes.faults) {
    put({ shape: 'conditions', ref: { kind: 'FaultInjection', namespace: f.namespace, name: f.name }, accepted: { ...f.condition, message: clip(f.condition.message) } });
  }
  for (const p of state.policies.statuses) {
    const accepted: ConditionValue = {
      type: 'Accepted',
      status: p.accepted ? 'True' : 'False',
      reason: p.reason,
      message: clip(p.message),
      ...(p.generation !== undefined ? { observedGeneration: p.generation } : {}),
    };
    put({ shape: 'conditions', ref: { kind: p.kind, namespace: p.namespace, name: p.name }, accepted });
  }
  for (const d of retryBudgetStatuses(state)) put(d);
  for (const d of egressNetworkStatuses(state)) put(d);
  return out;
}

/**
 * EgressNetwork outcomes: every object the table holds (valid, its last valid version, or its fail-closed stand-in)
 * and one error line per problem ("EgressNetwork ns/name: field: message. What stays in force.").
 */
function egressNetworkStatuses(state: MeshState): DesiredStatus[] {
  const lines = new Map<string, string[]>();
  for (const e of state.traffic.egressErrors) {
    const m = /^EgressNetwork ([^/\s]+\/[^:\s]+): ([\s\S]*)$/.exec(e);
    if (!m) continue;
    lines.set(m[1]!, [...(lines.get(m[1]!) ?? []), m[2]!]);
  }
  const out: DesiredStatus[] = [];
  for (const list of state.traffic.egress.byNamespace.values()) {
    for (const en of list) {
      const problems = lines.get(en.key) ?? [];
      const ok = problems.length === 0;
      const accepted: ConditionValue = {
        type: 'Accepted',
        status: ok ? 'True' : 'False',
        reason: ok ? 'Accepted' : 'Invalid',
        message: clip(ok ? `valid; in force (${en.trafficPolicy})` : problems.join('; ')),
      };
      out.push({ shape: 'conditions', ref: { kind: 'EgressNetwork', namespace: en.namespace, name: en.name }, accepted, generationFromObject: true });
    }
  }
  return out;
}

/**
 * RetryBudget outcomes from what the state holds: the budgets in force (by source) and one error line per problem
 * ("RetryBudget ns/name: field: message"). A budget in force may still carry a line (its Service does not exist yet).
 */
function retryBudgetStatuses(state: MeshState): DesiredStatus[] {
  const inForce = new Set([...state.traffic.retryBudgets.values()].map((b) => b.source));
  const lines = new Map<string, string[]>();
  for (const e of state.traffic.budgetErrors) {
    const m = /^RetryBudget ([^/\s]+\/[^:\s]+): ([\s\S]*)$/.exec(e);
    if (!m) continue;
    lines.set(m[1]!, [...(lines.get(m[1]!) ?? []), m[2]!]);
  }
  const out: DesiredStatus[] = [];
  for (const source of new Set([...inForce, ...lines.keys()])) {
    const [namespace, name] = source.split('/') as [string, string];
    const problems = lines.get(source) ?? [];
    const ok = inForce.has(source);
    const reason = ok ? 'Accepted' : problems.some((p) => p.includes('already has RetryBudget')) ? 'Conflicted' : 'Invalid';
    const message = ok ? (problems.length ? `valid; ${problems.join('; ')}` : 'valid; in force') : problems.join('; ');
    const accepted: ConditionValue = { type: 'Accepted', status: ok ? 'True' : 'False', reason, message: clip(message) };
    out.push({ shape: 'conditions', ref: { kind: 'RetryBudget', namespace, name }, accepted, generationFromObject: true });
  }
  return out;
}

type StoredCondition = Partial<ConditionValue> & { lastTransitionTime?: unknown };
type StoredParent = { parentRef?: unknown; controllerName?: unknown; conditions?: unknown };

/** JSON with object keys sorted: the API server does not keep the key order it was sent. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonical(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

function conditionsOf(v: unknown): StoredCondition[] {
  return Array.isArray(v) ? (v.filter((c) => c && typeof c === 'object') as StoredCondition[]) : [];
}

function sameCondition(held: StoredCondition | undefined, want: ConditionValue): boolean {
  return (
    !!held &&
    held.status === want.status &&
    held.reason === want.reason &&
    held.message === want.message &&
    held.observedGeneration === want.observedGeneration &&
    typeof held.lastTransitionTime === 'string'
  );
}

function sameConditions(held: StoredCondition[], want: readonly ConditionValue[]): boolean {
  return held.length === want.length && want.every((w) => sameCondition(held.find((h) => h.type === w.type), w));
}

/** metav1.Time: RFC 3339 in whole seconds. */
function rfc3339(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** The condition as written: its lastTransitionTime changes only when its status does (Kubernetes conventions). */
function stamp(want: ConditionValue, held: StoredCondition[], now: number): ConditionValue & { lastTransitionTime: string } {
  const old = held.find((h) => h.type === want.type);
  const since = old && old.status === want.status && typeof old.lastTransitionTime === 'string' ? old.lastTransitionTime : rfc3339(now);
  return { ...want, lastTransitionTime: since };
}

/**
 * The status fields to write (the whole `parents` or `conditions` list, as a merge patch replaces lists), or
 * undefined when the object already holds what Trellis would write.
 */
export function nextStatus(want: DesiredStatus, current: KubernetesObject, now: number, controllerName = DEFAULT_CONTROLLER_NAME): Record<string, unknown> | undefined {
  const status = ((current as { status?: unknown }).status ?? {}) as { parents?: unknown; conditions?: unknown };
  if (want.shape === 'parents') {
    const held = (Array.isArray(status.parents) ? status.parents : []).filter((p): p is StoredParent => !!p && typeof p === 'object');
    const others = held.filter((p) => p.controllerName !== controllerName);
    const ours = held.filter((p) => p.controllerName === controllerName);
    const wanted = want.parents.slice(0, Math.max(0, MAX_PARENTS - others.length));
    const same =
      ours.length === wanted.length &&
      wanted.every((w, i) => canonical(ours[i]!.parentRef) === canonical(w.parentRef) && sameConditions(conditionsOf(ours[i]!.conditions), w.conditions));
    if (same) return undefined;
    const parents = wanted.map((w) => {
      const old = ours.find((o) => canonical(o.parentRef) === canonical(w.parentRef));
      const oldConditions = conditionsOf(old?.conditions);
      return { parentRef: w.parentRef, controllerName: w.controllerName, conditions: w.conditions.map((c) => stamp(c, oldConditions, now)) };
    });
    return { parents: [...others, ...parents] };
  }
  const generation = (current.metadata as { generation?: unknown } | undefined)?.generation;
  const accepted: ConditionValue =
    want.generationFromObject && typeof generation === 'number' ? { ...want.accepted, observedGeneration: generation } : want.accepted;
  const held = conditionsOf(status.conditions);
  if (sameCondition(held.find((c) => c.type === accepted.type), accepted)) return undefined;
  return { conditions: [...held.filter((c) => c.type !== accepted.type), stamp(accepted, held, now)] };
}

export interface StatusWriterInputs {
  /** Path of a kubeconfig; the in-cluster config when absent (as for the kube source). */
  kubeconfig?: string;
  /** The object as the source last saw it (informer cache): compared with, and its resourceVersion preconditioned on. */
  current: (ref: ObjectRef) => KubernetesObject | undefined;
  logger: Logger;
  clock?: Clock;
  /** [0, 1): the spread delay and retry jitter. */
  random?: () => number;
  /** The agent's registry: trellis_status_writes_total is registered on it. */
  registry?: Registry;
  /** Writes wait a random delay up to this after the snapshot that calls for them (see the header). Default 2000. */
  spreadMs?: number;
  /** Writes in flight at most. Default 4. */
  concurrency?: number;
  /** Writes per second at most, with bursts up to `burst`. Default 10/s, burst 20. */
  ratePerSecond?: number;
  burst?: number;
  /** The controllerName of Trellis's route parent statuses. */
  controllerName?: string;
}

interface Written {
  /** resourceVersions known to be older than `object`: while the informer still holds one of them, use `object`. */
  readonly older: readonly string[];
  readonly object: KubernetesObject;
}

export class StatusWriter {
  private readonly inputs: StatusWriterInputs;
  private readonly api: CustomObjectsApi;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly logger: Logger;
  private readonly writes: Counter<string> | undefined;
  private readonly controllerName: string;
  private readonly concurrency: number;
  private readonly rate: number;
  private readonly burst: number;
  private desired = new Map<string, DesiredStatus>();
  /** Objects that may need a write, in the order they were found. */
  private readonly pending = new Set<string>();
  private readonly inFlight = new Set<string>();
  private readonly retries = new Map<string, { failures: number; timer: TimerHandle | undefined }>();
  /** Our own writes, until the informer has caught up with them. */
  private readonly written = new Map<string, Written>();
  private tokens: number;
  private refilledAt: number;
  private wake: TimerHandle | undefined;
  private readonly warned = new Set<string>();
  private idleWaiters: (() => void)[] = [];
  private closed = false;

  constructor(inputs: StatusWriterInputs) {
    this.inputs = inputs;
    this.api = loadKubeConfig(inputs.kubeconfig).makeApiClient(CustomObjectsApi);
    this.clock = inputs.clock ?? systemClock;
    this.random = inputs.random ?? Math.random;
    this.logger = inputs.logger.child({ writer: 'status' });
    this.controllerName = inputs.controllerName ?? DEFAULT_CONTROLLER_NAME;
    this.concurrency = inputs.concurrency ?? 4;
    this.rate = inputs.ratePerSecond ?? 10;
    this.burst = inputs.burst ?? 20;
    this.tokens = this.burst;
    this.refilledAt = this.clock.now();
    const registry = inputs.registry;
    if (registry) {
      this.writes =
        (registry.getSingleMetric(STATUS_WRITES_METRIC) as Counter<string> | undefined) ??
        new Counter({
          name: STATUS_WRITES_METRIC,
          help: 'Status subresource writes (PATCH) of routes and Trellis policy objects, by kind and outcome (written, conflict, not_found, error)',
          labelNames: ['kind', 'outcome'],
          registers: [registry],
        });
    }
  }

  /** Compares every status the state calls for with what its object holds; differing ones are written soon. */
  update(state: MeshState): void {
    if (this.closed) return;
    this.desired = desiredStatuses(state);
    for (const key of this.pending) if (!this.desired.has(key)) this.pending.delete(key);
    for (const key of this.written.keys()) if (!this.desired.has(key)) this.written.delete(key);
    for (const [key, r] of this.retries) {
      if (this.desired.has(key)) continue;
      r.timer?.cancel();
      this.retries.delete(key);
    }
    for (const [key, want] of this.desired) if (this.needsWrite(key, want)) this.pending.add(key);
    if (this.pending.size && !this.wake) {
      const delay = Math.floor(this.random() * (this.inputs.spreadMs ?? 2000));
      this.wake = this.clock.after(delay, () => {
        this.wake = undefined;
        this.pump();
      });
    }
    this.checkIdle();
  }

  /** Resolves once nothing is pending or in flight (retries after failures are not waited for). For tests and shutdown. */
  idle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  close(): void {
    this.closed = true;
    this.wake?.cancel();
    for (const r of this.retries.values()) r.timer?.cancel();
    this.retries.clear();
    this.pending.clear();
    this.checkIdle();
  }

  private isIdle(): boolean {
    return this.pending.size === 0 && this.inFlight.size === 0;
  }

  private checkIdle(): void {
    if (!this.isIdle()) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /** The freshest copy of the object this agent knows: the informer's, or our own write the informer has not seen. */
  private latest(key: string, ref: ObjectRef): KubernetesObject | undefined {
    const cached = this.inputs.current(ref);
    const mine = this.written.get(key);
    if (!mine || !cached) return cached;
    if (mine.older.includes(cached.metadata?.resourceVersion ?? '')) return mine.object;
    this.written.delete(key);
    return cached;
  }

  private needsWrite(key: string, want: DesiredStatus): boolean {
    const current = this.latest(key, want.ref);
    return !!current && nextStatus(want, current, this.clock.now(), this.controllerName) !== undefined;
  }

  /** Starts writes while a slot and a token are free; waits for the next token otherwise. */
  private pump(): void {
    // Deleting from a Set while iterating it is safe: entries not yet visited are still visited.
    for (const key of this.pending) {
      if (this.closed || this.inFlight.size >= this.concurrency) break;
      if (this.inFlight.has(key)) continue; // looked at again once its write in flight ends
      const want = this.desired.get(key);
      if (!want || !this.needsWrite(key, want)) {
        this.pending.delete(key);
        continue;
      }
      const wait = this.takeToken();
      if (wait > 0) {
        this.wake ??= this.clock.after(wait, () => {
          this.wake = undefined;
          this.pump();
        });
        break;
      }
      this.pending.delete(key);
      this.inFlight.add(key);
      void this.write(key, want.ref).finally(() => {
        this.inFlight.delete(key);
        this.pump();
      });
    }
    this.checkIdle();
  }

  /** 0 when a token was taken; otherwise the milliseconds until one is there. */
  private takeToken(): number {
    const now = this.clock.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.refilledAt) / 1000) * this.rate);
    this.refilledAt = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.tokens) / this.rate) * 1000);
  }

  /** One write: on 409 Conflict the object is read once more and written again only if it still differs. */
  private async write(key: string, ref: ObjectRef): Promise<void> {
    let current = this.latest(key, ref);
    const older: string[] = [];
    for (let attempt = 0; current; attempt++) {
      const want = this.desired.get(key);
      if (!want || this.closed) return;
      const status = nextStatus(want, current, this.clock.now(), this.controllerName);
      if (!status) return this.succeeded(key);
      const resourceVersion = current.metadata?.resourceVersion;
      const cachedVersion = this.inputs.current(ref)?.metadata?.resourceVersion;
      for (const v of [resourceVersion, cachedVersion]) if (v !== undefined) older.push(v);
      let outcome: WriteOutcome;
      let failure: { code: number | undefined; message: string } | undefined;
      try {
        const object = await this.patch(ref, { metadata: { resourceVersion }, status });
        this.written.set(key, { older, object });
        outcome = 'written';
      } catch (err) {
        failure = describeError(err);
        outcome = failure.code === 409 ? 'conflict' : failure.code === 404 ? 'not_found' : 'error';
      }
      this.writes?.inc({ kind: ref.kind, outcome });
      if (outcome === 'written') {
        this.logger.debug({ object: key, status }, 'status written');
        return this.succeeded(key);
      }
      if (outcome === 'not_found') return this.succeeded(key); // deleted meanwhile: its informer drops it
      if (outcome === 'conflict' && attempt === 0) {
        try {
          current = await this.read(ref);
          continue;
        } catch (err) {
          failure = describeError(err);
          if (failure.code === 404) return this.succeeded(key);
        }
      }
      return this.failed(key, ref, failure!);
    }
  }

  private succeeded(key: string): void {
    this.retries.get(key)?.timer?.cancel();
    this.retries.delete(key);
  }

  /** Logged at debug (every agent writes: a failure here is likely another agent's success) and retried with backoff. */
  private failed(key: string, ref: ObjectRef, failure: { code: number | undefined; message: string }): void {
    const r = this.retries.get(key) ?? { failures: 0, timer: undefined };
    r.failures++;
    r.timer?.cancel();
    const base = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** (r.failures - 1));
    const delay = Math.round(base * (0.75 + this.random() / 2));
    r.timer = this.clock.after(delay, () => {
      r.timer = undefined;
      if (this.closed || !this.desired.has(key)) return;
      this.pending.add(key);
      this.pump();
    });
    this.retries.set(key, r);
    const fields = { object: key, code: failure.code, error: failure.message, failures: r.failures, retryInMs: delay };
    this.logger.debug(fields, 'status write failed; retrying later');
    // Refused writes are a deployment problem no retry fixes: say so once per kind and code.
    const once = `${ref.kind}/${failure.code}`;
    if ((failure.code === 403 || failure.code === 422) && !this.warned.has(once)) {
      this.warned.add(once);
      const hint =
        failure.code === 403
          ? `forbidden; the agent needs get and patch on ${this.resource(ref.kind).plural}/status (manifests/rbac/agent.yaml)`
          : 'the API server refused the status (is the installed CRD older than the agent? apply manifests/crds)';
      this.logger.warn(fields, `status write refused: ${hint}`);
    }
  }

  private resource(kind: ExtensionKind): { group: string; version: string; plural: string } {
    const [group, version] = EXTENSION_KINDS[kind].split('/') as [string, string];
    const plural = WATCHED_KINDS.find((k) => k.kind === kind)!.path.split('/').at(-1)!;
    return { group, version, plural };
  }

  private async patch(ref: ObjectRef, body: object): Promise<KubernetesObject> {
    const params = { ...this.resource(ref.kind), namespace: ref.namespace, name: ref.name, body };
    return (await this.api.patchNamespacedCustomObjectStatus(params, setHeaderOptions('Content-Type', PatchStrategy.MergePatch))) as KubernetesObject;
  }

  private async read(ref: ObjectRef): Promise<KubernetesObject> {
    return (await this.api.getNamespacedCustomObjectStatus({ ...this.resource(ref.kind), namespace: ref.namespace, name: ref.name })) as KubernetesObject;
  }
}

/** HTTP status (if any) and a one-line message from client-node's errors. */
function describeError(err: unknown): { code: number | undefined; message: string } {
  const e = err as { code?: unknown; statusCode?: unknown; message?: unknown };
  const code = typeof e?.code === 'number' ? e.code : typeof e?.statusCode === 'number' ? e.statusCode : undefined;
  const message = typeof e?.message === 'string' ? e.message.split('\n')[0]! : String(err);
  return { code, message };
}
