// Counters and histograms for the per-request and per-connection golden metrics, cheap on the data path: a label
// set is resolved to its series once (the caller keeps it), and an update is a few additions on plain numbers.
// prom-client's own bound children validate and hash the labels again on every update (a tenth of an agent's CPU
// at L7 rates). These register in the same prom-client Registry and give the same exposition and JSON.
import type { Registry } from 'prom-client';

type Labels = Record<string, string>;

interface PromValue {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

/** The part of prom-client's metric interface a Registry (and AggregatorRegistry) reads. */
interface PromMetric {
  name: string;
  help: string;
  type: 'counter' | 'histogram';
  aggregator: 'sum';
  get(): Promise<{ name: string; help: string; type: string; values: PromValue[]; aggregator: 'sum' }>;
  reset(): void;
}

export interface CounterSeries {
  inc(n?: number): void;
}

export interface HistogramSeries {
  observe(value: number): void;
}

class Counted implements CounterSeries {
  value = 0;
  constructor(readonly labels: Labels) {}
  inc(n = 1): void {
    this.value += n;
  }
}

class Observed implements HistogramSeries {
  sum = 0;
  count = 0;
  readonly buckets: Float64Array;
  constructor(
    readonly labels: Labels,
    private readonly bounds: readonly number[],
  ) {
    this.buckets = new Float64Array(bounds.length);
  }
  observe(value: number): void {
    this.sum += value;
    this.count++;
    const b = this.bounds;
    // Buckets are cumulative at exposition; here each observation lands in the first bound it fits.
    for (let i = 0; i < b.length; i++) {
      if (value <= b[i]!) {
        this.buckets[i]!++;
        return;
      }
    }
  }
}

/** Series by label set; the key is built only when a caller asks for a series it does not hold yet. */
abstract class Vec<S extends { labels: Labels }> implements PromMetric {
  abstract readonly type: 'counter' | 'histogram';
  readonly aggregator = 'sum' as const;
  protected series = new Map<string, S>();

  constructor(
    readonly name: string,
    readonly help: string,
    protected readonly labelNames: readonly string[],
    registry: Registry,
  ) {
    registry.registerMetric(this as never);
  }

  /** The series of one label set (every name of labelNames given). */
  protected seriesFor(labels: Labels): S {
    let key = '';
    for (const n of this.labelNames) key += `${labels[n] ?? ''}\u0001`;
    let s = this.series.get(key);
    if (!s) {
      const own: Labels = {};
      for (const n of this.labelNames) own[n] = labels[n] ?? '';
      s = this.make(own);
      this.series.set(key, s);
    }
    return s;
  }

  protected abstract make(labels: Labels): S;
  abstract get(): Promise<{ name: string; help: string; type: string; values: PromValue[]; aggregator: 'sum' }>;

  reset(): void {
    this.series.clear();
  }
}

export class CounterVec extends Vec<Counted> {
  readonly type = 'counter' as const;

  labels(labels: Labels): CounterSeries {
    return this.seriesFor(labels);
  }

  protected make(labels: Labels): Counted {
    return new Counted(labels);
  }

  async get() {
    const values: PromValue[] = [];
    for (const s of this.series.values()) values.push({ value: s.value, labels: s.labels });
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }
}

export class HistogramVec extends Vec<Observed> {
  readonly type = 'histogram' as const;

  constructor(name: string, help: string, labelNames: readonly string[], private readonly bounds: readonly number[], registry: Registry) {
    super(name, help, labelNames, registry);
  }

  labels(labels: Labels): HistogramSeries {
    return this.seriesFor(labels);
  }

  protected make(labels: Labels): Observed {
    return new Observed(labels, this.bounds);
  }

  async get() {
    const values: PromValue[] = [];
    const bucket = `${this.name}_bucket`;
    for (const s of this.series.values()) {
      let cumulative = 0;
      for (let i = 0; i < this.bounds.length; i++) {
        cumulative += s.buckets[i]!;
        values.push({ value: cumulative, metricName: bucket, labels: { le: this.bounds[i]!, ...s.labels } });
      }
      values.push({ value: s.count, metricName: bucket, labels: { le: '+Inf', ...s.labels } });
      values.push({ value: s.sum, metricName: `${this.name}_sum`, labels: s.labels });
      values.push({ value: s.count, metricName: `${this.name}_count`, labels: s.labels });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }
}
