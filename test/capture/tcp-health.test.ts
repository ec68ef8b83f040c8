// Where the agent runs its sockops program, in process with fakes: only with sockops and cgroup v2, never on the root
// cgroup, on a cgroup2 mount it sees or one it mounts in a mount namespace of its own (never in a shared one); every
// refusal says why. A link detached from outside is found and made again by the drift check.
import pino from 'pino';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { describe, expect, it } from 'vitest';
import { DriftChecker, type DriftTarget } from '../../agent/capture/drift.js';
import type { KernelReport } from '../../agent/capture/kernel.js';
import { ownCgroup2Path, startTcpHealth, type TcpHealthLinkLike } from '../../agent/capture/tcp-health.js';

const logger = pino({ level: 'silent' });
const report = (sockOps: boolean): KernelReport => ({ features: [{ name: 'sock_ops', ok: sockOps, detail: sockOps ? 'yes' : 'no sockops programs (Linux 4.13+)' }] });
const HYBRID = '41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n';
const UNIFIED = '41 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n';

function fakeLink(state = { cgroupId: 158, reattached: 0, closed: false }): TcpHealthLinkLike & { state: typeof state } {
  return {
    state,
    get closed() {
      return state.closed;
    },
    ids: () => ({ cgroupId: state.cgroupId, mapFd: 22 }),
    reattach: () => {
      state.reattached++;
      state.cgroupId = 158;
    },
    close: () => void (state.closed = true),
  };
}

describe('TCP health: where the sockops program runs', () => {
  it('reads the agent\'s cgroup v2 path', () => {
    expect(ownCgroup2Path('9:name=systemd:/\n4:memory:/x\n0::/trl-ab-node-a\n')).toBe('/trl-ab-node-a');
    expect(ownCgroup2Path('0::/\n')).toBe('/');
    expect(ownCgroup2Path('4:memory:/x\n')).toBeUndefined();
  });

  it('attaches to the agent\'s own cgroup on the mount it sees, and hands out the map\'s fd', async () => {
    const attached: string[] = [];
    const r = await startTcpHealth({
      report: report(true),
      logger,
      procCgroup: () => '0::/kubepods/pod1/agent\n',
      mountinfo: () => HYBRID,
      isRootCgroup: (dir) => dir === '/sys/fs/cgroup/unified',
      attach: (p) => (attached.push(p), fakeLink()),
      mountCgroup2: () => Promise.reject(new Error('must not mount')),
    });
    expect(r.ok && r.health.mapFd).toBe(22);
    expect(attached).toEqual(['/sys/fs/cgroup/unified/kubepods/pod1/agent']);
  });

  it('attaches in a container\'s cgroup namespace, where its own cgroup reads "/" but is not the machine\'s root', async () => {
    const attached: string[] = [];
    const r = await startTcpHealth({ report: report(true), logger, procCgroup: () => '0::/\n', mountinfo: () => UNIFIED, isRootCgroup: () => false, attach: (p) => (attached.push(p), fakeLink()) });
    expect(r.ok).toBe(true);
    expect(attached).toEqual(['/sys/fs/cgroup']);
  });

  it('says why it does not run: no sockops, no cgroup v2, the root cgroup, no mount in a shared namespace, a failed attach', async () => {
    const base = { logger, procCgroup: () => '0::/a\n', mountinfo: () => UNIFIED, isRootCgroup: (dir: string) => dir === '/sys/fs/cgroup', attach: () => fakeLink() };
    const reason = async (over: Partial<Parameters<typeof startTcpHealth>[0]>) => {
      const r = await startTcpHealth({ ...base, report: report(true), ...over });
      expect(r.ok).toBe(false);
      return r.ok ? '' : r.reason;
    };
    expect(await reason({ report: report(false) })).toMatch(/^sock_ops: no sockops programs/);
    expect(await reason({ procCgroup: () => '4:memory:/x\n' })).toMatch(/no cgroup v2/);
    expect(await reason({ procCgroup: () => '0::/\n' })).toMatch(/root cgroup \(\/sys\/fs\/cgroup\), where a sockops program would see every TCP socket of the machine/);
    let mounted = false;
    expect(await reason({ mountinfo: () => '', privateMounts: () => false, mountCgroup2: async () => void (mounted = true) })).toMatch(/shares its mount namespace/);
    expect(mounted).toBe(false);
    expect(
      await reason({
        attach: () => {
          throw new Error('BPF program trellis_tcp_health at sockops of cgroup /sys/fs/cgroup/a: Operation not permitted');
        },
      }),
    ).toMatch(/trellis_tcp_health .*not permitted/);
  });

  it('mounts cgroup2 on /sys/fs/cgroup only in a mount namespace of its own, then attaches there', async () => {
    let mountinfo = '';
    const mounts: string[] = [];
    const attached: string[] = [];
    const r = await startTcpHealth({
      report: report(true),
      logger,
      procCgroup: () => '0::/trl-ab-node-a\n',
      mountinfo: () => mountinfo,
      privateMounts: () => true,
      mountCgroup2: async (at) => {
        mounts.push(at);
        mountinfo = UNIFIED;
      },
      isRootCgroup: () => false,
      attach: (p) => (attached.push(p), fakeLink()),
    });
    expect(r.ok).toBe(true);
    expect(mounts).toEqual(['/sys/fs/cgroup']);
    expect(attached).toEqual(['/sys/fs/cgroup/trl-ab-node-a']);
  });

  it('finds its link detached (no cgroup) and makes it again; an attached one is left alone', async () => {
    const link = fakeLink();
    const r = await startTcpHealth({ report: report(true), logger, procCgroup: () => '0::/a\n', mountinfo: () => UNIFIED, isRootCgroup: () => false, attach: () => link });
    if (!r.ok) throw new Error(r.reason);
    expect(r.health.repairDetached()).toBe(false);
    link.state.cgroupId = 0;
    expect(r.health.repairDetached()).toBe(true);
    expect(link.state.reattached).toBe(1);
    expect(r.health.repairDetached()).toBe(false);
    r.health.close();
    expect(link.closed).toBe(true);
    expect(r.health.repairDetached()).toBe(false);
  });
});

describe('drift of the BPF links', () => {
  const enrolment: DriftTarget = { enrolledPods: () => [], repairRules: async () => false, reopenListeners: async () => false };
  const repairs = async (metrics: Metrics, what: string) => (await metrics.captureDriftRepairs.get()).values.find((v) => v.labels.what === what)?.value ?? 0;

  it('counts each link attached again by its kind, and reports a link that cannot be for the next pass', async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    let answer: () => { what: 'sk_lookup' | 'sockops'; target: string }[] = () => [
      { what: 'sk_lookup', target: '/run/netns/a' },
      { what: 'sockops', target: '/sys/fs/cgroup/x' },
    ];
    const drift = new DriftChecker({ enrolment, probeSources: [], intervalMs: 0, metrics, logger, bpf: () => answer() });
    expect((await drift.check()).repaired.bpf).toEqual(['sk_lookup /run/netns/a', 'sockops /sys/fs/cgroup/x']);
    expect(await repairs(metrics, 'sk_lookup')).toBe(1);
    expect(await repairs(metrics, 'sockops')).toBe(1);
    answer = () => [];
    expect((await drift.check()).repaired.bpf).toEqual([]);
    answer = () => {
      throw new Error('BPF program trellis_inbound at sk_lookup of netns /run/netns/a: attach to the netns: No such file or directory');
    };
    const report = await drift.check();
    expect(report.failed).toEqual([{ pod: '-', what: 'bpf', error: expect.stringContaining('trellis_inbound') }]);
    expect(await repairs(metrics, 'sk_lookup')).toBe(1);
  });
});
