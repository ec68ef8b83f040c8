// Finds the network namespace of a pod that was running before the agent (no CNI event, no netns annotation):
// the netns that owns the pod's IP, read from /proc without entering it. Never the agent's own netns.
import { spawn } from 'node:child_process';
import { readdir, readFile, stat } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { systemClock, type Clock } from '../clock.js';

export interface NetnsFinderInputs {
  /** Defaults to /proc. */
  procRoot?: string;
  /** Where runtimes bind-mount pod netns (stable paths, preferred over /proc/PID/ns/net). */
  netnsDirs?: readonly string[];
  /** How long a miss is remembered, so a pod whose netns is not visible does not cost a scan per reconcile. */
  missTtlMs?: number;
  /** Upper bound on one scan; a scan that runs out says so. */
  scanBudgetMs?: number;
  clock?: Clock;
  logger?: Logger;
}

/** dev:inode of a netns file (every path to one netns has the same pair), or undefined if it is gone. */
export async function netnsId(path: string): Promise<string | undefined> {
  try {
    const s = await stat(path);
    return `${s.dev}:${s.ino}`;
  } catch {
    return undefined;
  }
}

const DEFAULT_DIRS = ['/run/netns', '/var/run/netns'];
const MAX_NAMESPACES = 4096;

interface Candidate {
  id: string;
  /** Lowest PID in the netns (the sandbox's pause process, usually): its /proc/PID/net shows the netns. */
  pid?: number;
  /** A bind mount of the netns (ip netns, containerd, CRI-O): a path that lasts as long as the sandbox. */
  mount?: string;
}

export class NetnsFinder {
  private readonly procRoot: string;
  private readonly dirs: readonly string[];
  private readonly clock: Clock;
  private readonly hits = new Map<string, { path: string; id: string }>();
  private readonly misses = new Map<string, number>();

  constructor(private readonly inputs: NetnsFinderInputs = {}) {
    this.procRoot = inputs.procRoot ?? '/proc';
    this.dirs = inputs.netnsDirs ?? DEFAULT_DIRS;
    this.clock = inputs.clock ?? systemClock;
  }

  /** A path to the netns that has `ip` as a local address, or undefined. */
  async find(ip: string): Promise<string | undefined> {
    // Every netns owns loopback; no pod IP is loopback, unspecified or link-local.
    if (!net.isIP(ip) || /^(127\.|0\.|169\.254\.)|^(::1?|fe80:.*)$/i.test(ip)) return undefined;
    const key = addressKey(ip);
    const hit = this.hits.get(key);
    // A cached path is good while it still names the same netns and that netns still owns the IP.
    if (hit && (await netnsId(hit.path)) === hit.id && (await this.owns(hit.path, key))) return hit.path;
    this.hits.delete(key);
    const missAt = this.misses.get(key);
    if (missAt !== undefined && this.clock.now() - missAt < (this.inputs.missTtlMs ?? 5_000)) return undefined;

    // One scan indexes every netns, so the pods of a node that were running before the agent cost one scan in all.
    const index = await this.scan();
    // The scan is a full picture: what it did not see is gone.
    this.hits.clear();
    for (const [addr, found] of index) if (found !== 'ambiguous') this.hits.set(addr, found);
    for (const [addr, at] of [...this.misses]) if (this.clock.now() - at >= (this.inputs.missTtlMs ?? 5_000)) this.misses.delete(addr);
    const found = index.get(key);
    if (found === 'ambiguous') {
      this.inputs.logger?.warn({ ip }, 'more than one network namespace owns this IP: not choosing one');
    } else if (found) {
      this.misses.delete(key);
      return found.path;
    }
    this.misses.set(key, this.clock.now());
    return undefined;
  }

  private async scan(): Promise<Map<string, { path: string; id: string } | 'ambiguous'>> {
    const started = this.clock.now();
    const budget = this.inputs.scanBudgetMs ?? 3_000;
    const own = await netnsId(join(this.procRoot, 'self', 'ns', 'net'));
    const candidates = new Map<string, Candidate>();

    for (const dir of this.dirs) {
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        const mount = join(dir, name);
        const id = await netnsId(mount);
        if (id && id !== own && !candidates.has(id)) candidates.set(id, { id, mount });
      }
    }
    const pids = (await readdir(this.procRoot).catch(() => [] as string[]))
      .filter((n) => /^\d+$/.test(n))
      .map(Number)
      .sort((a, b) => a - b);
    for (const pid of pids) {
      if (candidates.size >= MAX_NAMESPACES) break;
      const id = await netnsId(join(this.procRoot, String(pid), 'ns', 'net'));
      if (!id || id === own) continue;
      const c = candidates.get(id);
      if (!c) candidates.set(id, { id, pid });
      else c.pid ??= pid;
    }

    const index = new Map<string, { path: string; id: string } | 'ambiguous'>();
    for (const c of candidates.values()) {
      if (this.clock.now() - started > budget) {
        this.inputs.logger?.warn({ namespaces: candidates.size, budgetMs: budget }, 'netns scan ran out of time; the rest waits for the next one');
        break;
      }
      const addrs = c.pid !== undefined ? await this.procAddresses(c.pid) : await this.mountAddresses(c.mount!);
      if (!addrs) continue;
      const path = c.mount ?? join(this.procRoot, String(c.pid), 'ns', 'net');
      for (const addr of localAddresses(addrs)) {
        const seen = index.get(addr);
        index.set(addr, seen && (seen === 'ambiguous' || seen.id !== c.id) ? 'ambiguous' : { path, id: c.id });
      }
    }
    return index;
  }

  private async owns(path: string, key: string): Promise<boolean> {
    const m = /\/(\d+)\/ns\/net$/.exec(path);
    const addrs = m ? await this.procAddresses(Number(m[1])) : await this.mountAddresses(path);
    return !!addrs && localAddresses(addrs).has(key);
  }

  /** /proc/PID/net shows the netns of PID: no need to enter it. */
  private async procAddresses(pid: number): Promise<Addresses | undefined> {
    const base = join(this.procRoot, String(pid), 'net');
    const [trie, inet6] = await Promise.all([
      readFile(join(base, 'fib_trie'), 'utf8').catch(() => undefined),
      readFile(join(base, 'if_inet6'), 'utf8').catch(() => ''),
    ]);
    return trie === undefined ? undefined : { trie, inet6 };
  }

  /** A bind-mounted netns with no process in it: read the same files from a short-lived process inside. */
  private mountAddresses(path: string): Promise<Addresses | undefined> {
    return new Promise((resolve) => {
      const child = spawn('nsenter', [`--net=${path}`, '--', 'cat', '/proc/self/net/fib_trie', '/proc/self/net/if_inet6'], {
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      let out = '';
      const timer = setTimeout(() => child.kill('SIGKILL'), 2_000);
      child.stdout.on('data', (d: Buffer) => {
        if (out.length < 4 << 20) out += d.toString();
      });
      child.on('error', () => resolve(undefined));
      child.on('close', () => {
        clearTimeout(timer);
        // cat prints fib_trie first; if_inet6 lines are 32 hex digits followed by fields.
        const lines = out.split('\n');
        const v6 = lines.filter((l) => /^[0-9a-f]{32} /.test(l));
        resolve(out ? { trie: lines.filter((l) => !/^[0-9a-f]{32} /.test(l)).join('\n'), inet6: v6.join('\n') } : undefined);
      });
    });
  }
}

interface Addresses {
  trie: string;
  inet6: string;
}

/** The netns' own addresses, as addressKey() spells them. */
export function localAddresses(addrs: Addresses): Set<string> {
  const out = localIPv4(addrs.trie);
  for (const line of addrs.inet6.split('\n')) if (/^[0-9a-f]{32} /.test(line)) out.add(line.slice(0, 32));
  return out;
}

/** IPv4 as dotted quad; IPv6 as the 32 hex digits /proc/net/if_inet6 prints. */
function addressKey(ip: string): string {
  return net.isIPv4(ip) ? ip : expandIPv6(ip);
}

/** fib_trie lists a leaf "|-- 10.244.1.5" followed by its entries; "/32 host LOCAL" marks an address of the netns. */
export function localIPv4(trie: string): Set<string> {
  const out = new Set<string>();
  let leaf: string | undefined;
  for (const line of trie.split('\n')) {
    const t = line.trim();
    if (t.startsWith('|-- ')) leaf = t.slice(4);
    else if (leaf && t.startsWith('/32 host LOCAL')) out.add(leaf);
  }
  return out;
}

function expandIPv6(ip: string): string {
  const [head = '', tail = ''] = ip.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = ip.includes('::') ? [...h, ...Array(8 - h.length - t.length).fill('0'), ...t] : h;
  return groups.map((g) => g.padStart(4, '0')).join('').toLowerCase();
}
