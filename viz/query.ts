// What every command's queries share: the function that runs one (a PromClient's query, or a fake in tests),
// the source of rates (window, recording rules), and sums over the samples of a row.
import type { VectorSample } from './prom/client.js';
import type { Source } from './promql.js';

export type Query = (expr: string) => Promise<readonly VectorSample[]>;

export interface QueryContext {
  readonly query: Query;
  readonly source: Source;
}

/** A request failed: 5xx (or no answer, 0), or a gRPC status other than OK (docs/architecture.md, "Metrics"). */
export function failed(labels: Readonly<Record<string, string>>): boolean {
  const code = Number(labels.response_code);
  if (!(code > 0) || code >= 500) return true;
  return labels.request_protocol === 'grpc' && labels.grpc_response_status !== '0';
}

/** Finite values only (a rate of a reset counter, a quantile of nothing, are not numbers worth adding). */
export function finite(n: number): number {
  return Number.isFinite(n) ? n : 0;
}

/** A share, or null when there is nothing to share. */
export function share(part: number, whole: number): number | null {
  return whole > 0 ? part / whole : null;
}

/** A quantile (seconds), or null when Prometheus had no requests to take it from. */
export function quantile(v: number | undefined): number | null {
  return v !== undefined && Number.isFinite(v) ? v : null;
}

/** `{"name":"web.shop.svc.cluster.local"}` -> shop/web; undefined for what is not a Service's name. */
export function serviceOf(fqdn: string): { namespace: string; name: string } | undefined {
  const m = /^([^.]+)\.([^.]+)\.svc(\.|$)/.exec(fqdn);
  return m ? { name: m[1]!, namespace: m[2]! } : undefined;
}
