// `trellis edges`: who talks to whom over a window, with both ends' identities and whether the edge is mutual
// TLS, as `linkerd viz edges` shows it. An edge between two meshed workloads is seen by both agents: the
// destination's view wins (it verified the caller's certificate); an edge one side alone reports (a caller outside
// the mesh, a destination outside it) is shown as that side saw it.
import { openConnections, sumRate, type Matchers } from './promql.js';
import { finite, share, type QueryContext } from './query.js';
import type { VectorSample } from './prom/client.js';

export interface EdgeEnd {
  readonly namespace: string;
  readonly workload: string;
  /** The SPIFFE ID; null when the end has none (outside the mesh, or not verified). */
  readonly identity: string | null;
}

export interface EdgeRow {
  readonly source: EdgeEnd;
  readonly destination: EdgeEnd;
  /** Share of the edge's traffic (requests, else connections) over mutual TLS. */
  readonly mtlsShare: number | null;
  /** Every bit of it over mutual TLS. */
  readonly mtls: boolean;
  readonly rps: number;
  readonly connectionsPerSecond: number;
  readonly open: number;
  /** Which agents report the edge. */
  readonly reportedBy: readonly ('source' | 'destination')[];
}

const LABELS = [
  'reporter',
  'source_workload',
  'source_workload_namespace',
  'source_principal',
  'destination_workload',
  'destination_workload_namespace',
  'destination_principal',
  'connection_security_policy',
];

export function edgesQueries(ctx: Pick<QueryContext, 'source'>): Record<'requests' | 'opened' | 'open', string> {
  const m: Matchers = { reporter: { re: 'source|destination' } };
  return {
    requests: sumRate('requests', LABELS, m, ctx.source),
    opened: sumRate('tcpOpened', LABELS, m, ctx.source),
    open: openConnections(LABELS, m, ctx.source),
  };
}

/** Edges with traffic in the window or connections open now, touching `namespace` (undefined: all). */
export async function edges(namespace: string | undefined, ctx: QueryContext): Promise<EdgeRow[]> {
  const q = edgesQueries(ctx);
  const [requests, opened, open] = await Promise.all([ctx.query(q.requests), ctx.query(q.opened), ctx.query(q.open)]);
  return assembleEdges(namespace, { requests, opened, open });
}

interface Acc {
  rps: number;
  mtlsRps: number;
  opened: number;
  mtlsOpened: number;
  open: number;
  mtlsOpen: number;
  sourceIds: Set<string>;
  destinationIds: Set<string>;
}

export function assembleEdges(namespace: string | undefined, r: Record<'requests' | 'opened' | 'open', readonly VectorSample[]>): EdgeRow[] {
  // Edge key -> reporter -> what it saw.
  const edgesByKey = new Map<string, { ends: [Omit<EdgeEnd, 'identity'>, Omit<EdgeEnd, 'identity'>]; by: Map<string, Acc> }>();
  const accFor = (l: Readonly<Record<string, string>>): Acc => {
    const src = { namespace: l.source_workload_namespace ?? 'unknown', workload: l.source_workload ?? 'unknown' };
    const dst = { namespace: l.destination_workload_namespace ?? 'unknown', workload: l.destination_workload ?? 'unknown' };
    const key = `${src.namespace}/${src.workload}>${dst.namespace}/${dst.workload}`;
    let e = edgesByKey.get(key);
    if (!e) edgesByKey.set(key, (e = { ends: [src, dst], by: new Map() }));
    const reporter = l.reporter ?? '';
    let acc = e.by.get(reporter);
    if (!acc) e.by.set(reporter, (acc = { rps: 0, mtlsRps: 0, opened: 0, mtlsOpened: 0, open: 0, mtlsOpen: 0, sourceIds: new Set(), destinationIds: new Set() }));
    if (l.source_principal && l.source_principal !== 'unknown') acc.sourceIds.add(l.source_principal);
    if (l.destination_principal && l.destination_principal !== 'unknown') acc.destinationIds.add(l.destination_principal);
    return acc;
  };
  const add = (samples: readonly VectorSample[], field: 'rps' | 'opened' | 'open') => {
    for (const s of samples) {
      const v = finite(s.value);
      if (v <= 0) continue;
      const a = accFor(s.labels);
      a[field] += v;
      if (s.labels.connection_security_policy === 'mutual_tls') {
        const k = field === 'rps' ? 'mtlsRps' : field === 'opened' ? 'mtlsOpened' : 'mtlsOpen';
        a[k] += v;
      }
    }
  };
  add(r.requests, 'rps');
  add(r.opened, 'opened');
  add(r.open, 'open');

  const out: EdgeRow[] = [];
  for (const { ends, by } of edgesByKey.values()) {
    const [src, dst] = ends;
    if (namespace !== undefined && src.namespace !== namespace && dst.namespace !== namespace) continue;
    const d = by.get('destination');
    const s = by.get('source');
    const a = d ?? s!;
    const ids = (pick: (x: Acc) => Set<string>) => {
      const set = (d && pick(d).size ? pick(d) : s && pick(s).size ? pick(s) : undefined) ?? new Set<string>();
      return set.size ? [...set].sort().join(',') : null;
    };
    const mtlsShare = a.rps > 0 ? share(a.mtlsRps, a.rps) : a.opened > 0 ? share(a.mtlsOpened, a.opened) : share(a.mtlsOpen, a.open);
    out.push({
      source: { ...src, identity: ids((x) => x.sourceIds) },
      destination: { ...dst, identity: ids((x) => x.destinationIds) },
      mtlsShare,
      mtls: mtlsShare === 1,
      rps: a.rps,
      connectionsPerSecond: a.opened,
      open: Math.round(a.open),
      reportedBy: (['source', 'destination'] as const).filter((x) => by.has(x)),
    });
  }
  const name = (e: EdgeEnd) => `${e.namespace}/${e.workload}`;
  return out.sort((x, y) => name(x.source).localeCompare(name(y.source)) || name(x.destination).localeCompare(name(y.destination)));
}
