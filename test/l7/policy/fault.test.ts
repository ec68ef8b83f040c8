import { describe, expect, it } from 'vitest';
import {
  FAULT_PERCENT_WHEN_ABSENT,
  FaultDecider,
  GRPC_STATUS,
  grpcStatusCode,
  percentFromSpec,
} from '../../../agent/l7/policy/fault.js';
import { mulberry32, sequence } from '../../support/prng.js';

const N = 10_000;

function tally(d: FaultDecider, random: () => number) {
  let delayed = 0;
  let aborted = 0;
  let both = 0;
  for (let i = 0; i < N; i++) {
    const r = d.decide(random);
    if (r.delayMs > 0) delayed++;
    if (r.abort) aborted++;
    if (r.delayMs > 0 && r.abort) both++;
  }
  return { delayed: (100 * delayed) / N, aborted: (100 * aborted) / N, both: (100 * both) / N };
}

describe('FaultDecider', () => {
  it('delays and aborts within 2 points of the percentages over 10 000 requests, independently', () => {
    for (const [seed, dp, ap] of [[1, 30, 10], [2, 50, 50], [3, 5.5, 95], [4, 0.5, 12.25]] as const) {
      const d = new FaultDecider({ delayMs: 100, delayPercent: dp, abort: { httpStatus: 503 }, abortPercent: ap });
      const t = tally(d, mulberry32(seed));
      expect(Math.abs(t.delayed - dp)).toBeLessThanOrEqual(2);
      expect(Math.abs(t.aborted - ap)).toBeLessThanOrEqual(2);
      expect(Math.abs(t.both - (dp * ap) / 100)).toBeLessThanOrEqual(2); // independent draws
    }
  });

  it('answers with the configured delay and abort', () => {
    const d = new FaultDecider({ delayMs: 1_500, delayPercent: 100, abort: { httpStatus: 418 }, abortPercent: 100 });
    expect(d.decide(Math.random)).toEqual({ delayMs: 1_500, abort: { httpStatus: 418 } });
    const only = new FaultDecider({ delayMs: 1_500, delayPercent: 0, abort: { grpcStatus: 'UNAVAILABLE' }, abortPercent: 100 });
    expect(only.decide(Math.random)).toEqual({ delayMs: 0, abort: { grpcStatus: 14 } });
  });

  it('treats 0 and 100 exactly, and draws once per configured fault, delay first', () => {
    const r = sequence(0.999999, 0);
    const d = new FaultDecider({ delayMs: 5, delayPercent: 100, abort: { httpStatus: 500 }, abortPercent: 0.0001 });
    expect(d.decide(r)).toEqual({ delayMs: 5, abort: { httpStatus: 500 } });
    const never = new FaultDecider({ delayMs: 5, delayPercent: 0, abort: { httpStatus: 500 }, abortPercent: 0 });
    expect(tally(never, mulberry32(9))).toEqual({ delayed: 0, aborted: 0, both: 0 });
    let draws = 0;
    const counting = () => (draws++, 0.5);
    new FaultDecider({ delayMs: 5, delayPercent: 50, abortPercent: 50 }).decide(counting);
    expect(draws).toBe(1); // no abort configured: its percentage is never drawn
  });

  it('allocates nothing per decision: the same answer object comes back', () => {
    const d = new FaultDecider({ delayMs: 5, delayPercent: 100, abortPercent: 0 });
    expect(d.decide(Math.random)).toBe(d.decide(Math.random));
  });

  it('maps every gRPC status name of the CRD to its code', () => {
    expect(Object.keys(GRPC_STATUS)).toHaveLength(17);
    expect(grpcStatusCode('OK')).toBe(0);
    expect(grpcStatusCode('DEADLINE_EXCEEDED')).toBe(4);
    expect(grpcStatusCode('RESOURCE_EXHAUSTED')).toBe(8);
    expect(grpcStatusCode('UNAVAILABLE')).toBe(14);
    expect(grpcStatusCode('UNAUTHENTICATED')).toBe(16);
    expect(grpcStatusCode(13)).toBe(13);
    expect(() => grpcStatusCode('UNAVAILABLE ')).toThrow(/UNAVAILABLE/);
    expect(() => grpcStatusCode('toString')).toThrow(/unknown/);
    expect(() => grpcStatusCode(17)).toThrow(/0..16/);
  });

  it('follows Istio for an absent percentage: no request is affected', () => {
    expect(FAULT_PERCENT_WHEN_ABSENT).toBe(0);
    expect(percentFromSpec(undefined)).toBe(0);
    expect(percentFromSpec({ value: 12.5 })).toBe(12.5);
  });

  it('refuses invalid faults with a message that says what is wrong', () => {
    expect(() => new FaultDecider({ delayPercent: 101, abortPercent: 0 })).toThrow(/delay percentage 101/);
    expect(() => new FaultDecider({ delayPercent: 0, abortPercent: -1 })).toThrow(/abort percentage -1/);
    expect(() => new FaultDecider({ delayMs: -1, delayPercent: 0, abortPercent: 0 })).toThrow(/delay -1 ms/);
    expect(() => new FaultDecider({ delayPercent: 0, abort: {}, abortPercent: 5 })).toThrow(/exactly one/);
    expect(() => new FaultDecider({ delayPercent: 0, abort: { httpStatus: 503, grpcStatus: 'INTERNAL' }, abortPercent: 5 })).toThrow(/exactly one/);
    expect(() => new FaultDecider({ delayPercent: 0, abort: { httpStatus: 99 }, abortPercent: 5 })).toThrow(/200..599/);
  });
});
