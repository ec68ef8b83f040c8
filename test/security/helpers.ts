// Shared builders for the security tests: policies from YAML through the real source validation, peers,
// requests normalized the way the data path will normalize them.
import { parseAllDocuments } from 'yaml';
import type { KubeObject } from '../../agent/model/objects.js';
import { validateObject } from '../../agent/model/validate.js';
import {
  compilePolicies,
  evaluateConnection,
  evaluateRequest,
  normalizeTarget,
  type AuthzDecision,
  type CompilePoliciesOptions,
  type PolicySet,
  type PolicyWorkload,
  type RequestAttributes,
} from '../../agent/security/index.js';

export function objects(yaml: string): KubeObject[] {
  return parseAllDocuments(yaml)
    .map((d) => d.toJS() as unknown)
    .filter((o) => o !== null && o !== undefined)
    .map((o) => {
      const v = validateObject(o);
      if (!v.ok) throw new Error(`test manifest invalid: ${v.reason}`);
      return v.object;
    });
}

/** Compiles policies that must all be valid (a typo in a test manifest must not pass as "no policy"). */
export function policies(yaml: string, opts: Partial<CompilePoliciesOptions> = {}): PolicySet {
  const set = compileAny(yaml, opts);
  if (set.errors.length > 0) throw new Error(`test policies invalid:\n${set.errors.join('\n')}`);
  return set;
}

/** Compiles policies that may be invalid. */
export function compileAny(yaml: string, opts: Partial<CompilePoliciesOptions> = {}): PolicySet {
  return compilePolicies(objects(yaml), { trustDomain: 'cluster.local', ...opts });
}

export const API: PolicyWorkload = Object.freeze({ key: 'shop/api-7d9f', namespace: 'shop', labels: Object.freeze({ app: 'api', version: 'v1' }) });

export interface PeerSpec {
  readonly identity: string | undefined;
  readonly ip: string;
}

export const PEERS = {
  /** The principal the ALLOW policies name. */
  web: { identity: 'spiffe://cluster.local/ns/shop/sa/web', ip: '10.244.1.5' },
  /** Same namespace, another service account. */
  batch: { identity: 'spiffe://cluster.local/ns/shop/sa/batch', ip: '10.244.1.6' },
  /** Another namespace. */
  dev: { identity: 'spiffe://cluster.local/ns/dev/sa/web', ip: '10.244.2.7' },
  /** A client outside the mesh. */
  plaintext: { identity: undefined, ip: '192.168.1.9' },
} as const satisfies Record<string, PeerSpec>;

export function request(method: string, target: string, host = 'api.shop.svc.cluster.local', headers: Record<string, string> = {}): RequestAttributes {
  const n = normalizeTarget(target);
  if (!n.ok) throw new Error(`${target} refused: ${n.reason}`);
  const lower = new Map(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  return { method, path: n.path, host, headers: (name) => lower.get(name) };
}

/** An opaque TCP connection: the only check it gets. */
export function tcp(set: PolicySet, peer: PeerSpec, port: number, workload: PolicyWorkload = API): AuthzDecision {
  return evaluateConnection(set, { workload, sourceIdentity: peer.identity, sourceIp: peer.ip, destinationIp: '10.244.0.10', destinationPort: port, protocol: 'tcp' }).decision;
}

/** An HTTP request: the connection check, then the request check, as the data path will make them. */
export function http(set: PolicySet, peer: PeerSpec, port: number, req: RequestAttributes, workload: PolicyWorkload = API): AuthzDecision {
  const c = evaluateConnection(set, { workload, sourceIdentity: peer.identity, sourceIp: peer.ip, destinationIp: '10.244.0.10', destinationPort: port, protocol: 'http' });
  if (!c.decision.allowed) return c.decision;
  if (!c.context) throw new Error('an allowed connection must carry its context');
  return evaluateRequest(set, c.context, req);
}
