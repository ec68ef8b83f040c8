// The dashboard's topology graph: the edges `trellis edges` finds, laid out by dagre (left to right, callers first)
// here on the server, so the page only draws boxes and paths at the positions it is given and a test can read them.
import { Graph, layout } from '@dagrejs/dagre';
import type { EdgeRow } from '../edges.js';
import { perSecond, securedPercent } from '../format.js';

export interface GraphNode {
  /** namespace/workload. */
  readonly id: string;
  readonly namespace: string;
  readonly workload: string;
  /** What the box says: the workload, with its namespace when it is not the one shown. */
  readonly label: string;
  /** In the namespace shown (else a peer of one of its workloads). */
  readonly local: boolean;
  /** Its own agent reports it: an end only its peers' agents report is outside the mesh. */
  readonly meshed: boolean;
  /** Centre of the box, and its size (pixels). */
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

export interface GraphEdge {
  /** source id -> destination id. */
  readonly id: string;
  readonly source: string;
  readonly destination: string;
  readonly mtls: boolean;
  readonly mtlsShare: number | null;
  readonly rps: number;
  /** The label: requests per second (or connections open, for opaque TCP) and the mTLS share, as `edges` prints them. */
  readonly label: string;
  /** Where the label goes, and the path from box to box. */
  readonly labelAt: { readonly x: number; readonly y: number };
  readonly points: readonly { readonly x: number; readonly y: number }[];
}

export interface GraphLayout {
  readonly width: number;
  readonly height: number;
  readonly nodes: readonly GraphNode[];
  readonly edges: readonly GraphEdge[];
}

const CHAR_PX = 7.5;
const NODE_PAD_PX = 28;
const NODE_HEIGHT = 34;
const LABEL_HEIGHT = 16;
const MARGIN = 16;

export function edgeLabel(e: Pick<EdgeRow, 'rps' | 'connectionsPerSecond' | 'open' | 'mtlsShare'>): string {
  const traffic = e.rps > 0 ? `${perSecond(e.rps)} rps` : e.open > 0 ? `${e.open} open` : `${perSecond(e.connectionsPerSecond)} conn/s`;
  return `${traffic}, mTLS ${securedPercent(e.mtlsShare)}`;
}

/** Lays out the edges touching `namespace` (and the workloads with traffic but no edge, as lone boxes). Deterministic. */
export function layoutGraph(namespace: string, edges: readonly EdgeRow[], lone: readonly { namespace: string; name: string; meshed: boolean }[] = []): GraphLayout {
  const id = (ns: string, wl: string) => `${ns}/${wl}`;
  const meshed = new Map<string, boolean>();
  const ends = new Map<string, { namespace: string; workload: string }>();
  const mark = (ns: string, wl: string, reported: boolean) => {
    const k = id(ns, wl);
    ends.set(k, { namespace: ns, workload: wl });
    meshed.set(k, (meshed.get(k) ?? false) || reported);
  };
  for (const e of edges) {
    mark(e.source.namespace, e.source.workload, e.reportedBy.includes('source'));
    mark(e.destination.namespace, e.destination.workload, e.reportedBy.includes('destination'));
  }
  for (const w of lone) mark(w.namespace, w.name, w.meshed);

  const g = new Graph({ multigraph: false });
  g.setGraph({ rankdir: 'LR', nodesep: 24, ranksep: 110, edgesep: 16, marginx: MARGIN, marginy: MARGIN });
  g.setDefaultEdgeLabel(() => ({}));
  // Sorted insertion: dagre's order (and so the picture) depends on it.
  for (const k of [...ends.keys()].sort()) {
    const end = ends.get(k)!;
    const label = end.namespace === namespace ? end.workload : k;
    g.setNode(k, { width: Math.round(label.length * CHAR_PX + NODE_PAD_PX), height: NODE_HEIGHT });
  }
  const sorted = [...edges].sort((a, b) => edgeId(a).localeCompare(edgeId(b)));
  for (const e of sorted) {
    const label = edgeLabel(e);
    g.setEdge(id(e.source.namespace, e.source.workload), id(e.destination.namespace, e.destination.workload), {
      width: Math.round(label.length * 6.2),
      height: LABEL_HEIGHT,
      labelpos: 'c',
    });
  }
  layout(g);

  const nodes: GraphNode[] = [...ends.keys()].sort().map((k) => {
    const end = ends.get(k)!;
    const n = g.node(k);
    return {
      id: k,
      namespace: end.namespace,
      workload: end.workload,
      label: end.namespace === namespace ? end.workload : k,
      local: end.namespace === namespace,
      meshed: meshed.get(k) ?? false,
      x: round(n.x),
      y: round(n.y),
      width: n.width,
      height: n.height,
    };
  });
  const out: GraphEdge[] = sorted.map((e) => {
    const [s, d] = [id(e.source.namespace, e.source.workload), id(e.destination.namespace, e.destination.workload)];
    const l = g.edge(s, d) as { x?: number; y?: number; points?: { x: number; y: number }[] };
    return {
      id: `${s}->${d}`,
      source: s,
      destination: d,
      mtls: e.mtls,
      mtlsShare: e.mtlsShare,
      rps: e.rps,
      label: edgeLabel(e),
      labelAt: { x: round(l.x ?? 0), y: round(l.y ?? 0) },
      points: (l.points ?? []).map((p) => ({ x: round(p.x), y: round(p.y) })),
    };
  });
  const graph = g.graph() as { width?: number; height?: number };
  return { width: Math.ceil(graph.width ?? 0), height: Math.ceil(graph.height ?? 0), nodes, edges: out };
}

function edgeId(e: EdgeRow): string {
  return `${e.source.namespace}/${e.source.workload}->${e.destination.namespace}/${e.destination.workload}`;
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}
