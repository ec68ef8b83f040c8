// The server name a TLS client asks for (SNI, RFC 6066 section 3), read from its ClientHello without terminating TLS:
// what egress reports and judges a TLS destination by. The hello may come in several TCP segments and several TLS
// records; it is read as far as the bytes go ('more') and never past MAX_HELLO_BYTES. Anything that is not a
// well-formed ClientHello with exactly one valid host name gives no name, never a guess.

/** The most bytes looked at: a TLS record's largest plaintext (2^14) and its header, which any real hello fits in. */
export const MAX_HELLO_BYTES = 16_384 + 5;

const HANDSHAKE = 0x16;
const CLIENT_HELLO = 0x01;
const SERVER_NAME = 0x0000;
const HOST_NAME = 0x00;

export type HelloVerdict =
  /** The bytes so far are the start of a ClientHello: wait for more. */
  | { kind: 'more' }
  /** A ClientHello naming this server (lowercase, without a trailing dot). */
  | { kind: 'sni'; name: string }
  /** TLS, but no name to go by: the hello names none, or is malformed, truncated at its end, or too large. */
  | { kind: 'none'; reason: string }
  /** Not a TLS handshake at all. */
  | { kind: 'not-tls' };

/** Whether the first bytes can be a TLS handshake record (content type 22, version 3.x). */
export function looksLikeTls(head: Buffer): boolean {
  return head.length > 0 && head[0] === HANDSHAKE && (head.length < 2 || head[1] === 0x03);
}

/**
 * Reads the ClientHello at the start of `head`. `ended`: the client sent nothing more (FIN, or the peek's time or
 * byte bound is reached), so a hello that is still incomplete is judged as it is: no name.
 */
export function readClientHello(head: Buffer, ended = false): HelloVerdict {
  if (head.length === 0) return ended ? { kind: 'none', reason: 'no bytes' } : { kind: 'more' };
  if (!looksLikeTls(head)) return { kind: 'not-tls' };
  const n = Math.min(head.length, MAX_HELLO_BYTES);
  // The handshake message may span records: gather their payloads in order until the message is whole.
  const parts: Buffer[] = [];
  let have = 0;
  let need = -1;
  let i = 0;
  while (need < 0 || have < need) {
    if (i + 5 > n) return incomplete(head, ended);
    if (head[i] !== HANDSHAKE || head[i + 1] !== 0x03) return { kind: 'none', reason: 'a record that is not a handshake record before the hello ends' };
    const len = head.readUInt16BE(i + 3);
    if (len === 0 || len > 16_384) return { kind: 'none', reason: `record length ${len} out of range` };
    const end = Math.min(i + 5 + len, n);
    parts.push(head.subarray(i + 5, end));
    have += end - (i + 5);
    if (need < 0 && have >= 4) {
      const first = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
      if (first[0] !== CLIENT_HELLO) return { kind: 'none', reason: `handshake message type ${first[0]} is not a ClientHello` };
      need = 4 + ((first[1]! << 16) | (first[2]! << 8) | first[3]!);
      if (need > MAX_HELLO_BYTES) return { kind: 'none', reason: `ClientHello of ${need} bytes is larger than ${MAX_HELLO_BYTES}` };
    }
    if (end < i + 5 + len) {
      if (need >= 0 && have >= need) break;
      return incomplete(head, ended);
    }
    i = end;
  }
  const msg = Buffer.concat(parts).subarray(0, need);
  return parseHello(msg.subarray(4));
}

function incomplete(head: Buffer, ended: boolean): HelloVerdict {
  if (head.length >= MAX_HELLO_BYTES) return { kind: 'none', reason: `no complete ClientHello in the first ${MAX_HELLO_BYTES} bytes` };
  return ended ? { kind: 'none', reason: 'the ClientHello is cut short' } : { kind: 'more' };
}

/** The ClientHello body (RFC 8446 section 4.1.2): version, random, session id, cipher suites, compression, extensions. */
function parseHello(b: Buffer): HelloVerdict {
  const bad = (what: string): HelloVerdict => ({ kind: 'none', reason: `malformed ClientHello: ${what}` });
  let i = 2 + 32;
  if (b.length < i + 1) return bad('too short for its version and random');
  const sid = b[i]!;
  if (sid > 32) return bad(`session id of ${sid} bytes`);
  i += 1 + sid;
  if (i + 2 > b.length) return bad('cut in its cipher suites');
  const suites = b.readUInt16BE(i);
  if (suites === 0 || suites % 2 !== 0) return bad(`cipher suites of ${suites} bytes`);
  i += 2 + suites;
  if (i + 1 > b.length) return bad('cut in its compression methods');
  const comp = b[i]!;
  if (comp === 0) return bad('no compression method');
  i += 1 + comp;
  if (i === b.length) return { kind: 'none', reason: 'the ClientHello has no extensions' };
  if (i + 2 > b.length) return bad('cut in its extensions');
  const extEnd = i + 2 + b.readUInt16BE(i);
  if (extEnd !== b.length) return bad('extensions do not end with the message');
  i += 2;
  let name: HelloVerdict | undefined;
  const seen = new Set<number>();
  while (i < extEnd) {
    if (i + 4 > extEnd) return bad('cut in an extension header');
    const type = b.readUInt16BE(i);
    const len = b.readUInt16BE(i + 2);
    i += 4;
    if (i + len > extEnd) return bad(`extension ${type} runs past the extensions`);
    // RFC 8446 section 4.2: at most one extension of each type.
    if (seen.has(type)) return bad(`extension ${type} appears twice`);
    seen.add(type);
    if (type === SERVER_NAME) name = serverName(b.subarray(i, i + len));
    i += len;
  }
  return name ?? { kind: 'none', reason: 'the ClientHello names no server' };
}

/** The server_name extension's data: a list holding exactly one host_name. */
function serverName(d: Buffer): HelloVerdict {
  const bad = (what: string): HelloVerdict => ({ kind: 'none', reason: `malformed server_name: ${what}` });
  if (d.length < 2 || d.readUInt16BE(0) !== d.length - 2) return bad('its list length is wrong');
  let i = 2;
  let host: string | undefined;
  while (i < d.length) {
    if (i + 3 > d.length) return bad('cut in an entry');
    const type = d[i]!;
    const len = d.readUInt16BE(i + 1);
    i += 3;
    if (i + len > d.length) return bad('an entry runs past the list');
    if (type === HOST_NAME) {
      // RFC 6066: no more than one name of a type.
      if (host !== undefined) return bad('two host names');
      host = d.toString('latin1', i, i + len);
    }
    i += len;
  }
  if (host === undefined) return bad('no host_name entry');
  const name = normalizeHostName(host);
  return name === undefined ? bad('the host name is not a DNS name') : { kind: 'sni', name };
}

const LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/;

/**
 * A DNS host name as egress compares them: ASCII (an IDN in its xn-- form), lowercase, without a trailing dot, at
 * most 253 characters in labels of 1 to 63 letters, digits, hyphens (not at either end) and underscores; an IP
 * literal is not a host name (RFC 6066 forbids it in SNI). Undefined for anything else.
 */
export function normalizeHostName(raw: string): string | undefined {
  let s = raw.toLowerCase();
  if (s.endsWith('.')) s = s.slice(0, -1);
  if (s.length === 0 || s.length > 253) return undefined;
  const labels = s.split('.');
  for (const l of labels) if (!LABEL.test(l)) return undefined;
  // All-numeric last label: an IPv4 literal or something that reads as one.
  if (/^[0-9]+$/.test(labels[labels.length - 1]!)) return undefined;
  return s;
}
