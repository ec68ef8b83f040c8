// Root-only: the native boundary in real network namespaces, used the way capture/ and proxy/ use it
// (listen in one pod, connect from another, marks, NAT-redirected connections).
import { execFileSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  connectInNetns,
  listenFdInNetns,
  listenInNetns,
  NativeError,
  originalDst,
  setMark,
  socketFd,
  tcpSocketInNetns,
} from '../../agent/native/index.js';
import { TrellisError } from '../../agent/errors.js';
import { requireRoot } from '../support/root.js';

const prefix = `trl-t-native-${randomBytes(3).toString('hex')}`;
const nsA = `${prefix}-a`;
const nsB = `${prefix}-b`;
const pathA = `/run/netns/${nsA}`;
const pathB = `/run/netns/${nsB}`;
const subnet = randomInt(1, 255);
const ipA = `10.251.${subnet}.1`;
const ipB = `10.251.${subnet}.2`;
const ip6A = 'fd00:251::1';
const ip6B = 'fd00:251::2';
const MARK = 0x539;
const OTHER_MARK = 0x2a;

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function nft(ns: string, ruleset: string): string {
  return execFileSync('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: ruleset, encoding: 'utf8' });
}

function packets(ns: string, counter: string): number {
  const out = execFileSync('ip', ['netns', 'exec', ns, 'nft', 'list', 'counter', 'inet', 'trlmark', counter], {
    encoding: 'utf8',
  });
  const m = /packets (\d+)/.exec(out);
  if (!m?.[1]) throw new Error(`no packet count in: ${out}`);
  return Number(m[1]);
}

/** Packets sent before the kernel finishes bringing a veth up are dropped (and retried a second later). */
async function waitUntilUp(ns: string, dev: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!execFileSync('ip', ['-n', ns, 'link', 'show', dev], { encoding: 'utf8' }).includes('state UP')) {
    if (Date.now() > deadline) throw new Error(`${dev} in ${ns} did not come up`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function removeNamespaces(): void {
  for (const ns of [nsA, nsB]) {
    try {
      ip('netns', 'del', ns);
    } catch {
      // already gone
    }
  }
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

function echoServer(): net.Server {
  return net.createServer((s) => {
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
}

/** Everything the socket receives until the peer ends. */
async function received(socket: net.Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  await once(socket, 'end');
  return Buffer.concat(chunks);
}

async function closeServer(server: net.Server): Promise<void> {
  if (!server.listening) return;
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

describe('native netns boundary', () => {
  beforeAll(async () => {
    requireRoot('native netns tests');
    try {
      ip('netns', 'add', nsA);
      ip('netns', 'add', nsB);
      ip('-n', nsA, 'link', 'set', 'lo', 'up');
      ip('-n', nsB, 'link', 'set', 'lo', 'up');
      ip('-n', nsA, 'link', 'add', 'va', 'type', 'veth', 'peer', 'name', 'vb', 'netns', nsB);
      ip('-n', nsA, 'addr', 'add', `${ipA}/24`, 'dev', 'va');
      ip('-n', nsB, 'addr', 'add', `${ipB}/24`, 'dev', 'vb');
      ip('-n', nsA, 'addr', 'add', `${ip6A}/64`, 'dev', 'va', 'nodad');
      ip('-n', nsB, 'addr', 'add', `${ip6B}/64`, 'dev', 'vb', 'nodad');
      ip('-n', nsA, 'link', 'set', 'va', 'up');
      ip('-n', nsB, 'link', 'set', 'vb', 'up');
      await waitUntilUp(nsA, 'va');
      await waitUntilUp(nsB, 'vb');
      // A counts packets by mark; B silently drops SYNs to port 9 so connects there hang.
      nft(
        nsA,
        `table inet trlmark {
           counter agent {}
           counter other {}
           chain out {
             type filter hook output priority 0;
             meta mark ${MARK} counter name "agent"
             meta mark ${OTHER_MARK} counter name "other"
           }
         }`,
      );
      nft(
        nsB,
        `table inet trldrop {
           chain in {
             type filter hook input priority 0;
             tcp dport 9 drop
           }
         }`,
      );
    } catch (err) {
      removeNamespaces();
      throw err;
    }
  });

  afterAll(() => {
    removeNamespaces();
  });

  it('listens in one netns and carries bytes from a connection opened in another', async () => {
    const server = echoServer();
    try {
      await listenInNetns(server, pathB, { host: ipB, port: 7000 });
      expect(server.address()).toMatchObject({ address: ipB, port: 7000 });

      const client = connectInNetns(pathA, { host: ipB, port: 7000, mark: MARK, timeoutMs: 5000 });
      await once(client, 'connect');
      expect(client.remoteAddress).toBe(ipB);
      expect(client.localAddress).toBe(ipA);
      const payload = randomBytes(256 * 1024);
      const echoed = received(client);
      client.end(payload);
      expect((await echoed).equals(payload)).toBe(true);
    } finally {
      await closeServer(server);
    }
  });

  it('works over IPv6 too', async () => {
    const server = echoServer();
    try {
      await listenInNetns(server, pathB, { host: '::', port: 7000, family: 6 });
      const client = connectInNetns(pathA, { host: ip6B, port: 7000 });
      await once(client, 'connect');
      expect(client.remoteAddress).toBe(ip6B);
      const echoed = received(client);
      client.end('over v6');
      expect((await echoed).toString()).toBe('over v6');
    } finally {
      await closeServer(server);
    }
  });

  it('creates non-blocking, close-on-exec sockets', () => {
    const fd = tcpSocketInNetns(pathA, 4, MARK);
    try {
      const flags = /flags:\s+(\d+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
      const value = parseInt(flags ?? '0', 8);
      expect(value & 0o4000).toBe(0o4000); // O_NONBLOCK
      expect(value & 0o2000000).toBe(0o2000000); // O_CLOEXEC
    } finally {
      closeSync(fd);
    }
  });

  it('reports ECONNREFUSED as an error event, like net.connect', async () => {
    const client = connectInNetns(pathA, { host: ipB, port: 7001 });
    const [err] = (await once(client, 'error').catch((e: unknown) => [e])) as [NodeJS.ErrnoException];
    expect(err.code).toBe('ECONNREFUSED');
    expect(client.destroyed).toBe(true);
  });

  it('fails with ENOENT and says the namespace is gone when the netns path does not exist', async () => {
    const missing = `/run/netns/${prefix}-missing`;
    const before = openFds();
    let thrown: unknown;
    try {
      tcpSocketInNetns(missing);
    } catch (err) {
      thrown = err;
    }
    expect(openFds()).toBe(before);
    expect(thrown).toBeInstanceOf(NativeError);
    const err = thrown as NativeError;
    expect(err).toBeInstanceOf(TrellisError);
    expect(err.code).toBe('ENOENT');
    expect(err.errno).toBe(2);
    expect(['open', 'setns']).toContain(err.syscall);
    expect(err.message).toContain(missing);
    expect(err.message).toContain("the pod's network namespace is gone");

    // connectInNetns never throws: the failure arrives as 'error' after the caller attached listeners.
    const client = connectInNetns(missing, { host: ipB, port: 7000 });
    const [connectErr] = (await once(client, 'error').catch((e: unknown) => [e])) as [NativeError];
    expect(connectErr).toBeInstanceOf(NativeError);
    expect(connectErr.code).toBe('ENOENT');

    await expect(listenInNetns(net.createServer(), missing, { host: '0.0.0.0', port: 7002 })).rejects.toMatchObject({
      code: 'ENOENT',
      syscall: 'open',
    });
  });

  it('rejects host names: nothing in a netns resolves DNS', async () => {
    const client = connectInNetns(pathA, { host: 'localhost', port: 7000 });
    const [err] = (await once(client, 'error').catch((e: unknown) => [e])) as [TrellisError];
    expect(err).toBeInstanceOf(TrellisError);
    expect(err.code).toBe('EINVAL');
    expect(err.message).toMatch(/IP address/);
    expect(() => listenFdInNetns(pathA, { host: 'example.com', port: 1 })).toThrow(/IP address/);
    expect(() => listenFdInNetns(pathA, { host: ipA, port: 1, family: 6 })).toThrow(/IPv4/);
  });

  it('closes the socket when bind fails, and names the address', async () => {
    const server = echoServer();
    try {
      await listenInNetns(server, pathB, { host: ipB, port: 7003 });
      const before = openFds();
      let thrown: unknown;
      try {
        listenFdInNetns(pathB, { host: ipB, port: 7003 });
      } catch (err) {
        thrown = err;
      }
      expect(openFds()).toBe(before);
      expect(thrown).toBeInstanceOf(NativeError);
      expect(thrown).toMatchObject({ code: 'EADDRINUSE', syscall: 'bind' });
      expect((thrown as Error).message).toContain(`${ipB}:7003`);
    } finally {
      await closeServer(server);
    }
  });

  it('sets SO_MARK on connect, and setMark changes it on a live socket', async () => {
    const server = echoServer();
    try {
      await listenInNetns(server, pathB, { host: ipB, port: 7004 });
      const agentBefore = packets(nsA, 'agent');
      const otherBefore = packets(nsA, 'other');

      const client = connectInNetns(pathA, { host: ipB, port: 7004, mark: MARK });
      await once(client, 'connect');
      client.write('marked');
      await once(client, 'data');
      expect(packets(nsA, 'agent')).toBeGreaterThan(agentBefore);
      expect(packets(nsA, 'other')).toBe(otherBefore);

      setMark(socketFd(client), OTHER_MARK);
      const echoed = received(client);
      client.end('remarked');
      await echoed;
      expect(packets(nsA, 'other')).toBeGreaterThan(otherBefore);
    } finally {
      await closeServer(server);
    }
  });

  it('socketFd refuses a socket without a handle', () => {
    expect(() => socketFd(new net.Socket())).toThrow(expect.objectContaining({ code: 'ENOFD' }));
  });

  it('reads the pre-redirect destination of NAT-captured connections (IPv4 and IPv6)', async () => {
    nft(
      nsA,
      `table ip trlcapture {
         chain out {
           type nat hook output priority -100;
           tcp dport 9999 redirect to :15001
         }
       }
       table ip6 trlcapture6 {
         chain out {
           type nat hook output priority -100;
           tcp dport 9999 redirect to :15001
         }
       }`,
    );
    const accepted: { address: string; port: number; family: number }[] = [];
    const capture = net.createServer((s) => {
      accepted.push(originalDst(socketFd(s)));
      s.end();
    });
    const capture6 = net.createServer((s) => {
      accepted.push(originalDst(socketFd(s)));
      s.end();
    });
    try {
      // Both families on one port: the v6 listener is v6-only.
      await listenInNetns(capture, pathA, { host: '0.0.0.0', port: 15001 });
      await listenInNetns(capture6, pathA, { host: '::', port: 15001 });

      const dst4 = `10.251.${subnet}.77`;
      const c4 = connectInNetns(pathA, { host: dst4, port: 9999 });
      c4.resume();
      await once(c4, 'end');
      c4.end(); // sockets from connectInNetns are half-open: close our side too
      const c6 = connectInNetns(pathA, { host: 'fd00:251::77', port: 9999 });
      c6.resume();
      await once(c6, 'end');
      c6.end();

      expect(accepted).toEqual([
        { address: dst4, port: 9999, family: 4 },
        { address: 'fd00:251::77', port: 9999, family: 6 },
      ]);
    } finally {
      await closeServer(capture);
      await closeServer(capture6);
    }
  });

  it('says capture rules are missing when a connection was not redirected', async () => {
    // B has no NAT rules, so conntrack has no entry for connections it accepts.
    let failure: unknown;
    const server = net.createServer((s) => {
      try {
        originalDst(socketFd(s));
      } catch (err) {
        failure = err;
      }
      s.end();
    });
    try {
      await listenInNetns(server, pathB, { host: ipB, port: 7005 });
      const client = connectInNetns(pathA, { host: ipB, port: 7005 });
      client.resume();
      await once(client, 'end');
      client.end();
      expect(failure).toBeInstanceOf(NativeError);
      expect((failure as NativeError).syscall).toBe('getsockopt(SO_ORIGINAL_DST)');
      expect(['ENOENT', 'ENOPROTOOPT']).toContain((failure as NativeError).code);
      expect((failure as Error).message).toContain('not redirected by NAT');
    } finally {
      await closeServer(server);
    }
  });

  it('keeps the event loop free while a connect hangs, and times it out', async () => {
    let immediates = 0;
    let ticks = 0;
    const tick = setInterval(() => ticks++, 10);
    try {
      const started = performance.now();
      const client = connectInNetns(pathA, { host: ipB, port: 9, mark: MARK, timeoutMs: 400 });
      const returnedAfter = performance.now() - started;
      setImmediate(() => immediates++);
      const [err] = (await once(client, 'error').catch((e: unknown) => [e])) as [TrellisError];

      expect(returnedAfter).toBeLessThan(50);
      expect(immediates).toBe(1);
      expect(ticks).toBeGreaterThan(10);
      expect(err.code).toBe('ETIMEDOUT');
      expect(err.message).toContain(`${ipB}:9`);
      expect(client.destroyed).toBe(true);
    } finally {
      clearInterval(tick);
    }
  });
});

describe('releaseFreeMemory', () => {
  it('hands freed C-heap memory back to the kernel: the RSS falls by what a burst left behind', () => {
    // A child (the built addon, as the agent runs it) with --expose-gc: 150 MB in 8 KiB buffers (below malloc's mmap threshold, so they live in its
    // arena), freed by a GC, stay resident until malloc_trim returns the pages.
    const script = `
      import { releaseFreeMemory } from ${JSON.stringify(new URL('../../dist/agent/native/index.js', import.meta.url).pathname)};
      import { readFileSync } from 'node:fs';
      const anon = () => Number(/^RssAnon:\\s+(\\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'))[1]);
      let held = [];
      for (let i = 0; i < 150 * 128; i++) held.push(Buffer.allocUnsafeSlow(8192).fill(i & 0xff));
      held = null;
      globalThis.gc(); globalThis.gc();
      const before = anon();
      const released = releaseFreeMemory();
      console.log(JSON.stringify({ before, after: anon(), released }));
    `;
    const out = execFileSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { encoding: 'utf8' });
    const r = JSON.parse(out.trim().split('\n').pop()!) as { before: number; after: number; released: boolean };
    expect(r.released).toBe(true);
    expect(r.before - r.after).toBeGreaterThan(100 * 1024);
  });
});
