// Addresses for authorization: IPv4/IPv6 addresses and CIDR blocks parsed once (policy compile, connection
// start) into numbers, so the checks made per connection and per request are integer compares.
import net from 'node:net';

/** An address as four 32-bit words; IPv4 uses words[3] only and v4 = true. IPv4-mapped IPv6 is read as IPv4. */
export interface ParsedIp {
  readonly v4: boolean;
  readonly words: readonly [number, number, number, number];
}

export interface Cidr {
  readonly v4: boolean;
  /** The network, host bits cleared. */
  readonly words: readonly [number, number, number, number];
  /** Prefix length on the address family's own scale (0-32 for IPv4, 0-128 for IPv6). */
  readonly bits: number;
  /** As written, for descriptions. */
  readonly text: string;
}

function parseV4(s: string): number | undefined {
  if (net.isIPv4(s) === false) return undefined;
  const p = s.split('.');
  return ((Number(p[0]) << 24) | (Number(p[1]) << 16) | (Number(p[2]) << 8) | Number(p[3])) >>> 0;
}

function parseV6(s: string): [number, number, number, number] | undefined {
  if (!net.isIPv6(s)) return undefined;
  // A zone ("fe80::1%eth0") does not take part in matching.
  const zone = s.indexOf('%');
  let text = zone === -1 ? s : s.slice(0, zone);
  // Embedded IPv4 tail ("::ffff:10.1.2.3"): rewrite as two hex groups.
  const lastColon = text.lastIndexOf(':');
  const tail = text.slice(lastColon + 1);
  if (tail.includes('.')) {
    const v4 = parseV4(tail);
    if (v4 === undefined) return undefined;
    text = `${text.slice(0, lastColon + 1)}${(v4 >>> 16).toString(16)}:${(v4 & 0xffff).toString(16)}`;
  }
  const halves = text.split('::');
  const head = halves[0] ? halves[0].split(':') : [];
  const rest = halves.length > 1 && halves[1] ? halves[1].split(':') : [];
  const groups: number[] = [];
  for (const g of head) groups.push(parseInt(g, 16));
  if (halves.length > 1) for (let i = head.length + rest.length; i < 8; i++) groups.push(0);
  for (const g of rest) groups.push(parseInt(g, 16));
  if (groups.length !== 8 || groups.some((g) => !(g >= 0 && g <= 0xffff))) return undefined;
  return [
    ((groups[0]! << 16) | groups[1]!) >>> 0,
    ((groups[2]! << 16) | groups[3]!) >>> 0,
    ((groups[4]! << 16) | groups[5]!) >>> 0,
    ((groups[6]! << 16) | groups[7]!) >>> 0,
  ];
}

/** Parses an address as a socket reports it ("10.1.2.3", "fd00::1", "::ffff:10.1.2.3"); undefined if it is not one. */
export function parseIp(s: string): ParsedIp | undefined {
  const v4 = parseV4(s);
  if (v4 !== undefined) return { v4: true, words: [0, 0, 0, v4] };
  const w = parseV6(s);
  if (!w) return undefined;
  // Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d; policies name them as IPv4.
  if (w[0] === 0 && w[1] === 0 && w[2] === 0xffff) return { v4: true, words: [0, 0, 0, w[3]] };
  return { v4: false, words: w };
}

function mask(bits: number): number {
  if (bits <= 0) return 0;
  if (bits >= 32) return 0xffffffff;
  return (0xffffffff << (32 - bits)) >>> 0;
}

/**
 * Parses "10.0.0.0/8", "fd00::/8" or a single address (a /32 or /128). Host bits are cleared, as Envoy does
 * ("10.1.2.3/8" is 10.0.0.0/8). Returns a message for anything else.
 */
export function parseCidr(s: string): Cidr | string {
  const slash = s.indexOf('/');
  const addr = slash === -1 ? s : s.slice(0, slash);
  const ip = parseIp(addr);
  if (!ip || (addr.includes(':') && ip.v4 && slash !== -1)) {
    if (!ip) return `"${s}" is not an IP address or CIDR block (e.g. 10.0.0.0/8, fd00::/8)`;
    return `"${s}": write an IPv4 block as IPv4 (not as ::ffff:a.b.c.d/n)`;
  }
  const max = ip.v4 ? 32 : 128;
  let bits = max;
  if (slash !== -1) {
    const b = s.slice(slash + 1);
    if (!/^[0-9]{1,3}$/.test(b) || Number(b) > max) return `"${s}": prefix length must be 0 to ${max}`;
    bits = Number(b);
  }
  const words: [number, number, number, number] = [...ip.words];
  if (ip.v4) {
    words[3] = (words[3] & mask(bits)) >>> 0;
  } else {
    for (let i = 0; i < 4; i++) words[i] = (words[i]! & mask(bits - 32 * i)) >>> 0;
  }
  return { v4: ip.v4, words, bits, text: s };
}

export function cidrContains(c: Cidr, ip: ParsedIp): boolean {
  if (c.v4 !== ip.v4) return false;
  if (c.v4) return ((ip.words[3] & mask(c.bits)) >>> 0) === c.words[3];
  for (let i = 0; i < 4; i++) {
    if (((ip.words[i]! & mask(c.bits - 32 * i)) >>> 0) !== c.words[i]) return false;
  }
  return true;
}

export function anyCidrContains(blocks: readonly Cidr[], ip: ParsedIp): boolean {
  for (let i = 0; i < blocks.length; i++) if (cidrContains(blocks[i]!, ip)) return true;
  return false;
}
