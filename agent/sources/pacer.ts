// Source edge: when the next full snapshot may be applied. A snapshot follows a change after the debounce, and
// never sooner than twice the time the last one took to apply after it ended: while a large cluster changes
// without pause (a rollout, 10 000 objects created at once), applying snapshots takes at most a third of the
// agent's time and each one carries every change that came meanwhile, while a quiet cluster's change still applies
// within the debounce.

/** How many times its own duration a snapshot's application holds back the next one. */
const HOLD_FACTOR = 2;

export class SnapshotPacer {
  private holdUntil = 0;

  constructor(private readonly debounceMs: number) {}

  /** Milliseconds to wait, at `now`, before applying a snapshot for a change that just came. */
  delay(now: number): number {
    return Math.max(this.debounceMs, this.holdUntil - now);
  }

  /** A snapshot was applied from `started` to `ended` (ms). */
  applied(started: number, ended: number): void {
    this.holdUntil = ended + HOLD_FACTOR * Math.max(0, ended - started);
  }
}
