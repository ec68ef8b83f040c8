// Workload tools: a bounded gRPC client (grpc-js, h2c) for the L7 tests: N unary calls to any method with raw
// bytes, counted by status, by the backend that answered and by the trailers that came back.
import * as grpc from '@grpc/grpc-js';
import { DEFAULT_GRPC_METHOD, GRPC_TRAILER } from './grpc-echo.js';
import { formatTarget, type Target } from './target.js';

export interface GrpcClientOptions extends Target {
  count: number;
  /** Calls in flight at once on the one channel; default 1. */
  concurrency?: number;
  /** /package.Service/Method; default grpc-echo's Echo. */
  method?: string;
  metadata?: Record<string, string>;
  /** Request message bytes (grpc-echo ignores them but counts them). */
  body?: string;
  /** Per call deadline; default 10 s. */
  timeoutMs?: number;
  /** Keep the first N calls whole in the summary. */
  replies?: number;
}

export interface GrpcCall {
  i: number;
  /** grpc-status (0 OK, 14 UNAVAILABLE...). */
  code: number;
  details: string;
  /** The reply message parsed as JSON (grpc-echo's), else its text; null on failure. */
  body: unknown;
  /** Trailing metadata, text values. */
  trailers: Record<string, string>;
  ms: number;
}

export interface GrpcClientSummary {
  sent: number;
  ok: number;
  failed: number;
  /** By grpc-status code ("0", "14"...). */
  statusCounts: Record<string, number>;
  /** By the backend's name: the reply's `name`, else the x-echo-trailer of a failed call. */
  names: Record<string, number>;
  /** Trailer key -> value -> calls that carried it (grpc-* keys and transport headers left out). */
  trailers: Record<string, Record<string, number>>;
  /** The first few distinct failure details, to say why. */
  details: string[];
  p50_ms: number | null;
  max_ms: number | null;
  replies?: GrpcCall[];
}

const identity = (b: Buffer): Buffer => b;
const MAX_DETAILS = 5;
/** In a trailers-only answer the headers are the trailers: these say nothing about the call. */
const TRANSPORT_HEADERS = new Set(['content-type', 'date', 'server', 'content-length']);

export async function grpcClient(opts: GrpcClientOptions): Promise<GrpcClientSummary> {
  const concurrency = Math.max(1, opts.concurrency ?? 1);
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const method = opts.method ?? DEFAULT_GRPC_METHOD;
  const keep = opts.replies ?? 0;
  const client = new grpc.Client(formatTarget(opts), grpc.credentials.createInsecure());
  const summary: GrpcClientSummary = { sent: 0, ok: 0, failed: 0, statusCounts: {}, names: {}, trailers: {}, details: [], p50_ms: null, max_ms: null };
  const replies: GrpcCall[] = [];
  const latencies: number[] = [];
  const bump = (m: Record<string, number>, k: string): void => void (m[k] = (m[k] ?? 0) + 1);

  const call = (i: number): Promise<GrpcCall> =>
    new Promise((resolve) => {
      const started = performance.now();
      const metadata = new grpc.Metadata();
      for (const [k, v] of Object.entries(opts.metadata ?? {})) metadata.set(k.toLowerCase(), v);
      let message: Buffer | undefined;
      const c = client.makeUnaryRequest(
        method,
        identity,
        identity,
        Buffer.from(opts.body ?? ''),
        metadata,
        { deadline: Date.now() + timeoutMs },
        (_err, value) => (message = value),
      );
      // 'status' comes after the callback, for successes and failures alike, with the trailers.
      c.on('status', (status: grpc.StatusObject) => {
        const trailers: Record<string, string> = {};
        for (const [k, v] of Object.entries(status.metadata.getMap())) if (typeof v === 'string') trailers[k] = v;
        resolve({ i, code: status.code, details: status.details, body: message ? parseMessage(message) : null, trailers, ms: performance.now() - started });
      });
    });

  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < opts.count) {
      const i = next++;
      summary.sent++;
      const r = await call(i);
      latencies.push(r.ms);
      bump(summary.statusCounts, String(r.code));
      if (r.code === grpc.status.OK) summary.ok++;
      else {
        summary.failed++;
        if (summary.details.length < MAX_DETAILS && !summary.details.includes(r.details)) summary.details.push(r.details);
      }
      const named = (r.body as { name?: unknown } | null)?.name;
      const name = typeof named === 'string' ? named : r.trailers[GRPC_TRAILER];
      if (name !== undefined) bump(summary.names, name);
      for (const [k, v] of Object.entries(r.trailers)) {
        if (k.startsWith('grpc-') || TRANSPORT_HEADERS.has(k)) continue;
        bump((summary.trailers[k] ??= {}), v);
      }
      if (i < keep) replies.push({ ...r, ms: Math.round(r.ms * 100) / 100 });
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    client.close();
  }
  latencies.sort((a, b) => a - b);
  summary.p50_ms = latencies.length ? Math.round(latencies[Math.ceil(latencies.length / 2) - 1]! * 100) / 100 : null;
  summary.max_ms = latencies.length ? Math.round(latencies.at(-1)! * 100) / 100 : null;
  if (keep > 0) summary.replies = replies.sort((a, b) => a.i - b.i);
  return summary;
}

function parseMessage(b: Buffer): unknown {
  const text = b.toString('utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}
