// Capture rules for one pod, installed inside its netns: outbound TCP -> 15001, inbound TCP -> 15006 (15008 untouched).
// One nftables table of our own, replaced atomically, so enrol/unenrol add and remove exactly what is ours. In eBPF
// capture mode inbound is the pod's sk_lookup program's (capture/sk-lookup.ts) and outbound the cgroup connect4/6
// programs' (capture/connect.ts), with no NAT: the table then carries only guards, filters that refuse what would
// otherwise go around the mesh once those programs are gone (the agent stopped).
import { AGENT_MARK, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, TRANSPARENT_MARK, TRANSPARENT_REPLY_MARK } from '../constants.js';

export const CAPTURE_TABLE = 'trellis';

/** Who captures inbound: nft (a redirect to 15006) or the pod's sk_lookup program (eBPF mode; a guard here). */
export type InboundCapture = 'nft' | 'sk_lookup';

/** Who captures outbound: nft (a redirect to 15001) or the cgroup connect4/6 programs (eBPF mode; a guard here). */
export type OutboundCapture = 'nft' | 'connect';

export interface CaptureSpec {
  /** Sources exempt from inbound capture: the node's address kubelet probes come from. */
  probeSources: readonly string[];
  mark?: number;
  /** Default nft. */
  inbound?: InboundCapture;
  /** Default nft. */
  outbound?: OutboundCapture;
}

/**
 * The whole ruleset as one `nft -f` transaction. Declaring the table first makes the delete valid even when it
 * does not exist yet, so the same text enrols a new pod and repairs an enrolled one.
 */
export function captureRuleset(spec: CaptureSpec): string {
  const mark = hex(spec.mark ?? AGENT_MARK);
  const probes = spec.probeSources.filter((ip) => ip.includes('.'));
  const probes6 = spec.probeSources.filter((ip) => ip.includes(':'));
  return [
    `table inet ${CAPTURE_TABLE} {}`,
    `delete table inet ${CAPTURE_TABLE}`,
    `table inet ${CAPTURE_TABLE} {`,
    ...(spec.outbound === 'connect' ? outboundGuard(mark) : outboundRedirect(mark)),
    ...(spec.inbound === 'sk_lookup' ? inboundGuard(mark, probes, probes6) : inboundRedirect(probes, probes6)),
    ...(spec.inbound === 'sk_lookup' && spec.outbound === 'connect' ? natKept() : []),
    // The caller's address kept (the agent's connection to the app leaves from it, IP_TRANSPARENT): the connection is
    // remembered on its conntrack entry, and the app's replies on it, addressed to the caller, get a mark that policy
    // routing (capture/routing.ts) delivers to the agent's socket in this netns instead of sending them out.
    '  chain route_output {',
    '    type route hook output priority mangle; policy accept;',
    `    meta mark ${hex(TRANSPARENT_MARK)} ct mark set ${hex(TRANSPARENT_MARK)} return`,
    `    ct mark ${hex(TRANSPARENT_MARK)} meta mark set ${hex(TRANSPARENT_REPLY_MARK)}`,
    '  }',
    '}',
    '',
  ].join('\n');
}

/** Outbound: everything the app sends, except loopback and the agent's own (marked) sockets. */
function outboundRedirect(mark: string): string[] {
  return [
    '  chain output {',
    '    type nat hook output priority -110; policy accept;',
    '    oifname "lo" return',
    `    meta mark ${mark} return`,
    `    meta mark ${hex(TRANSPARENT_MARK)} return`,
    '    ip daddr 127.0.0.0/8 return',
    '    ip6 daddr ::1 return',
    `    meta l4proto tcp redirect to :${OUTBOUND_PORT}`,
    '  }',
  ];
}

/**
 * eBPF mode: the connect4/6 programs send the app's connects to the agent's listener on loopback, so a new TCP
 * connection leaving the pod for anywhere else, from a socket without the agent's marks, is one the programs did not
 * see: they are gone (the agent stopped: its links go with it). It is reset here, as a redirect to a closed 15001 is
 * refused in nft mode: fail closed, never around the mesh. A filter, no NAT; at the filter priority, after any NAT, so
 * a SYN sent again for a connection an nft-mode agent's redirect took (a hand-over between modes) is seen going to
 * loopback, where conntrack still sends it.
 */
function outboundGuard(mark: string): string[] {
  return [
    '  chain output {',
    '    type filter hook output priority filter; policy accept;',
    '    oifname "lo" return',
    '    ip daddr 127.0.0.0/8 return',
    '    ip6 daddr ::1 return',
    `    meta mark ${mark} return`,
    `    meta mark ${hex(TRANSPARENT_MARK)} return`,
    '    tcp flags & (syn | ack) == syn reject with tcp reset',
    '  }',
  ];
}

/** Inbound: HBONE goes straight to 15008; probes from the node reach the app untouched; the rest is plaintext. */
function inboundRedirect(probes: string[], probes6: string[]): string[] {
  return [
    '  chain prerouting {',
    '    type nat hook prerouting priority -110; policy accept;',
    '    iifname "lo" return',
    ...probes.map((ip) => `    ip saddr ${ip} return`),
    ...probes6.map((ip) => `    ip6 saddr ${ip} return`),
    `    tcp dport ${HBONE_PORT} return`,
    `    meta l4proto tcp redirect to :${INBOUND_PLAINTEXT_PORT}`,
    '  }',
  ];
}

/**
 * eBPF mode: the sk_lookup program hands inbound connections to the agent's listener, which carries the agent's mark.
 * Should the program be gone (the agent stopped: its links go with it), a new connection whose socket lookup finds
 * anything but an agent socket is reset here, as a redirect to a closed 15006 is in nft mode: fail closed, never around
 * the mesh. nft's socket lookup runs the same sk_lookup program, so while it is attached it finds the agent's listener.
 */
function inboundGuard(mark: string, probes: string[], probes6: string[]): string[] {
  return [
    '  chain input {',
    '    type filter hook input priority -110; policy accept;',
    '    iifname "lo" return',
    ...probes.map((ip) => `    ip saddr ${ip} return`),
    ...probes6.map((ip) => `    ip6 saddr ${ip} return`),
    `    tcp dport ${HBONE_PORT} return`,
    `    tcp flags & (syn | ack) == syn socket mark != ${mark} reject with tcp reset`,
    '  }',
  ];
}

/**
 * eBPF mode NATs nothing, but keeps an empty nat chain on each NAT hook: the kernel registers NAT's hooks in a netns
 * with its first nat chain and removes them with its last, and without them the connections an nft-mode agent's
 * redirects took before a hand-over to this mode (still open, still queued) lose their translation mid-stream: the
 * client then sees packets from 15006 and resets (seen in test/e2e/capture-switch.test.ts). Empty, they change no
 * new connection.
 */
function natKept(): string[] {
  return [
    '  chain nat_kept_prerouting {',
    '    type nat hook prerouting priority -110; policy accept;',
    '  }',
    '  chain nat_kept_output {',
    '    type nat hook output priority -110; policy accept;',
    '  }',
  ];
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

export function removalRuleset(): string {
  return [`table inet ${CAPTURE_TABLE} {}`, `delete table inet ${CAPTURE_TABLE}`, ''].join('\n');
}
