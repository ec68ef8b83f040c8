// The name a client gave the destination of an egress connection, read from its first bytes without consuming them:
// the TLS SNI of a ClientHello (sni.ts; TLS is never terminated), the Host of a plaintext HTTP/1 request, or none
// (the destination is then its IP). Bounded by the detection timeout and by MAX_HELLO_BYTES / SNIFF_LIMIT bytes; a
// name that is absent, garbled or ambiguous gives none, never a guess, so policy judges by the address instead.
import type { Readable } from 'node:stream';
import { classify, peek, SNIFF_LIMIT, type PeekFinal } from './detect.js';
import { looksLikeTls, normalizeHostName, readClientHello } from './sni.js';

export interface DestinationName {
  /** Lowercase DNS name, without port or trailing dot; absent when the client named none that can be trusted. */
  name?: string;
  /** Where the name came from. */
  by?: 'sni' | 'host';
  /** What the first bytes are. */
  protocol: 'tls' | 'http1' | 'h2' | 'tcp';
  /** Why there is no name, when the bytes should have had one (TLS or HTTP/1). */
  problem?: string;
}

/** Judges the bytes so far: undefined while more may come and could still change the answer. */
export function nameFromHead(head: Buffer, final: PeekFinal): DestinationName | undefined {
  if (head.length === 0) return final ? { protocol: 'tcp' } : undefined;
  if (looksLikeTls(head)) {
    const hello = readClientHello(head, final !== false);
    switch (hello.kind) {
      case 'more':
        return undefined;
      case 'sni':
        return { name: hello.name, by: 'sni', protocol: 'tls' };
      case 'none':
        return { protocol: 'tls', problem: hello.reason };
      case 'not-tls':
        break;
    }
  }
  const proto = classify(head);
  if (proto === 'tcp') return { protocol: 'tcp' };
  if (proto === 'h2') return { protocol: 'h2' };
  if (proto === 'more') return final ? { protocol: 'tcp' } : undefined;
  return httpHost(head, final);
}

/** The Host of the HTTP/1 request at the start of `head` (its request line already classified as HTTP/1). */
function httpHost(head: Buffer, final: PeekFinal): DestinationName | undefined {
  const n = Math.min(head.length, SNIFF_LIMIT);
  const text = head.toString('latin1', 0, n);
  const end = /\r?\n\r?\n/.exec(text);
  if (!end) {
    if (final === false && n < SNIFF_LIMIT) return undefined;
    return { protocol: 'http1', problem: `no complete request head in the first ${n} bytes` };
  }
  const lines = text.slice(0, end.index).replace(/^[\r\n]+/, '').split(/\r?\n/);
  const none = (problem: string): DestinationName => ({ protocol: 'http1', problem });
  // An absolute-form target names the host too (RFC 9112 section 3.2.2): it must agree with Host.
  const target = lines[0]!.split(/[ \t]+/)[1] ?? '';
  const absolute = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)/i.exec(target);
  let host: string | undefined;
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) return none('a header line without a name');
    if (line.slice(0, colon).toLowerCase() !== 'host') continue;
    if (host !== undefined) return none('two Host headers');
    host = line.slice(colon + 1).trim();
  }
  if (host === undefined && absolute === null) return none('no Host header');
  const names = [host, absolute?.[1]].filter((h): h is string => h !== undefined).map(hostOfAuthority);
  if (names.some((h) => h === undefined)) return none(`Host ${JSON.stringify(host ?? absolute?.[1])} is not a DNS name`);
  if (names.length === 2 && names[0] !== names[1]) return none('the request target and Host name different hosts');
  return { name: names[0]!, by: 'host', protocol: 'http1' };
}

/** host[:port] as a DNS name; undefined for an IP literal, userinfo, or anything else. */
function hostOfAuthority(authority: string): string | undefined {
  const m = /^([^:@[\]]+)(:[0-9]{1,5})?$/.exec(authority);
  return m ? normalizeHostName(m[1]!) : undefined;
}

/** Peeks at the client's first bytes for the destination's name; nothing is consumed. */
export async function peekDestinationName(socket: Readable, timeoutMs: number): Promise<DestinationName & { timedOut: boolean }> {
  if (timeoutMs <= 0) return { protocol: 'tcp', timedOut: false };
  const found = await peek(socket, timeoutMs, nameFromHead);
  return { ...found.value, timedOut: found.timedOut };
}
