import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../../agent/clock.js';
import { RetryBudget } from '../../../agent/l7/policy/retry-budget.js';
import { RETRY_BUDGET_DEFAULTS } from '../../../agent/model/retry-budget.js';

// The CRD defaults: ratio 0.2, 10 retries/s, ttl 10 s (ten 1 s slots; ManualClock starts on a second boundary).
const make = (clock: ManualClock, opts: Partial<{ retryRatio: number; minRetriesPerSecond: number; ttlMs: number }> = {}) =>
  new RetryBudget({ clock, ...opts });

describe('RetryBudget', () => {
  it('uses the CRD defaults', () => {
    const b = make(new ManualClock());
    expect(RETRY_BUDGET_DEFAULTS).toEqual({ retryRatio: 0.2, minRetriesPerSecond: 10, ttlMs: 10_000 });
    expect([b.retryRatio, b.minRetriesPerSecond, b.ttlMs]).toEqual([0.2, 10, 10_000]);
    expect(b.balance).toBe(100); // minRetriesPerSecond x ttl
  });

  it('at a steady 100 req/s allows about 20 retries/s from the ratio plus the 10/s reserve', () => {
    const clock = new ManualClock();
    const b = make(clock);
    const perSecond: number[] = [];
    for (let s = 0; s < 60; s++) {
      let allowed = 0;
      for (let i = 0; i < 100; i++) {
        b.onRequest();
        if (b.tryRetry()) allowed++; // every request fails once and asks for one retry
        clock.advance(10);
      }
      perSecond.push(allowed);
    }
    const steady = perSecond.slice(20).reduce((a, c) => a + c, 0) / 40;
    expect(steady).toBeGreaterThanOrEqual(29);
    expect(steady).toBeLessThanOrEqual(31);
    expect(b.requests).toBe(6000);
    expect(b.retries + b.exhausted).toBe(6000);
    expect(b.exhausted).toBeGreaterThan(0);
  });

  it('never lets a fully failing backend see more than (1 + ratio) x requests + min x ttl attempts per window', () => {
    const clock = new ManualClock();
    const b = make(clock);
    const requests: number[] = [];
    const attempts: number[] = [];
    for (let s = 0; s < 60; s++) {
      let req = 0;
      let att = 0;
      for (let i = 0; i < 100; i++) {
        b.onRequest();
        req++;
        att++;
        while (b.tryRetry()) att++; // every attempt fails; retry until the budget says no
        clock.advance(10);
      }
      requests.push(req);
      attempts.push(att);
    }
    for (let start = 0; start + 10 <= 60; start++) {
      const r = requests.slice(start, start + 10).reduce((a, c) => a + c, 0);
      const a = attempts.slice(start, start + 10).reduce((x, c) => x + c, 0);
      expect(a).toBeLessThanOrEqual((1 + 0.2) * r + 10 * 10);
    }
    // and the bound is what the budget actually gives, not far below it
    const last = attempts.slice(50).reduce((a, c) => a + c, 0);
    expect(last).toBeGreaterThan(1.2 * 1000 + 100 - 10);
  });

  it('gives a burst of requests exactly ratio x requests + the reserve', () => {
    const b = make(new ManualClock());
    for (let i = 0; i < 1000; i++) b.onRequest();
    let retries = 0;
    while (b.tryRetry()) retries++;
    expect(retries).toBe(0.2 * 1000 + 10 * 10);
    expect(b.exhausted).toBe(1);
    expect(b.tryRetry()).toBe(false);
    expect(b.exhausted).toBe(2);
  });

  it('recovers after ttl', () => {
    const clock = new ManualClock();
    const b = make(clock);
    for (let i = 0; i < 500; i++) b.onRequest();
    while (b.tryRetry());
    expect(b.balance).toBe(0);
    clock.advance(5_000);
    expect(b.tryRetry()).toBe(false);
    clock.advance(5_000);
    expect(b.balance).toBe(100); // deposits and withdrawals of the old window are gone: the reserve is whole again
  });

  it('with no traffic allows only the reserve: min x ttl at once, min per second sustained', () => {
    const clock = new ManualClock();
    const b = make(clock);
    let first = 0;
    while (b.tryRetry()) first++;
    expect(first).toBe(100);
    let total = 0;
    for (let t = 0; t < 60_000; t += 100) {
      clock.advance(100);
      while (b.tryRetry()) total++;
    }
    expect(total).toBe(600); // 10/s over 60 s
  });

  it('expires a deposit with its slot, between 0.9 x ttl and ttl after it was made', () => {
    const clock = new ManualClock();
    const b = make(clock, { retryRatio: 1, minRetriesPerSecond: 0 });
    b.onRequest();
    clock.advance(9_999);
    expect(b.balance).toBe(1);
    clock.advance(1);
    expect(b.balance).toBe(0);
    expect(b.tryRetry()).toBe(false);
  });

  it('with ratio 0 and min 0 never retries', () => {
    const b = make(new ManualClock(), { retryRatio: 0, minRetriesPerSecond: 0 });
    for (let i = 0; i < 100; i++) b.onRequest();
    expect(b.tryRetry()).toBe(false);
  });

  it('keeps counting after a long idle period without walking more than the ring', () => {
    const clock = new ManualClock();
    const b = make(clock, { minRetriesPerSecond: 0 });
    for (let i = 0; i < 50; i++) b.onRequest();
    clock.advance(365 * 24 * 3600 * 1000);
    expect(b.balance).toBe(0);
    for (let i = 0; i < 5; i++) b.onRequest();
    expect(b.tryRetry()).toBe(true);
    expect(b.tryRetry()).toBe(false);
  });

  it('refuses settings outside the CRD ranges with a message that says what to set', () => {
    const clock = new ManualClock();
    expect(() => make(clock, { retryRatio: 1.5 })).toThrow(/retryRatio 1.5 is outside 0..1/);
    expect(() => make(clock, { minRetriesPerSecond: -1 })).toThrow(/minRetriesPerSecond/);
    expect(() => make(clock, { ttlMs: 0 })).toThrow(/ttl 0 ms is outside 1s..60s/);
    expect(() => make(clock, { ttlMs: 120_000 })).toThrow(/spec.ttl/);
  });
});
