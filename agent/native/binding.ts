// Loads the native addon (native/build/trellis.node) and turns its errno errors into NativeError: shared by the typed
// wrappers of the boundary (index.ts, bpf.ts), never imported from outside agent/native.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TrellisError } from '../errors.js';
import type { BpfProbe, OutboundHandle, OutboundLinkIds, SameNodeHandle, SkLookupHandle, TcpHealthHandle } from './bpf.js';

export type Family = 4 | 6;

/** A failed syscall in the addon; `code` is the errno name ('ENOENT', 'EPERM'...). */
export class NativeError extends TrellisError<string> {
  readonly errno: number;
  readonly syscall: string;
  constructor(code: string, errno: number, syscall: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'NativeError';
    this.errno = errno;
    this.syscall = syscall;
  }
}

export interface Binding {
  socketInNetns(nsPath: string, family: Family, mark: number, transparent: boolean): number;
  listenInNetns(
    nsPath: string,
    family: Family,
    host: string,
    port: number,
    backlog: number,
    mark: number,
    transparent: boolean,
    reusePort: boolean,
  ): number;
  originalDst(fd: number): { address: string; port: number; family: Family };
  setMark(fd: number, mark: number): void;
  bindToDevice(fd: number, ifname: string): void;
  releaseFreeMemory(): boolean;
  setNetSysctlInNetns(nsPath: string, name: string, value: string): void;
  bpfProbe(): BpfProbe;
  skLookupAttach(nsPath: string, listenerFd: number, probeSources: string[], exemptPorts: number[]): SkLookupHandle;
  skLookupSetListener(handle: SkLookupHandle, listenerFd: number): void;
  skLookupReattach(handle: SkLookupHandle, nsPath: string): void;
  skLookupVerdicts(handle: SkLookupHandle): number[];
  skLookupIds(handle: SkLookupHandle): { program: number; link: number; netnsInode: number };
  skLookupClose(handle: SkLookupHandle): void;
  tcpHealthAttach(cgroupPath: string): TcpHealthHandle;
  tcpHealthReattach(handle: TcpHealthHandle, cgroupPath: string): void;
  tcpHealthIds(handle: TcpHealthHandle): { program: number; link: number; cgroupId: number; mapFd: number };
  tcpHealthClose(handle: TcpHealthHandle): void;
  tcpStatsRead(mapFd: number, cookie: number, remove: boolean): [number, number, number] | null;
  tcpStatsForget(mapFd: number, cookie: number): void;
  socketCookie(fd: number): number;
  outboundAttach(cgroupPath: string, ownerNetns: number, agentMark: number, transparentMark: number, port: number): OutboundHandle;
  outboundReattach(handle: OutboundHandle, cgroupPath: string): void;
  outboundIds(handle: OutboundHandle): { links: OutboundLinkIds[]; shared: boolean; mapFd: number };
  outboundSetPod(handle: OutboundHandle, netnsCookie: number, ips: string[]): void;
  outboundDeletePod(handle: OutboundHandle, netnsCookie: number): void;
  outboundVerdicts(handle: OutboundHandle): number[];
  outboundClose(handle: OutboundHandle): void;
  outboundOriginalDst(mapFd: number, fd: number): { address: string; port: number; family: 4 } | null;
  socketNetnsCookie(fd: number): number;
  outboundFindMap(cgroupPath: string, ownerNetns: number): number;
  sameNodeOpen(): SameNodeHandle;
  sameNodeAdd(handle: SameNodeHandle, fdA: number, fdB: number): [number, number];
  sameNodeCounts(handle: SameNodeHandle, cookie: number, forget: boolean): [number, number] | null;
  sameNodeIds(handle: SameNodeHandle): { program: number; sockets: number; peers: number };
  sameNodeClose(handle: SameNodeHandle): void;
  socketQueues(fd: number): [number, number, number, number, number, number];
  socketTake(fd: number, max: number): Buffer;
  socketError(fd: number): number;
  socketPoke(fd: number): void;
}

// Loaded on first use, so importing this module never fails on a machine that only runs pure-JS parts.
let binding: Binding | undefined;

export function native(): Binding {
  if (binding) return binding;
  const root = repoRoot(dirname(fileURLToPath(import.meta.url)));
  const file = join(root, 'native', 'build', 'trellis.node');
  if (!existsSync(file)) {
    throw new TrellisError('ENATIVE', `native addon not built (${file} is missing): run \`npm run build\``);
  }
  try {
    binding = createRequire(import.meta.url)(file) as Binding;
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new TrellisError(
      'ENATIVE',
      `native addon ${file} does not load (${reason}): rebuild it with \`npm run build:native\``,
      { cause: err },
    );
  }
  return binding;
}

// The same walk works from agent/native (sources under vitest) and dist/agent/native (compiled).
function repoRoot(from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) {
      throw new TrellisError('ENATIVE', `no package.json above ${from}: cannot locate native/build/trellis.node`);
    }
  }
}

function hintFor(code: string, syscall: string): string | undefined {
  if (code === 'EPERM' || code === 'EACCES') return 'run as root or grant CAP_NET_ADMIN and CAP_SYS_ADMIN';
  if (code === 'ENOENT' && (syscall === 'open' || syscall === 'setns')) return "the pod's network namespace is gone";
  // ENOPROTOOPT: conntrack is not loaded; ENOENT: conntrack has no entry for this connection.
  if ((code === 'ENOPROTOOPT' || code === 'ENOENT') && syscall.startsWith('getsockopt(')) {
    return 'the connection was not redirected by NAT (capture rules missing?)';
  }
  return undefined;
}

/** Runs one addon call, turning the addon's errno errors into NativeError with a hint. */
export function call<T>(op: string, fn: (b: Binding) => T): T {
  const b = native();
  try {
    return fn(b);
  } catch (err) {
    const e = err as { code?: unknown; errno?: unknown; syscall?: unknown; message?: unknown };
    if (typeof e.errno !== 'number' || typeof e.code !== 'string' || typeof e.syscall !== 'string') throw err;
    const hint = hintFor(e.code, e.syscall);
    const message = `${op}: ${String(e.message)}${hint ? ` (${hint})` : ''}`;
    throw new NativeError(e.code, e.errno, e.syscall, message, { cause: err });
  }
}

