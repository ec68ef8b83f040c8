// The Prometheus HTTP API as the viewer uses it: instant queries (/api/v1/query) evaluated at one moment for the
// whole command, so every table is one consistent picture, and the recording rules the server has loaded
// (/api/v1/rules). Every answer is checked with zod before anything reads it.
import { z } from 'zod';
import { VizError } from '../errors.js';
import type { PromTransport } from './transport.js';

export interface VectorSample {
  readonly labels: Readonly<Record<string, string>>;
  /** NaN where Prometheus says so (a quantile of no requests). */
  readonly value: number;
}

/** One series of a range query: its values at the evaluation times Prometheus had data for (Unix seconds). */
export interface MatrixSeries {
  readonly labels: Readonly<Record<string, string>>;
  readonly points: readonly (readonly [at: number, value: number])[];
}

/** Evaluation times of a range query: from `start` to `end` every `step` seconds (Unix seconds). */
export interface Range {
  readonly start: number;
  readonly end: number;
  readonly step: number;
}

const Sample = z.object({ metric: z.record(z.string(), z.string()), value: z.tuple([z.number(), z.string()]) });
const Series = z.object({ metric: z.record(z.string(), z.string()), values: z.array(z.tuple([z.number(), z.string()])) });
const QueryAnswer = z.discriminatedUnion('status', [
  z.object({
    status: z.literal('success'),
    data: z.object({ resultType: z.string(), result: z.array(z.unknown()) }),
    warnings: z.array(z.string()).optional(),
  }),
  z.object({ status: z.literal('error'), errorType: z.string(), error: z.string() }),
]);
const RulesAnswer = z.object({
  status: z.literal('success'),
  data: z.object({
    groups: z.array(z.object({ name: z.string(), rules: z.array(z.object({ name: z.string(), type: z.string(), health: z.string().optional() })) })),
  }),
});

export class PromClient {
  readonly where: string;

  /** `at`: the evaluation time of every query, Unix seconds (default: now). */
  constructor(
    private readonly transport: PromTransport,
    readonly at: number = Date.now() / 1000,
  ) {
    this.where = transport.where;
  }

  /** An instant vector query. */
  async query(expr: string): Promise<VectorSample[]> {
    const params = new URLSearchParams({ query: expr, time: this.at.toFixed(3) });
    const body = await this.getJson(`/api/v1/query?${params}`, QueryAnswer, `query ${expr}`);
    if (body.status === 'error') throw new VizError('EPROMETHEUS', `Prometheus at ${this.where} refused the query ${expr}: ${body.errorType}: ${body.error}`);
    if (body.data.resultType !== 'vector') {
      throw new VizError('EPROMETHEUS', `Prometheus at ${this.where} answered the query ${expr} with a ${body.data.resultType}, not a vector`);
    }
    return z.array(Sample).parse(body.data.result).map((s) => ({ labels: s.metric, value: parseValue(s.value[1]) }));
  }

  /** A range query (/api/v1/query_range): the sparklines and split charts of the dashboard. */
  async queryRange(expr: string, range: Range): Promise<MatrixSeries[]> {
    const params = new URLSearchParams({ query: expr, start: range.start.toFixed(3), end: range.end.toFixed(3), step: String(range.step) });
    const body = await this.getJson(`/api/v1/query_range?${params}`, QueryAnswer, `query ${expr}`);
    if (body.status === 'error') throw new VizError('EPROMETHEUS', `Prometheus at ${this.where} refused the range query ${expr}: ${body.errorType}: ${body.error}`);
    if (body.data.resultType !== 'matrix') {
      throw new VizError('EPROMETHEUS', `Prometheus at ${this.where} answered the range query ${expr} with a ${body.data.resultType}, not a matrix`);
    }
    return z.array(Series).parse(body.data.result).map((s) => ({ labels: s.metric, points: s.values.map(([t, v]) => [t, parseValue(v)] as const) }));
  }

  /** Names of the healthy recording rules the server has loaded. */
  async recordingRules(): Promise<Set<string>> {
    const body = await this.getJson('/api/v1/rules?type=record', RulesAnswer, 'rules');
    return new Set(body.data.groups.flatMap((g) => g.rules.filter((r) => r.type === 'recording' && r.health !== 'err').map((r) => r.name)));
  }

  private async getJson<T>(pathAndQuery: string, schema: z.ZodType<T>, what: string): Promise<T> {
    const res = await this.transport.get(pathAndQuery);
    let json: unknown;
    try {
      json = JSON.parse(res.body);
    } catch {
      const text = res.body.trim().replace(/\s+/g, ' ').slice(0, 120);
      throw new VizError('EPROMETHEUS', `${this.where} is not a Prometheus API (${what}: HTTP ${res.status}, not JSON: "${text}"); check --prometheus (the server's base URL, e.g. http://prometheus.monitoring:9090)`);
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) {
      // Prometheus answers query errors with 4xx/5xx and the error object: worth its own message.
      const err = QueryAnswer.safeParse(json);
      if (err.success && err.data.status === 'error') throw new VizError('EPROMETHEUS', `Prometheus at ${this.where} (${what}): ${err.data.errorType}: ${err.data.error}`);
      throw new VizError('EPROMETHEUS', `${this.where} answered ${what} with HTTP ${res.status} and a body that is not Prometheus's: ${z.prettifyError(parsed.error).split('\n')[0]}`);
    }
    return parsed.data;
  }
}

function parseValue(text: string): number {
  if (text === '+Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  return Number(text);
}
