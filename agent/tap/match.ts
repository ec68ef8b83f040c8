// A tap's match tree (tap.proto's Match): all/any/not over the source and destination peers and the HTTP fields,
// checked once when the tap opens and compiled into one function, so that matching a request is a few comparisons
// and allocates nothing.
import { TrellisError } from '../errors.js';
import type { Workload } from '../state/workload.js';

/** A peer as the records hold it (RecordPeer in l7/record.ts, ConnectionFields in proxy/connection.ts). */
export interface TapPeer {
  readonly workload?: Workload | undefined;
  readonly principal?: string | undefined;
  readonly ip?: string | undefined;
  readonly port?: number | undefined;
}

/** The HTTP fields a request record holds (its L7Request). */
export interface TapHttp {
  readonly method: string;
  readonly authority: string;
  readonly path: string;
}

export interface PeerMatch {
  workload?: string;
  pod?: string;
  namespace?: string;
  identity?: string;
  port?: number;
  ip?: string;
}

export interface HttpMatch {
  method?: string;
  authority?: string;
  pathPrefix?: string;
  route?: string;
}

/** One node of the tree: exactly one member set (a protobuf oneof). */
export interface Match {
  all?: { matches?: Match[] };
  any?: { matches?: Match[] };
  not?: Match;
  source?: PeerMatch;
  destination?: PeerMatch;
  http?: HttpMatch;
}

/** Whether a record matches: `http` is undefined for an opaque TCP connection, `route` for a request no route took. */
export type Matcher = (src: TapPeer, dst: TapPeer, http: TapHttp | undefined, route: string | undefined) => boolean;

/** A tree deeper or bigger than this is refused: it is matched against every record while the tap is open. */
export const MAX_MATCH_DEPTH = 16;
export const MAX_MATCH_NODES = 256;

const ANY: Matcher = () => true;

/** Compiles a match tree; absent: everything matches. Throws EINVAL, saying which node is wrong. */
export function compileMatch(match: Match | undefined): Matcher {
  if (match === undefined) return ANY;
  const count = { nodes: 0 };
  return compile(match, 'match', 0, count);
}

function compile(m: Match, where: string, depth: number, count: { nodes: number }): Matcher {
  if (depth > MAX_MATCH_DEPTH) throw new TrellisError('EINVAL', `${where}: the match tree is deeper than ${MAX_MATCH_DEPTH}`);
  if (++count.nodes > MAX_MATCH_NODES) throw new TrellisError('EINVAL', `the match tree has more than ${MAX_MATCH_NODES} nodes`);
  const set = (['all', 'any', 'not', 'source', 'destination', 'http'] as const).filter((k) => m[k] !== undefined && m[k] !== null);
  if (set.length !== 1) {
    throw new TrellisError('EINVAL', `${where}: set exactly one of all, any, not, source, destination, http (${set.length ? `got ${set.join(', ')}` : 'got none'})`);
  }
  const kind = set[0]!;
  switch (kind) {
    case 'all':
    case 'any': {
      const parts = (m[kind]!.matches ?? []).map((c, i) => compile(c, `${where}.${kind}[${i}]`, depth + 1, count));
      if (parts.length === 0) throw new TrellisError('EINVAL', `${where}.${kind}: give at least one match`);
      if (parts.length === 1) return parts[0]!;
      return kind === 'all'
        ? (s, d, h, r) => {
            for (let i = 0; i < parts.length; i++) if (!parts[i]!(s, d, h, r)) return false;
            return true;
          }
        : (s, d, h, r) => {
            for (let i = 0; i < parts.length; i++) if (parts[i]!(s, d, h, r)) return true;
            return false;
          };
    }
    case 'not': {
      const inner = compile(m.not!, `${where}.not`, depth + 1, count);
      return (s, d, h, r) => !inner(s, d, h, r);
    }
    case 'source': {
      const p = peerMatcher(m.source!, `${where}.source`);
      return (s) => p(s);
    }
    case 'destination': {
      const p = peerMatcher(m.destination!, `${where}.destination`);
      return (_s, d) => p(d);
    }
    case 'http':
      return httpMatcher(m.http!, `${where}.http`);
  }
}

/** Every field set must hold (proto3 leaves unset strings "" and numbers 0: both mean "any"). */
function peerMatcher(p: PeerMatch, where: string): (peer: TapPeer) => boolean {
  const workload = p.workload || undefined;
  const pod = p.pod || undefined;
  const namespace = p.namespace || undefined;
  const identity = p.identity || undefined;
  const ip = p.ip || undefined;
  const port = p.port || undefined;
  if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536)) throw new TrellisError('EINVAL', `${where}.port ${port}: a port from 1 to 65535`);
  return (peer) =>
    (workload === undefined || peer.workload?.name === workload) &&
    (pod === undefined || peer.workload?.pod === pod) &&
    (namespace === undefined || peer.workload?.namespace === namespace) &&
    (identity === undefined || peer.principal === identity) &&
    (ip === undefined || peer.ip === ip) &&
    (port === undefined || peer.port === port);
}

function httpMatcher(h: HttpMatch, where: string): Matcher {
  if (h.method) {
    const method = h.method.toUpperCase();
    return (_s, _d, http) => http !== undefined && http.method === method;
  }
  if (h.authority) {
    const authority = h.authority.toLowerCase();
    return (_s, _d, http) => http !== undefined && http.authority.toLowerCase() === authority;
  }
  if (h.pathPrefix) {
    const prefix = h.pathPrefix;
    if (!prefix.startsWith('/')) throw new TrellisError('EINVAL', `${where}.path_prefix "${prefix}": a path starts with /`);
    return (_s, _d, http) => http !== undefined && http.path.startsWith(prefix);
  }
  if (h.route) {
    const route = h.route;
    return (_s, _d, http, r) => http !== undefined && r === route;
  }
  throw new TrellisError('EINVAL', `${where}: set one of method, authority, path_prefix, route`);
}

/**
 * The namespaces a tap is confined to: every record the tree can match has its source or its destination in one of
 * them, so a caller allowed to tap each of them may open it. Undefined: the tree does not confine it (no tree, or a
 * branch that names no namespace), and tapping it is tapping every namespace. Conservative: a `not`, an HTTP field, or
 * a peer without a namespace confines nothing; `all` is confined by its narrowest member, `any` by the union of its
 * members'. The tree is compiled (checked) first.
 */
export function tapNamespaces(match: Match | undefined): string[] | undefined {
  if (match === undefined) return undefined;
  const found = confine(match);
  return found && [...found].sort();
}

function confine(m: Match): Set<string> | undefined {
  if (m.source || m.destination) {
    const ns = (m.source ?? m.destination)!.namespace;
    return ns ? new Set([ns]) : undefined;
  }
  if (m.all) {
    let narrowest: Set<string> | undefined;
    for (const c of m.all.matches ?? []) {
      const s = confine(c);
      if (s && (!narrowest || s.size < narrowest.size)) narrowest = s;
    }
    return narrowest;
  }
  if (m.any) {
    const union = new Set<string>();
    for (const c of m.any.matches ?? []) {
      const s = confine(c);
      if (!s) return undefined;
      for (const ns of s) union.add(ns);
    }
    return union.size ? union : undefined;
  }
  return undefined;
}
