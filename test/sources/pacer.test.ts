import { describe, expect, it } from 'vitest';
import { SnapshotPacer } from '../../agent/sources/pacer.js';

describe('snapshot pacing', () => {
  it('waits the debounce when snapshots are cheap or long past', () => {
    const p = new SnapshotPacer(20);
    expect(p.delay(0)).toBe(20);
    p.applied(1000, 1005);
    expect(p.delay(1005)).toBe(20);
    expect(p.delay(5000)).toBe(20);
  });

  it('holds the next snapshot back twice as long as the last one took, from its end', () => {
    const p = new SnapshotPacer(20);
    p.applied(1000, 1500);
    expect(p.delay(1500)).toBe(1000);
    expect(p.delay(2200)).toBe(300);
    expect(p.delay(2490)).toBe(20);
  });

  it('keeps applying at most a third of the time under a steady stream of changes', () => {
    const p = new SnapshotPacer(20);
    const COST = 400;
    let now = 0;
    let busy = 0;
    while (now < 60_000) {
      now += p.delay(now);
      p.applied(now, now + COST);
      now += COST;
      busy += COST;
    }
    expect(busy / now).toBeLessThanOrEqual(1 / 3 + 0.01);
  });
});
