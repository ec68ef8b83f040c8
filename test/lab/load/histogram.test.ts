// The load generator's histogram: bucket layout and nearest-rank percentiles, exact and within 0.1%.
import { describe, expect, it } from 'vitest';
import { LatencyHistogram, bucketOf, highestOf } from '../../../lab/load/histogram.js';

describe('LatencyHistogram buckets', () => {
  it('counts values below 2048 µs exactly', () => {
    for (const v of [0, 1, 2, 999, 2047]) {
      expect(bucketOf(v)).toBe(v);
      expect(highestOf(bucketOf(v))).toBe(v);
    }
  });

  it('keeps every larger value within 1/1024 of its bucket and never above the bucket top', () => {
    for (let v = 2048; v < 1e10; v = Math.floor(v * 1.37) + 1) {
      const top = highestOf(bucketOf(v));
      expect(top).toBeGreaterThanOrEqual(v);
      expect((top - v) / v).toBeLessThanOrEqual(1 / 1024);
    }
  });

  it('orders buckets like the values', () => {
    let last = -1;
    for (let v = 0; v < 5e6; v += 997) {
      const b = bucketOf(v);
      expect(b).toBeGreaterThanOrEqual(last);
      last = b;
    }
    // Powers of two and the values just below them land on either side of a bucket edge.
    for (let e = 11; e < 34; e++) expect(bucketOf(2 ** e - 1)).toBe(bucketOf(2 ** e) - 1);
  });
});

describe('LatencyHistogram percentiles', () => {
  it('returns nearest-rank values (rank ceil(q*n))', () => {
    const h = new LatencyHistogram();
    for (let us = 1; us <= 1000; us++) h.record(us);
    expect(h.percentileUs(0.5)).toBe(500);
    expect(h.percentileUs(0.9)).toBe(900);
    expect(h.percentileUs(0.99)).toBe(990);
    expect(h.percentileUs(0.999)).toBe(999);
    expect(h.percentileUs(1)).toBe(1000);
    expect(h.maxValueUs()).toBe(1000);
  });

  it('finds p99.9 of 100 000 samples with one slow outlier class', () => {
    const h = new LatencyHistogram();
    for (let i = 0; i < 99_800; i++) h.record(250);
    for (let i = 0; i < 200; i++) h.record(40_000);
    const s = h.summary();
    expect(s.count).toBe(100_000);
    expect(s.p50_ms).toBe(0.25);
    expect(s.p99_ms).toBe(0.25);
    // Rank 99 900 falls among the 200 slow ones.
    expect(s.p999_ms).toBeGreaterThanOrEqual(40);
    expect(s.p999_ms).toBeLessThanOrEqual(40 * (1 + 1 / 1024));
    expect(s.max_ms).toBe(40);
  });

  it('never reports a percentile above the largest value recorded', () => {
    const h = new LatencyHistogram();
    h.record(123_457);
    expect(h.percentileUs(0.5)).toBe(123_457);
  });

  it('is empty-safe, rounds and clamps negatives, and merges', () => {
    const a = new LatencyHistogram();
    expect(a.summary()).toEqual({ count: 0, p50_ms: null, p90_ms: null, p99_ms: null, p999_ms: null, max_ms: null, mean_ms: null });
    a.record(-5);
    a.record(10.4);
    const b = new LatencyHistogram();
    b.record(3000);
    a.merge(b);
    expect(a.count).toBe(3);
    expect(a.percentileUs(1 / 3)).toBe(0);
    expect(a.percentileUs(2 / 3)).toBe(10);
    expect(a.maxValueUs()).toBe(3000);
    expect(() => a.percentileUs(0)).toThrow(RangeError);
  });
});
