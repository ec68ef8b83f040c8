// One AuthorizationPolicy rule against one connection (L4) or request (L4 + HTTP): the matching behind the two
// checks of evaluate.ts. Pure: no I/O, no clock.

import { anyCidrContains, parseIp, type Cidr, type ParsedIp } from '../model/policy/ip.js';
import { stringSetMatches, type StringSet } from '../model/policy/strings.js';
import type { CompiledRule, Condition, OperationMatch, SourceMatch } from '../model/policy/types.js';

/** The peer and destination of one connection, parsed once when the connection starts. */
export interface Peer {
  /** SPIFFE ID without "spiffe://" ("td/ns/x/sa/y"), as Istio's principals are written; undefined for plaintext. */
  readonly principal: string | undefined;
  readonly namespace: string | undefined;
  /** "namespace/name" */
  readonly serviceAccount: string | undefined;
  readonly sourceIp: ParsedIp;
  readonly destinationIp: ParsedIp;
  readonly destinationPort: number;
}

/** What a request adds to its connection for the L7 checks. */
export interface RequestAttributes {
  readonly method: string;
  /** The normalized path (normalizeTarget), without the query; for gRPC "/package.Service/Method". */
  readonly path: string;
  /** Host or :authority as sent (compared case-insensitively); "" if none. */
  readonly host: string;
  /** Lowercase name -> value (repeated headers joined with ","), undefined when absent. */
  readonly headers: (name: string) => string | undefined;
}

/** Three-valued at L4: a rule with HTTP fields is UNKNOWN until the request is known. */
export const Match = { No: 0, Yes: 1, Unknown: 2 } as const;
export type Match = (typeof Match)[keyof typeof Match];

// The field checks below are written out per type, without closures: they run for every policy on every
// request, and a generic helper taking a callback made each check several times slower.

/** A string field with its notX twin; `v` undefined (no identity, no header) matches no pattern. */
function strings(pos: StringSet | undefined, neg: StringSet | undefined, v: string | undefined): boolean {
  if (pos !== undefined && (v === undefined || !stringSetMatches(pos, v))) return false;
  if (neg !== undefined && v !== undefined && stringSetMatches(neg, v)) return false;
  return true;
}

function members<T>(pos: ReadonlySet<T> | undefined, neg: ReadonlySet<T> | undefined, v: T | undefined): boolean {
  if (pos !== undefined && (v === undefined || !pos.has(v))) return false;
  if (neg !== undefined && v !== undefined && neg.has(v)) return false;
  return true;
}

function blocks(pos: readonly Cidr[] | undefined, neg: readonly Cidr[] | undefined, ip: ParsedIp): boolean {
  if (pos !== undefined && !anyCidrContains(pos, ip)) return false;
  if (neg !== undefined && anyCidrContains(neg, ip)) return false;
  return true;
}

function sourceMatches(s: SourceMatch, peer: Peer): boolean {
  // With no identity (plaintext) a positive identity field never matches and a negative one always does:
  // DENY notPrincipals ["*"] is how Istio refuses plaintext.
  return (
    strings(s.principals, s.notPrincipals, peer.principal) &&
    strings(s.namespaces, s.notNamespaces, peer.namespace) &&
    members(s.serviceAccounts, s.notServiceAccounts, peer.serviceAccount) &&
    blocks(s.ipBlocks, s.notIpBlocks, peer.sourceIp)
  );
}

function operationMatches(o: OperationMatch, peer: Peer, req: RequestAttributes | undefined): Match {
  if (!members(o.ports, o.notPorts, peer.destinationPort)) return Match.No;
  if (!o.l7) return Match.Yes;
  if (!req) return Match.Unknown;
  if (!strings(o.methods, o.notMethods, req.method)) return Match.No;
  if (!strings(o.paths, o.notPaths, req.path)) return Match.No;
  // toLowerCase returns the same string when it is already lowercase (the usual case): no copy.
  if ((o.hosts !== undefined || o.notHosts !== undefined) && !strings(o.hosts, o.notHosts, req.host.toLowerCase())) return Match.No;
  return Match.Yes;
}

function conditionMatches(c: Condition, peer: Peer, req: RequestAttributes | undefined): Match {
  let ok: boolean;
  switch (c.kind) {
    case 'header':
      if (!req) return Match.Unknown;
      ok = strings(c.values, c.notValues, req.headers(c.name));
      break;
    case 'principal':
      ok = strings(c.values, c.notValues, peer.principal);
      break;
    case 'namespace':
      ok = strings(c.values, c.notValues, peer.namespace);
      break;
    case 'sourceIp':
      ok = blocks(c.values, c.notValues, peer.sourceIp);
      break;
    case 'destinationIp':
      ok = blocks(c.values, c.notValues, peer.destinationIp);
      break;
    case 'destinationPort':
      ok = members(c.values, c.notValues, peer.destinationPort);
      break;
  }
  return ok ? Match.Yes : Match.No;
}

/** One rule: Yes, No, or Unknown when only its HTTP fields are left to decide (no request given). */
export function ruleMatches(rule: CompiledRule, peer: Peer, req: RequestAttributes | undefined): Match {
  let result: Match = Match.Yes;
  if (rule.from) {
    let any = false;
    for (let i = 0; i < rule.from.length; i++) if (sourceMatches(rule.from[i]!, peer)) { any = true; break; }
    if (!any) return Match.No;
  }
  if (rule.to) {
    let best: Match = Match.No;
    for (let i = 0; i < rule.to.length; i++) {
      const m = operationMatches(rule.to[i]!, peer, req);
      if (m === Match.Yes) { best = Match.Yes; break; }
      if (m === Match.Unknown) best = Match.Unknown;
    }
    if (best === Match.No) return Match.No;
    result = best;
  }
  for (let i = 0; i < rule.when.length; i++) {
    const m = conditionMatches(rule.when[i]!, peer, req);
    if (m === Match.No) return Match.No;
    if (m === Match.Unknown) result = Match.Unknown;
  }
  return result;
}

/** The peer attributes of a connection, or why they cannot be read (the connection is then denied). */
export function readPeer(
  sourceIdentity: string | undefined,
  sourceIp: string | undefined,
  destinationIp: string | undefined,
  destinationPort: number,
): Peer | string {
  let principal: string | undefined;
  let namespace: string | undefined;
  let serviceAccount: string | undefined;
  if (sourceIdentity !== undefined) {
    const m = /^spiffe:\/\/([^/]+)\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(sourceIdentity);
    if (!m) return `peer identity "${sourceIdentity}" is not a workload SPIFFE ID (spiffe://<trust domain>/ns/<namespace>/sa/<service account>)`;
    principal = sourceIdentity.slice('spiffe://'.length);
    namespace = m[2]!;
    serviceAccount = `${m[2]}/${m[3]}`;
  }
  const src = sourceIp === undefined ? undefined : parseIp(sourceIp);
  if (!src) return `source address ${sourceIp ?? '(none)'} is not an IP address`;
  const dst = destinationIp === undefined ? undefined : parseIp(destinationIp);
  if (!dst) return `destination address ${destinationIp ?? '(none)'} is not an IP address`;
  if (!(Number.isInteger(destinationPort) && destinationPort >= 1 && destinationPort <= 65535)) return `destination port ${destinationPort} is not a port`;
  return Object.freeze({ principal, namespace, serviceAccount, sourceIp: src, destinationIp: dst, destinationPort });
}
