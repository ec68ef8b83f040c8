// Builds a lab's network out of namespaces: a fabric bridge joining the nodes, and routed pods
// (Calico-style: /32 per pod, proxy ARP, no bridge in the node) so node conntrack sees both directions.
// Every command runs inside a lab netns (`ip -n`, `ip netns exec`); the host's own netns is never touched.
import { promises as fsp } from 'node:fs';
import { LabError } from '../errors.js';
import { kubeProxyRuleset } from './kubeproxy.js';
import {
  CONTROL_PLANE_IP,
  FABRIC_NET,
  INTERNET_FABRIC_IP,
  INTERNET_NET,
  NETNS_DIR,
  NODE_DEVICE,
  POD_GATEWAY,
  SERVICE_NET,
  fabricNetns,
  fabricPort,
  internetNetns,
} from './names.js';
import type { LabNode, LabPlan, PlannedPod } from './plan.js';
import { must, run } from './run.js';

const FABRIC_BRIDGE = 'br0';
const PARALLEL = 8;

/** Every netns a plan needs, fabric first. */
export function planNetns(plan: LabPlan): string[] {
  return [fabricNetns(plan.name), ...plan.nodes.map((n) => n.netns), ...plan.pods.map((p) => p.netns)];
}

/** Creates the namespaces and wires them; on failure the caller deletes what exists (by prefix). */
export async function createNetwork(plan: LabPlan): Promise<void> {
  const [fabric, ...rest] = planNetns(plan);
  // The first `ip netns add` on a machine sets up /run/netns as a shared mount: never race it.
  await addNetns(fabric!);
  await mapLimit(rest, PARALLEL, addNetns);
  await ipBatch(fabric!, fabricScript(plan), 'wire the fabric');
  const deviceKind = await nodeDeviceKind(plan.nodes[0]!);
  await mapLimit(plan.nodes, PARALLEL, (node) => wireNode(plan, node, deviceKind));
}

async function addNetns(name: string): Promise<void> {
  await must(`create netns ${name}`, 'ip', ['netns', 'add', name]);
}

export function fabricScript(plan: LabPlan): string[] {
  return [
    'link set lo up',
    `link add name ${FABRIC_BRIDGE} type bridge`,
    `addr add ${CONTROL_PLANE_IP}/${FABRIC_NET.split('/')[1]} dev ${FABRIC_BRIDGE}`,
    `link set ${FABRIC_BRIDGE} up`,
    ...plan.nodes.flatMap((n) => [
      // Created from inside the fabric with the peer placed straight into the node netns.
      `link add name ${fabricPort(n.index)} type veth peer name eth0 netns ${n.netns}`,
      `link set ${fabricPort(n.index)} master ${FABRIC_BRIDGE}`,
      `link set ${fabricPort(n.index)} up`,
    ]),
  ];
}

/**
 * A netns of its own for a lab service (the Prometheus), joined to the fabric bridge with one address there: it
 * reaches every node's fabric address, and is reached from any netns of the lab (or by connecting from inside it).
 */
export async function addFabricHost(lab: string, netns: string, ip: string, port: string): Promise<void> {
  await addNetns(netns);
  await ipBatch(fabricNetns(lab), [
    `link add name ${port} type veth peer name eth0 netns ${netns}`,
    `link set ${port} master ${FABRIC_BRIDGE}`,
    `link set ${port} up`,
  ], `join ${netns} to the fabric`);
  await ipBatch(netns, ['link set lo up', `addr add ${ip}/${FABRIC_NET.split('/')[1]} dev eth0`, 'link set eth0 up'], `wire ${netns}`);
}

/**
 * The lab's internet: a netns joined to the fabric (INTERNET_FABRIC_IP) where every address of INTERNET_NET is local
 * (a `local` route, so a server binds any of them), routed from every node, and routing the pods' addresses back
 * through their nodes. A pod reaches it through its node as it would leave a real cluster; nothing is NATed.
 */
export async function addInternet(lab: string, nodes: readonly LabNode[]): Promise<string> {
  const netns = internetNetns(lab);
  await addFabricHost(lab, netns, INTERNET_FABRIC_IP, 'inet');
  await ipBatch(netns, [`route add local ${INTERNET_NET} dev lo`, ...nodes.map((n) => `route add ${n.podCidr} via ${n.fabricIp} dev eth0`)], `route ${netns}`);
  await mapLimit([...nodes], PARALLEL, (n) => ipBatch(n.netns, [`route add ${INTERNET_NET} via ${INTERNET_FABRIC_IP} dev eth0`], `route node ${n.name} to the internet`));
  return netns;
}

export function nodeScript(plan: LabPlan, node: LabNode, pods: PlannedPod[]): string[] {
  const fabricPrefix = FABRIC_NET.split('/')[1]!;
  return [
    'link set lo up',
    `link set ${NODE_DEVICE} up`,
    `addr add ${node.gatewayIp}/32 dev ${NODE_DEVICE}`,
    `addr add ${node.fabricIp}/${fabricPrefix} dev eth0`,
    'link set eth0 up',
    // The pods' next hop only needs a route for proxy ARP to answer; packets to it go nowhere.
    `route add ${POD_GATEWAY}/32 dev ${NODE_DEVICE}`,
    // VIPs need a route before the output DNAT sees them; it also makes the node's VIP traffic come from 10.244.i.1.
    `route add ${SERVICE_NET} dev ${NODE_DEVICE} src ${node.gatewayIp}`,
    ...plan.nodes
      .filter((n) => n.index !== node.index)
      .map((n) => `route add ${n.podCidr} via ${n.fabricIp} dev eth0`),
    ...pods.flatMap((p) => [
      `link add name ${p.hostInterface} type veth peer name eth0 netns ${p.netns}`,
      `link set ${p.hostInterface} up`,
      `route add ${p.ip}/32 dev ${p.hostInterface} src ${node.gatewayIp}`,
    ]),
  ];
}

export function podScript(pod: PlannedPod): string[] {
  return [
    'link set lo up',
    `addr add ${pod.ip}/32 dev eth0`,
    'link set eth0 up',
    `route add ${POD_GATEWAY} dev eth0 scope link`,
    `route add default via ${POD_GATEWAY} dev eth0 onlink`,
  ];
}

/**
 * A pod's sandbox made while the lab runs, as a routed CNI plugin (Calico) makes it: its netns, a veth to the node, the
 * node's /32 route and proxy ARP, the pod's address and default route.
 */
export async function addPodNetwork(node: LabNode, pod: PlannedPod): Promise<void> {
  await addNetns(pod.netns);
  await ipBatch(node.netns, [
    `link add name ${pod.hostInterface} type veth peer name eth0 netns ${pod.netns}`,
    `link set ${pod.hostInterface} up`,
    `route add ${pod.ip}/32 dev ${pod.hostInterface} src ${node.gatewayIp}`,
  ], `wire pod ${pod.namespace}/${pod.name} to node ${node.name}`);
  await sysctl(node.netns, [`net.ipv4.conf.${pod.hostInterface}.proxy_arp=1`, `net.ipv4.neigh.${pod.hostInterface}.proxy_delay=0`]);
  await ipBatch(pod.netns, podScript(pod), `wire pod ${pod.namespace}/${pod.name}`);
}

async function wireNode(plan: LabPlan, node: LabNode, deviceKind: string): Promise<void> {
  const pods = plan.pods.filter((p) => p.node === node.name);
  if (node.index !== plan.nodes[0]!.index) {
    await must(`create ${NODE_DEVICE} in ${node.netns}`, 'ip', ['-n', node.netns, 'link', 'add', 'name', NODE_DEVICE, 'type', deviceKind]);
  }
  // Forwarding first: proxy ARP only answers on an interface that forwards.
  await sysctl(node.netns, ['net.ipv4.ip_forward=1']);
  await ipBatch(node.netns, nodeScript(plan, node, pods), `wire node ${node.name}`);
  // Proxy ARP answers at once, as Calico sets it: the kernel's default delays each answer by a random 0-0.8 s,
  // which a pod's first packet to its gateway would wait.
  if (pods.length > 0) {
    await sysctl(node.netns, pods.flatMap((p) => [`net.ipv4.conf.${p.hostInterface}.proxy_arp=1`, `net.ipv4.neigh.${p.hostInterface}.proxy_delay=0`]));
  }
  await mapLimit(pods, PARALLEL, (p) => ipBatch(p.netns, podScript(p), `wire pod ${p.namespace}/${p.name}`));
  await loadKubeProxy(plan, node);
}

/** Loads (or replaces, in one transaction) the node's ClusterIP rules for the plan's VIPs. */
export async function loadKubeProxy(plan: LabPlan, node: LabNode): Promise<void> {
  await must(`load the ClusterIP rules on node ${node.name}`, 'ip', ['netns', 'exec', node.netns, 'nft', '-f', '-'], {
    input: kubeProxyRuleset(plan, node),
  });
}

/**
 * Creates the first node's trellis0 and says which link type worked: a dummy where the kernel has one,
 * else a bridge without ports (some kernels are built without CONFIG_DUMMY; the bridge holds an address just as well).
 */
async function nodeDeviceKind(node: LabNode): Promise<string> {
  for (const kind of ['dummy', 'bridge']) {
    const r = await run('ip', ['-n', node.netns, 'link', 'add', 'name', NODE_DEVICE, 'type', kind]);
    if (r.code === 0) return kind;
  }
  throw new LabError('ELAB', `cannot create ${NODE_DEVICE} in ${node.netns}: the kernel has neither dummy nor bridge links`);
}

async function sysctl(netns: string, settings: string[]): Promise<void> {
  await must(`set sysctls in ${netns}`, 'ip', ['netns', 'exec', netns, 'sysctl', '-q', '-w', ...settings]);
}

async function ipBatch(netns: string, lines: string[], what: string): Promise<void> {
  await must(what, 'ip', ['-n', netns, '-batch', '-'], { input: `${lines.join('\n')}\n` });
}

/** Named namespaces starting with prefix, from /var/run/netns. */
export async function listNetns(prefix: string): Promise<string[]> {
  try {
    return (await fsp.readdir(NETNS_DIR)).filter((n) => n.startsWith(prefix)).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** Deletes the named namespaces (pods before nodes before the fabric); returns those it deleted. */
export async function deleteNetns(names: string[]): Promise<string[]> {
  const rank = (n: string): number => (n.includes('-pod-') ? 0 : n.includes('-node-') ? 1 : 2);
  const deleted: string[] = [];
  const failed: string[] = [];
  for (const r of [0, 1, 2]) {
    await mapLimit(
      names.filter((n) => rank(n) === r),
      PARALLEL,
      async (n) => {
        const res = await run('ip', ['netns', 'del', n], { timeoutMs: 10_000 });
        if (res.code === 0) deleted.push(n);
        else if (!/No such file/i.test(res.stderr)) failed.push(`${n}: ${res.stderr.trim()}`);
      },
    );
  }
  if (failed.length > 0) {
    throw new LabError('ELAB', `cannot delete network namespaces: ${failed.join('; ')}`);
  }
  return deleted.sort();
}

export async function mapLimit<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const errors: unknown[] = [];
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (err) {
        errors.push(err);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (errors.length > 0) throw errors[0];
}
