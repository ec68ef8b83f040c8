// EgressNetwork (traffic.trellis.dev/v1alpha1), shaped on Linkerd's policy.linkerd.io EgressNetwork: the addresses
// outside the cluster that a namespace's meshed pods reach (networks, with exceptions), whether what is not declared
// there is allowed (trafficPolicy Allow|Deny), and the hosts declared (by name, optionally pinned to addresses).
// Read and checked once per snapshot; the decision per connection (decideEgress) is a few integer compares and
// one map lookup.
import type { KubeObject } from './objects.js';
import { anyCidrContains, cidrContains, parseCidr, parseIp, type Cidr, type ParsedIp } from './policy/ip.js';

/** The most hosts and networks one EgressNetwork may declare: each is a metric label value, so they stay bounded. */
export const MAX_EGRESS_HOSTS = 256;
export const MAX_EGRESS_NETWORKS = 64;

export interface EgressHost {
  /** "api.example.com", or a wildcard "*.example.com" (any name ending in ".example.com", as Gateway API reads it). */
  readonly name: string;
  /** Where the name may be reached; empty: anywhere in the network (the name is taken as the client gives it). */
  readonly addresses: readonly Cidr[];
}

export interface EgressNetworkSpec {
  /** namespace/name */
  readonly key: string;
  readonly namespace: string;
  readonly name: string;
  readonly uid?: string;
  readonly trafficPolicy: 'Allow' | 'Deny';
  readonly networks: readonly { readonly cidr: Cidr; readonly except: readonly Cidr[] }[];
  readonly exact: ReadonlyMap<string, EgressHost>;
  /** Wildcard hosts, longest suffix first; `suffix` is ".example.com". */
  readonly wildcards: readonly (EgressHost & { readonly suffix: string })[];
  /** The fail-closed reading of an object that never was valid. */
  readonly standIn: boolean;
}

export interface EgressTable {
  /** Client namespace -> its EgressNetworks, by name. */
  readonly byNamespace: ReadonlyMap<string, readonly EgressNetworkSpec[]>;
}

export const EMPTY_EGRESS: EgressTable = Object.freeze({ byNamespace: new Map() });

const ALL_V4 = parseCidr('0.0.0.0/0') as Cidr;
const ALL_V6 = parseCidr('::/0') as Cidr;
const HOST_NAME = /^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/;

/**
 * EgressNetwork objects -> the table, and one line per problem naming the object and field. An invalid object keeps
 * its last valid version (from `previous`) in force; one that never was valid stands in force as its fail-closed
 * reading: Deny (unless it says Allow) over the networks it names that can be read (all addresses when none can),
 * with no host declared.
 */
export function compileEgressNetworks(objects: readonly KubeObject[], previous?: EgressTable): { table: EgressTable; errors: string[] } {
  const byNamespace = new Map<string, EgressNetworkSpec[]>();
  const errors: string[] = [];
  const list = objects.filter((o) => o.kind === 'EgressNetwork').sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  for (const o of list) {
    const namespace = o.metadata.namespace ?? 'default';
    const uid = o.metadata.uid;
    const where = `EgressNetwork ${namespace}/${o.metadata.name}`;
    const parsed = parseEgressNetwork(namespace, o.metadata.name, ((o as { spec?: unknown }).spec ?? {}) as Record<string, unknown>, uid);
    let inForce = parsed.spec;
    if (parsed.problems.length > 0) {
      const last = previous?.byNamespace.get(namespace)?.find((e) => e.name === o.metadata.name && !e.standIn);
      if (last && (last.uid === undefined || uid === undefined || last.uid === uid)) {
        inForce = last;
        errors.push(...parsed.problems.map((p) => `${where}: ${p}. Its last valid version stays in force until this is fixed.`));
      } else {
        errors.push(...parsed.problems.map((p) => `${where}: ${p}. Until it is fixed it stands as ${inForce.trafficPolicy} with no host declared over ${inForce.networks.map((n) => n.cidr.text).join(', ')} (policy never fails open).`));
      }
    }
    const ns = byNamespace.get(namespace);
    if (ns) ns.push(inForce);
    else byNamespace.set(namespace, [inForce]);
  }
  return { table: Object.freeze({ byNamespace }), errors };
}

/**
 * One EgressNetwork's spec and its problems ("spec.networks[1].cidr: ..."). With problems, `spec` is the fail-closed
 * stand-in (standIn: true): Deny unless trafficPolicy says Allow, the networks that could be read, no hosts.
 */
export function parseEgressNetwork(namespace: string, name: string, spec: Record<string, unknown>, uid?: string): { spec: EgressNetworkSpec; problems: string[] } {
  const problems: string[] = [];
  const policy = spec.trafficPolicy;
  if (policy !== 'Allow' && policy !== 'Deny') problems.push(`spec.trafficPolicy must be Allow or Deny (got ${JSON.stringify(policy ?? null)})`);

  const networks: { cidr: Cidr; except: Cidr[] }[] = [];
  if (spec.networks === undefined) {
    networks.push({ cidr: ALL_V4, except: [] }, { cidr: ALL_V6, except: [] });
  } else if (!Array.isArray(spec.networks) || spec.networks.length === 0) {
    problems.push('spec.networks must be a non-empty list of {cidr, except} (leave it out for every address outside the cluster)');
  } else if (spec.networks.length > MAX_EGRESS_NETWORKS) {
    problems.push(`spec.networks has ${spec.networks.length} entries; at most ${MAX_EGRESS_NETWORKS}`);
  } else {
    spec.networks.forEach((raw: unknown, i) => {
      const where = `spec.networks[${i}]`;
      const n = (raw ?? {}) as Record<string, unknown>;
      if (typeof n.cidr !== 'string') return problems.push(`${where}.cidr is required: a CIDR block such as 198.18.0.0/15`);
      const cidr = parseCidr(n.cidr);
      if (typeof cidr === 'string') return problems.push(`${where}.cidr: ${cidr}`);
      const except: Cidr[] = [];
      if (n.except !== undefined && !Array.isArray(n.except)) return problems.push(`${where}.except must be a list of CIDR blocks`);
      ((n.except ?? []) as unknown[]).forEach((e, j) => {
        const c = typeof e === 'string' ? parseCidr(e) : 'must be a CIDR block such as 198.18.5.0/24';
        if (typeof c === 'string') return problems.push(`${where}.except[${j}]: ${c}`);
        if (c.v4 !== cidr.v4 || c.bits < cidr.bits || !cidrContains(cidr, { v4: c.v4, words: c.words })) {
          return problems.push(`${where}.except[${j}]: ${c.text} is not inside ${cidr.text}`);
        }
        except.push(c);
      });
      networks.push({ cidr, except });
    });
  }

  const exact = new Map<string, EgressHost>();
  const wildcards: (EgressHost & { suffix: string })[] = [];
  if (spec.hosts !== undefined && !Array.isArray(spec.hosts)) {
    problems.push('spec.hosts must be a list of {name, addresses}');
  } else if (((spec.hosts as unknown[] | undefined)?.length ?? 0) > MAX_EGRESS_HOSTS) {
    problems.push(`spec.hosts has ${(spec.hosts as unknown[]).length} entries; at most ${MAX_EGRESS_HOSTS} (each is a metric label value)`);
  } else {
    ((spec.hosts ?? []) as unknown[]).forEach((raw, i) => {
      const where = `spec.hosts[${i}]`;
      const h = (raw ?? {}) as Record<string, unknown>;
      const hostName = typeof h.name === 'string' ? h.name : undefined;
      if (hostName === undefined) return problems.push(`${where}.name is required: a DNS name such as api.example.com or *.example.com`);
      if (hostName.length > 253 || !HOST_NAME.test(hostName) || /^[0-9.]+$/.test(hostName.replace(/^\*\./, ''))) {
        return problems.push(`${where}.name: "${hostName}" is not a lowercase DNS name (api.example.com) or wildcard (*.example.com); IP addresses go in spec.networks`);
      }
      if (exact.has(hostName) || wildcards.some((w) => w.name === hostName)) return problems.push(`${where}.name: ${hostName} is declared twice`);
      if (h.addresses !== undefined && (!Array.isArray(h.addresses) || h.addresses.length === 0)) {
        return problems.push(`${where}.addresses must be a non-empty list of CIDR blocks (leave it out to reach the name anywhere in the network)`);
      }
      const addresses: Cidr[] = [];
      ((h.addresses ?? []) as unknown[]).forEach((a, j) => {
        const c = typeof a === 'string' ? parseCidr(a) : 'must be a CIDR block such as 198.18.0.10/32';
        if (typeof c === 'string') problems.push(`${where}.addresses[${j}]: ${c}`);
        else addresses.push(c);
      });
      const host: EgressHost = Object.freeze({ name: hostName, addresses: Object.freeze(addresses) });
      if (hostName.startsWith('*.')) wildcards.push(Object.freeze({ ...host, suffix: hostName.slice(1) }));
      else exact.set(hostName, host);
    });
  }
  const standIn = problems.length > 0;
  if (standIn) {
    exact.clear();
    wildcards.length = 0;
    if (networks.length === 0) networks.push({ cidr: ALL_V4, except: [] }, { cidr: ALL_V6, except: [] });
  }
  wildcards.sort((a, b) => b.suffix.length - a.suffix.length);
  return {
    problems,
    spec: Object.freeze({
      key: `${namespace}/${name}`,
      namespace,
      name,
      ...(uid !== undefined && { uid }),
      trafficPolicy: policy === 'Allow' ? 'Allow' : 'Deny',
      networks: Object.freeze(networks.map((n) => Object.freeze({ cidr: n.cidr, except: Object.freeze(n.except) }))),
      exact,
      wildcards: Object.freeze(wildcards),
      standIn,
    }),
  };
}

/** The EgressNetwork of `namespace` covering `ip`: the one with the most specific network block, then by name. */
export function egressNetworkFor(table: EgressTable, namespace: string, ip: ParsedIp): EgressNetworkSpec | undefined {
  const list = table.byNamespace.get(namespace);
  if (!list) return undefined;
  let best: EgressNetworkSpec | undefined;
  let bestBits = -1;
  for (const en of list) {
    for (const n of en.networks) {
      if (n.cidr.bits > bestBits && cidrContains(n.cidr, ip) && !anyCidrContains(n.except, ip)) {
        best = en;
        bestBits = n.cidr.bits;
      }
    }
  }
  return best;
}

/** The declared host a name falls under: exact first, then the longest wildcard. */
export function declaredHost(en: EgressNetworkSpec, name: string): EgressHost | undefined {
  const exact = en.exact.get(name);
  if (exact) return exact;
  for (const w of en.wildcards) if (name.endsWith(w.suffix) && name.length > w.suffix.length) return w;
  return undefined;
}

export type EgressCode =
  /** No EgressNetwork of the client's namespace covers the address: egress is not governed, it goes through. */
  | 'no_egress_network'
  /** A declared host, reached where it is declared. */
  | 'declared'
  /** Allow: a host that is not declared, or no name. */
  | 'undeclared_allowed'
  /** Deny: the client named a host that is not declared. */
  | 'undeclared_host'
  /** Deny: no name to judge by (no SNI or Host, or a garbled one), and addresses alone declare nothing. */
  | 'no_name'
  /** A declared name, dialled at an address the host is not declared at: the name is not believed. */
  | 'wrong_address';

export interface EgressVerdict {
  readonly allowed: boolean;
  readonly code: EgressCode;
  readonly network?: EgressNetworkSpec;
  /** The declared host the connection counts under; absent: `unknown`. */
  readonly host?: EgressHost;
  /** Why it was refused, for the access line and the client's operator. */
  readonly reason?: string;
}

/**
 * Whether an egress connection from a pod of `namespace` to `ip` naming `name` (SNI or Host; undefined when it named
 * none that can be trusted) may go. Fails closed under Deny: without a declared name reached where it is declared,
 * nothing passes.
 */
export function decideEgress(table: EgressTable, namespace: string, ipText: string, name: string | undefined): EgressVerdict {
  const ip = parseIp(ipText);
  const network = ip && egressNetworkFor(table, namespace, ip);
  if (!network || !ip) return { allowed: true, code: 'no_egress_network' };
  const deny = network.trafficPolicy === 'Deny';
  const found = name === undefined ? undefined : declaredHost(network, name);
  if (found && found.addresses.length > 0 && !anyCidrContains(found.addresses, ip)) {
    const reason = `${name} is declared at ${found.addresses.map((c) => c.text).join(', ')} in EgressNetwork ${network.key}, but the connection goes to ${ipText}`;
    return deny ? { allowed: false, code: 'wrong_address', network, reason } : { allowed: true, code: 'undeclared_allowed', network, reason };
  }
  if (found) return { allowed: true, code: 'declared', network, host: found };
  if (!deny) return { allowed: true, code: 'undeclared_allowed', network };
  if (name === undefined) {
    return { allowed: false, code: 'no_name', network, reason: `EgressNetwork ${network.key} denies undeclared egress and the connection to ${ipText} names no host it declares (no TLS SNI or HTTP Host, or an unreadable one)` };
  }
  return { allowed: false, code: 'undeclared_host', network, reason: `EgressNetwork ${network.key} denies undeclared egress and ${name} is not one of its hosts` };
}
