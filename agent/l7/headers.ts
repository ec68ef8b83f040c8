// HTTP header fields as the L7 path carries them between protocols: lowercase names, repeated fields as arrays,
// without the fields that describe one hop. One pass over what the parser gave, no intermediate objects.
import { randomUUID } from 'node:crypto';

export type Headers = Record<string, string | string[]>;

/**
 * On a request between agents: the client spoke HTTP/2, so the app gets HTTP/2 (the hop between agents carries
 * it as HTTP/1.1 on a pooled HBONE stream, trailers in chunked encoding).
 */
export const APP_PROTOCOL_HEADER = 'trellis-app-protocol';

/** Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1, plus the HTTP/2 ban list). */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
  'host',
  // Between agents only: the protocol the client spoke, set by the source agent (h1/client.ts), read and dropped
  // by the destination (h1/server.ts); never forwarded, so a client cannot set it.
  APP_PROTOCOL_HEADER,
]);

/**
 * Header fields from a parser's flat [name, value, name, value...] list: lowercase names, repeated fields kept as
 * arrays, hop-by-hop fields and those the Connection header names dropped. `keep` keeps some hop-by-hop fields
 * (HTTP/1.1 to HTTP/2: "te: trailers").
 */
export function fromRaw(raw: readonly string[], keepTrailer = false): Headers {
  const out: Headers = {};
  let connection: string | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const value = raw[i + 1]!;
    if (HOP_BY_HOP.has(name)) {
      if (name === 'connection') connection = connection === undefined ? value : `${connection},${value}`;
      if (!(keepTrailer && name === 'trailer')) continue;
    }
    const prev = out[name];
    if (prev === undefined) out[name] = value;
    else if (Array.isArray(prev)) prev.push(value);
    else out[name] = [prev, value];
  }
  if (connection !== undefined) for (const n of connection.toLowerCase().split(',')) delete out[n.trim()];
  return out;
}

/** A header's value as routes and policies read it: repeated values joined with ",". */
export function headerValue(headers: Headers, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}

/** content-type application/grpc*: errors become grpc-status, success needs grpc-status 0. */
export function isGrpc(headers: Headers): boolean {
  const ct = headers['content-type'];
  return typeof ct === 'string' && ct.startsWith('application/grpc');
}

/** x-request-id: the client's when it is usable, else one made here and set on the headers. */
export function ensureRequestId(headers: Headers): string {
  const id = headers['x-request-id'];
  if (typeof id === 'string' && id.length > 0 && id.length <= 128) return id;
  const made = randomUUID();
  headers['x-request-id'] = made;
  return made;
}

/** HTTP/2 header blocks: pseudo-headers dropped (the exchange carries method, path, status itself). */
export function withoutPseudo(h: Record<string, string | string[] | undefined>): Headers {
  const out: Headers = {};
  for (const k in h) {
    if (k.charCodeAt(0) === 58 /* : */) continue;
    const v = h[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
}

/** Drops hop-by-hop headers; `keepTrailer` keeps the Trailer announcement (HTTP/2 to HTTP/2). */
export function withoutHopByHop(h: Headers, keepTrailer = false): Headers {
  const c = h.connection;
  const named = typeof c === 'string' ? c.toLowerCase().split(',').map((s) => s.trim()) : undefined;
  let out: Headers | undefined;
  for (const k in h) {
    if ((HOP_BY_HOP.has(k) && !(keepTrailer && k === 'trailer')) || named?.includes(k)) {
      out ??= { ...h };
      delete out[k];
    }
  }
  return out ?? h;
}
