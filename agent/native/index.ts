// The one typed boundary to the native addon (native/trellis.c, native/bpf.c): sockets inside pod network namespaces
// for capture/ and proxy/, the pre-NAT destination of captured connections, and (bpf.ts, re-exported here) the
// kernel's BPF features, the inbound sk_lookup program and the outbound programs. errno becomes NativeError (BpfError)
// here.
import { closeSync } from 'node:fs';
import net from 'node:net';
import { TrellisError } from '../errors.js';
import { call, type Family } from './binding.js';
import { socketNetnsCookie } from './bpf.js';

export { NativeError, type Family } from './binding.js';
// The eBPF half of the boundary: kernel probes and the inbound sk_lookup program.
export * from './bpf.js';

function invalid(message: string): TrellisError {
  return new TrellisError('EINVAL', message);
}

function checkNetns(netnsPath: string): void {
  if (typeof netnsPath !== 'string' || netnsPath.length === 0) throw invalid('netns path must be a non-empty string');
}

function checkMark(mark: number): void {
  if (!Number.isInteger(mark) || mark < 0 || mark > 0xffffffff) {
    throw invalid(`mark must be an integer from 0 to 0xffffffff, got ${mark}`);
  }
}

function checkPort(port: number, allowZero: boolean): void {
  if (!Number.isInteger(port) || port < (allowZero ? 0 : 1) || port > 65535) {
    throw invalid(`port must be an integer from ${allowZero ? 0 : 1} to 65535, got ${port}`);
  }
}

function checkFd(fd: number): void {
  if (!Number.isInteger(fd) || fd < 0) throw invalid(`fd must be a non-negative integer, got ${fd}`);
}

/** The family of an IP literal, checked against the one asked for. Names are refused: nothing here resolves DNS. */
function familyOf(host: string, family: Family | undefined): Family {
  const kind = net.isIP(host);
  if (kind === 0) {
    throw invalid(`host must be an IP address, got "${host}": resolve names before opening a socket in a netns`);
  }
  if (family !== undefined && family !== kind) {
    throw invalid(`host ${host} is IPv${kind} but family ${family} was asked for`);
  }
  return kind as Family;
}

function hostPort(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The cookie of the netns at the path (SO_NETNS_COOKIE on a socket opened there): how the outbound programs know a pod. */
export function netnsCookie(netnsPath: string): number {
  const fd = tcpSocketInNetns(netnsPath);
  try {
    return socketNetnsCookie(fd);
  } finally {
    closeSync(fd);
  }
}

/** An unconnected, non-blocking TCP socket created inside the netns; the caller owns the fd. */
export function tcpSocketInNetns(netnsPath: string, family: Family = 4, mark = 0, transparent = false): number {
  checkNetns(netnsPath);
  if (family !== 4 && family !== 6) throw invalid(`family must be 4 or 6, got ${String(family)}`);
  checkMark(mark);
  return call(`socket in ${netnsPath}`, (b) => b.socketInNetns(netnsPath, family, mark, transparent));
}

/** A listening TCP socket bound inside the netns; the caller owns the fd. */
export function listenFdInNetns(
  netnsPath: string,
  opts: { host: string; port: number; family?: Family; backlog?: number; mark?: number; transparent?: boolean; reusePort?: boolean },
): number {
  checkNetns(netnsPath);
  const family = familyOf(opts.host, opts.family);
  checkPort(opts.port, true);
  const backlog = opts.backlog ?? 511;
  if (!Number.isInteger(backlog) || backlog < 1) throw invalid(`backlog must be a positive integer, got ${backlog}`);
  const mark = opts.mark ?? 0;
  checkMark(mark);
  const transparent = opts.transparent ?? false;
  const reusePort = opts.reusePort ?? false;
  return call(`listen on ${hostPort(opts.host, opts.port)} in ${netnsPath}`, (b) =>
    b.listenInNetns(netnsPath, family, opts.host, opts.port, backlog, mark, transparent, reusePort),
  );
}

/** The destination a captured connection had before the NAT redirect (SO_ORIGINAL_DST). */
export function originalDst(fd: number): { address: string; port: number; family: Family } {
  checkFd(fd);
  return call('original destination', (b) => b.originalDst(fd));
}

export function setMark(fd: number, mark: number): void {
  checkFd(fd);
  checkMark(mark);
  call('set SO_MARK', (b) => b.setMark(fd, mark));
}

/** SO_BINDTODEVICE: the socket sends and receives through `ifname` only. */
export function bindToDevice(fd: number, ifname: string): void {
  checkFd(fd);
  if (typeof ifname !== 'string' || ifname.length === 0 || ifname.length > 15) throw invalid(`interface name must be 1 to 15 characters, got "${ifname}"`);
  call(`bind to ${ifname}`, (b) => b.bindToDevice(fd, ifname));
}

/**
 * Returns the C heap's free pages to the kernel (glibc malloc_trim): buffers a traffic burst freed otherwise
 * stay in the agent's RSS. True when some were returned; false elsewhere than glibc.
 */
export function releaseFreeMemory(): boolean {
  return call('release free memory', (b) => b.releaseFreeMemory());
}

/**
 * Writes a network sysctl of the netns (`name` under /proc/sys/net, e.g. `ipv4/tcp_migrate_req`). A kernel without
 * the setting fails with code ENOENT.
 */
export function setNetSysctlInNetns(netnsPath: string, name: string, value: string): void {
  checkNetns(netnsPath);
  call(`sysctl net/${name} in ${netnsPath}`, (b) => b.setNetSysctlInNetns(netnsPath, name, value));
}

/** fd of a connected/accepted net.Socket (from its handle); TrellisError 'ENOFD' if none. */
export function socketFd(socket: net.Socket): number {
  // libuv exposes the fd on stream handles on Unix; it is -1 or missing once closed.
  const handle = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle;
  const fd = handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    throw new TrellisError('ENOFD', 'socket has no file descriptor (not connected yet, or already closed)');
  }
  return fd;
}

/**
 * Makes `server` (net.Server, tls.Server, http.Server...) listen on a socket opened inside the netns.
 * Resolves on 'listening', rejects with NativeError or the listen error.
 */
export function listenInNetns(
  server: net.Server,
  netnsPath: string,
  opts: { host: string; port: number; family?: Family; backlog?: number; mark?: number; transparent?: boolean; reusePort?: boolean },
): Promise<void> {
  return new Promise((resolve, reject) => {
    let fd: number;
    try {
      fd = listenFdInNetns(netnsPath, opts);
    } catch (err) {
      reject(err);
      return;
    }
    const onError = (err: Error): void => {
      server.off('listening', onListening);
      reject(err);
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    try {
      // Once listen() starts, the server's handle owns the fd and closes it, also when listen fails.
      server.listen({ fd, backlog: opts.backlog ?? 511 });
    } catch (err) {
      // Thrown before the handle took the fd (e.g. the server is already listening).
      server.off('error', onError);
      server.off('listening', onListening);
      closeSync(fd);
      reject(err);
    }
  });
}

/**
 * A net.Socket connecting (non-blocking, never blocks the event loop) to host:port from inside the netns,
 * with SO_MARK set. Behaves like net.connect: emits 'connect' or 'error' (ECONNREFUSED etc.). The socket is
 * half-open (allowHalfOpen): a FIN from the peer does not end our side, so the mesh can pass half-close on. Creation
 * errors (bad netns, a host name) are emitted as 'error' on next tick, not thrown. `timeoutMs` bounds the
 * connect only ('error' with code ETIMEDOUT). `transparentSource`: the connection leaves from that address (IP_TRANSPARENT;
 * replies reach the socket only where routing returns them to it, see capture/rules.ts). `device`: bound to that
 * interface (SO_BINDTODEVICE; the agent binds its connections to apps to lo in eBPF capture mode, capture/routing.ts).
 */
export function connectInNetns(
  netnsPath: string,
  opts: { host: string; port: number; mark?: number; family?: Family; timeoutMs?: number; transparentSource?: string; device?: string },
): net.Socket {
  let fd = -1;
  let socket: net.Socket;
  try {
    const family = familyOf(opts.host, opts.family);
    checkPort(opts.port, false);
    if (opts.timeoutMs !== undefined && !(opts.timeoutMs > 0)) {
      throw invalid(`timeoutMs must be positive, got ${opts.timeoutMs}`);
    }
    if (opts.transparentSource !== undefined) familyOf(opts.transparentSource, family);
    fd = tcpSocketInNetns(netnsPath, family, opts.mark ?? 0, opts.transparentSource !== undefined);
    if (opts.device !== undefined) bindToDevice(fd, opts.device);
    // Half-open: a mesh passes FIN along in each direction on its own.
    socket = new net.Socket({ fd, allowHalfOpen: true });
  } catch (err) {
    if (fd >= 0) closeSync(fd);
    const failed = new net.Socket();
    process.nextTick(() => failed.destroy(err as Error));
    return failed;
  }

  // Node keeps the handle it wrapped around our fd, so libuv runs a non-blocking connect() on it.
  try {
    // A transparent source: bound to an address the netns does not own (IP_TRANSPARENT), a port of the kernel's choosing.
    socket.connect({ host: opts.host, port: opts.port, ...(opts.transparentSource !== undefined && { localAddress: opts.transparentSource }) });
  } catch (err) {
    process.nextTick(() => socket.destroy(err as Error));
    return socket;
  }
  const timeoutMs = opts.timeoutMs;
  if (timeoutMs !== undefined) {
    const where = `${hostPort(opts.host, opts.port)} from ${netnsPath}`;
    const onTimeout = (): void => {
      socket.destroy(new TrellisError('ETIMEDOUT', `connect to ${where} timed out after ${timeoutMs} ms`));
    };
    socket.setTimeout(timeoutMs);
    socket.on('timeout', onTimeout);
    // The timeout covers the connect only; after that idleness is the socket owner's business.
    socket.once('connect', () => {
      socket.setTimeout(0);
      socket.off('timeout', onTimeout);
    });
  }
  return socket;
}
