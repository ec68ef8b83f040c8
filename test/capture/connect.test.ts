// Outbound capture in eBPF mode, the agent's side (capture/connect.ts) with a fake of the programs: what it loads them
// with (the agent's marks, the listener's port, its own netns as owner), a pod registered by its netns cookie with its
// own address and forgotten once, verdicts, drift repair of detached links, close. Then, as root, the real programs
// on a cgroup of the test's own (only a test process in it, in a pod netns of the test's own): a connect redirected to
// the listener with its original destination read once and getpeername giving the address dialled, loopback and the
// pod's own address untouched, IPv6 refused, an unregistered netns untouched, a successor's shared maps, a link
// detached with bpftool linked again. The whole mesh runs them in test/e2e/ebpf-capture.test.ts.
import { execFileSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OutboundCapture, startOutboundCapture, type OutboundLinkLike } from '../../agent/capture/connect.js';
import { DriftChecker, type DriftTarget } from '../../agent/capture/drift.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { cgroup2Mount } from '../../agent/capture/kernel.js';
import { AGENT_MARK, OUTBOUND_PORT, TRANSPARENT_MARK } from '../../agent/constants.js';
import { connectInNetns, listenInNetns, OutboundLink, outboundOriginalDst, socketFd, type OutboundVerdict } from '../../agent/native/index.js';
import type { Workload } from '../../agent/state/workload.js';
import { requireRoot } from '../support/root.js';
import { PodNet, runAsync, type TestPod } from './harness.js';

const logger = pino({ level: 'silent' });

class FakeLink implements OutboundLinkLike {
  closed = false;
  pods = new Map<number, readonly string[]>();
  detached = new Set<string>();
  reattached = 0;
  failReattach = false;
  readonly names = ['trellis_conn4', 'trellis_conn6', 'trellis_peer4', 'trellis_peer6', 'trellis_outops'];
  ids() {
    return { links: this.names.map((name, i) => ({ name, cgroupId: this.detached.has(name) ? 0 : 100 + i })), shared: true, mapFd: 77 };
  }
  reattach(): void {
    if (this.failReattach) throw new Error('EBADF');
    this.reattached++;
    this.detached.clear();
  }
  setPod(cookie: number, ips: readonly string[]): void {
    this.pods.set(cookie, ips);
  }
  deletePod(cookie: number): void {
    this.pods.delete(cookie);
  }
  verdicts(): Record<OutboundVerdict, number> {
    return { redirected: 5, agent: 2, local: 1, ipv6_refused: 0, no_record: 0 };
  }
  close(): void {
    this.closed = true;
  }
}

const pod = (key: string, ip: string, netnsPath: string): Workload => ({ key, ip, netnsPath }) as unknown as Workload;

describe('outbound capture (connect4/6 programs on the cgroup root)', () => {
  it('loads the programs with the agent\'s marks, the listener port and its own netns as owner, on the resolved root', () => {
    const link = new FakeLink();
    let given: unknown;
    const capture = startOutboundCapture({
      cgroupRoot: '/sys/fs/cgroup/unified/',
      logger,
      ownNetns: () => 4242,
      attach: (p, opts) => {
        given = { p, ...opts };
        return link;
      },
    });
    expect(given).toEqual({ p: '/sys/fs/cgroup/unified', ownerNetns: 4242, agentMark: AGENT_MARK, transparentMark: TRANSPARENT_MARK, port: OUTBOUND_PORT });
    expect(capture.mapFd).toBe(77);
    expect(capture.shared).toBe(true);
    expect(capture.cgroupPath).toBe('/sys/fs/cgroup/unified');
  });

  it('registers a pod by its netns cookie with its own address, forgets it once, and leaves a newer registration alone', () => {
    const link = new FakeLink();
    const cookies: Record<string, number> = { '/run/netns/a': 11, '/run/netns/b': 12 };
    const capture = startOutboundCapture({ cgroupRoot: '/cg', logger, ownNetns: () => 1, attach: () => link });
    const inputs = (capture as unknown as { inputs: { netnsCookie?: (p: string) => number } }).inputs;
    inputs.netnsCookie = (p) => cookies[p]!;
    const a = capture.register(pod('mesh/a', '10.0.0.2', '/run/netns/a'));
    const b = capture.register(pod('mesh/b', '10.0.0.3', '/run/netns/b'));
    expect([...link.pods]).toEqual([
      [11, ['10.0.0.2']],
      [12, ['10.0.0.3']],
    ]);
    a.close();
    a.close();
    expect([...link.pods.keys()]).toEqual([12]);
    expect(() => capture.register(pod('mesh/c', '', '/run/netns/c'))).toThrow(/no netns path or IP/);
    expect(capture.verdicts()).toEqual({ redirected: 5, agent: 2, local: 1, ipv6_refused: 0, no_record: 0 });
    capture.close();
    expect(link.closed).toBe(true);
    // After close the programs are gone: a late release touches nothing.
    b.close();
    expect([...link.pods.keys()]).toEqual([12]);
  });

  it('links again the programs detached from outside, naming them; nothing when none is; throws when it cannot', () => {
    const link = new FakeLink();
    const capture = startOutboundCapture({ cgroupRoot: '/cg', logger, ownNetns: () => 1, attach: () => link });
    expect(capture.repairDetached()).toEqual([]);
    expect(link.reattached).toBe(0);
    link.detached.add('trellis_conn4').add('trellis_outops');
    expect(capture.repairDetached()).toEqual(['connect4', 'outbound_sockops']);
    expect(link.reattached).toBe(1);
    expect(capture.repairDetached()).toEqual([]);
    link.detached.add('trellis_peer4');
    link.failReattach = true;
    expect(() => capture.repairDetached()).toThrow('EBADF');
  });

  it('a detached outbound link repaired by the drift check is counted in trellis_capture_drift_repairs_total{what}', async () => {
    const link = new FakeLink();
    const capture = startOutboundCapture({ cgroupRoot: '/cg', logger, ownNetns: () => 1, attach: () => link });
    const metrics = new Metrics({ defaultMetrics: false });
    const enrolment: DriftTarget = { enrolledPods: () => [], repairRules: async () => false, reopenListeners: async () => false };
    const drift = new DriftChecker({ enrolment, probeSources: [], intervalMs: 0, metrics, logger, bpf: () => capture.repairDetached().map((what) => ({ what, target: capture.cgroupPath })) });
    link.detached.add('trellis_peer4').add('trellis_conn6');
    expect((await drift.check()).repaired.bpf).toEqual(['connect6 /cg', 'getpeername4 /cg']);
    const counted = Object.fromEntries((await metrics.captureDriftRepairs.get()).values.map((v) => [v.labels.what, v.value]));
    expect(counted).toEqual({ connect6: 1, getpeername4: 1 });
    expect((await drift.check()).repaired.bpf).toEqual([]);
  });

  it('reads zero verdicts rather than failing a scrape when the map cannot be read', () => {
    const link = new FakeLink();
    link.verdicts = () => {
      throw new Error('EBADF');
    };
    const capture = startOutboundCapture({ cgroupRoot: '/cg', logger, ownNetns: () => 1, attach: () => link });
    expect(capture.verdicts()).toEqual({ redirected: 0, agent: 0, local: 0, ipv6_refused: 0, no_record: 0 });
  });
});

describe('outbound programs on a cgroup (root, real kernel, a cgroup and pod netns of the test\'s own)', () => {
  const prefix = `trl-t-conn-${randomBytes(3).toString('hex')}`;
  const podNet = new PodNet(prefix, `10.250.${randomInt(1, 250)}`);
  const port = 20_000 + randomInt(0, 20_000);
  const dir = path.join(os.tmpdir(), prefix);
  let cgroup: string;
  let pod: TestPod;
  let server: net.Server;
  const captures: OutboundCapture[] = [];
  /** What the listener read for each connection it accepted: the record, then a second read (deleted: undefined). */
  const accepted: { first: unknown; second: unknown }[] = [];
  let reader: () => OutboundCapture;

  const start = () => {
    const c = startOutboundCapture({ cgroupRoot: cgroup, logger, ownNetns: () => 4242, attach: (p, o) => OutboundLink.attach(p, { ...o, port }) });
    captures.push(c);
    return c;
  };
  /** Runs the client script in the pod's netns, as a process of the test cgroup. */
  const client = async (targets: string[]): Promise<Record<string, string>[]> => {
    const script = path.join(dir, 'client.cjs');
    const r = await runAsync('sh', ['-c', `echo $$ > "${cgroup}/cgroup.procs" && exec ip netns exec ${pod.ns} "${process.execPath}" "${script}" "$@"`, 'client', ...targets]);
    expect(r.code, r.stderr).toBe(0);
    return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, string>);
  };
  const cgroupPrograms = () => JSON.parse(execFileSync('bpftool', ['-j', 'cgroup', 'show', cgroup], { encoding: 'utf8' }).trim() || '[]') as { id: number; name: string }[];

  beforeAll(async () => {
    requireRoot('the outbound programs');
    podNet.create();
    pod = podNet.addPod('a', 2);
    cgroup = path.join(cgroup2Mount(readFileSync('/proc/self/mountinfo', 'utf8'))!.path, prefix);
    mkdirSync(cgroup);
    mkdirSync(dir, { recursive: true });
    // One connection per target, one after another: what the app saw (getpeername) and got, or its error.
    writeFileSync(
      path.join(dir, 'client.cjs'),
      `const net = require('net');
      (async () => {
        for (const t of process.argv.slice(2)) {
          const [host, port] = [t.slice(0, t.lastIndexOf(':')).replace(/^\\[|\\]$/g, ''), Number(t.slice(t.lastIndexOf(':') + 1))];
          console.log(JSON.stringify(await new Promise((resolve) => {
            const s = net.connect({ host, port, timeout: 2000 }); let got = '';
            s.on('connect', () => { const peer = s.remoteAddress + ':' + s.remotePort; s.on('end', () => resolve({ to: t, peer, got })); });
            s.on('data', (d) => (got += d));
            s.on('timeout', () => (s.destroy(), resolve({ to: t, error: 'timeout' })));
            s.on('error', (e) => resolve({ to: t, error: e.code }));
          })));
        }
      })();`,
    );
    server = net.createServer((s) => {
      s.on('error', () => undefined);
      const fd = socketFd(s);
      const capture = reader();
      accepted.push({ first: outboundOriginalDst(capture.mapFd, fd), second: outboundOriginalDst(capture.mapFd, fd) });
      s.end('agent\n');
    });
    await listenInNetns(server, pod.path, { host: '127.0.0.1', port });
  });

  afterAll(() => {
    for (const c of captures) c.close();
    server?.close();
    podNet.destroy();
    if (cgroup) rmdirSync(cgroup);
    rmSync(dir, { recursive: true, force: true });
  });

  it('redirects a registered netns\'s TCP connects to the listener with the original destination, which the app sees as its peer', async () => {
    const capture = start();
    reader = () => capture;
    expect(capture.shared).toBe(false);
    expect(cgroupPrograms().map((p) => p.name).sort()).toEqual(['trellis_conn4', 'trellis_conn6', 'trellis_outops', 'trellis_peer4', 'trellis_peer6']);
    // Not registered yet: untouched (the hub has nothing on 80).
    expect(await client([`${podNet.hubIp}:80`])).toEqual([{ to: `${podNet.hubIp}:80`, error: 'ECONNREFUSED' }]);
    expect(accepted).toEqual([]);

    const registered = capture.register({ key: 'mesh/a', ip: pod.ip, netnsPath: pod.path } as unknown as Workload);
    const seen = await client([`${podNet.hubIp}:80`, `127.0.0.1:${port}`, `${pod.ip}:${port}`, '[2001:db8::1]:80']);
    // Redirected, and the app sees where it dialled.
    expect(seen[0]).toEqual({ to: `${podNet.hubIp}:80`, peer: `${podNet.hubIp}:80`, got: 'agent\n' });
    // Loopback reaches the listener itself, with nothing recorded; the pod's own address goes where it was going (the
    // listener is on 127.0.0.1 only: refused).
    expect(seen[1]).toEqual({ to: `127.0.0.1:${port}`, peer: `127.0.0.1:${port}`, got: 'agent\n' });
    expect(seen[2]).toEqual({ to: `${pod.ip}:${port}`, error: 'ECONNREFUSED' });
    // IPv6 to [::1] on the listener's port, where nothing listens: refused, never out.
    expect(seen[3]).toEqual({ to: '[2001:db8::1]:80', error: 'ECONNREFUSED' });
    expect(accepted).toEqual([
      { first: { address: podNet.hubIp, port: 80, family: 4 }, second: undefined },
      { first: undefined, second: undefined },
    ]);
    expect(capture.verdicts()).toEqual({ redirected: 1, agent: 0, local: 2, ipv6_refused: 1, no_record: 0 });

    // Forgotten: untouched again.
    registered.close();
    expect(await client([`${podNet.hubIp}:80`])).toEqual([{ to: `${podNet.hubIp}:80`, error: 'ECONNREFUSED' }]);
    expect(accepted).toHaveLength(2);
    capture.register({ key: 'mesh/a', ip: pod.ip, netnsPath: pod.path } as unknown as Workload);
  });

  it('leaves the agent\'s own sockets (its marks) alone, and redirects the same connect without a mark', async () => {
    const capture = captures[0]!;
    // This test process joins the test cgroup for the moment (its own sockets are in the host's netns, which is not
    // registered: only what it opens in the pod's netns meets the programs).
    const home = path.join(path.dirname(cgroup), (readFileSync('/proc/self/cgroup', 'utf8').match(/^0::(.*)$/m)?.[1] ?? '/').trim());
    writeFileSync(path.join(cgroup, 'cgroup.procs'), String(process.pid));
    const dial = (mark: number) =>
      new Promise<string>((resolve) => {
        const s = connectInNetns(pod.path, { host: podNet.hubIp, port: 85, mark, timeoutMs: 2000 });
        let got = '';
        s.on('data', (d: Buffer) => (got += d.toString()));
        s.on('end', () => resolve(got));
        s.on('error', (e: Error & { code?: string }) => resolve(e.code ?? e.message));
      });
    const before = capture.verdicts();
    try {
      expect(await dial(AGENT_MARK)).toBe('ECONNREFUSED');
      expect(await dial(TRANSPARENT_MARK)).toBe('ECONNREFUSED');
      expect(await dial(0)).toBe('agent\n');
    } finally {
      writeFileSync(path.join(home, 'cgroup.procs'), String(process.pid));
    }
    const after = capture.verdicts();
    expect(after.agent - before.agent).toBe(2);
    expect(after.redirected - before.redirected).toBe(1);
  });

  it('a successor of the same owner shares the maps: a connection the first program redirected is read by the successor', async () => {
    const first = captures[0]!;
    const next = start();
    expect(next.shared).toBe(true);
    next.register({ key: 'mesh/a', ip: pod.ip, netnsPath: pod.path } as unknown as Workload);
    reader = () => next;
    const before = accepted.length;
    expect(await client([`${podNet.hubIp}:81`])).toEqual([{ to: `${podNet.hubIp}:81`, peer: `${podNet.hubIp}:81`, got: 'agent\n' }]);
    expect(accepted.slice(before)).toEqual([{ first: { address: podNet.hubIp, port: 81, family: 4 }, second: undefined }]);
    // The first program (attached first) redirected it; the successor's saw loopback and left it.
    expect(first.verdicts().redirected).toBe(3);
    expect(next.verdicts()).toMatchObject({ redirected: 0, local: 1 });
    // The first one goes: the successor alone redirects, into the maps it shares.
    first.close();
    expect(await client([`${podNet.hubIp}:82`])).toEqual([{ to: `${podNet.hubIp}:82`, peer: `${podNet.hubIp}:82`, got: 'agent\n' }]);
    expect(accepted.at(-1)).toEqual({ first: { address: podNet.hubIp, port: 82, family: 4 }, second: undefined });
    expect(next.verdicts().redirected).toBe(1);
    // Another owner's programs (another node's agent) are never shared.
    const other = startOutboundCapture({ cgroupRoot: cgroup, logger, ownNetns: () => 77, attach: (p, o) => OutboundLink.attach(p, { ...o, port }) });
    expect(other.shared).toBe(false);
    other.close();
  });

  it('links again a program detached from outside (bpftool link detach), and it redirects again', async () => {
    const capture = captures[1]!;
    const link = (capture as unknown as { inputs: { link: OutboundLinkLike } }).inputs.link.ids().links.find((l) => l.name === 'trellis_conn4') as unknown as { link: number };
    execFileSync('bpftool', ['link', 'detach', 'id', String(link.link)]);
    expect(cgroupPrograms().map((p) => p.name)).not.toContain('trellis_conn4');
    expect(await client([`${podNet.hubIp}:83`])).toEqual([{ to: `${podNet.hubIp}:83`, error: 'ECONNREFUSED' }]);
    expect(capture.repairDetached()).toEqual(['connect4']);
    expect(capture.repairDetached()).toEqual([]);
    expect(cgroupPrograms().map((p) => p.name)).toContain('trellis_conn4');
    expect(await client([`${podNet.hubIp}:84`])).toEqual([{ to: `${podNet.hubIp}:84`, peer: `${podNet.hubIp}:84`, got: 'agent\n' }]);
    // Closed: nothing left on the cgroup.
    capture.close();
    expect(cgroupPrograms()).toEqual([]);
  });
});
