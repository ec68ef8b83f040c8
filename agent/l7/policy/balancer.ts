// L7 resilience, per backend: picks the endpoint each request (or retry) goes to.
//
// Power of two choices over a peak-EWMA latency cost, as Linkerd does (linkerd2-proxy balances with tower's
// p2c + PeakEwma, EWMA_DEFAULT_RTT 30 ms, EWMA_DECAY 10 s; tower/src/load/peak_ewma.rs, derived from Finagle's
// PeakEwma):
//   - cost = rtt estimate x (pending + 1);
//   - a sample above the estimate replaces it (peak); one below moves it by 1 - e^(-elapsed/decay);
//   - reading the cost first decays the estimate toward 0 over the time since the last update, so an endpoint
//     that stopped getting traffic becomes attractive again and is re-measured;
//   - a new endpoint starts at the default RTT, so it gets traffic without having to be measured first.
// One difference: a failure never lowers the estimate (a backend that fails fast must not look fast).
//
// Ejection follows Envoy's consecutive-5xx outlier detection (envoy outlier_detection.proto: consecutive_5xx
// default 5, base_ejection_time, max_ejection_time, max_ejection_percent): after N consecutive 5xx or connect
// failures an endpoint is left out for base x 2^level (capped), the level growing with repeated ejections and
// shrinking by one per base period spent back in service. Never more than maxEjectionFraction of the endpoints
// are ejected; if the endpoint set shrinks so that more are, all endpoints are used (Envoy's panic mode).
// Time is read from the clock when deciding, never from timers: nothing here schedules work.

import type { Clock } from '../../clock.js';
import { TrellisError } from '../../errors.js';

export const BALANCER_DEFAULTS = Object.freeze({
  defaultRttMs: 30,
  decayMs: 10_000,
  consecutiveFailures: 5,
  ejectionBaseMs: 30_000,
  ejectionMaxMs: 300_000,
  maxEjectionFraction: 0.5,
});

export type Outcome = 'ok' | '5xx' | 'connect-failure';

export interface BalancerOptions<E> {
  clock: Clock;
  /** Uniform in [0, 1); injected so tests are deterministic. */
  random: () => number;
  /** Identity of an endpoint across setEndpoints calls (e.g. "10.244.2.2:8080"). */
  key: (endpoint: E) => string;
  defaultRttMs?: number;
  decayMs?: number;
  consecutiveFailures?: number;
  ejectionBaseMs?: number;
  ejectionMaxMs?: number;
  maxEjectionFraction?: number;
}

export interface EndpointStats {
  key: string;
  rttMs: number;
  pending: number;
  consecutiveFailures: number;
  ejected: boolean;
  ejectedUntil: number;
  ejectionLevel: number;
}

class Slot<E> {
  rtt: number;
  stamp: number;
  pending = 0;
  failures = 0;
  ejectedUntil = 0; // 0: in service
  level = 0;
  returnedAt = 0;
  removed = false;
  constructor(
    public endpoint: E,
    readonly key: string,
    rtt: number,
    now: number,
  ) {
    this.rtt = rtt;
    this.stamp = now;
  }
}

/** One request in flight to one endpoint; call done() exactly once (later calls are ignored). */
export class PickedEndpoint<E> {
  private open = true;
  constructor(
    private readonly balancer: Balancer<E>,
    private readonly slot: Slot<E>,
  ) {}
  get endpoint(): E {
    return this.slot.endpoint;
  }
  done(result: { latencyMs: number; outcome: Outcome }): void {
    if (!this.open) return;
    this.open = false;
    this.balancer.complete(this.slot, result.latencyMs, result.outcome);
  }
}

export class Balancer<E> {
  /** Ejections made (monotonic; trellis_endpoint_ejections_total). */
  ejections = 0;
  /** Ejections due but not made because maxEjectionFraction was reached (monotonic). */
  ejectionsSkipped = 0;

  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly keyOf: (e: E) => string;
  private readonly defaultRtt: number;
  private readonly decay: number;
  private readonly threshold: number;
  private readonly ejectBase: number;
  private readonly ejectMax: number;
  private readonly maxEjectFraction: number;

  private slots: Slot<E>[] = [];
  private byKey = new Map<string, Slot<E>>();
  private eligible: Slot<E>[] = []; // in service; rebuilt only when the set or an ejection changes
  private ejectedCount = 0;
  private nextReturn = Infinity; // earliest ejectedUntil among ejected slots

  constructor(endpoints: readonly E[], opts: BalancerOptions<E>) {
    this.clock = opts.clock;
    this.random = opts.random;
    this.keyOf = opts.key;
    this.defaultRtt = positive('defaultRttMs', opts.defaultRttMs ?? BALANCER_DEFAULTS.defaultRttMs);
    this.decay = positive('decayMs', opts.decayMs ?? BALANCER_DEFAULTS.decayMs);
    this.threshold = opts.consecutiveFailures ?? BALANCER_DEFAULTS.consecutiveFailures;
    if (!(Number.isInteger(this.threshold) && this.threshold >= 1)) {
      throw new TrellisError('ECONFIG', `balancer: consecutiveFailures ${this.threshold} must be a whole number, 1 or more`);
    }
    this.ejectBase = positive('ejectionBaseMs', opts.ejectionBaseMs ?? BALANCER_DEFAULTS.ejectionBaseMs);
    this.ejectMax = Math.max(this.ejectBase, opts.ejectionMaxMs ?? BALANCER_DEFAULTS.ejectionMaxMs);
    this.maxEjectFraction = opts.maxEjectionFraction ?? BALANCER_DEFAULTS.maxEjectionFraction;
    if (!(this.maxEjectFraction >= 0 && this.maxEjectFraction <= 1)) {
      throw new TrellisError('ECONFIG', `balancer: maxEjectionFraction ${this.maxEjectFraction} is outside 0..1`);
    }
    this.setEndpoints(endpoints);
  }

  /** Replaces the endpoint set; endpoints whose key stays keep their latency, pending and ejection state. */
  setEndpoints(endpoints: readonly E[]): void {
    const now = this.clock.now();
    const next: Slot<E>[] = [];
    const byKey = new Map<string, Slot<E>>();
    for (const e of endpoints) {
      const key = this.keyOf(e);
      if (byKey.has(key)) continue;
      let slot = this.byKey.get(key);
      if (slot) slot.endpoint = e;
      else slot = new Slot(e, key, this.defaultRtt, now);
      byKey.set(key, slot);
      next.push(slot);
    }
    for (const [key, slot] of this.byKey) if (!byKey.has(key)) slot.removed = true;
    this.slots = next;
    this.byKey = byKey;
    this.rebuild();
  }

  get size(): number {
    return this.slots.length;
  }

  /** The endpoint for the next request, or undefined when there is none; counts it as pending until done(). */
  pick(): PickedEndpoint<E> | undefined {
    const now = this.clock.now();
    if (now >= this.nextReturn) this.returnDue(now);
    // Panic: with too many ejected (the set shrank under them) or none left, spread over all endpoints.
    const pool = this.eligible.length === 0 || this.ejectedCount > this.maxEjectable() ? this.slots : this.eligible;
    const n = pool.length;
    if (n === 0) return undefined;
    let slot: Slot<E>;
    if (n === 1) {
      slot = pool[0]!;
    } else {
      const i = Math.min(n - 1, Math.floor(this.random() * n));
      let j = Math.min(n - 2, Math.floor(this.random() * (n - 1)));
      if (j >= i) j++;
      const a = pool[i]!;
      const b = pool[j]!;
      slot = this.cost(b, now) < this.cost(a, now) ? b : a;
    }
    slot.pending++;
    return new PickedEndpoint(this, slot);
  }

  /** Per-endpoint state, for admin dumps and tests. */
  stats(): EndpointStats[] {
    const now = this.clock.now();
    if (now >= this.nextReturn) this.returnDue(now);
    return this.slots.map((s) => ({
      key: s.key,
      rttMs: this.estimate(s, now),
      pending: s.pending,
      consecutiveFailures: s.failures,
      ejected: s.ejectedUntil !== 0,
      ejectedUntil: s.ejectedUntil,
      ejectionLevel: s.level,
    }));
  }

  /** Endpoints currently ejected (a gauge). */
  get ejected(): number {
    const now = this.clock.now();
    if (now >= this.nextReturn) this.returnDue(now);
    return this.ejectedCount;
  }

  /** @internal Called by PickedEndpoint.done. */
  complete(slot: Slot<E>, latencyMs: number, outcome: Outcome): void {
    const now = this.clock.now();
    if (slot.pending > 0) slot.pending--;
    this.observe(slot, latencyMs >= 0 && Number.isFinite(latencyMs) ? latencyMs : 0, outcome === 'ok', now);
    if (outcome === 'ok') {
      slot.failures = 0;
      return;
    }
    slot.failures++;
    if (slot.removed || slot.ejectedUntil !== 0 || slot.failures < this.threshold) return;
    if (this.ejectedCount + 1 > this.maxEjectable()) {
      this.ejectionsSkipped++;
      return;
    }
    this.eject(slot, now);
  }

  private maxEjectable(): number {
    return Math.floor(this.slots.length * this.maxEjectFraction);
  }

  private eject(slot: Slot<E>, now: number): void {
    // The level drops by one per base period spent in service since the last return, as Envoy's multiplier does.
    if (slot.level > 0) slot.level = Math.max(0, slot.level - Math.floor((now - slot.returnedAt) / this.ejectBase));
    const duration = Math.min(this.ejectMax, this.ejectBase * 2 ** Math.min(slot.level, 30));
    slot.level++;
    slot.ejectedUntil = now + duration;
    slot.failures = 0;
    this.ejections++;
    this.rebuild();
  }

  private returnDue(now: number): void {
    for (const s of this.slots) {
      if (s.ejectedUntil !== 0 && s.ejectedUntil <= now) {
        s.returnedAt = s.ejectedUntil;
        s.ejectedUntil = 0;
        s.failures = 0;
      }
    }
    this.rebuild();
  }

  private rebuild(): void {
    const eligible: Slot<E>[] = [];
    let ejected = 0;
    let nextReturn = Infinity;
    for (const s of this.slots) {
      if (s.ejectedUntil === 0) {
        eligible.push(s);
      } else {
        ejected++;
        if (s.ejectedUntil < nextReturn) nextReturn = s.ejectedUntil;
      }
    }
    this.eligible = eligible;
    this.ejectedCount = ejected;
    this.nextReturn = nextReturn;
  }

  private cost(s: Slot<E>, now: number): number {
    return this.estimate(s, now) * (s.pending + 1);
  }

  // Decays the estimate toward 0 for the time since it was last touched (Finagle/tower read it the same way).
  private estimate(s: Slot<E>, now: number): number {
    const elapsed = now - s.stamp;
    if (elapsed > 0) {
      s.rtt *= Math.exp(-elapsed / this.decay);
      s.stamp = now;
    }
    return s.rtt;
  }

  // Tower's RttEstimate::update: a peak replaces the estimate; a lower sample is blended in with the weight of the
  // time since the estimate was last touched. A failed request may raise the estimate but never lowers it.
  private observe(s: Slot<E>, rtt: number, ok: boolean, now: number): void {
    if (rtt > s.rtt) {
      s.rtt = rtt;
    } else if (ok) {
      const w = Math.exp(-Math.max(0, now - s.stamp) / this.decay);
      s.rtt = s.rtt * w + rtt * (1 - w);
    } else {
      return;
    }
    s.stamp = now;
  }
}

function positive(name: string, v: number): number {
  if (!(v > 0 && Number.isFinite(v))) throw new TrellisError('ECONFIG', `balancer: ${name} ${v} must be more than 0`);
  return v;
}
