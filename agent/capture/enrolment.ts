// Keeps this node's meshed pods enrolled: capture rules plus the agent's listeners in each pod's netns, and in eBPF
// mode the pod's sk_lookup program (sk-lookup.ts) for inbound and its netns registered with the outbound programs
// (connect.ts). Driven by state changes and CNI events; one work loop
// at a time, so a pod is never enrolled and unenrolled at once.
import type { Logger } from 'pino';
import { TrellisError } from '../errors.js';
import type { MeshState } from '../state/store.js';
import type { Workload } from '../state/workload.js';
import type { Metrics } from '../telemetry/metrics.js';
import { netnsId } from './netns.js';
import { captureRuleset, removalRuleset } from './rules.js';
import type { Registered } from './connect.js';
import type { Steered } from './sk-lookup.js';

export interface Enrolled {
  close(): void;
  /** The fd of the pod's inbound plaintext listener (15006) on the main thread: eBPF mode hands connections to it. */
  inboundListenerFd?(): number;
}

export interface EnrolmentInputs {
  node: string;
  probeSources: readonly string[];
  /** Opens the pod's listeners (a PodProxy in the agent). */
  openListeners: (pod: Workload) => Promise<Enrolled>;
  /**
   * Prepares the pod's netns before its listeners open (the kernel settings a hand-over to the next agent needs);
   * must not throw.
   */
  tuneNetns?: (netnsPath: string) => void;
  /** Applies an nft ruleset inside a netns. */
  applyRules: (netnsPath: string, ruleset: string) => Promise<unknown>;
  /**
   * eBPF capture mode: links the pod's sk_lookup program, which hands its inbound connections to the listener whose
   * fd is given, with no NAT; the pod's rules then carry a guard in place of the inbound redirect (rules.ts). Absent:
   * inbound is nft's redirect.
   */
  steerInbound?: (pod: Workload, listenerFd: number) => Steered;
  /**
   * eBPF capture mode: registers the pod's netns with the outbound connect4/6 programs, which send its connects to
   * its outbound listener with no NAT; the pod's rules then carry an outbound guard in place of the redirect.
   * Absent: outbound is nft's redirect.
   */
  steerOutbound?: (pod: Workload) => Registered;
  /**
   * Policy routing for connections to the app that keep the caller's address (capture/routing.ts): installed with
   * the rules when given, always removed with them.
   */
  sourceRouting?: { add(netnsPath: string, podIp: string): Promise<void>; remove(netnsPath: string): Promise<void> };
  /**
   * Cluster mode: the netns of a running pod that has an IP but no netns path (pods that were running before the
   * agent, and pods whose annotation flips later). Without it such pods wait for a netns path.
   */
  findNetns?: (ip: string) => Promise<string | undefined>;
  metrics: Metrics;
  logger: Logger;
}

/** Where the CNI plugin saw a pod's sandbox; fresher than the state, which learns the pod's IP only later. */
export interface Sandbox {
  containerId?: string;
  netnsPath?: string;
}

interface Entry {
  pod: Workload;
  listeners: Enrolled;
  /** eBPF mode: the pod's sk_lookup program. */
  steered?: Steered;
  /** eBPF mode: the pod's netns registered with the outbound programs. */
  registered?: Registered;
}

// Listeners of a pod whose reopen failed: the rules stay (traffic refused), the next drift pass tries again.
const NO_LISTENERS: Enrolled = { close: () => undefined };
const REOPEN_ATTEMPTS = 5;
const REOPEN_BACKOFF_MS = 50;

export class Enrolment {
  private readonly enrolled = new Map<string, Entry>();
  private latest: MeshState | undefined;
  private running: Promise<void> | undefined;
  private readonly queue: (() => Promise<void>)[] = [];
  /** reconcile() callers, told once a state at least as new as theirs has been applied. */
  private waiting: { resolve: () => void; reject: (err: unknown) => void }[] = [];
  private firstPassDone = false;
  private closed = false;
  private readonly failures = new Map<string, string>();
  /** CNI ADDs by pod key: the netns and IP of the sandbox, until its DEL or the pod leaves the state. */
  private readonly sandboxes = new Map<string, { ip: string; netnsPath: string; containerId?: string }>();
  /** Pods whose sandbox was deleted (CNI DEL), by key -> IP: not to be found again from /proc while it lingers. */
  private readonly deleted = new Map<string, string>();
  /** Pods a /proc lookup did not find, so the warning is logged once per pod and IP. */
  private readonly unfound = new Map<string, string>();

  constructor(private readonly inputs: EnrolmentInputs) {}

  /** The pod's ruleset: inbound redirected by nft, or (eBPF mode) guarded while the sk_lookup program steers it. */
  private ruleset(): string {
    return captureRuleset({
      probeSources: this.inputs.probeSources,
      inbound: this.inputs.steerInbound ? 'sk_lookup' : 'nft',
      outbound: this.inputs.steerOutbound ? 'connect' : 'nft',
    });
  }

  /** Asks for the enrolment to match `state`; returns when this (or a later) state has been applied. */
  reconcile(state: MeshState): Promise<void> {
    this.latest = state;
    const applied = new Promise<void>((resolve, reject) => this.waiting.push({ resolve, reject }));
    // A failed pass reaches the callers through `applied`.
    this.kick().catch(() => undefined);
    return applied;
  }

  /**
   * Enrols `pod` now, with the IP and netns path it carries (from a CNI ADD); resolves once its listeners are open and
   * its capture rules are in place, rejects with the reason otherwise. Idempotent: a retried ADD of an enrolled
   * sandbox resolves at once; a new sandbox of the same pod replaces the old one.
   */
  enrolNow(pod: Workload, sandbox: Sandbox = {}): Promise<void> {
    const { ip, netnsPath } = pod;
    if (!ip || !netnsPath) {
      return Promise.reject(new TrellisError('EINVAL', `pod ${pod.key}: enrolNow needs the pod's IP and netns path`));
    }
    return this.run(async () => {
      if (this.closed) throw new TrellisError('ECLOSED', `pod ${pod.key}: the agent is stopping and enrols no more pods`);
      const entry = this.enrolled.get(pod.key);
      this.deleted.delete(pod.key);
      // The netns it is enrolled in already, under another path (/run/netns and /var/run/netns; found through /proc
      // before this ADD; an ADD handed over by the previous agent): the capture stays as it is, under the path it has.
      const same = entry !== undefined && !changed(entry.pod, { ...pod, netnsPath: entry.pod.netnsPath }) && (await sameNetns(entry.pod.netnsPath, netnsPath));
      this.sandboxes.set(pod.key, { containerId: sandbox.containerId, ip, netnsPath: same ? entry.pod.netnsPath! : netnsPath });
      if (entry && (same || !changed(entry.pod, pod))) return;
      if (entry) await this.unenrol(entry);
      const err = await this.enrol(pod);
      this.inputs.metrics.enrolledPods.set(this.enrolled.size);
      if (err) {
        this.sandboxes.delete(pod.key);
        throw err;
      }
    });
  }

  /**
   * A pod's sandbox is going away (CNI DEL): removes its capture and closes its listeners if that sandbox is the one
   * enrolled. A DEL for an older sandbox of the pod changes nothing. Resolves true if something was unenrolled.
   */
  unenrolNow(key: string, sandbox: Sandbox = {}): Promise<boolean> {
    return this.run(async () => {
      const known = this.sandboxes.get(key);
      if (known?.containerId && sandbox.containerId && known.containerId !== sandbox.containerId) return false;
      const entry = this.enrolled.get(key);
      // Enrolled from the state or /proc rather than by an ADD: only if it is the netns being deleted.
      if (!known && entry && !(await this.sameSandbox(entry.pod, sandbox.netnsPath))) return false;
      this.sandboxes.delete(key);
      const ip = known?.ip ?? entry?.pod.ip;
      if (ip) this.deleted.set(key, ip);
      if (!entry) return false;
      await this.unenrol(entry);
      this.inputs.metrics.enrolledPods.set(this.enrolled.size);
      return true;
    });
  }

  /** Pods enrolled now, by namespace/name. */
  pods(): string[] {
    return [...this.enrolled.keys()].sort();
  }

  /** The enrolled pods as enrolled (with the IP and netns path their capture lives in). */
  enrolledPods(): Workload[] {
    return [...this.enrolled.values()].map((e) => e.pod);
  }

  /**
   * Reinstalls the capture rules of an enrolled pod (drift repair). False if the pod is no longer enrolled in that
   * netns (it left in the meantime): nothing to repair.
   */
  repairRules(key: string, netnsPath: string): Promise<boolean> {
    return this.run(async () => {
      const entry = this.enrolled.get(key);
      if (!entry || entry.pod.netnsPath !== netnsPath) return false;
      await this.inputs.sourceRouting?.add(netnsPath, entry.pod.ip!);
      await this.inputs.applyRules(netnsPath, this.ruleset());
      return true;
    });
  }

  /**
   * Closes and reopens an enrolled pod's listeners (drift repair). The rules (and in eBPF mode the sk_lookup program,
   * which is given the new listener) stay in place throughout: for the moment no listener is there, the pod's
   * connections are refused, never sent around the mesh.
   */
  reopenListeners(key: string, netnsPath: string): Promise<boolean> {
    return this.run(async () => {
      const entry = this.enrolled.get(key);
      if (!entry || entry.pod.netnsPath !== netnsPath) return false;
      entry.listeners.close();
      entry.listeners = NO_LISTENERS;
      for (let attempt = 1; ; attempt++) {
        try {
          entry.listeners = await this.inputs.openListeners(entry.pod);
          if (entry.steered) entry.steered.setListener(inboundFd(entry.listeners, entry.pod));
          return true;
        } catch (err) {
          // The closed listeners free their ports on the next turn of the event loop.
          if ((err as { code?: string }).code !== 'EADDRINUSE' || attempt >= REOPEN_ATTEMPTS) throw err;
          await new Promise((resolve) => setTimeout(resolve, REOPEN_BACKOFF_MS * attempt));
        }
      }
    });
  }

  /** Why enrolment is incomplete, or undefined. */
  notReadyReason(): string | undefined {
    if (!this.firstPassDone) return 'enrolment has not run yet';
    if (this.failures.size) {
      const [pod, why] = [...this.failures.entries()][0]!;
      return `pod ${pod} could not be enrolled: ${why}`;
    }
    return undefined;
  }

  /**
   * Closes every pod's listeners, then detaches their sk_lookup programs. Capture rules stay: traffic is refused, never
   * sent around the mesh (in eBPF mode by the rules' guards once the programs are gone). The pods stay registered with
   * the outbound programs, which go as a whole when the agent closes them: until then a successor's listener (a
   * hand-over) takes their connects, or none does and they are refused.
   */
  close(): void {
    this.closed = true;
    for (const e of this.enrolled.values()) e.listeners.close();
    for (const e of this.enrolled.values()) e.steered?.close();
    this.enrolled.clear();
    this.inputs.metrics.enrolledPods.set(0);
  }

  /** Runs `op` in the work loop, after what is queued before it. */
  private run<T>(op: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push(() => op().then(resolve, reject));
      void this.kick();
    });
  }

  private kick(): Promise<void> {
    this.running ??= this.loop().finally(() => {
      this.running = undefined;
      // Work that arrived while the loop was returning.
      if (this.queue.length || (this.latest && !this.closed)) void this.kick();
    });
    return this.running;
  }

  /**
   * One CNI enrolment, then the latest state, in turn: pods started one after another (a CNI ADD every few hundred
   * milliseconds on a busy node) must not hold the state back, or an agent starting meanwhile never finishes its
   * first pass and is never ready.
   */
  private async loop(): Promise<void> {
    for (;;) {
      const op = this.queue.shift();
      if (op) await op();
      if (this.latest && !this.closed) {
        const state = this.latest;
        this.latest = undefined;
        const waiting = this.waiting;
        this.waiting = [];
        try {
          await this.apply(state);
        } catch (err) {
          for (const w of waiting) w.reject(err);
          throw err;
        }
        this.firstPassDone = true;
        for (const w of waiting) w.resolve();
      } else if (!op) {
        // Nothing left: whoever waits for a state is told (closed, or it was applied by an earlier pass).
        const waiting = this.waiting;
        this.waiting = [];
        for (const w of waiting) w.resolve();
        return;
      }
    }
  }

  private async desired(state: MeshState): Promise<Map<string, Workload>> {
    const out = new Map<string, Workload>();
    const onNode = state.workloadsOnNode(this.inputs.node);
    const present = new Set(onNode.map((w) => w.key));
    for (const seen of [this.sandboxes, this.deleted, this.unfound]) {
      for (const key of [...seen.keys()]) if (!present.has(key)) seen.delete(key);
    }
    const ipCount = new Map<string, number>();
    for (const w of onNode) if (w.ip) ipCount.set(w.ip, (ipCount.get(w.ip) ?? 0) + 1);

    for (const w of onNode) {
      if (!w.meshed) continue;
      const sandbox = this.sandboxes.get(w.key);
      if (sandbox) {
        out.set(w.key, withSandbox(w, sandbox.ip, sandbox.netnsPath));
      } else if (w.ip && w.netnsPath) {
        out.set(w.key, w);
      } else if (w.ip && this.inputs.findNetns && this.deleted.get(w.key) !== w.ip) {
        // Two pods claiming one IP (a stale pod and its successor): no way to tell whose netns it is.
        if (ipCount.get(w.ip)! > 1) continue;
        const found = await this.findNetns(w);
        if (found) out.set(w.key, withSandbox(w, w.ip, found));
      }
    }
    return out;
  }

  private async findNetns(w: Workload): Promise<string | undefined> {
    const entry = this.enrolled.get(w.key);
    // Already enrolled from this IP and the netns is still there: no scan.
    if (entry && entry.pod.ip === w.ip && entry.pod.netnsPath && (await netnsId(entry.pod.netnsPath))) return entry.pod.netnsPath;
    let found: string | undefined;
    try {
      found = await this.inputs.findNetns!(w.ip!);
    } catch (err) {
      this.inputs.logger.warn({ pod: w.key, ip: w.ip, err: (err as Error).message }, 'looking up the pod netns failed');
    }
    if (found) {
      this.unfound.delete(w.key);
    } else if (this.unfound.get(w.key) !== w.ip) {
      this.unfound.set(w.key, w.ip!);
      this.inputs.logger.warn(
        { pod: w.key, ip: w.ip },
        'no network namespace on this node owns the pod IP: not enrolled (hostNetwork pod, or /proc and /var/run/netns not visible to the agent?)',
      );
    }
    return found;
  }

  /** True if the sandbox being deleted is the one the entry's capture lives in (or cannot be told apart). */
  private async sameSandbox(pod: Workload, netnsPath: string | undefined): Promise<boolean> {
    if (!netnsPath || !pod.netnsPath || netnsPath === pod.netnsPath) return true;
    const [a, b] = await Promise.all([netnsId(netnsPath), netnsId(pod.netnsPath)]);
    // The DEL's netns is already gone: ours is the one going if it is gone too.
    if (!a) return !b;
    return a === b;
  }

  private async apply(state: MeshState): Promise<void> {
    const want = await this.desired(state);
    for (const [key, entry] of [...this.enrolled]) {
      const next = want.get(key);
      if (!next || changed(entry.pod, next)) await this.unenrol(entry);
    }
    for (const [key, pod] of want) {
      if (this.enrolled.has(key)) continue;
      const err = await this.enrol(pod);
      if (err) {
        this.failures.set(pod.key, err.message);
        this.inputs.logger.error({ pod: pod.key, err: err.message }, 'pod enrolment failed; will retry on the next change');
      }
    }
    for (const key of [...this.failures.keys()]) if (!want.has(key)) this.failures.delete(key);
    this.inputs.metrics.enrolledPods.set(this.enrolled.size);
  }

  /** Enrols one pod; returns the failure instead of throwing so each caller decides how to report it. */
  private async enrol(pod: Workload): Promise<Error | undefined> {
    const started = performance.now();
    let listeners: Enrolled | undefined;
    let steered: Steered | undefined;
    let registered: Registered | undefined;
    try {
      this.inputs.tuneNetns?.(pod.netnsPath!);
      // Listeners first, then what sends connections to them: a redirect (or the sk_lookup program) must never point
      // at a port nobody listens on.
      listeners = await this.inputs.openListeners(pod);
      if (this.inputs.steerInbound) steered = this.inputs.steerInbound(pod, inboundFd(listeners, pod));
      if (this.inputs.steerOutbound) registered = this.inputs.steerOutbound(pod);
      await this.inputs.sourceRouting?.add(pod.netnsPath!, pod.ip!);
      await this.inputs.applyRules(pod.netnsPath!, this.ruleset());
      this.enrolled.set(pod.key, { pod, listeners, ...(steered && { steered }), ...(registered && { registered }) });
      this.failures.delete(pod.key);
      this.inputs.logger.info({ pod: pod.key, ip: pod.ip, identity: pod.identity, ms: Math.round(performance.now() - started) }, 'pod enrolled');
      return undefined;
    } catch (err) {
      registered?.close();
      steered?.close();
      listeners?.close();
      return err instanceof Error ? err : new Error(String(err));
    }
  }

  private async unenrol(entry: Entry): Promise<void> {
    const { pod } = entry;
    this.enrolled.delete(pod.key);
    try {
      // Rules first: from here the pod talks directly again; then stop accepting on our listeners.
      await this.inputs.applyRules(pod.netnsPath!, removalRuleset());
      await this.inputs.sourceRouting?.remove(pod.netnsPath!);
    } catch (err) {
      this.inputs.logger.warn({ pod: pod.key, err: (err as Error).message }, 'removing capture rules failed (netns gone?)');
    }
    // Then the BPF side (eBPF mode): the pod's connects and inbound go directly from here, as with the redirects gone.
    entry.registered?.close();
    entry.steered?.close();
    entry.listeners.close();
    this.inputs.logger.info({ pod: pod.key }, 'pod unenrolled');
  }
}

async function sameNetns(a: string | undefined, b: string): Promise<boolean> {
  if (a === b) return true;
  if (!a) return false;
  const [x, y] = await Promise.all([netnsId(a), netnsId(b)]);
  return x !== undefined && x === y;
}

function inboundFd(listeners: Enrolled, pod: Workload): number {
  const fd = listeners.inboundListenerFd?.();
  if (fd === undefined) throw new TrellisError('ENOTREADY', `pod ${pod.key}: its listeners give no inbound listener for the sk_lookup program`);
  return fd;
}

function withSandbox(w: Workload, ip: string, netnsPath: string): Workload {
  if (w.ip === ip && w.netnsPath === netnsPath) return w;
  return Object.freeze({ ...w, ip, netnsPath });
}

function changed(a: Workload, b: Workload): boolean {
  return a.ip !== b.ip || a.netnsPath !== b.netnsPath || a.identity !== b.identity;
}
