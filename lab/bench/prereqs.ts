// Bench: the programs it needs on the machine and the Debian packages they come from, so a missing one is
// named with the exact command that installs it (or installed, with --install).
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import { run } from '../cluster/run.js';

export interface Prereq {
  command: string;
  /** The Debian package that provides it. */
  pkg: string;
  why: string;
}

export const PREREQS: readonly Prereq[] = Object.freeze([
  { command: 'haproxy', pkg: 'haproxy', why: 'the HAProxy baseline paths' },
  { command: 'h2load', pkg: 'nghttp2-client', why: 'the load generator of the h2c paths' },
  { command: 'taskset', pkg: 'util-linux', why: 'pinning load generator, servers and proxies to CPUs' },
  { command: 'ip', pkg: 'iproute2', why: 'the lab (network namespaces)' },
  { command: 'nft', pkg: 'nftables', why: 'the lab (capture and ClusterIP rules)' },
  { command: 'getconf', pkg: 'libc-bin', why: 'clock ticks for CPU accounting' },
]);

/** Whether an executable `command` is on PATH (the sbin directories included, as root has them). */
export function onPath(command: string, envPath = process.env.PATH ?? ''): boolean {
  const dirs = [...envPath.split(':'), '/usr/local/sbin', '/usr/sbin', '/sbin'].filter(Boolean);
  return dirs.some((dir) => {
    try {
      accessSync(path.join(dir, command), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

export function missingPrereqs(has: (command: string) => boolean = (c) => onPath(c)): Prereq[] {
  return PREREQS.filter((p) => !has(p.command));
}

/** The one command that installs them all. */
export function installCommand(missing: readonly Prereq[]): string {
  return `apt-get install -y ${[...new Set(missing.map((p) => p.pkg))].join(' ')}`;
}

/** apt-get update, then install; output goes to `log`. Resolves with apt-get's exit code. */
export async function installPrereqs(missing: readonly Prereq[], log: (line: string) => void): Promise<number> {
  const pkgs = [...new Set(missing.map((p) => p.pkg))];
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  for (const args of [['update'], ['install', '-y', ...pkgs]]) {
    log(`$ apt-get ${args.join(' ')}`);
    const r = await run('apt-get', args, { env, timeoutMs: 600_000 });
    const tail = (r.stdout + r.stderr).trim().split('\n').slice(-5).join('\n');
    if (tail) log(tail);
    if (r.code !== 0) return r.code;
  }
  return 0;
}
