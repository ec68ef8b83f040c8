// Outbound capture in eBPF mode, the agent's side (capture/connect.ts) with a fake of the programs: what it loads them
// with (the agent's marks, the listener's port, its own netns as owner), a pod registered by its netns cookie with its
// own address and forgotten once, verdicts, drift repair of detached links, close. The programs themselves run in
// test/e2e/ebpf-capture.test.ts.
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { startOutboundCapture, type OutboundLinkLike } from '../../agent/capture/connect.js';
import { AGENT_MARK, OUTBOUND_PORT, TRANSPARENT_MARK } from '../../agent/constants.js';
import type { OutboundVerdict } from '../../agent/native/index.js';
import type { Workload } from '../../agent/state/workload.js';

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
    expect(capture.repairDetached()).toEqual(['trellis_conn4', 'trellis_outops']);
    expect(link.reattached).toBe(1);
    expect(capture.repairDetached()).toEqual([]);
    link.detached.add('trellis_peer4');
    link.failReattach = true;
    expect(() => capture.repairDetached()).toThrow('EBADF');
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
