// Which capture mode the agent runs (--capture auto|nft|ebpf) and why, from what the kernel offers (kernel.ts).
// eBPF mode captures inbound with sk_lookup and outbound with cgroup connect4/6 programs, both without NAT; a kernel
// without what it needs makes `auto` fall back to nft and `ebpf` refuse to start, naming what is missing.
import type { CaptureRequest } from '../config.js';
import { TrellisError } from '../errors.js';
import { SK_LOOKUP_MAX_PROBE_SOURCES } from '../native/index.js';
import { feature, type KernelFeature, type KernelFeatureName, type KernelReport } from './kernel.js';

export type { CaptureRequest } from '../config.js';
export type CaptureMode = 'nft' | 'ebpf';
export const CAPTURE_MODES: readonly CaptureMode[] = ['nft', 'ebpf'];

/**
 * What eBPF mode needs: BTF to relocate the programs; inbound, the sk_lookup program (with ingress_ifindex) and the
 * sockmap holding the listener, and nft's socket expression for the guard that refuses inbound connections when the
 * program is gone; outbound, cgroup v2 to attach to, cgroup sock_addr hooks (connect4/6, getpeername4/6) and sockops
 * (the outbound programs load), and SO_NETNS_COOKIE to know the pods by. sockhash (same-node path) is probed and
 * reported, not needed.
 */
export const EBPF_NEEDS: readonly KernelFeatureName[] = [
  'btf',
  'sk_lookup',
  'sk_lookup_ifindex',
  'sockmap',
  'sk_lookup_program',
  'nft_socket',
  'cgroup2',
  'cgroup_sock_addr',
  'sock_ops',
  'connect_program',
  'netns_cookie',
];

/** What eBPF mode does, as the reason says it. */
export const EBPF_DOES = 'inbound by sk_lookup, outbound by cgroup connect4/6 programs, both without NAT';

export interface CaptureChoice {
  readonly mode: CaptureMode;
  readonly reason: string;
  /** What eBPF mode would need and this kernel (or configuration) lacks; empty when it has everything. */
  readonly missing: readonly KernelFeature[];
}

/** The mode for `request` on this kernel; TrellisError ECAPTURE when `ebpf` is asked for and cannot run. */
export function chooseCapture(request: CaptureRequest, report: KernelReport, opts: { probeSources: readonly string[] }): CaptureChoice {
  const missing = EBPF_NEEDS.map((n) => feature(report, n)).filter((f) => !f.ok);
  for (const family of ['.', ':']) {
    const n = opts.probeSources.filter((ip) => ip.includes(family)).length;
    if (n > SK_LOOKUP_MAX_PROBE_SOURCES) {
      missing.push({ name: 'sk_lookup_program', ok: false, detail: `${n} IPv${family === '.' ? 4 : 6} --probe-source addresses, more than the ${SK_LOOKUP_MAX_PROBE_SOURCES} the sk_lookup program holds` });
    }
  }
  const lacking = missing.map((f) => `${f.name}: ${f.detail}`).join('; ');
  switch (request) {
    case 'nft':
      return { mode: 'nft', reason: '--capture nft', missing };
    case 'ebpf':
      if (missing.length) {
        throw new TrellisError('ECAPTURE', `--capture ebpf: this node cannot run it (${lacking}); run with --capture auto to fall back to nftables, or --capture nft`);
      }
      return { mode: 'ebpf', reason: `--capture ebpf: ${EBPF_DOES}`, missing };
    case 'auto':
      return missing.length
        ? { mode: 'nft', reason: `--capture auto: nftables, because the eBPF mode lacks ${lacking}`, missing }
        : { mode: 'ebpf', reason: `--capture auto: the kernel has what the eBPF mode needs (${EBPF_DOES})`, missing };
  }
}
