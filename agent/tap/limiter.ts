// The rate bound of one tap: a token bucket of `rate` observations per second holding at most one second's worth,
// on an injected clock. What it refuses is dropped and counted by its caller, never queued: a tap never slows
// the requests it watches.

export class RateBound {
  private tokens: number;
  private last: number;

  constructor(
    readonly rate: number,
    private readonly now: () => number,
  ) {
    this.tokens = rate;
    this.last = now();
  }

  /** Takes one token if there is one. */
  take(): boolean {
    const t = this.now();
    if (t > this.last) {
      this.tokens = Math.min(this.rate, this.tokens + ((t - this.last) * this.rate) / 1000);
      this.last = t;
    }
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
