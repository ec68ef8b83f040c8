// Which capture mode the agent runs and why (capture/mode.ts), from what the kernel offers (capture/kernel.ts): the
// choice on fake reports, the probe's reading of its answers, where cgroup v2 is mounted (this machine's hybrid
// layout among them), and, as root, the real probe of this kernel.
import { describe, expect, it } from 'vitest';
import { cgroup2Mount, KERNEL_FEATURES, probeKernel, type KernelFeatureName, type KernelReport } from '../../agent/capture/kernel.js';
import { chooseCapture, EBPF_NEEDS } from '../../agent/capture/mode.js';
import type { BpfProbe } from '../../agent/native/index.js';
import { requireRoot } from '../support/root.js';

const report = (lacking: KernelFeatureName[] = []): KernelReport => ({
  features: KERNEL_FEATURES.map((name) => (lacking.includes(name) ? { name, ok: false, detail: `no ${name} here` } : { name, ok: true, detail: `${name}` })),
});

const fullProbe: BpfProbe = {
  progTypes: { sk_lookup: 1, cgroup_sock_addr: 1, sock_ops: 1, sk_skb: 1 },
  mapTypes: { sockmap: 1, sockhash: 1 },
  btf: 1,
  skLookupIfindex: 1,
  program: { ok: true },
  outboundProgram: { ok: true },
  netnsCookie: 1,
};

describe('capture mode', () => {
  it('auto runs ebpf where the kernel has what it needs, nft otherwise, saying what is missing', () => {
    expect(chooseCapture('auto', report(), { probeSources: [] })).toMatchObject({ mode: 'ebpf', missing: [] });
    // Features the eBPF mode does not use yet do not hold it back.
    expect(chooseCapture('auto', report(['sockhash']), { probeSources: [] }).mode).toBe('ebpf');
    // Outbound without NAT needs cgroup v2, the sock_addr hooks, sockops and the netns cookie.
    for (const name of ['cgroup2', 'cgroup_sock_addr', 'sock_ops', 'connect_program', 'netns_cookie'] as const) {
      const without = chooseCapture('auto', report([name]), { probeSources: [] });
      expect(without.mode).toBe('nft');
      expect(without.reason).toBe(`--capture auto: nftables, because the eBPF mode lacks ${name}: no ${name} here`);
    }
    expect(chooseCapture('auto', report(), { probeSources: [] }).reason).toBe(
      '--capture auto: the kernel has what the eBPF mode needs (inbound by sk_lookup, outbound by cgroup connect4/6 programs, both without NAT)',
    );
    const old = chooseCapture('auto', report(['sk_lookup_ifindex', 'sk_lookup_program']), { probeSources: [] });
    expect(old.mode).toBe('nft');
    expect(old.reason).toBe('--capture auto: nftables, because the eBPF mode lacks sk_lookup_ifindex: no sk_lookup_ifindex here; sk_lookup_program: no sk_lookup_program here');
    expect(old.missing.map((f) => f.name)).toEqual(['sk_lookup_ifindex', 'sk_lookup_program']);
  });

  it('ebpf refuses to start without one of its needs, naming each; nft never looks', () => {
    for (const name of EBPF_NEEDS) {
      expect(() => chooseCapture('ebpf', report([name]), { probeSources: [] })).toThrow(
        expect.objectContaining({ code: 'ECAPTURE', message: expect.stringMatching(new RegExp(`^--capture ebpf: this node cannot run it \\(${name}: no ${name} here\\); run with --capture auto`)) }),
      );
    }
    expect(chooseCapture('ebpf', report(['sockhash']), { probeSources: [] }).mode).toBe('ebpf');
    expect(chooseCapture('nft', report(EBPF_NEEDS.slice()), { probeSources: [] })).toMatchObject({ mode: 'nft', reason: '--capture nft' });
  });

  it('more probe sources of one family than the program holds keeps it from ebpf', () => {
    const many = Array.from({ length: 9 }, (_, i) => `10.0.0.${i + 1}`);
    expect(chooseCapture('auto', report(), { probeSources: many }).reason).toMatch(/9 IPv4 --probe-source addresses, more than the 8/);
    expect(chooseCapture('auto', report(), { probeSources: many.slice(1) }).mode).toBe('ebpf');
  });

  it('reads the probe: yes, no, and "could not tell" with the errno and what to do', async () => {
    const r = await probeKernel({
      bpf: () => ({ ...fullProbe, skLookupIfindex: 0, mapTypes: { sockmap: -1, sockhash: 1 }, program: { ok: false, errno: 22, code: 'EINVAL', stage: 'load', message: 'Invalid argument', log: 'libbpf: prog: BPF program load failed\n0: R1=ctx()\ninvalid bpf_context access off=68 size=4\n' } }),
      mountinfo: () => '',
      nftSocket: async () => ({ ok: true, detail: 'nft socket' }),
    });
    const byName = Object.fromEntries(r.features.map((f) => [f.name, f]));
    expect(byName.sk_lookup).toMatchObject({ ok: true });
    expect(byName.sk_lookup_ifindex).toMatchObject({ ok: false, detail: expect.stringContaining('Linux 5.17+') });
    expect(byName.sockmap).toMatchObject({ ok: false, detail: 'could not tell: EPERM (BPF needs CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN, and a seccomp profile that allows bpf())' });
    expect(byName.sk_lookup_program!.detail).toBe(
      "Trellis's sk_lookup program does not load (load: EINVAL Invalid argument); libbpf: libbpf: prog: BPF program load failed | 0: R1=ctx() | invalid bpf_context access off=68 size=4",
    );
    expect(byName.cgroup2).toMatchObject({ ok: false });
    // Without the privilege libbpf's probes answer "no"; the program's EPERM says it is not the kernel (in a container
    // without CAP_BPF, as the image test's is).
    const unprivileged = await probeKernel({
      bpf: () => ({ ...fullProbe, progTypes: { sk_lookup: 0, cgroup_sock_addr: 0, sock_ops: 0, sk_skb: 0 }, mapTypes: { sockmap: 0, sockhash: 0 }, program: { ok: false, errno: 1, code: 'EPERM', stage: 'load', message: 'Operation not permitted', log: '' } }),
      mountinfo: () => '',
      nftSocket: async () => ({ ok: false, detail: 'x' }),
    });
    expect(unprivileged.features.find((f) => f.name === 'sk_lookup')!.detail).toMatch(/^could not tell: loading BPF programs is not permitted here \(EPERM: BPF needs CAP_BPF/);
    // An addon that does not load at all: every BPF feature missing with the reason, nothing thrown.
    const none = await probeKernel({ bpf: () => { throw new Error('native addon not built'); }, mountinfo: () => '', nftSocket: async () => ({ ok: false, detail: 'x' }) });
    expect(none.features.find((f) => f.name === 'btf')).toMatchObject({ ok: false, detail: 'not probed: native addon not built' });
  });

  it('reads the outbound programs\' load and SO_NETNS_COOKIE from the probe', async () => {
    const r = await probeKernel({
      bpf: () => ({ ...fullProbe, netnsCookie: 0, outboundProgram: { ok: false, errno: 22, code: 'EINVAL', stage: 'load', message: 'Invalid argument', log: 'unknown func bpf_get_netns_cookie#122\n' } }),
      mountinfo: () => '',
      nftSocket: async () => ({ ok: true, detail: 'nft socket' }),
    });
    const byName = Object.fromEntries(r.features.map((f) => [f.name, f]));
    expect(byName.connect_program!.detail).toBe("Trellis's outbound programs do not load (load: EINVAL Invalid argument); libbpf: unknown func bpf_get_netns_cookie#122");
    expect(byName.netns_cookie).toMatchObject({ ok: false, detail: 'no SO_NETNS_COOKIE (Linux 5.14+)' });
    const ok = await probeKernel({ bpf: () => fullProbe, mountinfo: () => '', nftSocket: async () => ({ ok: true, detail: 'nft socket' }) });
    expect(ok.features.filter((f) => f.name === 'connect_program' || f.name === 'netns_cookie').map((f) => f.ok)).toEqual([true, true]);
  });

  it('finds cgroup v2 in the unified, the hybrid and other layouts', () => {
    const hybrid = [
      '25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw',
      '31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755',
      '32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate',
      '33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd',
    ].join('\n');
    expect(cgroup2Mount(hybrid)).toEqual({ path: '/sys/fs/cgroup/unified', layout: 'hybrid' });
    expect(cgroup2Mount('35 25 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate')).toEqual({ path: '/sys/fs/cgroup', layout: 'unified' });
    expect(cgroup2Mount('40 1 0:40 / /run/my\\040cgroup rw - cgroup2 none rw')).toEqual({ path: '/run/my cgroup', layout: 'elsewhere' });
    expect(cgroup2Mount(hybrid.split('\n').filter((l) => !l.includes('cgroup2')).join('\n'))).toBeUndefined();
  });

  it('probes this kernel for real (root): everything the eBPF mode needs is here', async () => {
    requireRoot('the real kernel probe');
    const r = await probeKernel();
    const missing = r.features.filter((f) => EBPF_NEEDS.includes(f.name) && !f.ok);
    expect(missing).toEqual([]);
    expect(chooseCapture('auto', r, { probeSources: ['10.244.1.1'] }).mode).toBe('ebpf');
  });
});
