// `trellis top`'s paths: what a tap of the workload saw over one interval, per direction, peer, route rule, method and
// path (without its query), each with its count, rate, success rate and p50/p99 latency. Both agents of a meshed call
// report it: a row takes the workload's own agent's view of a peer, and the peer's agent's only when its own reports
// nothing of that peer (the workload is outside the mesh), as top's Prometheus rows do (viz/top.ts).
import { formatTable } from '../../agent/cli/table.js';
import type { TapEvent, TapPeerInfo } from '../../agent/tap/events.js';
import { latency, percent, perSecond } from '../format.js';
import type { Direction, TopTarget } from '../top.js';
import type { TapStreamHandlers, TapStream } from './client.js';
import type { TapAgent } from './locate.js';
import type { ObserveRequest } from '../../agent/tap/proto.js';
import { tapMatch } from './request.js';
import { runTap } from './tap.js';

type Side = 'source' | 'destination';
const OWN: Readonly<Record<Direction, Side>> = { inbound: 'destination', outbound: 'source' };

export interface PathRow {
  readonly direction: Direction;
  readonly peer: { readonly namespace: string; readonly workload: string };
  /** The HTTPRoute/GRPCRoute that took the requests (the caller's agent knows it): namespace/name and the rule. */
  readonly route: { readonly name: string; readonly rule: string } | null;
  readonly method: string;
  /** Normalized, without the query; `-` for requests refused before they were parsed whole. */
  readonly path: string;
  /** Requests in the interval (those the tap's rate bound let through). */
  readonly count: number;
  readonly rps: number;
  readonly successRate: number | null;
  /** Seconds, from the request's head to the end of its response, exact over the requests seen. */
  readonly latency: { readonly p50: number | null; readonly p99: number | null };
  readonly reporter: Side;
}

/** What one interval of tapping gave: the rows, and how much the bound let through. */
export interface PathsPicture {
  readonly seconds: number;
  readonly rows: readonly PathRow[];
  /** Agents whose stream was accepted, and the bound each applied. */
  readonly agents: readonly { readonly node: string; readonly maxRps: number | undefined }[];
  readonly failed: readonly { readonly node: string; readonly error: string }[];
  /** Observations the agents dropped past the bound: the counts are that much short. */
  readonly dropped: number;
}

interface Acc {
  direction: Direction;
  peer: { namespace: string; workload: string };
  route: { name: string; rule: string } | null;
  method: string;
  path: string;
  reporter: Side;
  ok: number;
  seconds: number[];
}

/** Success as the metrics count it (viz/query.ts failed()): an answer below 500, and gRPC OK for gRPC. */
function succeeded(status: number, protocol: string, grpcStatus: string | undefined): boolean {
  if (!(status > 0) || status >= 500) return false;
  return protocol !== 'grpc' || grpcStatus === '0';
}

const withoutQuery = (p: string) => p.replace(/[?#].*$/s, '') || '/';

/** Quantile q of sorted values, by nearest rank. */
function rank(sorted: readonly number[], q: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

/** Adds up tap events of one interval, from any number of agents, in the order each agent sent them. */
export class PathTally {
  private readonly inits = new Map<string, { method: string; path: string; protocol: string }>();
  private readonly acc = new Map<string, Acc>();
  dropped = 0;

  constructor(private readonly target: TopTarget) {}

  private is(p: TapPeerInfo | undefined): boolean {
    return p?.namespace === this.target.namespace && (p.workload === this.target.workload || p.pod === this.target.workload);
  }

  add(e: TapEvent): void {
    this.dropped += e.dropped ?? 0;
    // A request's three events share the agent's id; the first carries method and path, the last the outcome.
    const key = `${e.node}:${e.id ?? 0}`;
    if (e.requestInit) {
      const r = e.requestInit;
      this.inits.set(key, { method: r.method, path: withoutQuery(r.path), protocol: r.protocol });
      return;
    }
    if (!e.responseEnd) return;
    const init = this.inits.get(key);
    this.inits.delete(key);
    const direction: Direction | undefined = this.is(e.source) ? 'outbound' : this.is(e.destination) ? 'inbound' : undefined;
    if (!direction) return;
    const other = direction === 'outbound' ? e.destination : e.source;
    const peer = { namespace: other?.namespace ?? 'unknown', workload: other?.workload ?? other?.ip ?? 'unknown' };
    const route = e.route ? { name: e.route, rule: e.rule ?? '' } : null;
    const method = init?.method ?? '-';
    const path = init?.path ?? '-';
    const reporter: Side = e.reporter === 'source' ? 'source' : 'destination';
    const id = [direction, reporter, peer.namespace, peer.workload, route?.name ?? '', route?.rule ?? '', method, path].join('|');
    let a = this.acc.get(id);
    if (!a) {
      a = { direction, peer, route, method, path, reporter, ok: 0, seconds: [] };
      this.acc.set(id, a);
    }
    const end = e.responseEnd;
    if (succeeded(end.httpStatus ?? 0, init?.protocol ?? '', end.grpcStatus)) a.ok++;
    a.seconds.push((end.sinceRequestInitMs ?? 0) / 1000);
  }

  /** The rows over an interval of `seconds`, the busiest first. */
  rows(seconds: number): PathRow[] {
    const ownSees = new Set<string>();
    for (const a of this.acc.values()) if (a.reporter === OWN[a.direction]) ownSees.add(`${a.direction}|${a.peer.namespace}/${a.peer.workload}`);
    const out: PathRow[] = [];
    for (const a of this.acc.values()) {
      if (a.reporter !== OWN[a.direction] && ownSees.has(`${a.direction}|${a.peer.namespace}/${a.peer.workload}`)) continue;
      const sorted = [...a.seconds].sort((x, y) => x - y);
      const count = sorted.length;
      out.push({
        direction: a.direction,
        peer: a.peer,
        route: a.route,
        method: a.method,
        path: a.path,
        count,
        rps: seconds > 0 ? count / seconds : 0,
        successRate: count ? a.ok / count : null,
        latency: { p50: rank(sorted, 0.5), p99: rank(sorted, 0.99) },
        reporter: a.reporter,
      });
    }
    const name = (x: PathRow) => `${x.direction}|${x.peer.namespace}/${x.peer.workload}|${x.route?.name ?? ''}|${x.method}|${x.path}`;
    return out.sort((x, y) => y.count - x.count || name(x).localeCompare(name(y)));
  }
}

export interface TapPathsInputs {
  readonly agents: readonly TapAgent[];
  readonly target: TopTarget;
  /** Observations per second each agent sends at most. */
  readonly maxRps: number;
  /** How long to tap: the refresh interval. */
  readonly durationMs: number;
  readonly signal?: AbortSignal;
  readonly observe?: (socket: string, request: ObserveRequest, handlers: TapStreamHandlers) => TapStream;
}

/** Taps the workload (both ways) on every agent for one interval, and adds up what came. */
export async function tapPaths(inputs: TapPathsInputs): Promise<PathsPicture> {
  const tally = new PathTally(inputs.target);
  const request: ObserveRequest = { durationMs: inputs.durationMs, maxRps: inputs.maxRps, limit: 0, match: tapMatch({ target: { namespace: inputs.target.namespace, name: inputs.target.workload } }) };
  const started = Date.now();
  const result = await runTap({
    agents: inputs.agents,
    request,
    output: 'json',
    out: () => {},
    err: () => {},
    onEvent: (e) => tally.add(e),
    ...(inputs.signal && { signal: inputs.signal }),
    ...(inputs.observe && { observe: inputs.observe }),
  });
  // The rate over what was tapped: the interval, or less when the taps ended early (Ctrl-C, an agent stopping).
  const seconds = Math.min(inputs.durationMs, Math.max(1, Date.now() - started)) / 1000;
  return { seconds, rows: tally.rows(seconds), agents: result.accepted, failed: result.failed, dropped: tally.dropped };
}

/** The line above the paths table: what was tapped and what the bound let through. */
export function pathsHeading(p: PathsPicture): string {
  if (p.agents.length === 0) return `paths: no agent could be tapped (${p.failed.map((f) => `${f.node}: ${f.error}`).join('; ')})`;
  const bounds = [...new Set(p.agents.map((a) => a.maxRps))].join('/');
  const failed = p.failed.length ? `; not tapped: ${p.failed.map((f) => f.node).join(', ')}` : '';
  const dropped = p.dropped ? `, ${p.dropped} dropped: counts are short` : ', none dropped';
  return `paths from tap over ${p.seconds.toFixed(p.seconds < 10 ? 1 : 0)} s (${p.agents.length} agent${p.agents.length === 1 ? '' : 's'}, at most ${bounds}/s each${dropped}${failed})`;
}

export function pathsTable(t: TopTarget, rows: readonly PathRow[], opts: { wide: boolean }): string {
  const text = ['FROM', 'TO', 'ROUTE', 'METHOD', 'PATH'];
  if (opts.wide) text.push('REPORTED_BY');
  const numbers = ['COUNT', 'RPS', 'SUCCESS', 'LATENCY_P50', 'LATENCY_P99'];
  const end = (ns: string, wl: string) => (ns === t.namespace ? wl : `${ns}/${wl}`);
  const body = rows.map((r) => {
    const peer = end(r.peer.namespace, r.peer.workload);
    return [
      r.direction === 'inbound' ? peer : t.workload,
      r.direction === 'inbound' ? t.workload : peer,
      r.route ? `${r.route.name}:${r.route.rule}` : '-',
      r.method,
      r.path,
      ...(opts.wide ? [r.reporter] : []),
      String(r.count),
      perSecond(r.rps),
      percent(r.successRate),
      latency(r.latency.p50),
      latency(r.latency.p99),
    ];
  });
  return formatTable([[...text, ...numbers], ...body], text.length);
}
