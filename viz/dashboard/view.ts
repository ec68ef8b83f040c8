// What the dashboard page shows of one namespace, computed on the server by the viewer's own query code: the rows of
// `trellis stat` (each with its numbers printed as `stat` prints them, and sparklines: the same rows assembled at each
// step of a range query), the edges of `trellis edges` laid out as a graph, and for every Service with routes the
// rows of `trellis routes` with the split over time against the weights. The page never sees PromQL or Prometheus.
import { existsSync } from 'node:fs';
import { edges as queryEdges } from '../edges.js';
import { latency, percent, perSecond, securedPercent, type Provenance } from '../format.js';
import type { MatrixSeries, Range, VectorSample } from '../prom/client.js';
import { assembleRoutes, configuredRules, loadRouteState, routes as queryRoutes, routesQueries, type RouteRow } from '../routes.js';
import { assembleStat, stat, statQueries, type StatRequest, type StatRow } from '../stat.js';
import { explainEmpty, type Session } from '../cli/common.js';
import { layoutGraph, type GraphLayout } from './graph.js';

/** How far back the sparklines and split charts go, and their step (seconds). */
export const HISTORY = Object.freeze({ seconds: 600, step: 10 });

export interface StatDisplay {
  readonly success: string;
  readonly rps: string;
  readonly p50: string;
  readonly p95: string;
  readonly p99: string;
  readonly tcpConn: string;
  readonly secured: string;
}

export interface WorkloadView extends StatRow {
  /** The row's numbers as `trellis stat` prints them. */
  readonly display: StatDisplay;
  /** Requests per second and success rate at each of `history.times` (null: no requests then). */
  readonly spark: { readonly rps: readonly (number | null)[]; readonly success: readonly (number | null)[] };
}

export interface RouteView extends RouteRow {
  /** The row's numbers as `trellis routes` prints them. */
  readonly display: { readonly weight: string; readonly split: string; readonly success: string; readonly rps: string; readonly p50: string; readonly p99: string };
}

export interface ServiceRoutes {
  readonly service: string;
  readonly rows: readonly RouteView[];
  /** Per configured backend of a rule: its share of the rule's requests at each of `history.times`, and its weight. */
  readonly split: readonly { readonly label: string; readonly weight: number; readonly values: readonly (number | null)[] }[];
}

export interface DashboardView {
  readonly provenance: Provenance;
  readonly namespace: string;
  /** Namespaces whose workloads had requests or connections in the window (and the one shown). */
  readonly namespaces: readonly string[];
  /** Why there is nothing to show, when there is not. */
  readonly message: string | null;
  readonly history: { readonly step: number; readonly times: readonly number[] };
  readonly workloads: readonly WorkloadView[];
  readonly graph: GraphLayout;
  readonly routes: { readonly note: string | null; readonly services: readonly ServiceRoutes[] };
}

export interface ViewInputs {
  /** A session evaluated now, on the namespace shown. */
  readonly session: Session;
  /** The route objects (a lab's realized objects, or --dir); undefined: no routes to show. */
  readonly objectsDir: string | undefined;
}

export async function dashboardView({ session: s, objectsDir }: ViewInputs): Promise<DashboardView> {
  const namespace = s.namespace!;
  const at = s.client.at;
  const range: Range = { start: at - HISTORY.seconds, end: at, step: HISTORY.step };
  const times: number[] = [];
  for (let t = range.start; t <= range.end + 1e-6; t += range.step) times.push(round3(t));

  const req: StatRequest = { kind: 'workload', namespace };
  const [rows, perNamespace, edges, requestsOverTime, routeViews] = await Promise.all([
    stat(req, s.ctx),
    stat({ kind: 'namespace', namespace: undefined }, s.ctx),
    queryEdges(namespace, s.ctx),
    s.client.queryRange(statQueries(req, s.ctx).requests, range),
    routesOf(s, namespace, objectsDir, range, times),
  ]);

  const spark = sparklines(req, rows, requestsOverTime, times);
  const workloads: WorkloadView[] = rows.map((r) => ({ ...r, display: statDisplay(r), spark: spark.get(`${r.namespace}/${r.name}`)! }));
  const namespaces = [...new Set([...perNamespace.map((r) => r.name), namespace])].sort();
  const message = rows.length === 0 && edges.length === 0 ? (await explainEmpty(s, `in namespace ${namespace}`)).message : null;
  return {
    provenance: s.provenance,
    namespace,
    namespaces,
    message,
    history: { step: range.step, times },
    workloads,
    graph: layoutGraph(namespace, edges, rows),
    routes: routeViews,
  };
}

export function statDisplay(r: StatRow): StatDisplay {
  return {
    success: percent(r.successRate),
    rps: perSecond(r.rps),
    p50: latency(r.latency.p50),
    p95: latency(r.latency.p95),
    p99: latency(r.latency.p99),
    tcpConn: String(r.tcp.open),
    secured: securedPercent(r.secured),
  };
}

/** Each stat row's requests per second and success rate at every step: stat's own assembly, one step at a time. */
function sparklines(req: StatRequest, rows: readonly StatRow[], series: readonly MatrixSeries[], times: readonly number[]): Map<string, { rps: (number | null)[]; success: (number | null)[] }> {
  const out = new Map(rows.map((r) => [`${r.namespace}/${r.name}`, { rps: times.map(() => null as number | null), success: times.map(() => null as number | null) }]));
  const steps = byStep(series, times);
  times.forEach((_t, i) => {
    const at = steps[i]!;
    if (at.length === 0) return;
    for (const r of assembleStat(req, { requests: at, p50: [], p95: [], p99: [], opened: [], received: [], sent: [], open: [] })) {
      const s = out.get(`${r.namespace}/${r.name}`);
      if (!s) continue;
      s.rps[i] = r.rps;
      s.success[i] = r.successRate;
    }
  });
  return out;
}

/** A range query's answer as one instant vector per step (what an instant query at that time would have said). */
export function byStep(series: readonly MatrixSeries[], times: readonly number[]): VectorSample[][] {
  const index = new Map(times.map((t, i) => [round3(t), i]));
  const out: VectorSample[][] = times.map(() => []);
  for (const s of series) {
    for (const [t, value] of s.points) {
      const i = index.get(round3(t));
      if (i !== undefined) out[i]!.push({ labels: s.labels, value });
    }
  }
  return out;
}

async function routesOf(s: Session, namespace: string, objectsDir: string | undefined, range: Range, times: readonly number[]): Promise<DashboardView['routes']> {
  if (objectsDir === undefined) {
    return { note: 'Which routes belong to a Service is in the route objects, not in the metrics: start the dashboard with --dir DIR holding them (or on a lab).', services: [] };
  }
  if (!existsSync(objectsDir)) return { note: `The route objects are not at ${objectsDir} any more.`, services: [] };
  const state = await loadRouteState(objectsDir);
  const names = [...state.services.keys()].filter((k) => k.startsWith(`${namespace}/`)).map((k) => k.slice(namespace.length + 1)).sort();
  const services: ServiceRoutes[] = [];
  for (const name of names) {
    const rules = configuredRules(state, namespace, name);
    if (rules.length === 0) continue;
    const q = routesQueries(namespace, name, rules, s.ctx);
    const [rows, overTime] = await Promise.all([queryRoutes(namespace, name, rules, s.ctx), q.routed_requests ? s.client.queryRange(q.routed_requests, range) : Promise.resolve([])]);
    const steps = byStep(overTime, times);
    const configured = rows.filter((r) => r.weight !== null);
    const split = configured.map((r) => ({ label: `${r.route} ${r.rule} -> ${r.backend}`, weight: r.weight!, values: times.map(() => null as number | null) }));
    times.forEach((_t, i) => {
      if (steps[i]!.length === 0) return;
      const at = assembleRoutes(namespace, rules, { routed_requests: steps[i]! }).filter((r) => r.weight !== null);
      at.forEach((r, j) => {
        if (split[j] && r.split !== null) split[j].values[i] = r.split;
      });
    });
    services.push({ service: name, rows: rows.map((r) => ({ ...r, display: routeDisplay(r) })), split });
  }
  return { note: services.length ? null : `No Service of namespace ${namespace} has an HTTPRoute or GRPCRoute.`, services };
}

function routeDisplay(r: RouteRow): RouteView['display'] {
  return { weight: percent(r.weight), split: percent(r.split), success: percent(r.successRate), rps: perSecond(r.rps), p50: latency(r.latency.p50), p99: latency(r.latency.p99) };
}

function round3(t: number): number {
  return Math.round(t * 1000) / 1000;
}
