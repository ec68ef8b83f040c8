// Bench: the metrics it reports (name, unit, which way is better) and the samples of every repeat,
// summarized as median with min and max.

export interface MetricDef {
  name: string;
  unit: string;
  better: 'lower' | 'higher';
}

/** "1k" for 1000 req/s, "2.5k" for 2500, "500" for 500: the suffix of per-rate metric names. */
export function rateLabel(rate: number): string {
  return rate >= 1000 && rate % 100 === 0 ? `${rate / 1000}k` : String(rate);
}

export function latencyMetricNames(rate: number): {
  p50: string;
  p90: string;
  p99: string;
  p999: string;
  max: string;
  achieved: string;
  cpu: string;
} {
  const r = rateLabel(rate);
  return {
    p50: `p50_ms_${r}`,
    p90: `p90_ms_${r}`,
    p99: `p99_ms_${r}`,
    p999: `p999_ms_${r}`,
    max: `max_ms_${r}`,
    achieved: `achieved_rps_${r}`,
    cpu: `cpu_us_per_req_${r}`,
  };
}

/** Every metric in report order, for the latency rates of this run. */
export function metricCatalogue(rates: readonly number[]): MetricDef[] {
  const perRate = rates.flatMap((rate): MetricDef[] => {
    const n = latencyMetricNames(rate);
    return [
      { name: n.p50, unit: 'ms', better: 'lower' },
      { name: n.p90, unit: 'ms', better: 'lower' },
      { name: n.p99, unit: 'ms', better: 'lower' },
      { name: n.p999, unit: 'ms', better: 'lower' },
      { name: n.max, unit: 'ms', better: 'lower' },
      { name: n.achieved, unit: 'req/s', better: 'higher' },
      { name: n.cpu, unit: 'us', better: 'lower' },
    ];
  });
  return [
    ...perRate,
    { name: 'max_rps', unit: 'req/s', better: 'higher' },
    { name: 'proxy_cpu_pct_max_rps', unit: '%', better: 'lower' },
    { name: 'max_rps_2cpu', unit: 'req/s', better: 'higher' },
    // trellis-l7 with no tap and with a tap matching every request at the agents' bound, alternated in one run.
    { name: 'cpu_us_per_req_tap_off', unit: 'us', better: 'lower' },
    { name: 'cpu_us_per_req_tap_on', unit: 'us', better: 'lower' },
    { name: 'max_rps_tap_off', unit: 'req/s', better: 'higher' },
    { name: 'max_rps_tap_on', unit: 'req/s', better: 'higher' },
    { name: 'gbps_1', unit: 'Gbit/s', better: 'higher' },
    { name: 'gbps_4', unit: 'Gbit/s', better: 'higher' },
    { name: 'conn_per_s', unit: 'conn/s', better: 'higher' },
    { name: 'proxy_cpu_pct_conn', unit: '%', better: 'lower' },
    { name: 'rss_mb_idle', unit: 'MB', better: 'lower' },
    { name: 'rss_mb_load', unit: 'MB', better: 'lower' },
    { name: 'anon_mb_idle', unit: 'MB', better: 'lower' },
    { name: 'anon_mb_load', unit: 'MB', better: 'lower' },
    { name: 'kb_per_idle_conn', unit: 'KB', better: 'lower' },
    { name: 'audit_dropped', unit: 'lines', better: 'lower' },
    { name: 'apply_ms_10k', unit: 'ms', better: 'lower' },
    { name: 'apply_cpu_ms_10k', unit: 'ms', better: 'lower' },
    { name: 'rss_mb_10k', unit: 'MB', better: 'lower' },
    { name: 'enrol_ms_100', unit: 'ms', better: 'lower' },
    { name: 'kb_per_pod', unit: 'KB', better: 'lower' },
  ];
}

export interface Summary {
  median: number;
  min: number;
  max: number;
}

/** Median (the mean of the middle two for an even count), min and max; undefined for no samples. */
export function summarize(values: readonly number[]): Summary | undefined {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const mid = Math.floor(v.length / 2);
  const median = v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
  return { median, min: v[0]!, max: v[v.length - 1]! };
}

/** a / b, or undefined when either is missing or b is 0. */
export function ratio(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined || b === undefined || b === 0) return undefined;
  return a / b;
}

export interface ResultRow {
  path: string;
  metric: string;
  /** The median of the samples. */
  value: number;
  unit: string;
  min: number;
  max: number;
  samples: number[];
}

/** Samples by path and metric, as the runs produce them. */
export class Results {
  private readonly samples = new Map<string, Map<string, number[]>>();

  add(path: string, metric: string, value: number): void {
    if (!Number.isFinite(value)) return;
    let byMetric = this.samples.get(path);
    if (!byMetric) this.samples.set(path, (byMetric = new Map()));
    const list = byMetric.get(metric) ?? [];
    list.push(value);
    byMetric.set(metric, list);
  }

  get(path: string, metric: string): Summary | undefined {
    return summarize(this.samples.get(path)?.get(metric) ?? []);
  }

  /** One row per measured (path, metric), paths in the given order, metrics in catalogue order. */
  rows(paths: readonly string[], catalogue: readonly MetricDef[]): ResultRow[] {
    const out: ResultRow[] = [];
    for (const path of paths) {
      for (const m of catalogue) {
        const samples = this.samples.get(path)?.get(m.name) ?? [];
        const s = summarize(samples);
        if (!s) continue;
        out.push({ path, metric: m.name, value: round(s.median), unit: m.unit, min: round(s.min), max: round(s.max), samples: samples.map(round) });
      }
    }
    return out;
  }
}

/** Six significant digits: enough for any of these measurements, without float noise in the JSON. */
function round(v: number): number {
  return Number(v.toPrecision(6));
}
