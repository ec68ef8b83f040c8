// The lab's kubelet calling the CNI chain for a pod it starts while the lab runs: the lab has already done the
// primary plugin's part (netns, veth, address: topology.addPodNetwork), so it runs the real `trellis-cni` binary,
// chained after it, with the primary's result as prevResult, exactly as a container runtime does on a node.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { LabError } from '../errors.js';
import type { PlannedPod } from './plan.js';
import { run } from './run.js';

/** What docs/install.md's installer writes into the node's conflist (manifests/cni/install-cni.mjs), the paths aside. */
export const CNI_TIMEOUT_MS = 10_000;

/** Where a node's agent serves trellis-cni, and the opt-in file the plugin reads while no agent answers. */
export interface NodeCni {
  socket: string;
  optinFile: string;
}

export function nodeCni(stateDir: string, node: string): NodeCni {
  return { socket: path.join(stateDir, 'run', `cni-${node}.sock`), optinFile: path.join(stateDir, 'run', `cni-${node}.optin`) };
}

export function cniPlugin(repoRoot: string): string {
  const plugin = path.join(repoRoot, 'native', 'build', 'trellis-cni');
  if (!existsSync(plugin)) throw new LabError('ENOTBUILT', `${plugin} is missing: run \`npm run build\``);
  return plugin;
}

export interface CniAddResult {
  containerId: string;
  ms: number;
  /** The plugin's stdout: the result it passed on (success) or its CNI error object (failure). */
  stdout: string;
  /** The plugin's notes (why it let a pod start without asking the agent, and so on). */
  stderr: string;
}

/**
 * CNI ADD of the pod's sandbox through trellis-cni, run in the node's netns as the runtime would. Rejects with ECNI
 * and the plugin's error (code, msg, details) when it fails: the pod must not start then.
 */
export async function cniAdd(inputs: { plugin: string; cni: NodeCni; nodeNetns: string; pod: PlannedPod; uid: string }): Promise<CniAddResult> {
  const { pod } = inputs;
  const containerId = randomBytes(32).toString('hex');
  const config = {
    cniVersion: '1.0.0',
    name: 'k8s-pod-network',
    type: 'trellis-cni',
    socket: inputs.cni.socket,
    optin_file: inputs.cni.optinFile,
    timeout_ms: CNI_TIMEOUT_MS,
    prevResult: {
      cniVersion: '1.0.0',
      interfaces: [{ name: pod.hostInterface }, { name: 'eth0', sandbox: pod.netnsPath }],
      ips: [{ address: `${pod.ip}/32`, interface: 1 }],
      routes: [{ dst: '0.0.0.0/0' }],
      dns: {},
    },
  };
  const env = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    CNI_COMMAND: 'ADD',
    CNI_CONTAINERID: containerId,
    CNI_NETNS: pod.netnsPath,
    CNI_IFNAME: 'eth0',
    CNI_PATH: path.dirname(inputs.plugin),
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${pod.namespace};K8S_POD_NAME=${pod.name};K8S_POD_INFRA_CONTAINER_ID=${containerId};K8S_POD_UID=${inputs.uid}`,
  };
  const started = performance.now();
  const r = await run('ip', ['netns', 'exec', inputs.nodeNetns, inputs.plugin], { env, input: JSON.stringify(config), timeoutMs: CNI_TIMEOUT_MS + 5_000 });
  const ms = performance.now() - started;
  if (r.code !== 0) {
    let why = r.stdout.trim();
    try {
      const e = JSON.parse(why) as { code?: number; msg?: string; details?: string };
      why = `CNI error ${e.code}: ${e.msg}${e.details ? ` (${e.details})` : ''}`;
    } catch {
      // Not the CNI error object: keep what it printed.
    }
    throw new LabError('ECNI', `CNI ADD of pod ${pod.namespace}/${pod.name} failed after ${Math.round(ms)} ms: ${why || r.stderr.trim()}`);
  }
  return { containerId, ms, stdout: r.stdout, stderr: r.stderr };
}
