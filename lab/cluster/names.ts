// The lab's address plan and naming: every netns, interface and state path derives from the lab name,
// so leftovers of a crashed lab are found again by prefix alone.
import path from 'node:path';
import { LabError } from '../errors.js';

export const DEFAULT_LAB_NAME = 'trellis';
export const DEFAULT_STATE_ROOT = '/run/trellis/lab';
/** Every netns the lab makes starts with this; `sweep` looks for it. */
export const NETNS_PREFIX = 'trl-';
/** Where `ip netns` keeps its named namespaces (and what the agents open). */
export const NETNS_DIR = '/var/run/netns';

// Short names keep `trl-<lab>-pod-<i>-<j>` readable and the node-side interfaces under 15 characters.
const LAB_NAME = /^[a-z0-9]{1,8}$/;

export const FABRIC_NET = '172.30.0.0/24';
export const POD_NET = '10.244.0.0/16';
export const SERVICE_NET = '10.96.0.0/16';
/** The pods' next hop: answered by proxy ARP on the node side of each pod's veth. */
export const POD_GATEWAY = '169.254.1.1';
/** The first address handed out to a Service without spec.clusterIP. */
export const FIRST_SERVICE_IP = '10.96.0.10';
/** The fabric bridge's own address: where a control plane for the lab (an API server in tests) listens. */
export const CONTROL_PLANE_IP = '172.30.0.2';
/** The lab's Prometheus (`lab up --prometheus`), in a netns of its own on the fabric. */
export const PROMETHEUS_IP = '172.30.0.3';
/** The lab's internet (`lab up --internet`): a netns of its own on the fabric, owning every address of INTERNET_NET. */
export const INTERNET_FABRIC_IP = '172.30.0.4';
/**
 * The internet's addresses: 198.18.0.0/15, set aside for benchmarks (RFC 2544) and never routed on the real internet,
 * so nothing the lab sends there can leave this machine as if it were public.
 */
export const INTERNET_NET = '198.18.0.0/15';
/** Nodes are numbered from 1; node i's fabric address is 172.30.0.(10+i). */
export const MAX_NODES = 240;
/** Pods on node i get 10.244.i.j with j from 2 (10.244.i.1 is the node's own address). */
export const FIRST_POD_HOST = 2;
export const MAX_PODS_PER_NODE = 253;
/** Name of the node-owned interface holding 10.244.i.1 (and the routes to the pod gateway and VIPs). */
export const NODE_DEVICE = 'trellis0';
/** The nft table of the kube-proxy emulation, one per node netns. */
export const KUBE_TABLE = 'trellis-kube';
/** Environment variable every lab process carries; finds processes whose netns is already gone. */
export const LAB_ENV = 'TRELLIS_LAB';

export function checkLabName(name: string): string {
  if (!LAB_NAME.test(name)) {
    throw new LabError(
      'EINVAL',
      `invalid lab name "${name}": use 1 to 8 lowercase letters or digits (it becomes part of netns and interface names)`,
    );
  }
  return name;
}

/** Prefix of every netns of lab `name`. */
export function labPrefix(name: string): string {
  return `${NETNS_PREFIX}${name}-`;
}

export function fabricNetns(lab: string): string {
  return `${labPrefix(lab)}fabric`;
}

export function prometheusNetns(lab: string): string {
  return `${labPrefix(lab)}prom`;
}

export function internetNetns(lab: string): string {
  return `${labPrefix(lab)}inet`;
}

export function nodeNetns(lab: string, i: number): string {
  return `${labPrefix(lab)}node-${i}`;
}

export function podNetns(lab: string, i: number, j: number): string {
  return `${labPrefix(lab)}pod-${i}-${j}`;
}

export function netnsPath(netns: string): string {
  return path.join(NETNS_DIR, netns);
}

export function nodeFabricIp(i: number): string {
  return `172.30.0.${10 + i}`;
}

export function nodeGatewayIp(i: number): string {
  return `10.244.${i}.1`;
}

export function nodePodCidr(i: number): string {
  return `10.244.${i}.0/24`;
}

export function podIp(i: number, j: number): string {
  return `10.244.${i}.${j}`;
}

/** The pod's veth end in the node netns (names are limited to 15 characters). */
export function podHostInterface(j: number): string {
  return `tp${j}`;
}

/** The node's veth end in the fabric netns. */
export function fabricPort(i: number): string {
  return `n${i}`;
}

/** The lab name a netns belongs to, when it follows the lab's naming. */
export function labOfNetns(netns: string): string | undefined {
  if (!netns.startsWith(NETNS_PREFIX)) return undefined;
  const rest = netns.slice(NETNS_PREFIX.length);
  const dash = rest.indexOf('-');
  const name = dash < 0 ? rest : rest.slice(0, dash);
  return LAB_NAME.test(name) ? name : undefined;
}

/** Whether lab `name` falls under a sweep prefix such as `trl-` (all labs) or `trl-ab12-` (one). */
export function labMatchesPrefix(name: string, prefix: string): boolean {
  return labPrefix(name).startsWith(prefix);
}

export function ipToInt(ip: string): number {
  const parts = ip.split('.').map(Number);
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** Whether ip is a usable host address of the /prefix network cidr (not its network or broadcast address). */
export function inCidr(ip: string, cidr: string): boolean {
  const [base, bits] = cidr.split('/') as [string, string];
  const mask = Number(bits) === 0 ? 0 : (~0 << (32 - Number(bits))) >>> 0;
  const n = ipToInt(ip);
  if ((n & mask) >>> 0 !== (ipToInt(base) & mask) >>> 0) return false;
  const host = (n & ~mask) >>> 0;
  return host !== 0 && host !== (~mask >>> 0);
}
