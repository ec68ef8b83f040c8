// What this kernel offers capture, found by trying rather than by version numbers: libbpf's probes load tiny programs
// and maps, Trellis's own sk_lookup and outbound programs are loaded (CO-RE relocated, verified) and thrown away,
// SO_NETNS_COOKIE is asked of a socket, nft's socket
// expression is tried in a network namespace of its own. Nothing is attached. Read by the agent at start (mode.ts
// chooses from it) and by `trellis check --pre`.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { probeBpf, type BpfProbe, type ProbeAnswer, type ProgramProbe, lastLines } from '../native/index.js';

export const KERNEL_FEATURES = [
  'btf',
  'sk_lookup',
  'sk_lookup_ifindex',
  'sockmap',
  'sockhash',
  'cgroup_sock_addr',
  'sock_ops',
  'cgroup2',
  'sk_lookup_program',
  'connect_program',
  'netns_cookie',
  'nft_socket',
] as const;
export type KernelFeatureName = (typeof KERNEL_FEATURES)[number];

export interface KernelFeature {
  readonly name: KernelFeatureName;
  readonly ok: boolean;
  /** What was found, or what is missing and why, in a person's words. */
  readonly detail: string;
}

export interface Cgroup2Mount {
  readonly path: string;
  /** unified: cgroup2 at /sys/fs/cgroup; hybrid: v1 controllers there and cgroup2 at /sys/fs/cgroup/unified. */
  readonly layout: 'unified' | 'hybrid' | 'elsewhere';
}

export interface KernelReport {
  readonly features: readonly KernelFeature[];
  readonly cgroup2?: Cgroup2Mount;
}

const NOT_PERMITTED = 'BPF needs CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN, and a seccomp profile that allows bpf()';

export function feature(report: KernelReport, name: KernelFeatureName): KernelFeature {
  return report.features.find((f) => f.name === name) ?? { name, ok: false, detail: 'not probed' };
}

export interface KernelProbeInputs {
  bpf?: () => BpfProbe;
  /** /proc/self/mountinfo's text. */
  mountinfo?: () => string;
  /** Whether nft's socket expression (nft_socket) loads, tried in a throwaway netns. */
  nftSocket?: () => Promise<{ ok: boolean; detail: string }>;
}

/** Probes everything; never throws (a probe that cannot run reports its feature missing, with the reason). */
export async function probeKernel(inputs: KernelProbeInputs = {}): Promise<KernelReport> {
  let bpf: BpfProbe | undefined;
  let bpfError: string | undefined;
  try {
    bpf = (inputs.bpf ?? probeBpf)();
  } catch (err) {
    bpfError = (err as Error).message;
  }
  let mountinfo = '';
  try {
    mountinfo = (inputs.mountinfo ?? (() => readFileSync('/proc/self/mountinfo', 'utf8')))();
  } catch {
    // No /proc: no cgroup2 seen.
  }
  const cgroup2 = cgroup2Mount(mountinfo);
  const nft = await (inputs.nftSocket ?? nftSocketWorks)().catch((err: Error) => ({ ok: false, detail: err.message }));

  const program = bpf?.program;
  // libbpf's probes answer "no" when the load is refused for want of privilege; Trellis's own program says which.
  const denied = program !== undefined && !program.ok && (program.code === 'EPERM' || program.code === 'EACCES');
  const answer = (name: KernelFeatureName, a: ProbeAnswer | undefined, yes: string, no: string): KernelFeature => {
    if (a === undefined) return { name, ok: false, detail: `not probed: ${bpfError ?? 'no answer'}` };
    if (a === 1) return { name, ok: true, detail: yes };
    if (a === 0 && denied) return { name, ok: false, detail: `could not tell: loading BPF programs is not permitted here (${program.code}: ${NOT_PERMITTED})` };
    if (a === 0) return { name, ok: false, detail: no };
    return { name, ok: false, detail: `could not tell: ${errnoName(-a)}${-a === os.constants.errno.EPERM ? ` (${NOT_PERMITTED})` : ''}` };
  };
  const features: KernelFeature[] = [
    answer('btf', bpf?.btf, "the kernel's BTF (/sys/kernel/btf/vmlinux) for CO-RE", 'no kernel BTF (CONFIG_DEBUG_INFO_BTF): CO-RE programs cannot be relocated'),
    answer('sk_lookup', bpf?.progTypes.sk_lookup, 'sk_lookup programs (inbound capture without NAT)', 'no sk_lookup programs (Linux 5.9+)'),
    answer('sk_lookup_ifindex', bpf?.skLookupIfindex, "sk_lookup's ingress_ifindex", "sk_lookup without ingress_ifindex (Linux 5.17+), which tells the agent's own connections to the app apart"),
    answer('sockmap', bpf?.mapTypes.sockmap, 'sockmap (the listener the program hands connections to)', 'no sockmap maps (Linux 4.14+; listeners in them 5.10+)'),
    answer('sockhash', bpf?.mapTypes.sockhash, 'sockhash (for the same-node path)', 'no sockhash maps (Linux 4.18+)'),
    answer('cgroup_sock_addr', bpf?.progTypes.cgroup_sock_addr, 'cgroup sock_addr programs (connect4/connect6 hooks, for outbound capture)', 'no cgroup sock_addr programs (Linux 4.17+)'),
    answer('sock_ops', bpf?.progTypes.sock_ops, 'sockops programs (RTT and retransmissions per edge)', 'no sockops programs (Linux 4.13+): no trellis_tcp_rtt_seconds or trellis_tcp_retransmits_total'),
    cgroup2
      ? { name: 'cgroup2', ok: true, detail: `cgroup v2 at ${cgroup2.path}${cgroup2.layout === 'hybrid' ? ' (hybrid layout: v1 controllers at /sys/fs/cgroup)' : ''}` }
      : { name: 'cgroup2', ok: false, detail: 'no cgroup v2 mount visible to this process (systemd.unified_cgroup_hierarchy, or mount cgroup2)' },
    program === undefined
      ? { name: 'sk_lookup_program', ok: false, detail: `not probed: ${bpfError ?? 'no answer'}` }
      : program.ok
        ? { name: 'sk_lookup_program', ok: true, detail: "Trellis's sk_lookup program loads (CO-RE relocated, verified)" }
        : {
            name: 'sk_lookup_program',
            ok: false,
            detail: `Trellis's sk_lookup program does not load (${program.stage}: ${program.code} ${program.message})${program.log ? `; libbpf: ${lastLines(program.log).join(' | ')}` : ''}`,
          },
    programFeature('connect_program', bpf?.outboundProgram, bpfError, "Trellis's outbound programs load (cgroup connect4/6, getpeername4/6, sockops; CO-RE relocated, verified)", "Trellis's outbound programs"),
    answer('netns_cookie', bpf?.netnsCookie, "SO_NETNS_COOKIE (the agent knows each pod's netns by its cookie)", 'no SO_NETNS_COOKIE (Linux 5.14+)'),
    { name: 'nft_socket', ...nft },
  ];
  return { features, ...(cgroup2 && { cgroup2 }) };
}

function programFeature(name: KernelFeatureName, p: ProgramProbe | undefined, bpfError: string | undefined, yes: string, what: string): KernelFeature {
  if (p === undefined) return { name, ok: false, detail: `not probed: ${bpfError ?? 'no answer'}` };
  if (p.ok) return { name, ok: true, detail: yes };
  return { name, ok: false, detail: `${what} do not load (${p.stage}: ${p.code} ${p.message})${p.log ? `; libbpf: ${lastLines(p.log).join(' | ')}` : ''}` };
}

/** Where cgroup v2 is mounted, from /proc/self/mountinfo (the first cgroup2 mount; /sys/fs/cgroup first). */
export function cgroup2Mount(mountinfo: string): Cgroup2Mount | undefined {
  const paths: string[] = [];
  for (const line of mountinfo.split('\n')) {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
    const [left, right] = line.split(' - ');
    if (!left || !right || right.split(' ')[0] !== 'cgroup2') continue;
    const mountPoint = left.split(' ')[4];
    if (mountPoint) paths.push(mountPoint.replace(/\\040/g, ' '));
  }
  const path = paths.find((p) => p === '/sys/fs/cgroup') ?? paths.find((p) => p === '/sys/fs/cgroup/unified') ?? paths[0];
  if (!path) return undefined;
  return { path, layout: path === '/sys/fs/cgroup' ? 'unified' : path === '/sys/fs/cgroup/unified' ? 'hybrid' : 'elsewhere' };
}

function errnoName(errno: number): string {
  const entry = Object.entries(os.constants.errno).find(([, n]) => n === errno);
  return entry ? entry[0] : `errno ${errno}`;
}

/**
 * The table the eBPF mode installs in pods needs nft's socket expression (capture/rules.ts): tried in a network
 * namespace of its own (unshare), so the host's ruleset is never touched.
 */
export function nftSocketWorks(): Promise<{ ok: boolean; detail: string }> {
  const ruleset = 'table inet trellis_probe {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    socket mark 0x539 accept\n  }\n}\n';
  return new Promise((resolve) => {
    const child = spawn('unshare', ['--net', '--', 'nft', '-f', '-'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    child.stdin.on('error', () => undefined);
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ ok: false, detail: `cannot try nft's socket expression: ${err.message}` });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve(
        code === 0
          ? { ok: true, detail: "nft's socket expression (the inbound guard of eBPF mode)" }
          : { ok: false, detail: `nft's socket expression does not load (nft_socket): ${stderr.trim().split('\n')[0] ?? `exit ${code}`}` },
      );
    });
    child.stdin.end(ruleset);
  });
}
