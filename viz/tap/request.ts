// What `trellis tap` asks every agent for: the match tree its arguments make (agent/tap/match.ts), built once.
import type { Match, PeerMatch } from '../../agent/tap/match.js';
import type { ObserveRequest } from '../../agent/tap/proto.js';
import { VizError } from '../errors.js';

/** NS/NAME: a workload name or a pod name in a namespace. */
export interface TapTarget {
  namespace: string;
  name: string;
}

export interface TapAsk {
  target: TapTarget;
  to?: TapTarget | undefined;
  method?: string | undefined;
  path?: string | undefined;
  maxRps: number;
  limit: number;
  durationMs: number;
}

const NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;
const METHOD = /^[A-Za-z]+$/;

/** "shop/web" or "web" with -n; "deploy/web" and "pod/web-1" are refused with the form to use. */
export function parseTapTarget(text: string, namespace: string | undefined, flag = 'the target'): TapTarget {
  const parts = text.split('/');
  const [ns, name] = parts.length === 2 ? [parts[0]!, parts[1]!] : parts.length === 1 && namespace ? [namespace, parts[0]!] : ['', ''];
  if (!NAME.test(ns) || !NAME.test(name)) {
    throw new VizError('ECONFIG', `${flag} "${text}": name it NAMESPACE/WORKLOAD or NAMESPACE/POD, e.g. demo/server (or NAME with -n NAMESPACE)`);
  }
  return { namespace: ns, name };
}

/** Either side's workload or pod of that name. */
function side(t: TapTarget): PeerMatch[] {
  return [
    { namespace: t.namespace, workload: t.name },
    { namespace: t.namespace, pod: t.name },
  ];
}

/**
 * The target on either side (what it calls and what calls it); with `to`, only the target calling `to`. Then the
 * HTTP conditions, each narrowing (a connection carried as opaque TCP has no method or path: it matches none).
 */
export function tapMatch(ask: Pick<TapAsk, 'target' | 'to' | 'method' | 'path'>): Match {
  const all: Match[] = [];
  if (ask.to) {
    all.push({ any: { matches: side(ask.target).map((source) => ({ source })) } });
    all.push({ any: { matches: side(ask.to).map((destination) => ({ destination })) } });
  } else {
    all.push({ any: { matches: [...side(ask.target).map((source) => ({ source })), ...side(ask.target).map((destination) => ({ destination }))] } });
  }
  if (ask.method !== undefined) {
    if (!METHOD.test(ask.method)) throw new VizError('ECONFIG', `--method ${ask.method}: an HTTP method, e.g. GET`);
    all.push({ http: { method: ask.method.toUpperCase() } });
  }
  if (ask.path !== undefined) {
    if (!ask.path.startsWith('/')) throw new VizError('ECONFIG', `--path ${ask.path}: a path prefix starts with /`);
    all.push({ http: { pathPrefix: ask.path } });
  }
  return all.length === 1 ? all[0]! : { all: { matches: all } };
}

export function observeRequest(ask: TapAsk): ObserveRequest {
  return { limit: ask.limit, durationMs: ask.durationMs, maxRps: ask.maxRps, match: tapMatch(ask) };
}
