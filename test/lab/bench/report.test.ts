// The bench report: medians with min–max, ratios against direct and the HAProxy peer, JSON without unavailable paths.
import { describe, expect, it } from 'vitest';
import { PATHS, rotation, selectPaths } from '../../../lab/bench/paths.js';
import { benchJson, formatNumber, formatRatio, formatReport, ratioPairs } from '../../../lab/bench/report.js';
import { Results, latencyMetricNames, metricCatalogue, rateLabel, ratio, summarize } from '../../../lab/bench/results.js';

describe('summarize and ratio', () => {
  it('takes the median (mean of the middle two when even), min and max', () => {
    expect(summarize([3, 1, 2])).toEqual({ median: 2, min: 1, max: 3 });
    expect(summarize([4, 1, 3, 2])).toEqual({ median: 2.5, min: 1, max: 4 });
    expect(summarize([])).toBeUndefined();
    expect(summarize([Number.NaN, 5])).toEqual({ median: 5, min: 5, max: 5 });
  });

  it('divides only what can be divided', () => {
    expect(ratio(3, 2)).toBe(1.5);
    expect(ratio(3, 0)).toBeUndefined();
    expect(ratio(undefined, 2)).toBeUndefined();
  });
});

describe('metric names', () => {
  it('carry the rate', () => {
    expect(rateLabel(1000)).toBe('1k');
    expect(rateLabel(4000)).toBe('4k');
    expect(rateLabel(2500)).toBe('2.5k');
    expect(rateLabel(500)).toBe('500');
    expect(latencyMetricNames(4000).p999).toBe('p999_ms_4k');
    const names = metricCatalogue([1000, 4000]).map((m) => m.name);
    expect(names).toContain('cpu_us_per_req_1k');
    for (const n of ['max_rps', 'gbps_1', 'gbps_4', 'conn_per_s', 'rss_mb_idle', 'rss_mb_load', 'kb_per_idle_conn', 'apply_ms_10k', 'rss_mb_10k']) {
      expect(names).toContain(n);
    }
    expect(new Set(names).size).toBe(names.length);
  });
});

describe('paths', () => {
  it('lists the seven paths, all available, each mesh path with its HAProxy peer', () => {
    expect(PATHS.map((p) => p.name)).toEqual(['direct', 'haproxy-l4', 'haproxy-l7', 'trellis-l4', 'trellis-l7', 'haproxy-h2', 'trellis-l7-h2', 'trellis-l4-nft', 'trellis-l4-ebpf']);
    expect(PATHS.filter((p) => p.unavailable)).toEqual([]);
    // The capture modes are measured by `capture` in labs of their own, eBPF against nft.
    expect(PATHS.filter((p) => p.only === 'capture').map((p) => p.name)).toEqual(['trellis-l4-nft', 'trellis-l4-ebpf']);
    expect(ratioPairs(PATHS)).toContainEqual(['trellis-l4-ebpf', 'trellis-l4-nft']);
    expect(PATHS.find((p) => p.name === 'trellis-l4')?.haproxyPeer).toBe('haproxy-l4');
    expect(PATHS.find((p) => p.name === 'trellis-l7')?.haproxyPeer).toBe('haproxy-l7');
    expect(PATHS.find((p) => p.name === 'trellis-l7-h2')?.haproxyPeer).toBe('haproxy-h2');
    expect(PATHS.filter((p) => p.protocol === 'h2').map((p) => p.name)).toEqual(['haproxy-h2', 'trellis-l7-h2']);
  });

  it('selects by name and refuses unknown ones', () => {
    expect(selectPaths(['trellis-l4', 'direct']).map((p) => p.name)).toEqual(['direct', 'trellis-l4']);
    expect(selectPaths(undefined)).toHaveLength(9);
    expect(() => selectPaths(['envoy'])).toThrow(/unknown path envoy/);
  });

  it('rotates the order each repeat', () => {
    expect(rotation([1, 2, 3], 0)).toEqual([1, 2, 3]);
    expect(rotation([1, 2, 3], 1)).toEqual([2, 3, 1]);
    expect(rotation([1, 2, 3], 5)).toEqual([3, 1, 2]);
    expect(rotation([], 2)).toEqual([]);
  });
});

describe('report', () => {
  // A path can be unavailable (the report says why and leaves it out of the JSON): trellis-l7 plays that part here.
  const paths = PATHS.filter((p) => p.protocol !== 'h2' && !p.only).map((p) => (p.name === 'trellis-l7' ? { ...p, unavailable: 'not measured in this run' } : p));
  const catalogue = metricCatalogue([1000]);
  const results = new Results();
  for (const [path, p50] of [['direct', [0.2, 0.25, 0.3]], ['haproxy-l4', [0.5, 0.4, 0.6]], ['trellis-l4', [0.8, 0.9, 1.0]]] as const) {
    for (const v of p50) results.add(path, 'p50_ms_1k', v);
  }
  results.add('trellis-l4', 'apply_ms_10k', 1234.5678);
  results.add('haproxy-l4', 'max_rps', 20000);
  results.add('trellis-l4', 'max_rps', 10000);

  it('formats numbers to three significant digits', () => {
    expect(formatNumber(0)).toBe('0');
    expect(formatNumber(0.123456)).toBe('0.123');
    expect(formatNumber(1.23456)).toBe('1.23');
    expect(formatNumber(12.3456)).toBe('12.3');
    expect(formatNumber(12345.6)).toBe('12346');
    expect(formatRatio(1.234)).toBe('1.23x');
    expect(formatRatio(12.34)).toBe('12.3x');
    expect(formatRatio(undefined)).toBe('-');
  });

  it('pairs every runnable path with direct, and mesh paths with their HAProxy peer', () => {
    expect(ratioPairs(paths)).toEqual([
      ['haproxy-l4', 'direct'],
      ['haproxy-l7', 'direct'],
      ['trellis-l4', 'direct'],
      ['trellis-l4', 'haproxy-l4'],
    ]);
    expect(ratioPairs(PATHS)).toContainEqual(['trellis-l7', 'haproxy-l7']);
  });

  it('prints medians with min–max, n/a for the unavailable path and the reason, ratios and warnings', () => {
    const text = formatReport({ paths, catalogue, results, header: ['HEADER LINE'], warnings: ['something was off'] });
    const lines = text.split('\n');
    expect(lines[0]).toBe('HEADER LINE');
    const p50 = lines.find((l) => l.startsWith('p50_ms_1k'))!;
    expect(p50.split(/\s{2,}/)).toEqual(['p50_ms_1k', 'ms', '0.25 [0.2–0.3]', '0.5 [0.4–0.6]', '-', '0.9 [0.8–1]', 'n/a']);
    expect(text).toContain('trellis-l7: not available (not measured in this run)');
    expect(lines.find((l) => l.startsWith('apply_ms_10k'))).toMatch(/1235\s+n\/a$/);
    const header = lines.find((l) => l.startsWith('METRIC') && l.includes('trellis-l4/haproxy-l4'))!;
    expect(header.split(/\s{2,}/)).toEqual(['METRIC', 'haproxy-l4/direct', 'haproxy-l7/direct', 'trellis-l4/direct', 'trellis-l4/haproxy-l4']);
    const ratios = lines.filter((l) => l.startsWith('p50_ms_1k'))[1]!;
    expect(ratios.split(/\s{2,}/)).toEqual(['p50_ms_1k', '2.00x', '-', '3.60x', '1.80x']);
    expect(lines.filter((l) => l.startsWith('max_rps'))[1]!.split(/\s{2,}/)).toEqual(['max_rps', '-', '-', '-', '0.50x']);
    expect(text).toContain('  - something was off');
    // Metrics nobody measured are left out.
    expect(text).not.toContain('gbps_1');
  });

  it('writes JSON rows {path, metric, value, unit, min, max, samples} without unavailable paths', () => {
    const json = benchJson({ paths, catalogue, results }, { cpus: 2 });
    expect(json.machine).toEqual({ cpus: 2 });
    expect(json.results).toContainEqual({ path: 'direct', metric: 'p50_ms_1k', value: 0.25, unit: 'ms', min: 0.2, max: 0.3, samples: [0.2, 0.25, 0.3] });
    expect(json.results).toContainEqual({ path: 'trellis-l4', metric: 'apply_ms_10k', value: 1234.57, unit: 'ms', min: 1234.57, max: 1234.57, samples: [1234.57] });
    expect(json.results.some((r) => r.path === 'trellis-l7')).toBe(false);
    expect(Object.keys(json.results[0]!)).toEqual(['path', 'metric', 'value', 'unit', 'min', 'max', 'samples']);
  });
});
