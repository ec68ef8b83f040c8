import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../../agent/clock.js';
import { RetryBudget, type RetryGate } from '../../../agent/l7/policy/retry-budget.js';
import { RETRY_DEFAULTS, RetryPolicy, type RetryInput } from '../../../agent/l7/policy/retry.js';
import { mulberry32, sequence } from '../../support/prng.js';

class CountingGate implements RetryGate {
  asked = 0;
  constructor(private allow: boolean) {}
  tryRetry(): boolean {
    this.asked++;
    return this.allow;
  }
}

const base = (over: Partial<RetryInput> = {}): RetryInput => ({
  attempt: 1,
  status: 503,
  elapsedMs: 10,
  bodyBytes: 0,
  bodyComplete: true,
  budget: new CountingGate(true),
  ...over,
});

const policy = (random: () => number = sequence(0.5), timeout?: number) =>
  new RetryPolicy({ codes: [502, 503, 504], attempts: 2, backoffMs: 100 }, { requestTimeoutMs: timeout, bodyCapBytes: 1024 }, { random });

describe('RetryPolicy', () => {
  it('retries a listed status after a delay at or above the backoff floor', () => {
    const d = policy(sequence(0.5)).decide(base());
    // retry 1: 100 + 0.5 x (min(1000, 100 x 2) - 100)
    expect(d).toEqual({ retry: true, delayMs: 150 });
  });

  it('does not retry statuses that are not listed, nor successes', () => {
    const p = policy();
    for (const status of [200, 404, 500, 501]) {
      expect(p.decide(base({ status }))).toEqual({ retry: false, reason: 'not-retryable' });
    }
    expect(p.decide(base({ status: undefined }))).toEqual({ retry: false, reason: 'not-retryable' });
  });

  it('always retries connection failures before any response byte, even with no codes listed', () => {
    const p = new RetryPolicy({}, { bodyCapBytes: 1024 }, { random: sequence(0) });
    for (const error of ['connect', 'reset', 'timeout'] as const) {
      expect(p.decide(base({ status: undefined, error }))).toEqual({ retry: true, delayMs: RETRY_DEFAULTS.backoffMs });
    }
    expect(p.decide(base({ status: undefined, error: 'reset', responseStarted: true }))).toEqual({ retry: false, reason: 'not-retryable' });
    expect(p.decide(base({ status: 503 }))).toEqual({ retry: false, reason: 'not-retryable' });
  });

  it('never goes beyond attempts retries (attempts counts retries, not tries)', () => {
    const p = policy();
    expect(p.decide(base({ attempt: 1 })).retry).toBe(true);
    expect(p.decide(base({ attempt: 2 })).retry).toBe(true);
    expect(p.decide(base({ attempt: 3 }))).toEqual({ retry: false, reason: 'attempts' });
    const none = new RetryPolicy({ codes: [503], attempts: 0 }, { bodyCapBytes: 1024 }, { random: sequence(0) });
    expect(none.decide(base())).toEqual({ retry: false, reason: 'attempts' });
    const dflt = new RetryPolicy({ codes: [503] }, { bodyCapBytes: 1024 }, { random: sequence(0) });
    expect(dflt.attempts).toBe(1); // Linkerd's default limit
  });

  it('never retries when the delay would reach the request deadline', () => {
    const p = policy(sequence(0.5), 1_000);
    expect(p.decide(base({ elapsedMs: 849 }))).toEqual({ retry: true, delayMs: 150 });
    expect(p.decide(base({ elapsedMs: 850 }))).toEqual({ retry: false, reason: 'deadline' });
    expect(p.decide(base({ elapsedMs: 5_000 }))).toEqual({ retry: false, reason: 'deadline' });
    // no timeout (absent or 0, as Gateway API's "0s"): no deadline
    expect(policy(sequence(0.5), 0).decide(base({ elapsedMs: 1e9 })).retry).toBe(true);
  });

  it('never replays a body larger than the cap or not fully buffered within it', () => {
    const p = policy();
    expect(p.decide(base({ bodyBytes: 1024 })).retry).toBe(true);
    expect(p.decide(base({ bodyBytes: 1025 }))).toEqual({ retry: false, reason: 'body-too-large' });
    expect(p.decide(base({ bodyBytes: 10, bodyComplete: false }))).toEqual({ retry: false, reason: 'body-too-large' });
  });

  it('asks the budget last, so other refusals never spend it, and refuses when it is spent', () => {
    const p = policy(sequence(0.5), 1_000);
    const gate = new CountingGate(true);
    p.decide(base({ status: 200, budget: gate }));
    p.decide(base({ attempt: 9, budget: gate }));
    p.decide(base({ bodyBytes: 1e6, budget: gate }));
    p.decide(base({ elapsedMs: 999, budget: gate }));
    expect(gate.asked).toBe(0);
    expect(p.decide(base({ budget: gate })).retry).toBe(true);
    expect(gate.asked).toBe(1);
    expect(p.decide(base({ budget: new CountingGate(false) }))).toEqual({ retry: false, reason: 'budget' });
  });

  it('spends a real RetryBudget and stops when it is exhausted', () => {
    const budget = new RetryBudget({ clock: new ManualClock(), retryRatio: 0, minRetriesPerSecond: 1, ttlMs: 2_000 });
    const p = policy();
    expect(p.decide(base({ budget })).retry).toBe(true);
    expect(p.decide(base({ budget })).retry).toBe(true);
    expect(p.decide(base({ budget }))).toEqual({ retry: false, reason: 'budget' });
    expect([budget.retries, budget.exhausted]).toEqual([2, 1]);
  });

  it('grows the delay exponentially with full jitter, never below the floor nor above the cap', () => {
    const p = new RetryPolicy({ codes: [503], attempts: 20 }, { bodyCapBytes: 0 }, { random: mulberry32(7) });
    expect(p.backoffMs).toBe(25);
    expect(p.maxBackoffMs).toBe(1_000);
    for (let k = 1; k <= 12; k++) {
      const ceiling = Math.min(1_000, 25 * 2 ** k);
      let min = Infinity;
      let max = 0;
      for (let i = 0; i < 2_000; i++) {
        const d = p.delayFor(k);
        min = Math.min(min, d);
        max = Math.max(max, d);
      }
      expect(min).toBeGreaterThanOrEqual(25);
      expect(max).toBeLessThan(ceiling);
      expect(max).toBeGreaterThan(ceiling - (ceiling - 25) * 0.01); // the jitter spans the whole range
    }
  });

  it('keeps a backoff larger than the cap as the exact delay', () => {
    const p = new RetryPolicy({ codes: [503], backoffMs: 5_000 }, { bodyCapBytes: 0 }, { random: sequence(0.99) });
    expect(p.delayFor(1)).toBe(5_000);
    expect(p.delayFor(8)).toBe(5_000);
  });

  it('refuses invalid stanzas with a message that says what to write', () => {
    const r = { random: sequence(0) };
    expect(() => new RetryPolicy({ codes: [200] }, { bodyCapBytes: 0 }, r)).toThrow(/400..599/);
    expect(() => new RetryPolicy({ attempts: -1 }, { bodyCapBytes: 0 }, r)).toThrow(/attempts/);
    expect(() => new RetryPolicy({ backoffMs: -5 }, { bodyCapBytes: 0 }, r)).toThrow(/backoff/);
  });
});
