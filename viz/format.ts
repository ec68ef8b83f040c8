// How the viewer prints: `-o table` (aligned, the same printer as the demo and `lab status`), `-o wide` (more
// columns) and `-o json` (every number, unrounded, in base units: seconds, bytes, shares from 0 to 1).
import { formatTable } from '../agent/cli/table.js';
import type { EdgeRow } from './edges.js';
import type { RouteRow } from './routes.js';
import type { StatKind, StatRow } from './stat.js';

export type Output = 'table' | 'wide' | 'json';
export const OUTPUTS: readonly Output[] = ['table', 'wide', 'json'];

/** What a JSON answer says about where its numbers come from. */
export interface Provenance {
  readonly prometheus: string;
  readonly lab?: string | undefined;
  readonly window: string;
  /** The recording rules of manifests/monitoring/ were read (else the raw counters). */
  readonly recordingRules: boolean;
  /** The evaluation time of every query, ISO 8601. */
  readonly at: string;
}

/** A share as a percentage with two decimals ("75.00%"), "-" for none. */
export function percent(x: number | null): string {
  return x === null ? '-' : `${(x * 100).toFixed(2)}%`;
}

/** A security share, rounded down: "100%" only when all of it is. */
export function securedPercent(x: number | null): string {
  return x === null ? '-' : `${Math.floor(x * 100 + 1e-9)}%`;
}

export function perSecond(x: number): string {
  return x >= 1000 ? x.toFixed(0) : x.toFixed(2);
}

/** Seconds as milliseconds (or seconds past 10 s), with the precision a latency is worth; "-" for none. */
export function latency(seconds: number | null): string {
  if (seconds === null) return '-';
  const ms = seconds * 1000;
  if (ms < 10) return `${ms.toFixed(2)}ms`;
  if (ms < 100) return `${ms.toFixed(1)}ms`;
  if (ms < 10_000) return `${ms.toFixed(0)}ms`;
  return `${seconds.toFixed(1)}s`;
}

export function bytesPerSecond(x: number): string {
  const units = ['B/s', 'KiB/s', 'MiB/s', 'GiB/s'];
  let v = x;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v.toFixed(0)}${units[u]}` : `${v.toFixed(1)}${units[u]}`;
}

export function statTable(rows: readonly StatRow[], opts: { kind: StatKind; allNamespaces: boolean; wide: boolean }): string {
  const withNs = opts.allNamespaces && opts.kind !== 'namespace';
  const text = ['NAME', 'MESHED'];
  if (withNs) text.unshift('NAMESPACE');
  const numbers = ['SUCCESS', 'RPS', 'LATENCY_P50', 'LATENCY_P95', 'LATENCY_P99', 'TCP_CONN', 'SECURED'];
  if (opts.wide) numbers.push('CONN/SEC', 'READ_BYTES/SEC', 'WRITE_BYTES/SEC');
  const body = rows.map((r) => [
    ...(withNs ? [r.namespace] : []),
    r.name,
    r.meshed ? 'yes' : 'no',
    percent(r.successRate),
    perSecond(r.rps),
    latency(r.latency.p50),
    latency(r.latency.p95),
    latency(r.latency.p99),
    String(r.tcp.open),
    securedPercent(r.secured),
    ...(opts.wide ? [perSecond(r.tcp.openedPerSecond), bytesPerSecond(r.tcp.readBytesPerSecond), bytesPerSecond(r.tcp.writeBytesPerSecond)] : []),
  ]);
  return formatTable([[...text, ...numbers], ...body], text.length);
}

export function edgesTable(rows: readonly EdgeRow[], opts: { wide: boolean }): string {
  const text = ['SRC', 'DST', 'SRC_NS', 'DST_NS', 'SECURED', 'CLIENT_ID', 'SERVER_ID'];
  if (opts.wide) text.push('REPORTED_BY');
  const numbers = opts.wide ? ['RPS', 'CONN/SEC', 'TCP_CONN'] : [];
  const body = rows.map((r) => [
    r.source.workload,
    r.destination.workload,
    r.source.namespace,
    r.destination.namespace,
    r.mtls ? 'yes' : r.mtlsShare === null || r.mtlsShare === 0 ? 'no' : `partly (${securedPercent(r.mtlsShare)})`,
    r.source.identity ?? '-',
    r.destination.identity ?? '-',
    ...(opts.wide ? [r.reportedBy.join(','), perSecond(r.rps), perSecond(r.connectionsPerSecond), String(r.open)] : []),
  ]);
  return formatTable([[...text, ...numbers], ...body], text.length);
}

export function routesTable(rows: readonly RouteRow[], opts: { wide: boolean }): string {
  const text = ['ROUTE', 'RULE', 'BACKEND'];
  if (opts.wide) text.push('MATCH');
  const numbers = ['WEIGHT', 'SPLIT', 'SUCCESS', 'RPS', 'LATENCY_P50', 'LATENCY_P95', 'LATENCY_P99'];
  const body = rows.map((r) => [
    r.route,
    r.rule,
    r.backend,
    ...(opts.wide ? [r.match] : []),
    percent(r.weight),
    percent(r.split),
    percent(r.successRate),
    perSecond(r.rps),
    latency(r.latency.p50),
    latency(r.latency.p95),
    latency(r.latency.p99),
  ]);
  return formatTable([[...text, ...numbers], ...body], text.length);
}

/** The JSON answer: where the numbers come from, then the rows. */
export function asJson(provenance: Provenance, rows: readonly unknown[]): string {
  return `${JSON.stringify({ ...provenance, rows }, null, 2)}\n`;
}
