// Keeps this node's meshed pods enrolled: capture rules plus the agent's listeners in each pod's netns.
// Driven by state changes; one reconcile loop at a time, so a pod is never enrolled and unenrolled at once.
import type { Logger } from 'pino';
import type { MeshState } from '../state/store.js';
import type { Workload } from '../state/workload.js';
import type { Metrics } from '../telemetry/metrics.js';
import { captureRuleset, removalRuleset } from './rules.js';

export interface Enrolled {
  close(): void;
}

export interface EnrolmentInputs {
  node: string;
  probeSources: readonly string[];
  /** Opens the pod's listeners (a PodProxy in the agent). */
  openListeners: (pod: Workload) => Promise<Enrolled>;
  /** Applies an nft ruleset inside a netns. */
  applyRules: (netnsPath: string, ruleset: string) => Promise<unknown>;
  metrics: Metrics;
  logger: Logger;
}

interface Entry {
  pod: Workload;
  listeners: Enrolled;
}

export class Enrolment {
  private readonly enrolled = new Map<string, Entry>();
  private latest: MeshState | undefined;
  private running: Promise<void> | undefined;
  private firstPassDone = false;
  private closed = false;
  private readonly failures = new Map<string, string>();

  constructor(private readonly inputs: EnrolmentInputs) {}

  /** Asks for the enrolment to match `state`; returns when this (or a later) state has been applied. */
  reconcile(state: MeshState): Promise<void> {
    this.latest = state;
    if (!this.running) {
      this.running = this.loop().finally(() => (this.running = undefined));
    }
    return this.running;
  }

  /** Pods enrolled now, by namespace/name. */
  pods(): string[] {
    return [...this.enrolled.keys()].sort();
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

  /** Closes every pod's listeners. Capture rules stay: traffic is refused, never sent around the mesh. */
  close(): void {
    this.closed = true;
    for (const e of this.enrolled.values()) e.listeners.close();
    this.enrolled.clear();
    this.inputs.metrics.enrolledPods.set(0);
  }

  private async loop(): Promise<void> {
    while (this.latest && !this.closed) {
      const state = this.latest;
      this.latest = undefined;
      await this.apply(state);
      this.firstPassDone = true;
    }
  }

  private desired(state: MeshState): Map<string, Workload> {
    const out = new Map<string, Workload>();
    for (const w of state.workloadsOnNode(this.inputs.node)) {
      if (w.meshed && w.ip && w.netnsPath) out.set(w.key, w);
    }
    return out;
  }

  private async apply(state: MeshState): Promise<void> {
    const want = this.desired(state);
    for (const [key, entry] of [...this.enrolled]) {
      const next = want.get(key);
      if (!next || changed(entry.pod, next)) await this.unenrol(entry);
    }
    for (const [key, pod] of want) {
      if (this.enrolled.has(key)) continue;
      await this.enrol(pod);
    }
    for (const key of [...this.failures.keys()]) if (!want.has(key)) this.failures.delete(key);
    this.inputs.metrics.enrolledPods.set(this.enrolled.size);
  }

  private async enrol(pod: Workload): Promise<void> {
    const started = performance.now();
    let listeners: Enrolled | undefined;
    try {
      // Listeners first, then rules: a redirect must never point at a port nobody listens on.
      listeners = await this.inputs.openListeners(pod);
      await this.inputs.applyRules(pod.netnsPath!, captureRuleset({ probeSources: this.inputs.probeSources }));
      this.enrolled.set(pod.key, { pod, listeners });
      this.failures.delete(pod.key);
      this.inputs.logger.info({ pod: pod.key, ip: pod.ip, identity: pod.identity, ms: Math.round(performance.now() - started) }, 'pod enrolled');
    } catch (err) {
      listeners?.close();
      this.failures.set(pod.key, (err as Error).message);
      this.inputs.logger.error({ pod: pod.key, err: (err as Error).message }, 'pod enrolment failed; will retry on the next change');
    }
  }

  private async unenrol(entry: Entry): Promise<void> {
    const { pod } = entry;
    this.enrolled.delete(pod.key);
    try {
      // Rules first: from here the pod talks directly again; then stop accepting on our listeners.
      await this.inputs.applyRules(pod.netnsPath!, removalRuleset());
    } catch (err) {
      this.inputs.logger.warn({ pod: pod.key, err: (err as Error).message }, 'removing capture rules failed (netns gone?)');
    }
    entry.listeners.close();
    this.inputs.logger.info({ pod: pod.key }, 'pod unenrolled');
  }
}

function changed(a: Workload, b: Workload): boolean {
  return a.ip !== b.ip || a.netnsPath !== b.netnsPath || a.identity !== b.identity;
}
