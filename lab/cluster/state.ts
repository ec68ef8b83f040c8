// A lab's record on disk (<stateRoot>/<lab>/state.json and its directories), so `status`, `exec`
// and `down` work from any process, and files written so readers never see half of one.
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { LabError } from '../errors.js';
import type { LabNode, LabPod, LabService } from './plan.js';
import type { ProcRecord } from './procs.js';
import type { ClusterRecord } from './cluster.js';
import type { PrometheusRecord } from './prometheus.js';

export const STATE_VERSION = 1;

export interface PodState extends LabPod {
  /** What `exec` in this pod sees (pod variables, first container's env), without PATH. */
  env: Record<string, string>;
  processes: (ProcRecord & { container: string })[];
}

export interface LabState {
  version: number;
  name: string;
  createdAt: string;
  /** The checkout whose dist/agent/main.js the agents and the `trellis` shim run. */
  repoRoot: string;
  execPath: string;
  /** `cluster`: cluster mode's control plane and files (cluster.ts); absent in local mode. */
  options: { agents: boolean; agentArgs: string[]; logLevel?: string; cluster?: ClusterRecord; cni?: boolean };
  nodes: LabNode[];
  pods: PodState[];
  services: LabService[];
  /** By node name; null when the agent is stopped or agents are off. */
  agents: Record<string, ProcRecord | null>;
  /** The lab's Prometheus (`up --prometheus`); absent without one. */
  prometheus?: PrometheusRecord;
  /** The lab's internet (`up --internet`): its netns; absent without one. */
  internet?: { netns: string };
}

export interface LabPaths {
  stateDir: string;
  stateFile: string;
  /** Realized objects: the agents' `dir` source. */
  clusterDir: string;
  logsDir: string;
  /** First on the PATH of pod commands: the `trellis` and `node` shims. */
  binDir: string;
  caDir: string;
}

export function labPaths(stateRoot: string, name: string): LabPaths {
  const stateDir = path.join(path.resolve(stateRoot), name);
  return {
    stateDir,
    stateFile: path.join(stateDir, 'state.json'),
    clusterDir: path.join(stateDir, 'cluster'),
    logsDir: path.join(stateDir, 'logs'),
    binDir: path.join(stateDir, 'bin'),
    caDir: path.join(stateDir, 'ca'),
  };
}

export async function readState(stateFile: string): Promise<LabState | undefined> {
  let text: string;
  try {
    text = await fsp.readFile(stateFile, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let state: LabState;
  try {
    state = JSON.parse(text) as LabState;
  } catch (err) {
    throw new LabError('ESTATE', `${stateFile} is not valid JSON (${(err as Error).message}): run \`trellis lab sweep\``);
  }
  if (state.version !== STATE_VERSION) {
    throw new LabError(
      'ESTATE',
      `${stateFile} has state version ${String(state.version)}, this trellis reads ${STATE_VERSION}: run \`trellis lab sweep\``,
    );
  }
  return state;
}

export function writeState(stateFile: string, state: LabState): Promise<void> {
  return writeFileAtomic(stateFile, `${JSON.stringify(state, null, 2)}\n`);
}

/** Writes to a hidden temporary file beside the target, then renames it over the target. */
export async function writeFileAtomic(file: string, text: string, mode = 0o644): Promise<void> {
  // Dot-prefixed and not ending in .yaml, so a directory watcher never loads the temporary file.
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(4).toString('hex')}.tmp`);
  await fsp.writeFile(tmp, text, { mode });
  try {
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
}
