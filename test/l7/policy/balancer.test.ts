import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../../agent/clock.js';
import { Balancer, BALANCER_DEFAULTS, type BalancerOptions, type PickedEndpoint } from '../../../agent/l7/policy/balancer.js';
import { mulberry32 } from '../../support/prng.js';

interface Ep {
  name: string;
  gen?: number;
}
const ep = (name: string, gen = 0): Ep => ({ name, gen });

function make(names: string[], clock = new ManualClock(), opts: Partial<BalancerOptions<Ep>> = {}, seed = 1) {
  return new Balancer<Ep>(names.map((n) => ep(n)), { clock, random: mulberry32(seed), key: (e) => e.name, ...opts });
}

const stat = (b: Balancer<Ep>, name: string) => b.stats().find((s) => s.key === name)!;

/**
 * Picks until `name` comes up: the other picks are held open, which raises their cost, then released at the
 * same instant with a 0 ms sample, which leaves their estimates as they were (no time has passed).
 */
function pickOf(b: Balancer<Ep>, name: string): PickedEndpoint<Ep> {
  const held: PickedEndpoint<Ep>[] = [];
  try {
    for (let i = 0; i < 1_000; i++) {
      const h = b.pick()!;
      if (h.endpoint.name === name) return h;
      held.push(h);
    }
  } finally {
    for (const h of held) h.done({ latencyMs: 0, outcome: 'ok' });
  }
  throw new Error(`${name} was never picked`);
}

function fail(b: Balancer<Ep>, name: string, times: number, outcome: '5xx' | 'connect-failure' = '5xx') {
  for (let i = 0; i < times; i++) pickOf(b, name).done({ latencyMs: 0, outcome });
}

function counts(b: Balancer<Ep>, picks: number): Record<string, number> {
  const c: Record<string, number> = {};
  for (let i = 0; i < picks; i++) {
    const h = b.pick()!;
    c[h.endpoint.name] = (c[h.endpoint.name] ?? 0) + 1;
    h.done({ latencyMs: 0, outcome: 'ok' });
  }
  return c;
}

describe('Balancer', () => {
  it('sends the large majority to the endpoint that is 10x faster', () => {
    const clock = new ManualClock();
    const b = make(['fast', 'slow'], clock);
    const latency: Record<string, number> = { fast: 5, slow: 50 };
    const picks: Record<string, number> = { fast: 0, slow: 0 };
    for (let i = 0; i < 30_000; i++) {
      // a request every 2 ms for 60 s, each answered after its endpoint's latency
      const h = b.pick()!;
      const name = h.endpoint.name;
      picks[name]!++;
      clock.after(latency[name]!, () => h.done({ latencyMs: latency[name]!, outcome: 'ok' }));
      clock.advance(2);
    }
    clock.advance(100);
    expect(picks.fast! / 30_000).toBeGreaterThan(0.9);
    expect(picks.slow).toBeGreaterThan(0); // still probed as its estimate decays
    expect(stat(b, 'fast').pending + stat(b, 'slow').pending).toBe(0);
  });

  it('counts pending requests in the cost', () => {
    const clock = new ManualClock();
    const b = make(['a', 'b'], clock);
    const open: PickedEndpoint<Ep>[] = [];
    for (let i = 0; i < 100; i++) open.push(b.pick()!);
    const pa = stat(b, 'a').pending;
    const pb = stat(b, 'b').pending;
    expect(pa + pb).toBe(100);
    expect(Math.abs(pa - pb)).toBeLessThanOrEqual(1); // equal latency: the one with fewer in flight wins
    for (const h of open) h.done({ latencyMs: 30, outcome: 'ok' });
    expect(stat(b, 'a').pending).toBe(0);

    // a fast endpoint with a queue loses to an idle slower one: 10 ms x (k + 1) against 50 ms x 1
    const c = make(['fast', 'slow'], clock, { defaultRttMs: 1 });
    pickOf(c, 'fast').done({ latencyMs: 10, outcome: 'ok' }); // peaks: 1 -> 10
    pickOf(c, 'slow').done({ latencyMs: 50, outcome: 'ok' }); // 1 -> 50
    expect([stat(c, 'fast').rttMs, stat(c, 'slow').rttMs]).toEqual([10, 50]);
    const seq: string[] = [];
    for (let i = 0; i < 6; i++) seq.push(c.pick()!.endpoint.name);
    expect(seq.slice(0, 4)).toEqual(['fast', 'fast', 'fast', 'fast']); // costs 10, 20, 30, 40 < 50
    expect(seq.slice(4)).toContain('slow'); // 50 against 50, then 60 against 50
  });

  it('ejects an endpoint after 5 consecutive failures and brings it back after the backoff, doubling on repeat', () => {
    const clock = new ManualClock();
    const b = make(['a', 'b'], clock);
    fail(b, 'a', 4);
    pickOf(b, 'a').done({ latencyMs: 1, outcome: 'ok' }); // a success resets the count
    fail(b, 'a', 4, 'connect-failure');
    expect(stat(b, 'a').ejected).toBe(false);
    fail(b, 'a', 1);
    expect(stat(b, 'a')).toMatchObject({ ejected: true, ejectedUntil: clock.now() + 30_000, ejectionLevel: 1 });
    expect([b.ejections, b.ejected]).toEqual([1, 1]);
    expect(counts(b, 200)).toEqual({ b: 200 });

    clock.advance(29_999);
    expect(counts(b, 50)).toEqual({ b: 50 });
    clock.advance(1);
    expect(b.ejected).toBe(0);
    expect(counts(b, 200).a).toBeGreaterThan(0);

    fail(b, 'a', 5); // right after its return: twice as long
    expect(stat(b, 'a')).toMatchObject({ ejected: true, ejectedUntil: clock.now() + 60_000, ejectionLevel: 2 });
    clock.advance(60_000);
    clock.advance(3 * 30_000); // three base periods in service: the level falls back to 0
    fail(b, 'a', 5);
    expect(stat(b, 'a')).toMatchObject({ ejectedUntil: clock.now() + 30_000, ejectionLevel: 1 });
    expect(b.ejections).toBe(3);
  });

  it('caps the ejection time at the maximum', () => {
    const clock = new ManualClock();
    const b = make(['a', 'b'], clock, { ejectionBaseMs: 1_000, ejectionMaxMs: 5_000 });
    const durations: number[] = [];
    for (let i = 0; i < 6; i++) {
      fail(b, 'a', 5);
      const until = stat(b, 'a').ejectedUntil;
      durations.push(until - clock.now());
      clock.advance(until - clock.now());
    }
    expect(durations).toEqual([1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
  });

  it('never ejects more than half of the endpoints', () => {
    const b = make(['a', 'b', 'c', 'd']);
    for (const n of ['a', 'b', 'c', 'd']) fail(b, n, 5);
    expect(b.ejected).toBe(2);
    expect(b.ejectionsSkipped).toBe(2);
    const c = counts(b, 400);
    expect(Object.keys(c)).toHaveLength(2);
    expect(stat(b, Object.keys(c)[0]!).ejected).toBe(false);
  });

  it('uses every endpoint when too many are ejected (panic), e.g. after the set shrank', () => {
    const b = make(['a', 'b', 'c', 'd']);
    fail(b, 'a', 5);
    fail(b, 'b', 5);
    expect(b.ejected).toBe(2);
    b.setEndpoints([ep('a'), ep('b'), ep('c')]); // 2 of 3 ejected is more than half
    expect(Object.keys(counts(b, 300)).sort()).toEqual(['a', 'b', 'c']);
    b.setEndpoints([ep('a'), ep('b'), ep('c'), ep('e')]); // 2 of 4: back to normal
    expect(Object.keys(counts(b, 300)).sort()).toEqual(['c', 'e']);
  });

  it('keeps the state of endpoints that stay across set updates', () => {
    const clock = new ManualClock();
    const b = make(['a', 'b', 'c'], clock);
    pickOf(b, 'a').done({ latencyMs: 80, outcome: 'ok' });
    fail(b, 'b', 5);
    const held = pickOf(b, 'c');
    b.setEndpoints([ep('a', 1), ep('b', 1), ep('d', 1)]);
    expect(stat(b, 'a').rttMs).toBe(80);
    expect(stat(b, 'b').ejected).toBe(true);
    expect(stat(b, 'd').rttMs).toBe(BALANCER_DEFAULTS.defaultRttMs);
    expect(b.stats().map((s) => s.key)).toEqual(['a', 'b', 'd']);
    held.done({ latencyMs: 5, outcome: '5xx' }); // finishing on a removed endpoint is harmless
    held.done({ latencyMs: 5, outcome: '5xx' });
    const h = pickOf(b, 'a');
    expect(h.endpoint).toEqual(ep('a', 1)); // the new object is handed out
    h.done({ latencyMs: 80, outcome: 'ok' });
  });

  it('always picks a single endpoint, whatever it answers, and nothing from an empty set', () => {
    const b = make(['only']);
    for (let i = 0; i < 50; i++) b.pick()!.done({ latencyMs: 1, outcome: i % 2 ? '5xx' : 'connect-failure' });
    expect(b.ejected).toBe(0);
    expect(b.pick()!.endpoint.name).toBe('only');
    b.setEndpoints([]);
    expect(b.pick()).toBeUndefined();
  });

  it('gives a new endpoint traffic at the default RTT', () => {
    const clock = new ManualClock();
    const b = make(['old'], clock);
    b.pick()!.done({ latencyMs: 100, outcome: 'ok' });
    b.setEndpoints([ep('old'), ep('new')]);
    expect(counts(b, 20)).toEqual({ new: 20 }); // 30 ms default < 100 ms measured
  });

  it('peaks up at once, decays toward zero while idle, and never lowers the estimate on a failure', () => {
    const clock = new ManualClock();
    const b = make(['a'], clock);
    b.pick()!.done({ latencyMs: 200, outcome: 'ok' });
    expect(stat(b, 'a').rttMs).toBe(200);
    b.pick()!.done({ latencyMs: 1, outcome: '5xx' });
    expect(stat(b, 'a').rttMs).toBe(200);
    clock.advance(10_000);
    expect(stat(b, 'a').rttMs).toBeCloseTo(200 / Math.E, 6);
    b.pick()!.done({ latencyMs: 500, outcome: '5xx' }); // a slow failure still raises it
    expect(stat(b, 'a').rttMs).toBe(500);
    clock.advance(10_000);
    b.pick()!.done({ latencyMs: 100, outcome: 'ok' });
    // a lower sample blends in with the weight of the 10 s since the estimate was last touched
    expect(stat(b, 'a').rttMs).toBeCloseTo(500 / Math.E + 100 * (1 - 1 / Math.E), 6);
  });

  it('is deterministic for a given random source', () => {
    const run = () => {
      const clock = new ManualClock();
      const b = make(['a', 'b', 'c', 'd', 'e'], clock, {}, 42);
      const seq: string[] = [];
      for (let i = 0; i < 200; i++) {
        const h = b.pick()!;
        seq.push(h.endpoint.name);
        clock.after(1 + (i % 7), () => h.done({ latencyMs: 1 + (i % 7), outcome: 'ok' }));
        clock.advance(1);
      }
      return seq.join('');
    };
    expect(run()).toBe(run());
  });

  it('refuses invalid options', () => {
    expect(() => make(['a'], new ManualClock(), { consecutiveFailures: 0 })).toThrow(/consecutiveFailures/);
    expect(() => make(['a'], new ManualClock(), { maxEjectionFraction: 2 })).toThrow(/maxEjectionFraction/);
    expect(() => make(['a'], new ManualClock(), { decayMs: 0 })).toThrow(/decayMs/);
  });
});
