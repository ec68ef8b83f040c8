// `trellis check`: is the mesh healthy, and (--pre) can this node run the agent? Each check is one line, and each
// failure says what to do, as `linkerd check` does. After install, everything is read from Prometheus (the agents
// it scrapes, their config age, rejected objects, capture repairs); before, from this node (nftables in a network
// namespace of its own, the kernel's connection hand-over, cgroup v2, what the eBPF capture mode needs, the CNI
// directories).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { feature, probeKernel, type KernelFeatureName, type KernelReport } from '../agent/capture/kernel.js';
import { chooseCapture, EBPF_DOES, EBPF_NEEDS } from '../agent/capture/mode.js';
import { VizError } from './errors.js';
import { ALL_RULES } from './promql.js';
import type { VectorSample } from './prom/client.js';
import { finite, type Query } from './query.js';

export type Verdict = 'ok' | 'warn' | 'fail';

export interface CheckResult {
  readonly check: string;
  readonly verdict: Verdict;
  readonly detail: string;
  /** What to do, for warn and fail. */
  readonly fix?: string;
}

/** An agent not in sync with its config source for longer than this fails (the kube source relists within 90 s). */
export const CONFIG_AGE_LIMIT_S = 300;
/** Below this share of its lifetime left a workload certificate warns (renewal is due at half), below the next it fails. */
export const CERT_WARN_FRACTION = 0.4;
export const CERT_FAIL_FRACTION = 0.2;
/** How far back an agent counts as known: one scraped in this window and not now is down. */
const KNOWN_AGENTS_WINDOW = '10m';

const agentName = (l: Readonly<Record<string, string>>) => (l.node ? `node ${l.node}` : (l.instance ?? 'an agent'));

/** The mesh as Prometheus sees it, over `window` for the counters. `loadedRules`: the recording rules the server has. */
export async function meshChecks(query: Query, inputs: { window: string; loadedRules: ReadonlySet<string>; where: string }): Promise<CheckResult[]> {
  const out: CheckResult[] = [{ check: 'prometheus', verdict: 'ok', detail: `Prometheus answers at ${inputs.where}` }];
  const missing = ALL_RULES.filter((r) => !inputs.loadedRules.has(r));
  out.push(
    missing.length === 0
      ? { check: 'recording-rules', verdict: 'ok', detail: 'the recording rules of manifests/monitoring/ are loaded' }
      : {
          check: 'recording-rules',
          verdict: 'warn',
          detail: `${missing.length} of the ${ALL_RULES.length} recording rules are not loaded (${missing[0]}${missing.length > 1 ? ', ...' : ''}): stat, edges and routes read the raw counters`,
          fix: 'load manifests/monitoring/prometheusrule.yaml (kubectl apply -k manifests/monitoring/, or its spec as a rules file)',
        },
  );

  const known = await query(`max by (instance, node) (last_over_time(trellis_config_age_seconds[${KNOWN_AGENTS_WINDOW}]))`);
  if (known.length === 0) {
    out.push({
      check: 'agents',
      verdict: 'fail',
      detail: `Prometheus holds no agent metrics from the last ${KNOWN_AGENTS_WINDOW}`,
      fix: "make it scrape every node's :15020/metrics (kubectl apply -k manifests/monitoring/; its Prometheus must select the PodMonitor), and check the agents run: kubectl -n trellis-system get pods -o wide",
    });
    return out;
  }
  const up = new Map((await query('up')).map((s) => [s.labels.instance ?? '', s.value]));
  const down = known.filter((s) => up.get(s.labels.instance ?? '') !== 1);
  out.push(
    down.length === 0
      ? { check: 'agents', verdict: 'ok', detail: `every agent Prometheus knows is up (${known.length}: ${known.map((s) => agentName(s.labels)).sort().join(', ')})` }
      : {
          check: 'agents',
          verdict: 'fail',
          detail: `${down.map((s) => `the agent on ${agentName(s.labels)} (${s.labels.instance})`).join(', ')} did not answer its last scrape`,
          fix: 'see its pod: kubectl -n trellis-system get pods -o wide, then kubectl -n trellis-system logs POD -c agent (in a lab: trellis lab status)',
        },
  );

  const age = (await query('max by (instance, node) (trellis_config_age_seconds)')).filter((s) => finite(s.value) > CONFIG_AGE_LIMIT_S);
  out.push(
    age.length === 0
      ? { check: 'config', verdict: 'ok', detail: `every agent is in sync with its config source (within ${CONFIG_AGE_LIMIT_S} s)` }
      : {
          check: 'config',
          verdict: 'fail',
          detail: age.map((s) => `the agent on ${agentName(s.labels)} has not been in sync with the API server for ${Math.round(s.value)} s`).join('; '),
          fix: 'it serves its last known state meanwhile; check that its node reaches the API server and its RBAC (kubectl -n trellis-system logs POD -c agent | grep watch)',
        },
  );

  // Workload certificates are renewed at half their lifetime: less than that left means renewal is failing.
  const expiry = 'trellis_workload_certificate_expiry_timestamp_seconds';
  const lifetime = `(${expiry} - trellis_workload_certificate_not_before_timestamp_seconds)`;
  const left = await query(`min by (instance, node) ((${expiry} - time()) / ${lifetime})`);
  const soonest = new Map((await query(`min by (instance, node) (${expiry} - time())`)).map((s) => [s.labels.instance ?? '', s.value]));
  const late = left.filter((s) => finite(s.value) < CERT_WARN_FRACTION);
  const hours = (s: VectorSample) => `${((soonest.get(s.labels.instance ?? '') ?? 0) / 3600).toFixed(1)} h`;
  out.push(
    left.length === 0
      ? { check: 'certificates', verdict: 'ok', detail: 'no agent holds a workload certificate (no meshed pod yet)' }
      : late.length === 0
        ? { check: 'certificates', verdict: 'ok', detail: `every workload certificate has more than ${CERT_WARN_FRACTION * 100}% of its lifetime left (the soonest expires in ${hours(left.reduce((a, b) => ((soonest.get(a.labels.instance ?? '') ?? 0) <= (soonest.get(b.labels.instance ?? '') ?? 0) ? a : b)))})` }
        : {
            check: 'certificates',
            verdict: late.some((s) => finite(s.value) < CERT_FAIL_FRACTION) ? 'fail' : 'warn',
            detail: late.map((s) => `the agent on ${agentName(s.labels)} holds a certificate with ${Math.max(0, Math.round(finite(s.value) * 100))}% of its lifetime left (expires in ${hours(s)}): renewal at half-life has not happened`).join('; '),
            fix: "the agent cannot renew: its log says why (\"renewal failed\"); check that it reaches the identity service (trellis-system/trellis-identity:15012) and that its service-account token is mounted; the identity service's log names refused requests",
          },
  );

  const rejected = (await query(`sum by (node) (increase(trellis_config_errors_total[${inputs.window}]))`)).filter((s) => finite(s.value) >= 0.5);
  out.push(
    rejected.length === 0
      ? { check: 'objects', verdict: 'ok', detail: `no object rejected in the last ${inputs.window}` }
      : {
          check: 'objects',
          verdict: 'warn',
          detail: `invalid objects rejected in the last ${inputs.window}: ${rejected.map((s) => `${Math.round(s.value)} on ${agentName(s.labels)}`).join(', ')} (their last valid versions stay in force)`,
          fix: "the agent's log names each object and field (\"route rejected\", \"policy rejected\"); `trellis policy check --dir DIR` checks policies before they are applied",
        },
  );

  const drift = (await query(`sum by (node, what) (increase(trellis_capture_drift_repairs_total[${inputs.window}]))`)).filter((s) => finite(s.value) >= 0.5);
  out.push(
    drift.length === 0
      ? { check: 'capture', verdict: 'ok', detail: `no capture drift repaired in the last ${inputs.window}` }
      : {
          check: 'capture',
          verdict: 'warn',
          detail: `capture drifted and was repaired: ${drift.map((s) => `${Math.round(s.value)} ${s.labels.what ?? ''} on ${agentName(s.labels)}`).join(', ')} in the last ${inputs.window}`,
          fix: "something changes the meshed pods' nftables (table inet trellis), closes the agent's listeners or detaches its BPF programs (sk_lookup, sockops): look for another CNI plugin, a tool that flushes rulesets, or bpftool link detach",
        },
  );

  // TCP health per edge runs where the kernel and the agent's cgroup allow it; an agent without says so (agents of
  // before it export nothing, and are not named).
  const healthOff = (await query('max by (instance, node) (trellis_tcp_health_enabled)')).filter((s) => s.value === 0);
  out.push(
    healthOff.length === 0
      ? { check: 'tcp-health', verdict: 'ok', detail: 'every agent records RTT and retransmissions per edge (trellis_tcp_rtt_seconds, trellis_tcp_retransmits_total)' }
      : {
          check: 'tcp-health',
          verdict: 'warn',
          detail: `no RTT or retransmissions per edge from ${healthOff.map((s) => `the agent on ${agentName(s.labels)}`).join(', ')}`,
          fix: 'its log says why ("tcp health off": no sockops programs, no cgroup v2, or the agent in the root cgroup); trellis check --pre on the node shows the kernel\'s side',
        },
  );
  return out;
}

/** What --pre looks at on this node; the real one, or a fake in tests. */
export interface NodeProbe {
  exists(path: string): boolean;
  /** Exit code and output of a command; code -1 when it cannot start. */
  run(file: string, args: string[]): Promise<{ code: number; out: string }>;
  isRoot: boolean;
  /** What the kernel offers capture (agent/capture/kernel.ts: programs loaded, never attached). */
  kernel(): Promise<KernelReport>;
}

export const localNode: NodeProbe = {
  exists: existsSync,
  run: (file, args) =>
    new Promise((resolve) =>
      execFile(file, args, { timeout: 10_000 }, (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        resolve({ code, out: `${stdout}${stderr}`.trim() });
      }),
    ),
  isRoot: process.getuid?.() === 0,
  kernel: () => probeKernel(),
};

/** What to do when the eBPF mode lacks a feature. */
const EBPF_FIX: Partial<Record<KernelFeatureName, string>> = {
  btf: 'a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions since 2020)',
  sk_lookup: 'Linux 5.17 or later',
  sk_lookup_ifindex: 'Linux 5.17 or later',
  sockmap: 'Linux 5.10 or later',
  sk_lookup_program: 'the detail says why the verifier refused it; meanwhile the agent runs in nft mode',
  nft_socket: 'load nft_socket (modprobe nft_socket), or a kernel built with CONFIG_NFT_SOCKET',
  cgroup2: 'mount cgroup2 (systemd.unified_cgroup_hierarchy=1, or the hybrid layout\'s /sys/fs/cgroup/unified); the outbound programs attach to its root',
  cgroup_sock_addr: 'Linux 5.8 or later (connect4/6 and getpeername4/6 hooks)',
  sock_ops: 'Linux 5.8 or later; without it the agent also exports no trellis_tcp_rtt_seconds or trellis_tcp_retransmits_total (TCP health per edge)',
  connect_program: 'the detail says why the verifier refused it; meanwhile the agent runs in nft mode',
  netns_cookie: 'Linux 5.14 or later (SO_NETNS_COOKIE)',
};

/** The eBPF capture mode's needs one line each, then what --capture auto would run on this node. */
function ebpfChecks(report: KernelReport, isRoot: boolean): CheckResult[] {
  if (!isRoot) {
    return [{ check: 'ebpf', verdict: 'warn', detail: 'what the eBPF capture mode needs was not tried (loading BPF programs needs root)', fix: 'run trellis check --pre as root' }];
  }
  const out: CheckResult[] = [];
  for (const name of [...EBPF_NEEDS, 'sockhash'] as const) {
    const f = feature(report, name);
    const needed = EBPF_NEEDS.includes(name);
    out.push(
      f.ok
        ? { check: 'ebpf', verdict: 'ok', detail: f.detail }
        : {
            check: 'ebpf',
            verdict: 'warn',
            detail: f.detail,
            fix: needed ? (EBPF_FIX[name] ?? 'see the detail') : 'not needed yet (the same-node path will need it)',
          },
    );
  }
  const choice = chooseCapture('auto', report, { probeSources: [] });
  out.push(
    choice.mode === 'ebpf'
      ? { check: 'capture', verdict: 'ok', detail: `the agent (--capture auto) runs the eBPF mode here: ${EBPF_DOES}` }
      : {
          check: 'capture',
          verdict: 'warn',
          detail: `the agent (--capture auto) runs the nft mode here: the eBPF mode lacks ${choice.missing.map((m) => m.name).join(', ')}`,
          fix: 'nftables capture works everywhere; for the eBPF mode fix the lines above',
        },
  );
  return out;
}

/** Whether this node can run the agent. Changes nothing: nftables is tried in a network namespace of its own. */
export async function nodeChecks(probe: NodeProbe, dirs: { cniBin: string; cniConf: string }): Promise<CheckResult[]> {
  const out: CheckResult[] = [];
  const nft = await probe.run('nft', ['--version']);
  if (nft.code !== 0) {
    out.push({ check: 'nftables', verdict: 'fail', detail: 'nft does not run here', fix: 'install nftables (apt-get install nftables); the agent image carries its own nft, the kernel must have nf_tables' });
  } else if (!probe.isRoot) {
    out.push({ check: 'nftables', verdict: 'warn', detail: `${nft.out.split('\n')[0]}; the kernel's nf_tables not tried (needs root)`, fix: 'run trellis check --pre as root' });
  } else {
    // A throwaway netns (unshare): the host's own ruleset is never touched.
    const t = await probe.run('unshare', ['--net', '--', 'nft', 'add', 'table', 'inet', 'trellis_check']);
    out.push(
      t.code === 0
        ? { check: 'nftables', verdict: 'ok', detail: `${nft.out.split('\n')[0]}, and the kernel takes an inet table` }
        : { check: 'nftables', verdict: 'fail', detail: `the kernel refuses an nftables table: ${t.out.split('\n')[0]}`, fix: 'load nf_tables (modprobe nf_tables) or use a kernel built with it' },
    );
  }
  out.push(
    probe.exists('/proc/sys/net/ipv4/tcp_migrate_req')
      ? { check: 'handover', verdict: 'ok', detail: 'the kernel moves queued connections between listeners (tcp_migrate_req): agent restarts refuse nothing' }
      : { check: 'handover', verdict: 'warn', detail: 'the kernel has no tcp_migrate_req (Linux before 5.14)', fix: 'connections queued to an agent being replaced may be refused; use Linux 5.14 or later' },
  );
  const kernel = await probe.kernel();
  const cgroup2 = feature(kernel, 'cgroup2');
  out.push(
    cgroup2.ok
      ? { check: 'cgroup', verdict: 'ok', detail: cgroup2.detail }
      : {
          check: 'cgroup',
          verdict: 'warn',
          detail: `${cgroup2.detail}: TCP health per edge (trellis_tcp_rtt_seconds, trellis_tcp_retransmits_total) needs it`,
          fix: 'cgroup v2 (systemd.unified_cgroup_hierarchy=1, or the hybrid layout\'s /sys/fs/cgroup/unified); the outbound eBPF capture, when it comes, will need it too',
        },
  );
  out.push(...ebpfChecks(kernel, probe.isRoot));
  for (const [what, dir, flag] of [['CNI plugins', dirs.cniBin, '--cni-bin-dir'], ['CNI configuration', dirs.cniConf, '--cni-conf-dir']] as const) {
    out.push(
      probe.exists(dir)
        ? { check: 'cni', verdict: 'ok', detail: `${what} directory ${dir}` }
        : {
            check: 'cni',
            verdict: 'fail',
            detail: `no ${what} directory ${dir}`,
            fix: `the DaemonSet's install-cni chains trellis-cni there: give the right path (${flag}; in manifests/agent/daemonset.yaml the cni-bin and cni-conf volumes), or install a CNI first`,
          },
    );
  }
  return out;
}

/** `ok  text` / `WARN text` / `FAIL text`, each fix on the next line. */
export function formatChecks(results: readonly CheckResult[]): string {
  const mark: Record<Verdict, string> = { ok: 'ok  ', warn: 'WARN', fail: 'FAIL' };
  return results.map((r) => `${mark[r.verdict]}  ${r.check.padEnd(15)}  ${r.detail}${r.fix ? `\n${' '.repeat(23)}-> ${r.fix}` : ''}`).join('\n');
}

/** The exit: non-zero when a check failed (warnings pass). */
export function failedChecks(results: readonly CheckResult[]): VizError | undefined {
  const failed = results.filter((r) => r.verdict === 'fail');
  return failed.length ? new VizError('ECHECK', `${failed.length} check${failed.length > 1 ? 's' : ''} failed: ${failed.map((r) => r.check).join(', ')}`) : undefined;
}
