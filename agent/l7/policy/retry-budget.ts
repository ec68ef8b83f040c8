// L7 resilience, per destination Service: caps the retries that route retry policies may send, so a failing
// backend is never hit by a retry storm. Shared by every route to the Service; consulted by RetryPolicy.decide.
//
// Semantics follow Finagle's RetryBudget (finagle-core .../service/RetryBudget.scala, TokenRetryBudget over a
// leaky TokenBucket) as ported to tower's TpsBudget (tower/src/retry/budget/tps_budget.rs), which is what
// linkerd2-proxy uses for its retry budget (linkerd2-proxy-api destination.RetryBudget: retry_ratio,
// min_retries_per_second, ttl):
//   - every original request deposits `retryRatio` of a retry; every retry withdraws one;
//   - deposits and withdrawals are kept in `buckets` slots covering the last `ttl` and expire with their slot;
//   - a constant reserve of minRetriesPerSecond x ttl retries is always added to the balance, so low-traffic
//     clients can still retry, and since withdrawals expire too, that reserve refills at minRetriesPerSecond;
//   - a retry is allowed while reserve + sum(window) covers one withdrawal.
// Hence, over the window, retries <= retryRatio x requests + minRetriesPerSecond x ttl.
// Defaults are the RetryBudget CRD's (manifests/crds/retrybudgets.yaml), which are Linkerd's and Finagle's.

import type { Clock } from '../../clock.js';
import { TrellisError } from '../../errors.js';
import { RETRY_BUDGET_DEFAULTS } from '../../model/retry-budget.js';


/** What RetryPolicy needs from a budget: one question that withdraws when the answer is yes. */
export interface RetryGate {
  tryRetry(): boolean;
}

export interface RetryBudgetOptions {
  clock: Clock;
  /** Retries allowed per original request over the window, 0..1 (CRD spec.retryRatio). */
  retryRatio?: number;
  /** Retries per second allowed on top of the ratio (CRD spec.minRetriesPerSecond). */
  minRetriesPerSecond?: number;
  /** Window over which requests and retries count, 1 s..60 s as Finagle and tower require (CRD spec.ttl). */
  ttlMs?: number;
  /** Slots the window is cut into: deposits expire between (buckets-1)/buckets x ttl and ttl after they were made. */
  buckets?: number;
}

// Amounts are integers scaled by SCALE so that sums stay exact in doubles (well below 2^53): a retry costs SCALE,
// a request deposits retryRatio x SCALE rounded.
const SCALE = 1_000_000;

export class RetryBudget implements RetryGate {
  /** Original requests seen (monotonic; for trellis_retry_budget_requests_total or similar). */
  requests = 0;
  /** Retries allowed (monotonic; trellis_retries_total). */
  retries = 0;
  /** Retries refused because the budget was spent (monotonic; trellis_retry_budget_exhausted_total). */
  exhausted = 0;

  readonly retryRatio: number;
  readonly minRetriesPerSecond: number;
  readonly ttlMs: number;

  private readonly clock: Clock;
  private readonly deposit: number;
  private readonly reserve: number;
  private readonly slots: Float64Array;
  private readonly width: number;
  private head: number; // absolute slot number (floor(now / width)) of the slot being written
  private sum = 0; // sum of all slots, kept so a decision never walks the ring

  constructor(opts: RetryBudgetOptions) {
    const ratio = opts.retryRatio ?? RETRY_BUDGET_DEFAULTS.retryRatio;
    const min = opts.minRetriesPerSecond ?? RETRY_BUDGET_DEFAULTS.minRetriesPerSecond;
    const ttl = opts.ttlMs ?? RETRY_BUDGET_DEFAULTS.ttlMs;
    const buckets = opts.buckets ?? 10;
    if (!(ratio >= 0 && ratio <= 1)) {
      throw new TrellisError('ECONFIG', `retry budget: retryRatio ${ratio} is outside 0..1; use e.g. 0.2 for one retry per five requests`);
    }
    if (!(Number.isInteger(min) && min >= 0 && min <= 100_000)) {
      throw new TrellisError('ECONFIG', `retry budget: minRetriesPerSecond ${min} must be an integer in 0..100000`);
    }
    if (!(ttl >= 1_000 && ttl <= 60_000)) {
      throw new TrellisError('ECONFIG', `retry budget: ttl ${ttl} ms is outside 1s..60s; set spec.ttl to e.g. "10s"`);
    }
    if (!(Number.isInteger(buckets) && buckets >= 1 && buckets <= 1_000)) {
      throw new TrellisError('ECONFIG', `retry budget: buckets ${buckets} must be an integer in 1..1000`);
    }
    this.retryRatio = ratio;
    this.minRetriesPerSecond = min;
    this.ttlMs = ttl;
    this.clock = opts.clock;
    this.deposit = Math.round(ratio * SCALE);
    this.reserve = Math.round(min * ttl * (SCALE / 1_000));
    this.slots = new Float64Array(buckets);
    this.width = ttl / buckets;
    this.head = Math.floor(this.clock.now() / this.width);
  }

  /** Counts one original request (never a retry: retries must not fund further retries). */
  onRequest(): void {
    this.requests++;
    if (this.deposit === 0) return;
    this.advance();
    this.add(this.deposit);
  }

  /** True, and withdraws one retry, when the budget allows a retry now; false (counted) otherwise. */
  tryRetry(): boolean {
    this.advance();
    if (this.reserve + this.sum >= SCALE) {
      this.add(-SCALE);
      this.retries++;
      return true;
    }
    this.exhausted++;
    return false;
  }

  /** Whole retries that would be allowed now (for status and tests). */
  get balance(): number {
    this.advance();
    return Math.max(0, Math.floor((this.reserve + this.sum) / SCALE));
  }

  private add(amount: number): void {
    this.slots[this.head % this.slots.length]! += amount;
    this.sum += amount;
  }

  // Clears the slots time has moved past; at most `buckets` steps however long the budget sat idle.
  private advance(): void {
    const now = Math.floor(this.clock.now() / this.width);
    if (now <= this.head) return; // same slot, or a clock that stepped back: keep counting where we are
    const n = this.slots.length;
    const steps = Math.min(now - this.head, n);
    for (let i = 1; i <= steps; i++) {
      const idx = (this.head + i) % n;
      this.sum -= this.slots[idx]!;
      this.slots[idx] = 0;
    }
    this.head = now;
  }
}
