// A cgroup (v2) of its own for each lab agent, as a container runtime gives the DaemonSet's pod: the agent's sockops
// program (agent/capture/tcp-health.ts) attaches to the agent's cgroup and so sees the agent's sockets only. Named
// with the lab's prefix at the top of the host's cgroup2 mount, removed by `down` and `sweep` once their processes
// are gone. Without cgroup v2 on the host agents run where the lab runs, and say that TCP health is off.
import { promises as fsp, readFileSync } from 'node:fs';
import path from 'node:path';
import { cgroup2Mount } from '../../agent/capture/kernel.js';
import { labPrefix } from './names.js';

/** The host's cgroup2 mount, as this process sees it; undefined without one. */
export function hostCgroup2(): string | undefined {
  try {
    return cgroup2Mount(readFileSync('/proc/self/mountinfo', 'utf8'))?.path;
  } catch {
    return undefined;
  }
}

/** Makes the cgroup of lab `lab`'s agent on `node` (kept if it is there); undefined without cgroup v2. */
export async function agentCgroup(lab: string, node: string): Promise<string | undefined> {
  const root = hostCgroup2();
  if (!root) return undefined;
  const dir = path.join(root, `${labPrefix(lab)}${node}`);
  await fsp.mkdir(dir, { recursive: true });
  return dir;
}

/** argv started inside the cgroup: a shell moves itself there and execs it, so every process of it starts inside. */
export function inCgroup(dir: string, argv: string[]): string[] {
  return ['sh', '-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', dir, ...argv];
}

/** Removes the lab cgroups whose names start with `prefix` (their processes gone); returns the ones removed. */
export async function removeCgroups(prefix: string): Promise<string[]> {
  const root = hostCgroup2();
  if (!root) return [];
  const removed: string[] = [];
  const problems: string[] = [];
  for (const entry of await fsp.readdir(root).catch(() => [] as string[])) {
    if (!entry.startsWith(prefix)) continue;
    const dir = path.join(root, entry);
    try {
      await fsp.rmdir(dir);
      removed.push(dir);
    } catch (err) {
      // EBUSY: a process is still in it.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') problems.push(`cgroup ${dir}: ${(err as Error).message}`);
    }
  }
  if (problems.length > 0) throw new Error(problems.join('; '));
  return removed;
}
