// Root-only: the TCP health sockops program (native/bpf/tcp_health.bpf.c) loaded by the addon and attached to a
// throwaway cgroup (v2) this test process moves into, as the agent attaches it to its own: a connection over loopback
// is found by its cookie with its RTT and no retransmission after it closed, once (the entry is taken); a socket of
// before the program has none; a link detached with bpftool is seen (no cgroup) and made again; nothing stays in the
// kernel after close(). The root cgroup and the host's cgroups are never attached to. Last, what every BPF handle of
// the addon checks (native/bpf.c handle_arg): its kind, and that it is still open.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdirSync, readFileSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cgroup2Mount } from '../../agent/capture/kernel.js';
import { BpfError, readTcpStats, socketCookie, socketFd, TCP_HEALTH_PROGRAM, TcpHealthLink } from '../../agent/native/index.js';
import { native } from '../../agent/native/binding.js';
import { requireRoot } from '../support/root.js';

function bpftool(kind: 'prog' | 'link', id: number): { name?: string; cgroup_id?: number; attach_type?: string } | undefined {
  try {
    return JSON.parse(execFileSync('bpftool', ['-j', kind, 'show', 'id', String(id)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })) as never;
  } catch {
    return undefined;
  }
}

/** A server on loopback that reads everything and closes after the client's FIN. */
async function sink(): Promise<net.Server> {
  const server = net.createServer((s) => {
    s.on('data', () => undefined);
    s.on('end', () => s.end());
    s.on('error', () => undefined);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return server;
}

/** Connects, sends `bytes`, half-closes and resolves with the socket's cookie once it has closed. */
async function transfer(port: number, bytes: number): Promise<{ cookie: number; socket: net.Socket }> {
  const socket = net.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  const cookie = socketCookie(socketFd(socket));
  socket.end(Buffer.alloc(bytes));
  socket.resume();
  await once(socket, 'close');
  return { cookie, socket };
}

describe('TCP health sockops program', () => {
  let root: string;
  let dir: string;
  let home: string;
  let server: net.Server;
  let port: number;

  beforeAll(async () => {
    requireRoot('the sockops program tests');
    const mount = cgroup2Mount(readFileSync('/proc/self/mountinfo', 'utf8'));
    if (!mount) throw new Error('these tests need cgroup v2 mounted (the agent does too)');
    root = mount.path;
    home = path.join(root, /^0::(.*)$/m.exec(readFileSync('/proc/self/cgroup', 'utf8'))![1]!);
    dir = path.join(root, `trl-t-th-${randomBytes(3).toString('hex')}`);
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'cgroup.procs'), String(process.pid));
    server = await sink();
    port = (server.address() as net.AddressInfo).port;
  });

  afterAll(() => {
    server?.close();
    if (home) writeFileSync(path.join(home, 'cgroup.procs'), String(process.pid));
    if (dir) rmdirSync(dir);
  });

  it('keeps a closed connection\'s RTT and retransmissions under its cookie until they are taken, once', async () => {
    const link = TcpHealthLink.attach(dir);
    try {
      const ids = link.ids();
      expect(bpftool('prog', ids.program)?.name).toBe(TCP_HEALTH_PROGRAM);
      expect(ids.cgroupId).toBe(statSync(dir).ino);
      const { cookie } = await transfer(port, 4 * 1024 * 1024);
      const stats = readTcpStats(ids.mapFd, cookie, false);
      expect(stats).toBeDefined();
      expect(stats!.rttSamples).toBeGreaterThan(0);
      expect(stats!.srttUs).toBeGreaterThan(0);
      expect(stats!.srttUs).toBeLessThan(1_000_000);
      // Loopback loses nothing, but on a busy machine the kernel may send a tail-loss probe, which it counts as a
      // retransmission: a handful at most, never the transfer's packets.
      expect(stats!.retransmits).toBeLessThanOrEqual(2);
      expect(readTcpStats(ids.mapFd, cookie, true)).toEqual(stats);
      expect(readTcpStats(ids.mapFd, cookie, true)).toBeUndefined();
    } finally {
      link.close();
    }
  });

  it('has nothing for a socket established before it was attached', async () => {
    const early = net.connect(port, '127.0.0.1');
    await once(early, 'connect');
    const cookie = socketCookie(socketFd(early));
    const link = TcpHealthLink.attach(dir);
    try {
      early.end(Buffer.alloc(65536));
      early.resume();
      await once(early, 'close');
      expect(readTcpStats(link.ids().mapFd, cookie, true)).toBeUndefined();
    } finally {
      link.close();
    }
  });

  it('is seen detached when bpftool detaches its link, records nothing then, and is linked again with the same map', async () => {
    const link = TcpHealthLink.attach(dir);
    try {
      const before = link.ids();
      execFileSync('bpftool', ['link', 'detach', 'id', String(before.link)]);
      expect(link.ids().cgroupId).toBe(0);
      const missed = await transfer(port, 65536);
      expect(readTcpStats(before.mapFd, missed.cookie, true)).toBeUndefined();
      link.reattach();
      const after = link.ids();
      expect(after.cgroupId).toBe(statSync(dir).ino);
      expect(after.program).toBe(before.program);
      expect(after.mapFd).toBe(before.mapFd);
      expect(after.link).not.toBe(before.link);
      expect(bpftool('link', before.link)).toBeUndefined();
      const seen = await transfer(port, 65536);
      expect(readTcpStats(after.mapFd, seen.cookie, true)?.rttSamples).toBeGreaterThan(0);
    } finally {
      link.close();
    }
  });

  it('leaves nothing in the kernel once closed', () => {
    const link = TcpHealthLink.attach(dir);
    const ids = link.ids();
    expect(bpftool('link', ids.link)?.attach_type).toBe('cgroup_sock_ops');
    link.close();
    link.close();
    expect(link.closed).toBe(true);
    expect(bpftool('link', ids.link)).toBeUndefined();
    expect(bpftool('prog', ids.program)).toBeUndefined();
    expect(() => link.ids()).toThrow(/detached/);
  });

  it('names the program, the cgroup and a hint when it cannot attach', () => {
    const missing = path.join(root, `trl-t-th-missing-${randomBytes(3).toString('hex')}`);
    let error: unknown;
    try {
      TcpHealthLink.attach(missing);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(BpfError);
    const e = error as BpfError;
    expect(e.code).toBe('ENOENT');
    expect(e.program).toBe(TCP_HEALTH_PROGRAM);
    expect(e.stage).toBe('attach');
    expect(e.message).toContain(`sockops of cgroup ${missing}`);
    expect(e.message).toContain("the agent's cgroup is gone");
  });
});

describe('the addon\'s BPF handles', () => {
  it('refuses what is not a handle of the kind asked for, and a closed one, by name', () => {
    requireRoot('BPF handle tests');
    const b = native();
    const splice = b.sameNodeOpen();
    try {
      expect(() => b.sameNodeCounts({} as never, 1, false)).toThrow(expect.objectContaining({ code: 'EINVAL', message: expect.stringMatching(/not a same-node splice handle/) }));
      // A handle of another kind is refused as well: the tag says which kind it is.
      expect(() => b.tcpHealthIds(splice as never)).toThrow(expect.objectContaining({ code: 'EINVAL', message: expect.stringMatching(/not a TCP health handle/) }));
      expect(() => b.outboundVerdicts(splice as never)).toThrow(/not an outbound handle/);
      expect(() => b.skLookupVerdicts(splice as never)).toThrow(/not an sk_lookup handle/);
      expect(b.sameNodeCounts(splice, 1, false)).toBeNull();
    } finally {
      b.sameNodeClose(splice);
    }
    expect(() => b.sameNodeCounts(splice, 1, false)).toThrow(expect.objectContaining({ code: 'ECLOSED', message: expect.stringMatching(/the same-node splice handle is closed/) }));
    // Closing twice is harmless.
    b.sameNodeClose(splice);
  });
});
