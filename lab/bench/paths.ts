// Bench: the paths a request can take from the client pod to the server pod, compared in one run.
// A path the code cannot carry yet stays listed with the reason, so enabling it is removing that reason.
import { LabError } from '../errors.js';

export type ProxyKind = 'none' | 'haproxy-l4' | 'haproxy-l7' | 'haproxy-h2' | 'agents';

/** Where the clients aim, resolved from the lab once it is up. */
export interface Targets {
  /** ClusterIP of bench-plain/server (kube-proxy DNAT, no proxy). */
  plainVip: string;
  /** ClusterIP of bench-mesh/server: opaque TCP through the agents. */
  meshVip: string;
  /** ClusterIP of bench-mesh/server-l7: HTTP, split 90/10 by an HTTPRoute. */
  meshL7Vip: string;
  /** ClusterIP of bench-mesh/server-h2: h2c (appProtocol kubernetes.io/h2c). */
  meshH2Vip: string;
  /** Where the node-A HAProxy of each layer listens inside the plain client pod. */
  haproxyL4Listen: string;
  haproxyL7Listen: string;
  haproxyH2Listen: string;
}

export interface PathDef {
  name: string;
  /** One line for the report header. */
  description: string;
  layer: 'l4' | 'l7' | null;
  /** What the clients speak: HTTP/1.1 (every measurement), or h2c with prior knowledge (max req/s only, with h2load). */
  protocol?: 'h2';
  proxy: ProxyKind;
  /** The client pod (ns/name) that runs the load tools. */
  client: string;
  /** host:port the load tools send HTTP to. */
  target(t: Targets): string;
  /** The HAProxy path doing the same job, for the second ratio. */
  haproxyPeer?: string;
  /** Another path this one is compared with in the ratios (beside direct and the HAProxy peer). */
  peer?: string;
  /** Measured only by this measurement, in labs of its own (the main loops leave the path out). */
  only?: 'capture';
  /** Why the path cannot run yet: reported as not available and left out of the JSON. */
  unavailable?: string;
}

export const MESH_CLIENT = 'bench-mesh/client';
export const PLAIN_CLIENT = 'bench-plain/client';

export const PATHS: readonly PathDef[] = Object.freeze([
  {
    name: 'direct',
    description: 'client pod -> Service VIP (kube-proxy DNAT) -> server pod, no proxy, plaintext',
    layer: null,
    proxy: 'none',
    client: PLAIN_CLIENT,
    target: (t) => `${t.plainVip}:80`,
  },
  {
    name: 'haproxy-l4',
    description: 'HAProxy TCP mode: TLS 1.3 origination on node A, termination with client-cert verification on node B',
    layer: 'l4',
    proxy: 'haproxy-l4',
    client: PLAIN_CLIENT,
    target: (t) => t.haproxyL4Listen,
  },
  {
    name: 'haproxy-l7',
    description: 'HAProxy HTTP mode on both nodes, HTTP/2 over mTLS (TLS 1.3) between them',
    layer: 'l7',
    proxy: 'haproxy-l7',
    client: PLAIN_CLIENT,
    target: (t) => t.haproxyL7Listen,
  },
  {
    name: 'trellis-l4',
    description: 'the mesh, opaque TCP: capture -> agent A -> HBONE (HTTP/2 CONNECT, mTLS 1.3) -> agent B -> server',
    layer: 'l4',
    proxy: 'agents',
    client: MESH_CLIENT,
    target: (t) => `${t.meshVip}:80`,
    haproxyPeer: 'haproxy-l4',
  },
  {
    name: 'trellis-l7',
    description: 'the mesh with HTTP parsing, per-request metrics and a 90/10 weighted split (HTTPRoute)',
    layer: 'l7',
    proxy: 'agents',
    client: MESH_CLIENT,
    target: (t) => `${t.meshL7Vip}:80`,
    haproxyPeer: 'haproxy-l7',
  },
  {
    name: 'haproxy-h2',
    description: 'HAProxy HTTP mode, h2c from the client and to the server, HTTP/2 over mTLS (TLS 1.3) between them',
    layer: 'l7',
    protocol: 'h2',
    proxy: 'haproxy-h2',
    client: PLAIN_CLIENT,
    target: (t) => t.haproxyH2Listen,
  },
  {
    name: 'trellis-l7-h2',
    description: 'the mesh with h2c from the client (appProtocol kubernetes.io/h2c): HTTP/2 parsed by both agents, per-request metrics',
    layer: 'l7',
    protocol: 'h2',
    proxy: 'agents',
    client: MESH_CLIENT,
    target: (t) => `${t.meshH2Vip}:80`,
    haproxyPeer: 'haproxy-h2',
  },
  {
    name: 'trellis-l4-nft',
    description: 'the mesh, opaque TCP, agents with --capture nft (measurement `capture`: cross-node and same-node, in a lab of its own)',
    layer: 'l4',
    proxy: 'agents',
    client: MESH_CLIENT,
    target: (t) => `${t.meshVip}:80`,
    only: 'capture',
  },
  {
    name: 'trellis-l4-ebpf',
    description: 'the mesh, opaque TCP, agents with --capture ebpf (measurement `capture`), compared with trellis-l4-nft',
    layer: 'l4',
    proxy: 'agents',
    client: MESH_CLIENT,
    target: (t) => `${t.meshVip}:80`,
    peer: 'trellis-l4-nft',
    only: 'capture',
  },
] satisfies PathDef[]);

/** The paths named in `only` (all when absent), in catalogue order; unknown names are an error. */
export function selectPaths(only: readonly string[] | undefined): PathDef[] {
  if (!only || only.length === 0) return [...PATHS];
  const unknown = only.filter((n) => !PATHS.some((p) => p.name === n));
  if (unknown.length > 0) {
    throw new LabError('EINVAL', `unknown path ${unknown.join(', ')}: use some of ${PATHS.map((p) => p.name).join(', ')}`);
  }
  return PATHS.filter((p) => only.includes(p.name));
}

/** The order paths run in for repeat r: rotated each repeat, so no path always runs first or last. */
export function rotation<T>(items: readonly T[], r: number): T[] {
  if (items.length === 0) return [];
  const k = r % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}
