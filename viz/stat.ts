// `trellis stat`: the golden metrics per namespace, workload or Service over a window, as `linkerd viz stat` shows
// them. By default each row is a destination (what its callers asked of it); with --to, each row is a caller of
// the --to target. A row's numbers come from the agent on its own side (reporter="destination" for a destination,
// "source" for a caller), which sees every peer, meshed or not; a workload that only the other side reports is
// outside the mesh (MESHED no), and its numbers are what the meshed peers saw.
import { VizError } from './errors.js';
import { latencyQuantile, literal, openConnections, sumRate, type Matchers } from './promql.js';
import { failed, finite, quantile, serviceOf, share, type QueryContext } from './query.js';
import type { VectorSample } from './prom/client.js';

export type StatKind = 'namespace' | 'workload' | 'service';

/** What --from and --to name: a workload, a namespace, or (--to only) a Service. */
export interface Peer {
  readonly kind: StatKind;
  readonly name: string;
  readonly namespace: string;
}

export interface StatRequest {
  readonly kind: StatKind;
  readonly name?: string | undefined;
  /** undefined: every namespace. */
  readonly namespace: string | undefined;
  readonly from?: Peer | undefined;
  readonly to?: Peer | undefined;
}

export interface StatRow {
  readonly namespace: string;
  readonly name: string;
  /** The row's own agent reports it (its side of the traffic is captured). */
  readonly meshed: boolean;
  readonly rps: number;
  /** Share of requests that did not fail (not 5xx; gRPC OK); null without requests. */
  readonly successRate: number | null;
  /** Seconds; null without requests. */
  readonly latency: { readonly p50: number | null; readonly p95: number | null; readonly p99: number | null };
  readonly tcp: {
    /** Connections open at the end of the window. */
    readonly open: number;
    readonly openedPerSecond: number;
    /** Bytes per second the row's workload read and wrote (a destination reads requests; a caller reads answers). */
    readonly readBytesPerSecond: number;
    readonly writeBytesPerSecond: number;
  };
  /** Share carried over mutual TLS: of the requests, or (no requests) of the connections; null without either. */
  readonly secured: number | null;
  readonly securedBasis: 'requests' | 'connections' | null;
}

type Side = 'source' | 'destination';
const QUANTILES = [0.5, 0.95, 0.99] as const;

/** The PromQL of a stat request: one query per column family, every one keyed by the row labels and the reporter. */
export function statQueries(req: StatRequest, ctx: Pick<QueryContext, 'source'>): Record<'requests' | 'p50' | 'p95' | 'p99' | 'opened' | 'received' | 'sent' | 'open', string> {
  const { by, matchers } = plan(req);
  const src = ctx.source;
  const keyed = [...by, 'reporter'];
  return {
    requests: sumRate('requests', [...keyed, 'response_code', 'grpc_response_status', 'request_protocol', 'connection_security_policy'], matchers, src),
    p50: latencyQuantile(QUANTILES[0], keyed, matchers, src),
    p95: latencyQuantile(QUANTILES[1], keyed, matchers, src),
    p99: latencyQuantile(QUANTILES[2], keyed, matchers, src),
    opened: sumRate('tcpOpened', [...keyed, 'connection_security_policy'], matchers, src),
    received: sumRate('tcpReceived', keyed, matchers, src),
    sent: sumRate('tcpSent', keyed, matchers, src),
    open: openConnections([...keyed, 'connection_security_policy'], matchers, src),
  };
}

export async function stat(req: StatRequest, ctx: QueryContext): Promise<StatRow[]> {
  const queries = statQueries(req, ctx);
  const names = Object.keys(queries) as (keyof typeof queries)[];
  const answers = await Promise.all(names.map((n) => ctx.query(queries[n])));
  const results = Object.fromEntries(names.map((n, i) => [n, answers[i]!])) as Record<keyof typeof queries, readonly VectorSample[]>;
  return assembleStat(req, results);
}

/** Row labels and matchers of a request (the view: destinations, or with --to the callers). */
function plan(req: StatRequest): { side: Side; by: string[]; matchers: Matchers } {
  if (req.from && req.to) throw new VizError('ECONFIG', '--from and --to: give one of them (--from filters the callers of each row, --to makes each row a caller of one target)');
  const side: Side = req.to ? 'source' : 'destination';
  if (req.kind === 'service' && side === 'source') throw new VizError('ECONFIG', 'svc rows are destinations: use --from to filter their callers, not --to');
  if (req.from?.kind === 'service') throw new VizError('ECONFIG', '--from names a caller: a workload (deploy/NAME) or a namespace (ns/NAME), not a Service');
  const by = rowLabels(req.kind, side);
  const matchers: Record<string, Matchers[string]> = { reporter: { re: 'source|destination' } };
  Object.assign(matchers, targetMatchers(req.kind, side, req.name, req.kind === 'namespace' ? undefined : req.namespace));
  if (req.from) Object.assign(matchers, targetMatchers(req.from.kind, 'source', req.from.name, req.from.namespace));
  if (req.to) Object.assign(matchers, targetMatchers(req.to.kind, 'destination', req.to.name, req.to.namespace));
  return { side, by, matchers };
}

function rowLabels(kind: StatKind, side: Side): string[] {
  if (kind === 'service') return ['destination_service'];
  if (kind === 'namespace') return [`${side}_workload_namespace`];
  return [`${side}_workload_namespace`, `${side}_workload`];
}

/** Matchers that select one side's workload, namespace or Service (name undefined: all of them in the namespace). */
function targetMatchers(kind: StatKind, side: Side, name: string | undefined, namespace: string | undefined): Matchers {
  if (kind === 'service') {
    const svc = name === undefined ? '[^.]+' : literal(name);
    const ns = namespace === undefined ? '[^.]+' : literal(namespace);
    return name === undefined && namespace === undefined ? {} : { destination_service: { re: `${svc}\\.${ns}\\.svc\\..+` } };
  }
  if (kind === 'namespace') return name === undefined ? {} : { [`${side}_workload_namespace`]: name };
  return { [`${side}_workload_namespace`]: namespace, [`${side}_workload`]: name };
}

interface Acc {
  namespace: string;
  name: string;
  rps: number;
  ok: number;
  mtlsRequests: number;
  opened: number;
  mtlsOpened: number;
  open: number;
  mtlsOpen: number;
  received: number;
  sent: number;
  quantiles: Partial<Record<'p50' | 'p95' | 'p99', number>>;
}

/** Rows from the answers of statQueries (also per step of a range query: the dashboard's sparklines). */
export function assembleStat(req: StatRequest, r: Record<'requests' | 'p50' | 'p95' | 'p99' | 'opened' | 'received' | 'sent' | 'open', readonly VectorSample[]>): StatRow[] {
  const { side } = plan(req);
  // Row key -> reporter -> what that reporter saw.
  const rows = new Map<string, Map<string, Acc>>();
  const accFor = (s: VectorSample): Acc | undefined => {
    const id = rowId(req.kind, side, s.labels);
    if (!id) return undefined;
    const reporter = s.labels.reporter ?? '';
    let byReporter = rows.get(id.key);
    if (!byReporter) rows.set(id.key, (byReporter = new Map()));
    let acc = byReporter.get(reporter);
    if (!acc) {
      acc = { namespace: id.namespace, name: id.name, rps: 0, ok: 0, mtlsRequests: 0, opened: 0, mtlsOpened: 0, open: 0, mtlsOpen: 0, received: 0, sent: 0, quantiles: {} };
      byReporter.set(reporter, acc);
    }
    return acc;
  };
  const mtls = (s: VectorSample) => s.labels.connection_security_policy === 'mutual_tls';
  for (const s of r.requests) {
    const a = accFor(s);
    if (!a) continue;
    const v = finite(s.value);
    a.rps += v;
    if (!failed(s.labels)) a.ok += v;
    if (mtls(s)) a.mtlsRequests += v;
  }
  for (const q of ['p50', 'p95', 'p99'] as const) {
    for (const s of r[q]) {
      const a = accFor(s);
      if (a) a.quantiles[q] = s.value;
    }
  }
  for (const s of r.opened) {
    const a = accFor(s);
    if (!a) continue;
    a.opened += finite(s.value);
    if (mtls(s)) a.mtlsOpened += finite(s.value);
  }
  for (const s of r.open) {
    const a = accFor(s);
    if (!a) continue;
    a.open += finite(s.value);
    if (mtls(s)) a.mtlsOpen += finite(s.value);
  }
  for (const s of r.received) {
    const a = accFor(s);
    if (a) a.received += finite(s.value);
  }
  for (const s of r.sent) {
    const a = accFor(s);
    if (a) a.sent += finite(s.value);
  }
  const out: StatRow[] = [];
  for (const byReporter of rows.values()) {
    const own = byReporter.get(side);
    const a = own ?? byReporter.get(side === 'destination' ? 'source' : 'destination')!;
    const basis = a.rps > 0 ? 'requests' : a.opened > 0 || a.open > 0 ? 'connections' : null;
    const secured =
      basis === 'requests' ? share(a.mtlsRequests, a.rps) : basis === 'connections' ? (a.opened > 0 ? share(a.mtlsOpened, a.opened) : share(a.mtlsOpen, a.open)) : null;
    // A destination reads the requests (client to server bytes) and writes the answers; a caller the reverse.
    const [read, write] = side === 'destination' ? [a.received, a.sent] : [a.sent, a.received];
    out.push({
      namespace: a.namespace,
      name: a.name,
      meshed: own !== undefined,
      rps: a.rps,
      successRate: share(a.ok, a.rps),
      latency: { p50: quantile(a.quantiles.p50), p95: quantile(a.quantiles.p95), p99: quantile(a.quantiles.p99) },
      tcp: { open: Math.round(a.open), openedPerSecond: a.opened, readBytesPerSecond: read, writeBytesPerSecond: write },
      secured,
      securedBasis: basis,
    });
  }
  return out.sort((x, y) => x.namespace.localeCompare(y.namespace) || x.name.localeCompare(y.name));
}

/** The row a sample belongs to; undefined for a destination that is no workload (an address outside the cluster). */
function rowId(kind: StatKind, side: Side, l: Readonly<Record<string, string>>): { key: string; namespace: string; name: string } | undefined {
  if (kind === 'service') {
    const svc = serviceOf(l.destination_service ?? '');
    return svc && { key: `${svc.namespace}/${svc.name}`, ...svc };
  }
  const namespace = l[`${side}_workload_namespace`] ?? '';
  const name = kind === 'namespace' ? namespace : (l[`${side}_workload`] ?? '');
  if (side === 'destination' && (name === 'unknown' || namespace === 'unknown' || name === '')) return undefined;
  return { key: `${namespace}/${name}`, namespace, name };
}
