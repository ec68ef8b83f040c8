// The eBPF half of the native boundary (native/bpf.c), under capture/: what the kernel offers, the inbound sk_lookup
// program (native/bpf/sk_lookup.bpf.c) attached to one pod's network namespace, the sockops program keeping the RTT
// and retransmissions of the agent's own sockets (native/bpf/tcp_health.bpf.c), and the outbound programs on the
// cgroup root (native/bpf/outbound.bpf.c) with the original destinations they record, and the same-node splice's stream
// verdict on its sockhash (native/bpf/same_node.bpf.c). Re-exported by index.ts.
// A failure becomes BpfError: the program, the attach point, the errno and what to do about it.
import { TrellisError } from '../errors.js';
import { native, NativeError } from './binding.js';

/** 1: yes; 0: no; negative: -errno, the kernel would not say (-EPERM without CAP_BPF). */
export type ProbeAnswer = number;

export interface BpfProbe {
  readonly progTypes: { readonly sk_lookup: ProbeAnswer; readonly cgroup_sock_addr: ProbeAnswer; readonly sock_ops: ProbeAnswer; readonly sk_skb: ProbeAnswer };
  readonly mapTypes: { readonly sockmap: ProbeAnswer; readonly sockhash: ProbeAnswer };
  /** The kernel's own BTF (/sys/kernel/btf/vmlinux), which CO-RE relocation needs. */
  readonly btf: ProbeAnswer;
  /** struct bpf_sk_lookup has ingress_ifindex (Linux 5.17+), which the program reads to leave loopback alone. */
  readonly skLookupIfindex: ProbeAnswer;
  /** Trellis's own sk_lookup program, loaded (CO-RE relocated, verified) and thrown away. */
  readonly program: ProgramProbe;
  /** Trellis's outbound programs (connect4/6, getpeername4/6, sockops), loaded and thrown away. */
  readonly outboundProgram: ProgramProbe;
  /** SO_NETNS_COOKIE (Linux 5.14+): how the agent learns a pod's netns cookie. */
  readonly netnsCookie: ProbeAnswer;
}

export type ProgramProbe =
  | { readonly ok: true }
  | { readonly ok: false; readonly errno: number; readonly code: string; readonly stage: string; readonly message: string; readonly log: string };

/** The inbound program's name, as `bpftool prog show` lists it. */
export const SK_LOOKUP_PROGRAM = 'trellis_inbound';

/** The verdicts the program counts, in the order of enum trellis_sk_lookup_verdict (native/bpf/sk_lookup.h). */
export const SK_LOOKUP_VERDICTS = ['steered', 'local', 'exempt_port', 'probe_source', 'no_listener', 'refused'] as const;
export type SkLookupVerdict = (typeof SK_LOOKUP_VERDICTS)[number];

/** Most probe sources per address family the program exempts (TRELLIS_MAX_PROBE_SOURCES). */
export const SK_LOOKUP_MAX_PROBE_SOURCES = 8;

/** Opaque: the addon's handle of one loaded and attached program. */
export type SkLookupHandle = { readonly __brand: 'SkLookupHandle' };

/** A BPF step that failed: which program, where it was going, the stage, the errno, and libbpf's last words. */
export class BpfError extends NativeError {
  readonly program: string;
  readonly attachPoint: string;
  /** open | load | map | attach */
  readonly stage: string;
  /** libbpf's warnings for the failed call, the verifier's log among them (its end: the lines that say why). */
  readonly log: string;
  constructor(
    init: { code: string; errno: number; syscall: string; program: string; attachPoint: string; stage: string; log: string; message: string },
    options?: { cause?: unknown },
  ) {
    super(init.code, init.errno, init.syscall, init.message, options);
    this.name = 'BpfError';
    this.program = init.program;
    this.attachPoint = init.attachPoint;
    this.stage = init.stage;
    this.log = init.log;
  }
}

/** What to do about an errno at a stage; undefined when there is nothing better to say than the errno. */
export function bpfHint(code: string, stage: string, program: string = SK_LOOKUP_PROGRAM): string | undefined {
  if (code === 'EPERM' || code === 'EACCES') {
    return 'loading and attaching BPF programs needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN) and a seccomp profile that allows bpf(); or run with --capture nft';
  }
  if (stage === 'load' && (code === 'EINVAL' || code === 'ENOTSUPP' || code === 'EOPNOTSUPP')) {
    return 'the kernel lacks the program type or a field the program reads (sk_lookup: Linux 5.9+; its ingress_ifindex: 5.17+); run with --capture nft';
  }
  if (stage === 'load' && (code === 'ESRCH' || code === 'ENOENT')) {
    return 'CO-RE relocation needs the kernel\'s BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF); run with --capture nft';
  }
  if (stage === 'map' && (code === 'EOPNOTSUPP' || code === 'EINVAL' || code === 'EBADF')) return 'the fd is not a listening TCP socket';
  if (stage === 'attach' && code === 'ENOENT') {
    if (program === OUTBOUND_PROGRAMS) return 'the cgroup root is not there: pass --cgroup-root with a directory of a cgroup v2 mount';
    return program === TCP_HEALTH_PROGRAM ? "the agent's cgroup is gone" : "the pod's network namespace is gone";
  }
  if (program === OUTBOUND_PROGRAMS && stage === 'attach' && (code === 'EBADF' || code === 'ENOTDIR' || code === 'EINVAL')) {
    return 'the cgroup root must be a directory of a cgroup v2 mount (not v1): pass --cgroup-root, e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified';
  }
  if (stage === 'attach' && code === 'EINVAL') return 'the kernel cannot attach sk_lookup programs to a network namespace (Linux 5.9+)';
  return undefined;
}

/** The last `n` non-empty lines of a libbpf log. */
export function lastLines(log: string, n = 4): string[] {
  return log
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .slice(-n);
}

function bpfCall<T>(program: string, attachPoint: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    const e = err as { code?: unknown; errno?: unknown; syscall?: unknown; stage?: unknown; log?: unknown; message?: unknown };
    if (typeof e.errno !== 'number' || typeof e.code !== 'string' || typeof e.syscall !== 'string') throw err;
    const stage = typeof e.stage === 'string' ? e.stage : 'load';
    const log = typeof e.log === 'string' ? e.log : '';
    const hint = bpfHint(e.code, stage, program);
    const verifier = stage === 'load' && log ? `; libbpf: ${lastLines(log).join(' | ')}` : '';
    const message = `BPF program ${program} at ${attachPoint}: ${String(e.message)}${hint ? ` (${hint})` : ''}${verifier}`;
    throw new BpfError({ code: e.code, errno: e.errno, syscall: e.syscall, program, attachPoint, stage, log, message }, { cause: err });
  }
}

/** Asks the kernel what it offers, by loading tiny programs and Trellis's own; changes nothing, attaches nothing. */
export function probeBpf(): BpfProbe {
  return native().bpfProbe();
}

/**
 * One pod's inbound program: loaded for this pod (its probe sources and exempt ports are fixed at load), the pod's
 * inbound listener in its map, linked to the pod's netns. Held by file descriptors of this process: closed, or when
 * the process ends, it is detached and unloaded.
 */
export class SkLookupLink {
  private handle: SkLookupHandle | undefined;

  private constructor(
    handle: SkLookupHandle,
    readonly netnsPath: string,
  ) {
    this.handle = handle;
  }

  static attach(netnsPath: string, opts: { listenerFd: number; probeSources: readonly string[]; exemptPorts: readonly number[] }): SkLookupLink {
    if (typeof netnsPath !== 'string' || netnsPath.length === 0) throw new TrellisError('EINVAL', 'netns path must be a non-empty string');
    if (!Number.isInteger(opts.listenerFd) || opts.listenerFd < 0) throw new TrellisError('EINVAL', `listener fd must be a non-negative integer, got ${opts.listenerFd}`);
    const handle = bpfCall(SK_LOOKUP_PROGRAM, `sk_lookup of netns ${netnsPath}`, () =>
      native().skLookupAttach(netnsPath, opts.listenerFd, [...opts.probeSources], [...opts.exemptPorts]),
    );
    return new SkLookupLink(handle, netnsPath);
  }

  get closed(): boolean {
    return this.handle === undefined;
  }

  /** The pod's listener was reopened: connections go to the new one. */
  setListener(fd: number): void {
    const h = this.open();
    bpfCall(SK_LOOKUP_PROGRAM, `sk_lookup of netns ${this.netnsPath}`, () => native().skLookupSetListener(h, fd));
  }

  /** Links the same program and maps to the netns again (the link was detached from outside); the old link is released. */
  reattach(): void {
    const h = this.open();
    bpfCall(SK_LOOKUP_PROGRAM, `sk_lookup of netns ${this.netnsPath}`, () => native().skLookupReattach(h, this.netnsPath));
  }

  /** Lookups per verdict since attach. */
  verdicts(): Record<SkLookupVerdict, number> {
    const h = this.open();
    const counts = bpfCall(SK_LOOKUP_PROGRAM, `sk_lookup of netns ${this.netnsPath}`, () => native().skLookupVerdicts(h));
    return Object.fromEntries(SK_LOOKUP_VERDICTS.map((v, i) => [v, counts[i] ?? 0])) as Record<SkLookupVerdict, number>;
  }

  /**
   * The kernel's ids of the program and the link, and the inode of the netns it is attached to (as bpftool shows them);
   * netnsInode 0 when the link was detached from outside (bpftool link detach) and the program runs no more.
   */
  ids(): { program: number; link: number; netnsInode: number } {
    const h = this.open();
    return bpfCall(SK_LOOKUP_PROGRAM, `sk_lookup of netns ${this.netnsPath}`, () => native().skLookupIds(h));
  }

  /** Detaches and unloads; idempotent. */
  close(): void {
    const h = this.handle;
    this.handle = undefined;
    if (h) native().skLookupClose(h);
  }

  private open(): SkLookupHandle {
    if (!this.handle) throw new TrellisError('ECLOSED', `the sk_lookup program of ${this.netnsPath} is detached`);
    return this.handle;
  }
}

/** The TCP health program's name, as `bpftool prog show` lists it. */
export const TCP_HEALTH_PROGRAM = 'trellis_tcp_health';

/** Opaque: the addon's handle of the loaded and attached TCP health program. */
export type TcpHealthHandle = { readonly __brand: 'TcpHealthHandle' };

/** One socket's figures, as the sockops program last saw them. */
export interface TcpStats {
  /** The kernel's smoothed RTT, microseconds. */
  readonly srttUs: number;
  /** Segments retransmitted since the connection was established. */
  readonly retransmits: number;
  /** RTT samples the kernel took (0: srttUs is the handshake's alone). */
  readonly rttSamples: number;
}

/**
 * The sockops program on the agent's cgroup (v2): for every TCP socket of the agent it keeps the smoothed RTT and the
 * retransmissions in a map keyed by the socket's cookie. Held by file descriptors of this process (nothing pinned):
 * closed, or when the process ends, it is detached and unloaded with its map.
 */
export class TcpHealthLink {
  private handle: TcpHealthHandle | undefined;

  private constructor(
    handle: TcpHealthHandle,
    readonly cgroupPath: string,
  ) {
    this.handle = handle;
  }

  static attach(cgroupPath: string): TcpHealthLink {
    if (typeof cgroupPath !== 'string' || cgroupPath.length === 0) throw new TrellisError('EINVAL', 'cgroup path must be a non-empty string');
    const handle = bpfCall(TCP_HEALTH_PROGRAM, `sockops of cgroup ${cgroupPath}`, () => native().tcpHealthAttach(cgroupPath));
    return new TcpHealthLink(handle, cgroupPath);
  }

  get closed(): boolean {
    return this.handle === undefined;
  }

  /** The kernel's ids; cgroupId 0 when the link was detached from outside (bpftool link detach). mapFd: the stats. */
  ids(): { program: number; link: number; cgroupId: number; mapFd: number } {
    const h = this.open();
    return bpfCall(TCP_HEALTH_PROGRAM, `sockops of cgroup ${this.cgroupPath}`, () => native().tcpHealthIds(h));
  }

  /** Links the same program and map again (the link was detached); the old link is released. */
  reattach(): void {
    const h = this.open();
    bpfCall(TCP_HEALTH_PROGRAM, `sockops of cgroup ${this.cgroupPath}`, () => native().tcpHealthReattach(h, this.cgroupPath));
  }

  /** Detaches and unloads, the map with it; idempotent. */
  close(): void {
    const h = this.handle;
    this.handle = undefined;
    if (h) native().tcpHealthClose(h);
  }

  private open(): TcpHealthHandle {
    if (!this.handle) throw new TrellisError('ECLOSED', `the TCP health program of ${this.cgroupPath} is detached`);
    return this.handle;
  }
}

/**
 * A socket's entry in the TCP health map, read by the map's fd (any thread of the agent may: the fd is the process's);
 * with `remove`, read and deleted in one call. Undefined when the map holds none (a socket of before the program).
 */
export function readTcpStats(mapFd: number, cookie: number, remove: boolean): TcpStats | undefined {
  const v = bpfCall(TCP_HEALTH_PROGRAM, 'its stats map', () => native().tcpStatsRead(mapFd, cookie, remove));
  return v ? { srttUs: v[0], retransmits: v[1], rttSamples: v[2] } : undefined;
}

/** Deletes a socket's entry (a socket shared by many connections, when it closes). */
export function forgetTcpStats(mapFd: number, cookie: number): void {
  bpfCall(TCP_HEALTH_PROGRAM, 'its stats map', () => native().tcpStatsForget(mapFd, cookie));
}

/** The kernel's cookie of a socket (SO_COOKIE): the key the TCP health program files its figures under. */
export function socketCookie(fd: number): number {
  return bpfCall(TCP_HEALTH_PROGRAM, 'its stats map', () => native().socketCookie(fd));
}

/** The outbound programs, as one name in errors; `bpftool prog show` lists each (OUTBOUND_PROGRAM_NAMES). */
export const OUTBOUND_PROGRAMS = 'trellis_outbound';
/** The outbound programs' names as the kernel lists them, in the order of their links. */
export const OUTBOUND_PROGRAM_NAMES = ['trellis_conn4', 'trellis_conn6', 'trellis_peer4', 'trellis_peer6', 'trellis_outops'] as const;

/** The verdicts connect4/connect6 count, in the order of enum trellis_out_verdict (native/bpf/outbound.h). */
export const OUTBOUND_VERDICTS = ['redirected', 'agent', 'local', 'ipv6_refused', 'no_record'] as const;
export type OutboundVerdict = (typeof OUTBOUND_VERDICTS)[number];

/** Own addresses per family of a pod the programs hold (TRELLIS_OUT_POD_IPS). */
export const OUTBOUND_MAX_POD_IPS = 2;

/** Opaque: the addon's handle of the loaded and attached outbound programs. */
export type OutboundHandle = { readonly __brand: 'OutboundHandle' };

export interface OutboundLinkIds {
  readonly program: number;
  readonly name: string;
  readonly link: number;
  /** 0 when the link was detached from outside (bpftool link detach). */
  readonly cgroupId: number;
}

/**
 * The outbound programs on a cgroup root (native/bpf/outbound.bpf.c): connect4/connect6 send meshed pods' TCP connects
 * to the agent's outbound listener and record where each was going, getpeername4/6 give the app that address back,
 * and a sockops program files each record under the pod's netns and the client's port for the agent. Held by file
 * descriptors of this process (nothing pinned): closed, or when the process ends, detached and unloaded.
 */
export class OutboundLink {
  private handle: OutboundHandle | undefined;

  private constructor(
    handle: OutboundHandle,
    readonly cgroupPath: string,
  ) {
    this.handle = handle;
  }

  /**
   * Loads and links the programs. `ownerNetns` is the agent's own netns cookie: a running agent's programs with the
   * same owner (the predecessor in a hand-over) lend their maps of original destinations.
   */
  static attach(cgroupPath: string, opts: { ownerNetns: number; agentMark: number; transparentMark: number; port: number }): OutboundLink {
    if (typeof cgroupPath !== 'string' || cgroupPath.length === 0) throw new TrellisError('EINVAL', 'cgroup path must be a non-empty string');
    const handle = bpfCall(OUTBOUND_PROGRAMS, `cgroup ${cgroupPath}`, () =>
      native().outboundAttach(cgroupPath, opts.ownerNetns, opts.agentMark, opts.transparentMark, opts.port),
    );
    return new OutboundLink(handle, cgroupPath);
  }

  get closed(): boolean {
    return this.handle === undefined;
  }

  /** The kernel's ids of each program and link; whether the maps are a predecessor's; the fd of the by-port map. */
  ids(): { links: OutboundLinkIds[]; shared: boolean; mapFd: number } {
    const h = this.open();
    return bpfCall(OUTBOUND_PROGRAMS, `cgroup ${this.cgroupPath}`, () => native().outboundIds(h));
  }

  /** Links again the programs whose link was detached from outside. */
  reattach(): void {
    const h = this.open();
    bpfCall(OUTBOUND_PROGRAMS, `cgroup ${this.cgroupPath}`, () => native().outboundReattach(h, this.cgroupPath));
  }

  /** A pod to capture: its netns cookie and its own addresses (reached directly). */
  setPod(netnsCookie: number, ips: readonly string[]): void {
    const h = this.open();
    bpfCall(OUTBOUND_PROGRAMS, `cgroup ${this.cgroupPath}`, () => native().outboundSetPod(h, netnsCookie, [...ips]));
  }

  deletePod(netnsCookie: number): void {
    const h = this.open();
    bpfCall(OUTBOUND_PROGRAMS, `cgroup ${this.cgroupPath}`, () => native().outboundDeletePod(h, netnsCookie));
  }

  /** Connects per verdict since attach. */
  verdicts(): Record<OutboundVerdict, number> {
    const h = this.open();
    const counts = bpfCall(OUTBOUND_PROGRAMS, `cgroup ${this.cgroupPath}`, () => native().outboundVerdicts(h));
    return Object.fromEntries(OUTBOUND_VERDICTS.map((v, i) => [v, counts[i] ?? 0])) as Record<OutboundVerdict, number>;
  }

  /** Detaches and unloads; idempotent. Maps shared with another agent live on with it. */
  close(): void {
    const h = this.handle;
    this.handle = undefined;
    if (h) native().outboundClose(h);
  }

  private open(): OutboundHandle {
    if (!this.handle) throw new TrellisError('ECLOSED', `the outbound programs of ${this.cgroupPath} are detached`);
    return this.handle;
  }
}

/**
 * Where a connection accepted on a pod's outbound listener was going, as the outbound programs recorded it (by the
 * pod's netns cookie and the client's port); read and deleted in one call, by the map's fd (any thread may).
 * Undefined when there is no record.
 */
export function outboundOriginalDst(mapFd: number, fd: number): { address: string; port: number; family: 4 } | undefined {
  return bpfCall(OUTBOUND_PROGRAMS, 'its map of original destinations', () => native().outboundOriginalDst(mapFd, fd)) ?? undefined;
}

/**
 * The fd of the map of original destinations by accepted port of an eBPF-mode agent in this netns (`ownerNetns`), on
 * the cgroup at `cgroupPath`; undefined when none runs. The fd is the caller's to keep or close.
 */
export function findOutboundMap(cgroupPath: string, ownerNetns: number): number | undefined {
  const fd = bpfCall(OUTBOUND_PROGRAMS, `cgroup ${cgroupPath}`, () => native().outboundFindMap(cgroupPath, ownerNetns));
  return fd >= 0 ? fd : undefined;
}

/** The cookie of the network namespace a socket lives in (SO_NETNS_COOKIE). */
export function socketNetnsCookie(fd: number): number {
  return bpfCall(OUTBOUND_PROGRAMS, 'SO_NETNS_COOKIE', () => native().socketNetnsCookie(fd));
}

/** The same-node splice's program, as `bpftool prog show` lists it. */
export const SAME_NODE_PROGRAM = 'trellis_same_node';

/** Opaque: the addon's handle of one thread's same-node splice (program, sockhash, peers map). */
export type SameNodeHandle = { readonly __brand: 'SameNodeHandle' };

/** What the program moved for one socket: bytes read from it and sent out of its peer, and bytes it could not send on. */
export interface SameNodeCounts {
  readonly bytes: number;
  readonly dropped: number;
}

/**
 * One agent thread's same-node kernel splice (io/kernel-splice.ts): a stream verdict program on a sockhash that sends
 * what one socket of a pair reads out of the other. Held by file descriptors of this process: closed, or when the
 * process ends, it is detached and unloaded with its maps.
 */
export class SameNodeMaps {
  private handle: SameNodeHandle | undefined;

  private constructor(handle: SameNodeHandle) {
    this.handle = handle;
  }

  static open(): SameNodeMaps {
    return new SameNodeMaps(bpfCall(SAME_NODE_PROGRAM, 'its sockhash', () => native().sameNodeOpen()));
  }

  /** Hands a pair of established TCP sockets to the program; returns their cookies (the keys of their counts). */
  add(fdA: number, fdB: number): [number, number] {
    const h = this.open();
    return bpfCall(SAME_NODE_PROGRAM, 'its sockhash', () => native().sameNodeAdd(h, fdA, fdB));
  }

  /** One socket's counts; with `forget`, read and removed: its bytes are left to its reader from then on. */
  counts(cookie: number, forget: boolean): SameNodeCounts | undefined {
    const h = this.open();
    const v = bpfCall(SAME_NODE_PROGRAM, 'its peers map', () => native().sameNodeCounts(h, cookie, forget));
    return v ? { bytes: v[0], dropped: v[1] } : undefined;
  }

  /** The kernel's ids of the program and its maps, as bpftool shows them. */
  ids(): { program: number; sockets: number; peers: number } {
    const h = this.open();
    return bpfCall(SAME_NODE_PROGRAM, 'its sockhash', () => native().sameNodeIds(h));
  }

  /** Detaches and unloads, the maps with them; idempotent. */
  close(): void {
    const h = this.handle;
    this.handle = undefined;
    if (h) native().sameNodeClose(h);
  }

  private open(): SameNodeHandle {
    if (!this.handle) throw new TrellisError('ECLOSED', 'the same-node splice program is unloaded');
    return this.handle;
  }
}

/** TCP states (include/net/tcp_states.h) in which the peer's FIN has arrived: it counts one in bytesReceived. */
const FIN_RECEIVED_STATES: ReadonlySet<number> = new Set([6 /* TIME_WAIT */, 7 /* CLOSE */, 8 /* CLOSE_WAIT */, 9 /* LAST_ACK */, 11 /* CLOSING */]);

export interface SocketQueues {
  /** Unread bytes its reader may read (SIOCINQ). */
  readonly inq: number;
  /** Bytes given to send and not yet acknowledged (SIOCOUTQ). */
  readonly outq: number;
  /** Bytes acknowledged by the peer so far (TCP_INFO). */
  readonly acked: number;
  /** Payload bytes received in order so far (TCP_INFO's bytes_received, without the FIN's one). */
  readonly received: number;
  /** Nothing arrived or was acknowledged while the figures were read: they are one consistent look. */
  readonly settled: boolean;
}

/** A TCP socket's queues and totals, in one look (the same-node kernel splice's hand-over and FIN). */
export function socketQueues(fd: number): SocketQueues {
  const [inq, outq, acked, received, state, settled] = bpfCall(SAME_NODE_PROGRAM, 'a socket of its sockhash', () => native().socketQueues(fd));
  return { inq, outq, acked, received: received - (FIN_RECEIVED_STATES.has(state) ? 1 : 0), settled: settled === 1 };
}

/**
 * Reads what a socket has now, at most `max` bytes, without blocking, outside Node's reading (which must be stopped):
 * the same-node hand-over empties a receive queue so that the program never gets a buffer that was partly read.
 */
export function socketTake(fd: number, max: number): Buffer {
  return bpfCall(SAME_NODE_PROGRAM, 'a socket of its sockhash', () => native().socketTake(fd, max));
}

/**
 * A socket's pending error (SO_ERROR, which clears it), 0 for none: a socket in a sockhash reads a reset as an end of
 * stream, and this tells the two apart.
 */
export function socketError(fd: number): number {
  return bpfCall(SAME_NODE_PROGRAM, 'a socket of its sockhash', () => native().socketError(fd));
}

/**
 * Has the kernel look at a socket's receive queue now (SO_RCVLOWAT 1): a socket just put in the same-node sockhash
 * hands the bytes waiting there to the program at once rather than with the next arrival.
 */
export function socketPoke(fd: number): void {
  bpfCall(SAME_NODE_PROGRAM, 'a socket of its sockhash', () => native().socketPoke(fd));
}
