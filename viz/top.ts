// `trellis top NS/WORKLOAD`: a workload's busiest edges and routes over the window, both ways: who calls it (one row
// per caller) and what it calls (one row per callee, Service and route rule). Until tap exists the rows come from
// Prometheus, which holds no request paths (bounded labels only): a row is an edge or a route rule, not a path.
// Each row takes one agent's view: the workload's own agent when it reports the peer (it sees every peer, meshed or
// not), else the peer's (the workload is outside the mesh).
import { formatTable } from '../agent/cli/table.js';
import { latency, percent, perSecond, securedPercent } from './format.js';
import { latencyQuantile, sumRate, type Matchers } from './promql.js';
import { failed, finite, quantile, serviceOf, share, type QueryContext } from './query.js';
import type { VectorSample } from './prom/client.js';

export type Direction = 'inbound' | 'outbound';

export interface TopTarget {
  readonly namespace: string;
  readonly workload: string;
}

export interface TopRow {
  /** inbound: the peer calls the workload; outbound: the workload calls the peer. */
  readonly direction: Direction;
  readonly peer: { readonly namespace: string; readonly workload: string };
  /** Outbound: the Service called (namespace/name), when the agent knew it. */
  readonly service: string | null;
  /** Outbound through an HTTPRoute/GRPCRoute: namespace/name and the rule. */
  readonly route: { readonly name: string; readonly rule: string } | null;
  readonly rps: number;
  readonly successRate: number | null;
  readonly latency: { readonly p50: number | null; readonly p99: number | null };
  /** Opaque TCP connections opened per second (HTTP connections are counted per request). */
  readonly connectionsPerSecond: number;
  /** Share over mutual TLS: of the requests, else of the connections. */
  readonly secured: number | null;
  readonly reporter: 'source' | 'destination';
}

type Side = 'source' | 'destination';
const OWN: Readonly<Record<Direction, Side>> = { inbound: 'destination', outbound: 'source' };
/** The labels that name the other end of each direction's rows. */
const PEER: Readonly<Record<Direction, readonly string[]>> = {
  inbound: ['source_workload_namespace', 'source_workload'],
  outbound: ['destination_workload_namespace', 'destination_workload', 'destination_service', 'route_namespace', 'route_name', 'route_rule'],
};
const TCP_PEER: Readonly<Record<Direction, readonly string[]>> = {
  inbound: PEER.inbound,
  outbound: ['destination_workload_namespace', 'destination_workload', 'destination_service'],
};
const OUTCOME = ['response_code', 'grpc_response_status', 'request_protocol', 'connection_security_policy'];

type QueryName = `${Direction}_${'requests' | 'p50' | 'p99' | 'opened'}`;

export function topQueries(t: TopTarget, ctx: Pick<QueryContext, 'source'>): Record<QueryName, string> {
  const out = {} as Record<QueryName, string>;
  for (const dir of ['inbound', 'outbound'] as const) {
    const self = dir === 'inbound' ? 'destination' : 'source';
    const m: Matchers = { reporter: { re: 'source|destination' }, [`${self}_workload_namespace`]: t.namespace, [`${self}_workload`]: t.workload };
    const by = ['reporter', ...PEER[dir]];
    out[`${dir}_requests`] = sumRate('requests', [...by, ...OUTCOME], m, ctx.source);
    out[`${dir}_p50`] = latencyQuantile(0.5, by, m, ctx.source);
    out[`${dir}_p99`] = latencyQuantile(0.99, by, m, ctx.source);
    out[`${dir}_opened`] = sumRate('tcpOpened', ['reporter', ...TCP_PEER[dir], 'connection_security_policy'], m, ctx.source);
  }
  return out;
}

export async function top(t: TopTarget, ctx: QueryContext): Promise<TopRow[]> {
  const q = topQueries(t, ctx);
  const names = Object.keys(q) as QueryName[];
  const answers = await Promise.all(names.map((n) => ctx.query(q[n])));
  return assembleTop(Object.fromEntries(names.map((n, i) => [n, answers[i]!])) as Record<QueryName, readonly VectorSample[]>);
}

interface Acc {
  direction: Direction;
  peer: { namespace: string; workload: string };
  service: string | null;
  route: { name: string; rule: string } | null;
  reporter: Side;
  rps: number;
  ok: number;
  mtlsRps: number;
  opened: number;
  mtlsOpened: number;
  p50?: number;
  p99?: number;
}

export function assembleTop(r: Readonly<Record<QueryName, readonly VectorSample[]>>): TopRow[] {
  const rows = new Map<string, Acc>();
  const accFor = (dir: Direction, l: Readonly<Record<string, string>>): Acc => {
    const ns = l[PEER[dir][0]!] ?? 'unknown';
    const wl = l[PEER[dir][1]!] ?? 'unknown';
    const svc = dir === 'outbound' ? serviceOf(l.destination_service ?? '') : undefined;
    const route = dir === 'outbound' && l.route_name ? { name: `${l.route_namespace}/${l.route_name}`, rule: l.route_rule ?? '' } : null;
    const reporter = (l.reporter === 'source' ? 'source' : 'destination') as Side;
    const key = [dir, reporter, ns, wl, svc ? `${svc.namespace}/${svc.name}` : '', route?.name ?? '', route?.rule ?? ''].join('|');
    let a = rows.get(key);
    if (!a) {
      a = { direction: dir, peer: { namespace: ns, workload: wl }, service: svc ? `${svc.namespace}/${svc.name}` : null, route, reporter, rps: 0, ok: 0, mtlsRps: 0, opened: 0, mtlsOpened: 0 };
      rows.set(key, a);
    }
    return a;
  };
  for (const dir of ['inbound', 'outbound'] as const) {
    for (const s of r[`${dir}_requests`]) {
      const v = finite(s.value);
      const a = accFor(dir, s.labels);
      a.rps += v;
      if (!failed(s.labels)) a.ok += v;
      if (s.labels.connection_security_policy === 'mutual_tls') a.mtlsRps += v;
    }
    for (const q of ['p50', 'p99'] as const) for (const s of r[`${dir}_${q}`]) accFor(dir, s.labels)[q] = s.value;
    for (const s of r[`${dir}_opened`]) {
      const v = finite(s.value);
      const a = accFor(dir, s.labels);
      a.opened += v;
      if (s.labels.connection_security_policy === 'mutual_tls') a.mtlsOpened += v;
    }
  }
  // One agent's view per peer: the workload's own when it reports that peer at all.
  const ownSees = new Set<string>();
  for (const a of rows.values()) if (a.reporter === OWN[a.direction]) ownSees.add(`${a.direction}|${a.peer.namespace}/${a.peer.workload}`);
  const out: TopRow[] = [];
  for (const a of rows.values()) {
    const own = a.reporter === OWN[a.direction];
    if (!own && ownSees.has(`${a.direction}|${a.peer.namespace}/${a.peer.workload}`)) continue;
    if (a.rps <= 0 && a.opened <= 0) continue;
    out.push({
      direction: a.direction,
      peer: a.peer,
      service: a.service,
      route: a.route,
      rps: a.rps,
      successRate: share(a.ok, a.rps),
      latency: { p50: quantile(a.p50), p99: quantile(a.p99) },
      connectionsPerSecond: a.opened,
      secured: a.rps > 0 ? share(a.mtlsRps, a.rps) : share(a.mtlsOpened, a.opened),
      reporter: a.reporter,
    });
  }
  const name = (x: TopRow) => `${x.direction}|${x.peer.namespace}/${x.peer.workload}|${x.service ?? ''}|${x.route?.name ?? ''}|${x.route?.rule ?? ''}`;
  return out.sort((x, y) => y.rps - x.rps || y.connectionsPerSecond - x.connectionsPerSecond || name(x).localeCompare(name(y)));
}

/**
 * The table of one picture: FROM and TO name both ends (the workload itself on one side of every row); SERVICE is the
 * one called (two versions of a workload behind a split share its name, not their Services).
 */
export function topTable(t: TopTarget, rows: readonly TopRow[], opts: { wide: boolean }): string {
  const text = ['FROM', 'TO', 'SERVICE', 'ROUTE'];
  if (opts.wide) text.push('REPORTED_BY');
  const numbers = ['RPS', 'SUCCESS', 'LATENCY_P50', 'LATENCY_P99', 'CONN/SEC', 'SECURED'];
  const end = (ns: string, wl: string) => (ns === t.namespace ? wl : `${ns}/${wl}`);
  const self = t.workload;
  const body = rows.map((r) => {
    const peer = end(r.peer.namespace, r.peer.workload);
    return [
      r.direction === 'inbound' ? peer : self,
      r.direction === 'inbound' ? self : peer,
      r.service ? end(...(r.service.split('/') as [string, string])) : '-',
      r.route ? `${r.route.name}:${r.route.rule}` : '-',
      ...(opts.wide ? [r.reporter] : []),
      perSecond(r.rps),
      percent(r.successRate),
      latency(r.latency.p50),
      latency(r.latency.p99),
      perSecond(r.connectionsPerSecond),
      securedPercent(r.secured),
    ];
  });
  return formatTable([[...text, ...numbers], ...body], text.length);
}
