// Open-loop scheduling: when request i is due, how many are due at a time, which are measured.
import { describe, expect, it } from 'vitest';
import { OpenLoopSchedule } from '../../../lab/load/schedule.js';

describe('OpenLoopSchedule', () => {
  it('spaces requests 1/rate apart from the start, warm-up included', () => {
    const s = new OpenLoopSchedule({ rate: 4000, durationS: 3, warmupS: 1 });
    expect(s.total).toBe(16_000);
    expect(s.intendedNs(0)).toBe(0);
    expect(s.intendedNs(1)).toBe(250_000);
    expect(s.intendedNs(4000)).toBe(1e9);
  });

  it('counts due requests: the one due exactly now is due', () => {
    const s = new OpenLoopSchedule({ rate: 1000, durationS: 1 });
    expect(s.dueBy(-1)).toBe(0);
    expect(s.dueBy(0)).toBe(1);
    expect(s.dueBy(999_999)).toBe(1);
    expect(s.dueBy(1_000_000)).toBe(2);
    expect(s.dueBy(10e9)).toBe(1000);
  });

  it('agrees with intendedNs at every boundary for rates that do not divide a second', () => {
    for (const rate of [3, 7, 333, 1234.5, 4001]) {
      const s = new OpenLoopSchedule({ rate, durationS: 2 });
      for (let i = 0; i < Math.min(s.total, 500); i++) {
        const t = s.intendedNs(i);
        expect(s.dueBy(t)).toBe(i + 1);
        expect(s.dueBy(t - 1)).toBe(i);
      }
      // Everything due strictly before the end, and nothing after.
      expect(s.intendedNs(s.total - 1)).toBeLessThan(s.endNs);
      expect(s.intendedNs(s.total)).toBeGreaterThanOrEqual(s.endNs);
    }
  });

  it('measures only what was due after the warm-up', () => {
    const s = new OpenLoopSchedule({ rate: 10, durationS: 1, warmupS: 0.5 });
    expect(s.total).toBe(15);
    const measured = Array.from({ length: s.total }, (_, i) => s.isMeasured(i)).filter(Boolean).length;
    expect(measured).toBe(10);
    expect(s.isMeasured(4)).toBe(false);
    expect(s.isMeasured(5)).toBe(true);
  });

  it('spreads requests round-robin over the connections', () => {
    const per = new Array<number>(16).fill(0);
    for (let i = 0; i < 4000; i++) per[OpenLoopSchedule.connectionOf(i, 16)]!++;
    expect(new Set(per)).toEqual(new Set([250]));
  });

  it('rejects rates, durations and warm-ups that make no schedule', () => {
    expect(() => new OpenLoopSchedule({ rate: 0, durationS: 1 })).toThrow(RangeError);
    expect(() => new OpenLoopSchedule({ rate: 10, durationS: 0 })).toThrow(RangeError);
    expect(() => new OpenLoopSchedule({ rate: 10, durationS: 1, warmupS: -1 })).toThrow(RangeError);
  });
});
