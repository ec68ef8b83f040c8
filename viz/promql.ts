// PromQL of the viewer, built from small parts so each command's queries read as what they ask: a rate over the
// window (the recording rules of manifests/monitoring/ when the window is theirs and the server has them loaded,
// the raw counters otherwise), summed by the labels a table's rows are keyed on, filtered by label matchers.

/** The metric families the viewer reads, as the agent exports them (agent/telemetry/metrics.ts). */
export type Family = 'requests' | 'latency' | 'tcpOpened' | 'tcpReceived' | 'tcpSent';

export const RAW: Readonly<Record<Family, string>> = {
  requests: 'trellis_requests_total',
  latency: 'trellis_request_duration_seconds_bucket',
  tcpOpened: 'trellis_tcp_connections_opened_total',
  tcpReceived: 'trellis_tcp_received_bytes_total',
  tcpSent: 'trellis_tcp_sent_bytes_total',
};

/** The recording rules (manifests/monitoring/prometheusrule.yaml), each a 1m rate of its family summed per edge. */
export const RULES: Readonly<Record<Family, string>> = {
  requests: 'edge:trellis_requests:rate1m',
  latency: 'edge:trellis_request_duration_seconds_bucket:rate1m',
  tcpOpened: 'edge:trellis_tcp_connections_opened:rate1m',
  tcpReceived: 'edge:trellis_tcp_received_bytes:rate1m',
  tcpSent: 'edge:trellis_tcp_sent_bytes:rate1m',
};
/** Open connections per edge (opened minus closed, summed over the agents). */
export const OPEN_RULE = 'edge:trellis_tcp_connections_open:sum';
/** The window the rules were recorded over. */
export const RULES_WINDOW = '1m';

/** A label's value: exact (`=`), a regular expression (`=~`, anchored by Prometheus), or not equal (`!=`). */
export type Matcher = string | { readonly re: string } | { readonly ne: string };
export type Matchers = Readonly<Record<string, Matcher | undefined>>;

/** How the queries of one command read the counters: the window, and whether to use the recording rules. */
export interface Source {
  readonly window: string;
  /** The server has the recording rules loaded (then they serve the window they were recorded over). */
  readonly rules: boolean;
}

/** A PromQL window: a number and a unit Prometheus takes, at least 1s (what `--window` accepts). */
export function parseWindow(text: string): string | undefined {
  const m = /^(\d+)(s|m|h|d)$/.exec(text.trim());
  if (!m || Number(m[1]) <= 0) return undefined;
  return `${Number(m[1])}${m[2]}`;
}

/** A double-quoted PromQL string. */
export function quote(value: string): string {
  return `"${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`;
}

/** A regular expression matching exactly `text` (RE2 syntax, as Prometheus reads it). */
export function literal(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** `{a="x",b=~"y"}`, labels in the order given, undefined ones left out; `` when none. */
export function selector(m: Matchers): string {
  const parts: string[] = [];
  for (const [name, v] of Object.entries(m)) {
    if (v === undefined) continue;
    if (typeof v === 'string') parts.push(`${name}=${quote(v)}`);
    else if ('re' in v) parts.push(`${name}=~${quote(v.re)}`);
    else parts.push(`${name}!=${quote(v.ne)}`);
  }
  return parts.length ? `{${parts.join(',')}}` : '';
}

/** The rate of a family over the window: its recording rule, or rate() of the raw counter. */
export function rateOf(family: Family, m: Matchers, src: Source): string {
  if (useRules(src)) return `${RULES[family]}${selector(m)}`;
  return `rate(${RAW[family]}${selector(m)}[${src.window}])`;
}

export function useRules(src: Source): boolean {
  return src.rules && src.window === RULES_WINDOW;
}

/** `sum by (labels) (rate)`. */
export function sumRate(family: Family, by: readonly string[], m: Matchers, src: Source): string {
  return `sum by (${by.join(', ')}) (${rateOf(family, m, src)})`;
}

/** A latency quantile (seconds) per row from the duration histogram. */
export function latencyQuantile(q: number, by: readonly string[], m: Matchers, src: Source): string {
  return `histogram_quantile(${q}, sum by (le, ${by.join(', ')}) (${rateOf('latency', m, src)}))`;
}

/** Connections open now per row: not a rate, so the rule serves any window. */
export function openConnections(by: readonly string[], m: Matchers, src: Source): string {
  const sum = (expr: string) => `sum by (${by.join(', ')}) (${expr})`;
  if (src.rules) return sum(`${OPEN_RULE}${selector(m)}`);
  return `${sum(`trellis_tcp_connections_opened_total${selector(m)}`)} - ${sum(`trellis_tcp_connections_closed_total${selector(m)}`)}`;
}

/** Every recording rule the viewer can use; all must be loaded for `Source.rules`. */
export const ALL_RULES: readonly string[] = [...Object.values(RULES), OPEN_RULE];
