// HTTP/1.1 heads and chunked framing as bytes: the request and response heads the lean path writes, built in one
// string per head (latin1: header bytes round-trip exactly as the parser read them).
import { STATUS_CODES } from 'node:http';
import type { Headers } from '../headers.js';

const CRLF = '\r\n';
/** The end of a chunked body with no trailers. */
export const LAST_CHUNK = Buffer.from('0\r\n\r\n', 'latin1');
export const CHUNK_END = Buffer.from(CRLF, 'latin1');
export const CONTINUE = Buffer.from('HTTP/1.1 100 Continue\r\n\r\n', 'latin1');

/** Header lines of `headers` ("name: value\r\n" each, repeated fields one line per value), except `skip`. */
export function headerLines(headers: Headers, skip?: string): string {
  let s = '';
  for (const name in headers) {
    if (name === skip) continue;
    const v = headers[name]!;
    if (typeof v === 'string') s += `${name}: ${v}${CRLF}`;
    else for (let i = 0; i < v.length; i++) s += `${name}: ${v[i]}${CRLF}`;
  }
  return s;
}

export function responseHead(status: number, headers: Headers, framing: string): Buffer {
  return Buffer.from(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}${CRLF}${headerLines(headers)}${framing}${CRLF}`, 'latin1');
}

/** A request head; the framing (content-length or transfer-encoding) is the caller's, any in `headers` is left out. */
export function requestHead(method: string, target: string, authority: string, headers: Headers, framing: string): Buffer {
  return Buffer.from(`${method} ${target} HTTP/1.1${CRLF}host: ${authority}${CRLF}${headerLines(headers, 'content-length')}${framing}${CRLF}`, 'latin1');
}

export function chunkHeader(length: number): Buffer {
  return Buffer.from(`${length.toString(16)}${CRLF}`, 'latin1');
}

/** The last chunk with trailer fields. */
export function lastChunk(trailers: Headers | undefined): Buffer {
  if (!trailers) return LAST_CHUNK;
  return Buffer.from(`0${CRLF}${headerLines(trailers)}${CRLF}`, 'latin1');
}

/** A whole response made by the agent itself (a refusal before routing): status, text body, connection closed. */
export function plainResponse(status: number, text: string, close: boolean): Buffer {
  const body = text ? `${text}\n` : '';
  return Buffer.from(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}${CRLF}content-type: text/plain; charset=utf-8${CRLF}content-length: ${Buffer.byteLength(body)}${CRLF}${close ? `connection: close${CRLF}` : ''}${CRLF}${body}`,
    'utf8',
  );
}
