// The cgroup v2 mount the agent's BPF programs attach under (TCP health's sockops on the agent's cgroup, the outbound
// programs on the cgroup root). An agent that sees none (one started by `ip netns exec`, which mounts a fresh /sys)
// mounts cgroup2 on /sys/fs/cgroup, but only in a mount namespace of its own, where nobody else sees it and it goes
// with the namespace.
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import type { Logger } from 'pino';
import { cgroup2Mount, type Cgroup2Mount } from './kernel.js';

export interface Cgroup2Inputs {
  logger: Logger;
  /** /proc/self/mountinfo's text (read again after a mount). */
  mountinfo?: () => string;
  /** Whether this process has a mount namespace of its own (not PID 1's), where a mount of ours touches nobody else. */
  privateMounts?: () => boolean;
  /** Mounts cgroup2 at the path, in this process's mount namespace. */
  mountCgroup2?: (at: string) => Promise<void>;
}

/** Where a cgroup2 mount of our own goes when none is visible: sysfs's own mount point, empty in a fresh /sys. */
const PRIVATE_MOUNT = '/sys/fs/cgroup';

/** The cgroup2 mount this process sees, mounting one where it may; or why there is none. Never throws. */
export async function cgroup2View(inputs: Cgroup2Inputs): Promise<{ ok: true; mount: Cgroup2Mount } | { ok: false; reason: string }> {
  const mountinfo = inputs.mountinfo ?? (() => readFileSync('/proc/self/mountinfo', 'utf8'));
  const seen = cgroup2Mount(safe(mountinfo));
  if (seen) return { ok: true, mount: seen };
  if (!(inputs.privateMounts ?? privateMountNamespace)()) {
    return { ok: false, reason: 'no cgroup v2 mount visible to the agent, and it shares its mount namespace: mount cgroup2 (e.g. at /sys/fs/cgroup) where it runs' };
  }
  try {
    await (inputs.mountCgroup2 ?? mountCgroup2)(PRIVATE_MOUNT);
  } catch (err) {
    return { ok: false, reason: `no cgroup v2 mount visible, and mounting one at ${PRIVATE_MOUNT} (in the agent's own mount namespace) failed: ${(err as Error).message}` };
  }
  const mount = cgroup2Mount(safe(mountinfo));
  if (!mount) return { ok: false, reason: `cgroup2 was mounted at ${PRIVATE_MOUNT} but does not show in /proc/self/mountinfo` };
  inputs.logger.info({ at: mount.path }, "cgroup v2 mounted in the agent's own mount namespace, for its BPF programs");
  return { ok: true, mount };
}

function safe(read: () => string): string {
  try {
    return read();
  } catch {
    return '';
  }
}

function emptyDir(dir: string): boolean {
  try {
    return readdirSync(dir).length === 0;
  } catch {
    return false;
  }
}

/**
 * Whether this process's mount namespace is not that of PID 1, or (where PID 1's cannot be read) not that of the
 * process that started it: `ip netns exec` makes one and then execs the agent.
 */
function privateMountNamespace(): boolean {
  const ns = (pid: string): string | undefined => {
    try {
      return readlinkSync(`/proc/${pid}/ns/mnt`);
    } catch {
      return undefined;
    }
  };
  const own = ns('self');
  const other = ns('1') ?? (process.ppid > 0 ? ns(String(process.ppid)) : undefined);
  return own !== undefined && other !== undefined && own !== other;
}

/** Mounts cgroup2 at `at`, which must be an empty directory (nothing is ever mounted over something). */
function mountCgroup2(at: string): Promise<void> {
  if (!emptyDir(at)) return Promise.reject(new Error(`${at} is not an empty directory`));
  return new Promise((resolve, reject) => {
    execFile('mount', ['-t', 'cgroup2', 'cgroup2', at], { timeout: 5_000 }, (err, _stdout, stderr) => {
      if (err) reject(new Error(String(stderr).trim() || err.message));
      else resolve();
    });
  });
}
