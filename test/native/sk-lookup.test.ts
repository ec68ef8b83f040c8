// Root-only: the inbound sk_lookup program (native/bpf/sk_lookup.bpf.c) loaded by the addon and attached to a
// throwaway network namespace, as capture/ uses it: connections to any port land on the agent's listener with the
// address the client dialled, the exempt port, the probe source and loopback go where they were going, and nothing
// is left in the kernel once the link is closed or its process is gone. The host's own netns is never attached to.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BpfError, connectInNetns, listenFdInNetns, probeBpf, SkLookupLink, SK_LOOKUP_PROGRAM, tcpSocketInNetns } from '../../agent/native/index.js';
import { requireRoot } from '../support/root.js';

const prefix = `trl-t-skl-${randomBytes(3).toString('hex')}`;
const nsClient = `${prefix}-c`;
const nsPod = `${prefix}-p`;
const clientPath = `/run/netns/${nsClient}`;
const podPath = `/run/netns/${nsPod}`;
const subnet = randomInt(1, 255);
const clientIp = `10.252.${subnet}.1`;
const probeIp = `10.252.${subnet}.9`;
const podIp = `10.252.${subnet}.2`;
const AGENT_MARK = 0x539;

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** bpftool's JSON about one object; undefined once the kernel has no such id. */
function bpftool(kind: 'prog' | 'link', id: number): { id: number; name?: string; type?: string; attach_type?: string; netns_ino?: number; prog_id?: number } | undefined {
  try {
    return JSON.parse(execFileSync('bpftool', ['-j', kind, 'show', 'id', String(id)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })) as never;
  } catch {
    return undefined;
  }
}

/** A server in the pod netns that records who connected where. */
interface Recorder {
  server: net.Server;
  fd: number;
  accepted: { local: string; localPort: number; remote: string }[];
}

async function recorder(port: number, opts: { mark?: number } = {}): Promise<Recorder> {
  const accepted: Recorder['accepted'] = [];
  const server = net.createServer((s) => {
    accepted.push({ local: s.localAddress!, localPort: s.localPort!, remote: s.remoteAddress! });
    s.on('error', () => undefined);
    s.end(`port ${port}\n`);
  });
  const fd = listenFdInNetns(podPath, { host: '0.0.0.0', port, reusePort: true, ...(opts.mark !== undefined && { mark: opts.mark }) });
  server.listen({ fd });
  await once(server, 'listening');
  return { server, fd, accepted };
}

async function close(server: net.Server): Promise<void> {
  if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
}

/** Connects from the client netns (optionally from `source`) to the pod; resolves with what the server said. */
async function dial(port: number, opts: { source?: string; timeoutMs?: number; from?: string; host?: string } = {}): Promise<string> {
  const socket = connectInNetns(opts.from ?? clientPath, { host: opts.host ?? podIp, port, timeoutMs: opts.timeoutMs ?? 3000, ...(opts.source && { transparentSource: opts.source }) });
  const chunks: Buffer[] = [];
  socket.on('data', (d: Buffer) => chunks.push(d));
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.once('end', () => resolve());
  });
  socket.destroy();
  return Buffer.concat(chunks).toString();
}

describe('inbound sk_lookup program', () => {
  let agent: Recorder;
  let app: Recorder;
  let hbone: Recorder;
  let link: SkLookupLink | undefined;

  beforeAll(async () => {
    requireRoot('sk_lookup tests');
    try {
      ip('netns', 'add', nsClient);
      ip('netns', 'add', nsPod);
      ip('-n', nsClient, 'link', 'set', 'lo', 'up');
      ip('-n', nsPod, 'link', 'set', 'lo', 'up');
      ip('-n', nsClient, 'link', 'add', 'vc', 'type', 'veth', 'peer', 'name', 'vp', 'netns', nsPod);
      ip('-n', nsClient, 'addr', 'add', `${clientIp}/24`, 'dev', 'vc');
      ip('-n', nsClient, 'addr', 'add', `${probeIp}/24`, 'dev', 'vc');
      ip('-n', nsPod, 'addr', 'add', `${podIp}/24`, 'dev', 'vp');
      ip('-n', nsClient, 'link', 'set', 'vc', 'up');
      ip('-n', nsPod, 'link', 'set', 'vp', 'up');
      const deadline = Date.now() + 5000;
      while (!execFileSync('ip', ['-n', nsPod, 'link', 'show', 'vp'], { encoding: 'utf8' }).includes('state UP')) {
        if (Date.now() > deadline) throw new Error('veth did not come up');
        await new Promise((r) => setTimeout(r, 20));
      }
    } catch (err) {
      for (const ns of [nsClient, nsPod]) spawnSyncQuiet('ip', ['netns', 'del', ns]);
      throw err;
    }
    agent = await recorder(15006, { mark: AGENT_MARK });
    app = await recorder(8080);
    hbone = await recorder(15008);
  });

  afterAll(async () => {
    link?.close();
    for (const r of [agent, app, hbone]) if (r) await close(r.server);
    for (const ns of [nsClient, nsPod]) spawnSyncQuiet('ip', ['netns', 'del', ns]);
  });

  it('probes this kernel: sk_lookup, sockmap and BTF present, and the program loads', () => {
    const p = probeBpf();
    expect(p.progTypes.sk_lookup).toBe(1);
    expect(p.mapTypes.sockmap).toBe(1);
    expect(p.btf).toBe(1);
    expect(p.skLookupIfindex).toBe(1);
    expect(p.program).toEqual({ ok: true });
  });

  it('hands a connection to any port to the listener, which sees the address the client dialled', async () => {
    link = SkLookupLink.attach(podPath, { listenerFd: agent.fd, probeSources: [probeIp], exemptPorts: [15008] });
    const ids = link.ids();
    const prog = bpftool('prog', ids.program);
    expect(prog).toMatchObject({ name: SK_LOOKUP_PROGRAM, type: 'sk_lookup' });
    expect(bpftool('link', ids.link)).toMatchObject({ prog_id: ids.program, attach_type: 'sk_lookup', netns_ino: ids.netnsInode });

    // 8080 has an app listening, 43117 nothing: both land on the agent's listener, with their own address.
    expect(await dial(8080)).toBe('port 15006\n');
    expect(await dial(43117)).toBe('port 15006\n');
    expect(agent.accepted).toEqual([
      { local: podIp, localPort: 8080, remote: clientIp },
      { local: podIp, localPort: 43117, remote: clientIp },
    ]);
    expect(app.accepted).toEqual([]);
    expect(link.verdicts()).toMatchObject({ steered: 2, no_listener: 0, refused: 0 });
  });

  it('leaves the exempt port, the probe source and connections from inside the pod alone', async () => {
    expect(await dial(15008)).toBe('port 15008\n');
    expect(hbone.accepted.at(-1)).toMatchObject({ localPort: 15008, remote: clientIp });
    // The node's probe address reaches the app itself.
    expect(await dial(8080, { source: probeIp })).toBe('port 8080\n');
    expect(app.accepted.at(-1)).toMatchObject({ localPort: 8080, remote: probeIp });
    // From inside the pod, to its own address (as the agent dials the app) and to loopback: untouched.
    expect(await dial(8080, { from: podPath })).toBe('port 8080\n');
    expect(app.accepted.at(-1)).toMatchObject({ localPort: 8080, remote: podIp });
    expect(await dial(8080, { from: podPath, host: '127.0.0.1' })).toBe('port 8080\n');
    const v = link!.verdicts();
    expect(v).toMatchObject({ exempt_port: 1, probe_source: 1, local: 2, steered: 2 });
  });

  it("does not take a packet from outside claiming the pod's own address for one from inside", async () => {
    // The client netns sends a SYN from the pod's address (IP_TRANSPARENT): the pod's kernel drops it as a martian
    // before any socket lookup, so "from its own address" cannot be forged from outside.
    const before = link!.verdicts();
    await expect(dial(8080, { source: podIp, timeoutMs: 700 })).rejects.toMatchObject({ code: 'ETIMEDOUT' });
    expect(app.accepted.filter((a) => a.remote === podIp)).toHaveLength(1);
    expect(link!.verdicts()).toEqual(before);
  });

  it('refuses rather than passes when the listener is gone, and follows a reopened one', async () => {
    await close(agent.server);
    // Fail closed: the client is refused, never handed to the app.
    await expect(dial(8080, { timeoutMs: 700 })).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect(app.accepted.filter((a) => a.remote === clientIp)).toEqual([]);
    expect(link!.verdicts().no_listener).toBeGreaterThanOrEqual(1);
    agent = await recorder(15006, { mark: AGENT_MARK });
    link!.setListener(agent.fd);
    expect(await dial(8081)).toBe('port 15006\n');
    expect(agent.accepted).toEqual([{ local: podIp, localPort: 8081, remote: clientIp }]);
  });

  it('is gone from the kernel once closed: connections reach the app again', async () => {
    const ids = link!.ids();
    link!.close();
    link!.close();
    expect(link!.closed).toBe(true);
    expect(bpftool('link', ids.link)).toBeUndefined();
    expect(bpftool('prog', ids.program)).toBeUndefined();
    expect(await dial(8080)).toBe('port 8080\n');
    expect(() => link!.verdicts()).toThrow(/detached/);
  });

  it('is gone when the process that holds it dies, however it dies', async () => {
    // A child attaches and reports its ids, then is killed with SIGKILL: no close() runs, the kernel releases the fds.
    const script = path.join(tmpdir(), `${prefix}-holder.mjs`);
    writeFileSync(
      script,
      `import { listenFdInNetns, SkLookupLink } from ${JSON.stringify(path.resolve('dist/agent/native/index.js'))};
       const fd = listenFdInNetns(${JSON.stringify(podPath)}, { host: '0.0.0.0', port: 15006, reusePort: true });
       const link = SkLookupLink.attach(${JSON.stringify(podPath)}, { listenerFd: fd, probeSources: [], exemptPorts: [15008] });
       console.log(JSON.stringify(link.ids()));
       setInterval(() => {}, 1000);`,
    );
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const [line] = (await once(child.stdout, 'data')) as [Buffer];
      const ids = JSON.parse(line.toString()) as { program: number; link: number };
      expect(bpftool('link', ids.link)).toMatchObject({ attach_type: 'sk_lookup' });
      child.kill('SIGKILL');
      await once(child, 'exit');
      expect(bpftool('link', ids.link)).toBeUndefined();
      expect(bpftool('prog', ids.program)).toBeUndefined();
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('names the program, the attach point, the errno and a hint when it fails', () => {
    const missing = `/run/netns/${prefix}-missing`;
    let thrown: unknown;
    try {
      SkLookupLink.attach(missing, { listenerFd: agent.fd, probeSources: [], exemptPorts: [15008] });
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(BpfError);
    const e = thrown as BpfError;
    expect(e).toMatchObject({ code: 'ENOENT', stage: 'attach', program: SK_LOOKUP_PROGRAM, attachPoint: `sk_lookup of netns ${missing}` });
    expect(e.message).toBe(`BPF program trellis_inbound at sk_lookup of netns ${missing}: open ${missing}: No such file or directory (the pod's network namespace is gone)`);

    // Not a listening socket: refused by the sockmap.
    const fd = tcpSocketInNetns(podPath);
    try {
      expect(() => SkLookupLink.attach(podPath, { listenerFd: fd, probeSources: [], exemptPorts: [] })).toThrow(
        expect.objectContaining({ stage: 'map', syscall: 'bpf(BPF_MAP_UPDATE_ELEM)', message: expect.stringContaining('not a listening TCP socket') }),
      );
    } finally {
      closeSync(fd);
    }
    expect(() => SkLookupLink.attach(podPath, { listenerFd: agent.fd, probeSources: ['node-a'], exemptPorts: [] })).toThrow(/not an IP address/);
  });
});

function spawnSyncQuiet(file: string, args: string[]): void {
  try {
    execFileSync(file, args, { stdio: 'ignore' });
  } catch {
    // already gone
  }
}
