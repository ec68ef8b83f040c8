// Workload tools: new connections per second through a path. Each connection carries one request
// (Connection: close) and ends; `concurrency` loops run until the duration is over.
import { LatencyHistogram } from '../load/histogram.js';
import { LabError } from '../errors.js';
import { httpOnce } from './http-once.js';
import { parseHttpUrl, requestBytes } from './http-url.js';

export interface ConnRateOptions {
  url: string;
  durationS: number;
  /** Connections in progress at once; default 8. */
  concurrency?: number;
  /** Per connection (connect, request, response, close); default 5 s. */
  timeoutMs?: number;
}

export interface ConnRateReport {
  connections: number;
  ok: number;
  errors: number;
  error_counts: Record<string, number>;
  /** Successful connections per second of the run. */
  conn_per_s: number;
  /** Connect to response, per connection. */
  p50_ms: number | null;
  p99_ms: number | null;
}

export async function connRate(opts: ConnRateOptions): Promise<ConnRateReport> {
  if (!(opts.durationS > 0 && opts.durationS <= 3600)) throw new LabError('EINVAL', 'duration must be above 0 and at most 3600 s');
  const concurrency = opts.concurrency ?? 8;
  if (!(Number.isInteger(concurrency) && concurrency >= 1 && concurrency <= 1000)) throw new LabError('EINVAL', 'concurrency must be 1 to 1000');
  const target = parseHttpUrl(opts.url);
  const request = requestBytes(target, { close: true });
  const timeoutMs = opts.timeoutMs ?? 5000;
  const hist = new LatencyHistogram();
  const report: ConnRateReport = { connections: 0, ok: 0, errors: 0, error_counts: {}, conn_per_s: 0, p50_ms: null, p99_ms: null };
  const started = performance.now();
  const deadline = started + opts.durationS * 1000;
  const loop = async (): Promise<void> => {
    while (performance.now() < deadline) {
      report.connections++;
      const r = await httpOnce(target, request, timeoutMs);
      const code = r.ok ? (r.status < 400 ? undefined : String(r.status)) : r.code;
      if (code === undefined) {
        report.ok++;
        hist.record(r.ms * 1000);
      } else {
        report.errors++;
        report.error_counts[code] = (report.error_counts[code] ?? 0) + 1;
        // A refused path fails fast; do not spin on it.
        if (!r.ok) await new Promise((res) => setTimeout(res, 10));
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  const seconds = (performance.now() - started) / 1000;
  const s = hist.summary();
  return { ...report, conn_per_s: Math.round((report.ok / seconds) * 10) / 10, p50_ms: s.p50_ms, p99_ms: s.p99_ms };
}
