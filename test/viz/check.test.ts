// `trellis check`: each check's verdict from what Prometheus (or the node) says, each failure with its fix.
// Canned answers here; the e2e test runs it against a lab's Prometheus, with an agent stopped.
import { describe, expect, it } from 'vitest';
import { KERNEL_FEATURES, type KernelFeatureName, type KernelReport } from '../../agent/capture/kernel.js';
import { failedChecks, formatChecks, meshChecks, nodeChecks, type NodeProbe } from '../../viz/check.js';
import type { VectorSample } from '../../viz/prom/client.js';
import { ALL_RULES } from '../../viz/promql.js';

const v = (labels: Record<string, string>, value: number): VectorSample => ({ labels, value });
const agents = [v({ instance: '172.30.0.11:15020', node: 'node-a' }, 0), v({ instance: '172.30.0.12:15020', node: 'node-b' }, 0)];

function prometheus(over: Partial<Record<'known' | 'up' | 'age' | 'errors' | 'drift' | 'certLeft' | 'certSoonest' | 'tcpHealth', VectorSample[]>> = {}) {
  return async (expr: string): Promise<VectorSample[]> => {
    if (expr.startsWith('min by (instance, node) ((trellis_workload_certificate_expiry_timestamp_seconds - time()) /')) return over.certLeft ?? agents.map((a) => v(a.labels, 0.7));
    if (expr === 'min by (instance, node) (trellis_workload_certificate_expiry_timestamp_seconds - time())') return over.certSoonest ?? agents.map((a) => v(a.labels, 16 * 3600));
    if (expr.includes('last_over_time(trellis_config_age_seconds')) return over.known ?? agents;
    if (expr === 'up') return over.up ?? agents.map((a) => v({ ...a.labels, job: 'trellis-agent' }, 1));
    if (expr.startsWith('max by (instance, node) (trellis_config_age_seconds)')) return over.age ?? agents;
    if (expr.includes('trellis_config_errors_total')) return over.errors ?? [];
    if (expr.includes('trellis_capture_drift_repairs_total')) return over.drift ?? [];
    if (expr === 'max by (instance, node) (trellis_tcp_health_enabled)') return over.tcpHealth ?? agents.map((a) => v(a.labels, 1));
    throw new Error(`unexpected query ${expr}`);
  };
}
const inputs = { window: '5m', loadedRules: new Set(ALL_RULES), where: 'http://prom:9090' };

describe('trellis check (the mesh, from Prometheus)', () => {
  it('passes a healthy mesh', async () => {
    const r = await meshChecks(prometheus(), inputs);
    expect(r.map((x) => [x.check, x.verdict])).toEqual([
      ['prometheus', 'ok'],
      ['recording-rules', 'ok'],
      ['agents', 'ok'],
      ['config', 'ok'],
      ['certificates', 'ok'],
      ['objects', 'ok'],
      ['capture', 'ok'],
      ['tcp-health', 'ok'],
    ]);
    expect(r[2]!.detail).toBe('every agent Prometheus knows is up (2: node node-a, node node-b)');
    expect(failedChecks(r)).toBeUndefined();
  });

  it('fails an agent that stopped answering, and one out of sync with the API server; warns of rejects and drift', async () => {
    const r = await meshChecks(
      prometheus({
        up: [v({ instance: '172.30.0.11:15020', node: 'node-a' }, 1), v({ instance: '172.30.0.12:15020', node: 'node-b' }, 0)],
        age: [v({ instance: '172.30.0.11:15020', node: 'node-a' }, 420)],
        errors: [v({ node: 'node-a' }, 2), v({ node: 'node-b' }, 0)],
        drift: [v({ node: 'node-b', what: 'rules' }, 1)],
        tcpHealth: [v({ instance: '172.30.0.11:15020', node: 'node-a' }, 1), v({ instance: '172.30.0.12:15020', node: 'node-b' }, 0)],
      }),
      { ...inputs, loadedRules: new Set() },
    );
    const by = Object.fromEntries(r.map((x) => [x.check, x]));
    expect(by['recording-rules']).toMatchObject({ verdict: 'warn', detail: expect.stringMatching(/^6 of the 6 recording rules are not loaded/) });
    expect(by.agents).toMatchObject({ verdict: 'fail', detail: 'the agent on node node-b (172.30.0.12:15020) did not answer its last scrape' });
    expect(by.config).toMatchObject({ verdict: 'fail', detail: 'the agent on node node-a has not been in sync with the API server for 420 s' });
    expect(by.objects).toMatchObject({ verdict: 'warn', detail: 'invalid objects rejected in the last 5m: 2 on node node-a (their last valid versions stay in force)' });
    expect(by.capture).toMatchObject({ verdict: 'warn', detail: 'capture drifted and was repaired: 1 rules on node node-b in the last 5m' });
    expect(by['tcp-health']).toMatchObject({ verdict: 'warn', detail: 'no RTT or retransmissions per edge from the agent on node node-b', fix: expect.stringContaining('tcp health off') });
    for (const x of r) if (x.verdict !== 'ok') expect(x.fix, x.check).toBeTruthy();
    expect(failedChecks(r)?.message).toBe('2 checks failed: agents, config');
  });

  it('certificates: warns of one past its renewal, fails one near its end, each with the agent and the time left', async () => {
    const by = async (left: number[], soonestH: number[]) => {
      const r = await meshChecks(
        prometheus({
          certLeft: agents.map((a, i) => v(a.labels, left[i]!)),
          certSoonest: agents.map((a, i) => v(a.labels, soonestH[i]! * 3600)),
        }),
        inputs,
      );
      return r.find((x) => x.check === 'certificates')!;
    };
    expect(await by([0.7, 0.55], [16.8, 13.2])).toMatchObject({ verdict: 'ok', detail: 'every workload certificate has more than 40% of its lifetime left (the soonest expires in 13.2 h)' });
    expect(await by([0.7, 0.3], [16.8, 7.2])).toMatchObject({ verdict: 'warn', detail: 'the agent on node node-b holds a certificate with 30% of its lifetime left (expires in 7.2 h): renewal at half-life has not happened', fix: expect.stringContaining('identity service') });
    expect(await by([0.1, 0.3], [2.4, 7.2])).toMatchObject({ verdict: 'fail' });
    const none = await meshChecks(prometheus({ certLeft: [], certSoonest: [] }), inputs);
    expect(none.find((x) => x.check === 'certificates')).toMatchObject({ verdict: 'ok', detail: 'no agent holds a workload certificate (no meshed pod yet)' });
  });

  it('fails when Prometheus scrapes no agent at all, and stops there', async () => {
    const r = await meshChecks(prometheus({ known: [] }), inputs);
    expect(r.at(-1)).toMatchObject({ check: 'agents', verdict: 'fail', fix: expect.stringContaining('manifests/monitoring') });
    expect(r).toHaveLength(3);
  });
});

describe('trellis check --pre (this node)', () => {
  /** A kernel with everything, but for the features named. */
  const kernel = (lacking: KernelFeatureName[] = []): KernelReport => ({
    features: KERNEL_FEATURES.map((name) => (lacking.includes(name) ? { name, ok: false, detail: `no ${name}` } : { name, ok: true, detail: `${name} here` })),
  });
  const probe = (over: Partial<NodeProbe> & { paths?: string[]; refuse?: string[]; lacking?: KernelFeatureName[] } = {}): NodeProbe => ({
    isRoot: over.isRoot ?? true,
    exists: (p) => (over.paths ?? ['/proc/sys/net/ipv4/tcp_migrate_req', '/opt/cni/bin', '/etc/cni/net.d']).includes(p),
    run: async (file, args) => (over.refuse?.includes(file) ? { code: 1, out: `${file}: refused` } : { code: 0, out: file === 'nft' && args[0] === '--version' ? 'nftables v1.0.6' : '' }),
    kernel: async () => kernel(over.lacking),
  });
  const ebpfLines = (verdict: string) => [...Array(12)].map(() => ['ebpf', verdict]);
  const dirs = { cniBin: '/opt/cni/bin', cniConf: '/etc/cni/net.d' };

  it('passes a node that has all it needs, trying nftables in a netns of its own', async () => {
    const calls: string[][] = [];
    const p = probe();
    const r = await nodeChecks({ ...p, run: async (f, a) => (calls.push([f, ...a]), p.run(f, a)) }, dirs);
    expect(r.every((x) => x.verdict === 'ok')).toBe(true);
    expect(calls).toContainEqual(['unshare', '--net', '--', 'nft', 'add', 'table', 'inet', 'trellis_check']);
  });

  it('fails without nftables or the CNI directories, warns of an old kernel and no cgroup v2', async () => {
    const r = await nodeChecks(probe({ paths: ['/etc/cni/net.d'], refuse: ['unshare'], lacking: ['cgroup2'] }), dirs);
    expect(r.map((x) => [x.check, x.verdict])).toEqual([
      ['nftables', 'fail'],
      ['handover', 'warn'],
      ['cgroup', 'warn'],
      // The outbound programs attach under cgroup v2: without it the eBPF mode is not run.
      ...ebpfLines('ok').slice(0, 6),
      ['ebpf', 'warn'],
      ...ebpfLines('ok').slice(7),
      ['capture', 'warn'],
      ['cni', 'fail'],
      ['cni', 'ok'],
    ]);
    expect((await nodeChecks(probe({ refuse: ['nft'] }), dirs))[0]).toMatchObject({ verdict: 'fail', fix: expect.stringContaining('apt-get install nftables') });
    expect((await nodeChecks(probe({ isRoot: false }), dirs))[0]).toMatchObject({ verdict: 'warn', detail: "nftables v1.0.6; the kernel's nf_tables not tried (needs root)" });
  });

  it('says what the eBPF capture mode lacks, what to do, and that --capture auto falls back to nft', async () => {
    const r = await nodeChecks(probe({ lacking: ['sk_lookup_ifindex', 'nft_socket', 'sockhash'] }), dirs);
    const ebpf = r.filter((x) => x.check === 'ebpf');
    expect(ebpf.filter((x) => x.verdict === 'warn')).toEqual([
      { check: 'ebpf', verdict: 'warn', detail: 'no sk_lookup_ifindex', fix: 'Linux 5.17 or later' },
      { check: 'ebpf', verdict: 'warn', detail: 'no nft_socket', fix: expect.stringContaining('modprobe nft_socket') },
      { check: 'ebpf', verdict: 'warn', detail: 'no sockhash', fix: expect.stringContaining('not needed yet') },
    ]);
    expect(r.find((x) => x.check === 'capture')).toMatchObject({ verdict: 'warn', detail: 'the agent (--capture auto) runs the nft mode here: the eBPF mode lacks sk_lookup_ifindex, nft_socket' });
    // Missing eBPF features never fail the node: nftables capture works everywhere.
    expect(failedChecks(r)).toBeUndefined();
    // Without root nothing is loaded, and it says so once.
    const user = await nodeChecks(probe({ isRoot: false }), dirs);
    expect(user.filter((x) => x.check === 'ebpf')).toEqual([expect.objectContaining({ verdict: 'warn', fix: 'run trellis check --pre as root' })]);
    expect(user.find((x) => x.check === 'capture')).toBeUndefined();
  });

  it('says that without sockops or cgroup v2 the agent exports no TCP health and captures with nft, and never fails the node for it', async () => {
    const r = await nodeChecks(probe({ lacking: ['sock_ops', 'cgroup2'] }), dirs);
    expect(r.find((x) => x.check === 'ebpf' && x.detail === 'no sock_ops')).toMatchObject({ verdict: 'warn', fix: expect.stringContaining('no trellis_tcp_rtt_seconds or trellis_tcp_retransmits_total') });
    expect(r.find((x) => x.check === 'cgroup')).toMatchObject({ verdict: 'warn', detail: expect.stringContaining('TCP health per edge') });
    // The outbound programs need both.
    expect(r.find((x) => x.check === 'capture')).toMatchObject({ verdict: 'warn', detail: 'the agent (--capture auto) runs the nft mode here: the eBPF mode lacks cgroup2, sock_ops' });
    expect(failedChecks(r)).toBeUndefined();
  });

  it('prints one line per check, the fix below', () => {
    expect(formatChecks([{ check: 'cni', verdict: 'fail', detail: 'no CNI plugins directory /x', fix: 'give the right path' }, { check: 'cgroup', verdict: 'ok', detail: 'cgroup v2' }])).toBe(
      'FAIL  cni              no CNI plugins directory /x\n                       -> give the right path\nok    cgroup           cgroup v2',
    );
  });
});
