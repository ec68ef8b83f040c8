// Bench: when each request of an open-loop run is due. Request i is due at i/rate seconds after the start,
// whatever happened to the ones before; latency counts from that time, so a stalled server cannot hide
// its stall by slowing the client down (no coordinated omission).

export class OpenLoopSchedule {
  readonly rate: number;
  /** Requests in the whole run, warm-up included. */
  readonly total: number;
  /** The measured window, in ns from the start: [warmupNs, endNs). */
  readonly warmupNs: number;
  readonly endNs: number;

  constructor(opts: { rate: number; durationS: number; warmupS?: number }) {
    if (!(opts.rate > 0) || !Number.isFinite(opts.rate)) throw new RangeError(`rate must be a positive number, got ${opts.rate}`);
    if (!(opts.durationS > 0)) throw new RangeError(`durationS must be positive, got ${opts.durationS}`);
    const warmupS = opts.warmupS ?? 0;
    if (!(warmupS >= 0)) throw new RangeError(`warmupS must not be negative, got ${warmupS}`);
    this.rate = opts.rate;
    this.warmupNs = Math.round(warmupS * 1e9);
    this.endNs = Math.round((warmupS + opts.durationS) * 1e9);
    // Requests due strictly before the end.
    this.total = this.countDue(this.endNs - 1);
  }

  /** When request i is due, in ns from the start. */
  intendedNs(i: number): number {
    return Math.round((i * 1e9) / this.rate);
  }

  /** How many requests are due at `elapsedNs` (those with intendedNs <= elapsedNs); 0 before the start. */
  dueBy(elapsedNs: number): number {
    return Math.min(this.countDue(elapsedNs), this.total);
  }

  private countDue(elapsedNs: number): number {
    if (elapsedNs < 0) return 0;
    // The float estimate can be off by one either way at rounding boundaries; intendedNs decides.
    let n = Math.floor((elapsedNs * this.rate) / 1e9) + 1;
    while (n > 0 && this.intendedNs(n - 1) > elapsedNs) n--;
    while (this.intendedNs(n) <= elapsedNs) n++;
    return n;
  }

  /** Whether request i falls in the measured window (after the warm-up). */
  isMeasured(i: number): boolean {
    return this.intendedNs(i) >= this.warmupNs;
  }

  /** The connection request i is sent on: round-robin, so each connection carries rate/connections. */
  static connectionOf(i: number, connections: number): number {
    return i % connections;
  }
}
