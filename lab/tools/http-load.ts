// Workload tools: a bounded HTTP/1.1 load client over keep-alive connections; its summary is what
// end-to-end tests compare with the mesh's golden metrics.
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { LabError } from '../errors.js';
import { codeOf } from './wait.js';

export interface HttpLoadOptions {
  url: string;
  /** Sends at most this many requests. */
  count: number;
  /** Keep-alive connections, each sending one request at a time; defaults to 1. */
  concurrency?: number;
  /** Starts no request after this many seconds. */
  durationS?: number;
  /** Pause between two requests on the same connection. */
  intervalMs?: number;
  /** Per request; defaults to 10 s. */
  timeoutMs?: number;
}

export interface HttpLoadSummary {
  sent: number;
  /** Responses with status below 400. */
  ok: number;
  /** Responses with status 400 and above, and requests that got no response. */
  failed: number;
  /** By status code ("200") or, without a response, by error code ("ECONNREFUSED"). */
  statusCounts: Record<string, number>;
  /** Latency of the requests that got a response; null when none did. */
  p50_ms: number | null;
  p99_ms: number | null;
}

/** exitCode 0 when the run happened (even with failures); 2 when no request succeeded. */
export interface HttpLoadOutcome {
  exitCode: 0 | 2;
  summary: HttpLoadSummary;
}

type Result = { status: number; ms: number } | { error: string };

export async function httpLoad(opts: HttpLoadOptions): Promise<HttpLoadOutcome> {
  const url = new URL(opts.url);
  if (url.protocol !== 'http:') throw new LabError('EINVAL', `http-load speaks plain HTTP only, got ${opts.url}`);
  const concurrency = Math.max(1, opts.concurrency ?? 1);
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const deadline = opts.durationS === undefined ? Infinity : performance.now() + opts.durationS * 1000;

  const summary: HttpLoadSummary = { sent: 0, ok: 0, failed: 0, statusCounts: {}, p50_ms: null, p99_ms: null };
  const latencies: number[] = [];
  const record = (r: Result): void => {
    const key = 'error' in r ? r.error : String(r.status);
    summary.statusCounts[key] = (summary.statusCounts[key] ?? 0) + 1;
    if ('error' in r) {
      summary.failed++;
      return;
    }
    latencies.push(r.ms);
    if (r.status < 400) summary.ok++;
    else summary.failed++;
  };

  const worker = async (): Promise<void> => {
    while (summary.sent < opts.count && performance.now() < deadline) {
      summary.sent++;
      record(await request(url, agent, timeoutMs));
      if (opts.intervalMs && summary.sent < opts.count) await sleep(opts.intervalMs);
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    agent.destroy();
  }

  latencies.sort((a, b) => a - b);
  summary.p50_ms = percentile(latencies, 0.5);
  summary.p99_ms = percentile(latencies, 0.99);
  return { exitCode: summary.ok > 0 ? 0 : 2, summary };
}

function request(url: URL, agent: http.Agent, timeoutMs: number): Promise<Result> {
  return new Promise((resolve) => {
    const started = performance.now();
    const req = http.get(url, { agent }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: performance.now() - started }));
      res.on('error', (err) => resolve({ error: codeOf(err) }));
      res.on('close', () => {
        if (!res.complete) resolve({ error: 'ECONNRESET' });
      });
    });
    req.setTimeout(timeoutMs, () => req.destroy(new LabError('ETIMEDOUT', `no response within ${timeoutMs} ms`)));
    req.on('error', (err) => resolve({ error: codeOf(err) }));
  });
}

function percentile(sorted: number[], q: number): number | null {
  if (sorted.length === 0) return null;
  const value = sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? 0;
  return Math.round(value * 100) / 100;
}
