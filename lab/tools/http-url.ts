// Workload tools: the plain-HTTP URL the benchmark clients aim at, parsed once into what they write on the wire.
import { LabError } from '../errors.js';

export interface HttpTarget {
  host: string;
  port: number;
  /** Path and query, as the request line carries them. */
  path: string;
  /** The Host header value. */
  authority: string;
}

export function parseHttpUrl(text: string): HttpTarget {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new LabError('EINVAL', `"${text}" is not a URL (expected http://HOST:PORT/PATH)`);
  }
  if (url.protocol !== 'http:') throw new LabError('EINVAL', `${text}: only plain http:// is spoken here`);
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  return { host, port: url.port ? Number(url.port) : 80, path: `${url.pathname || '/'}${url.search}`, authority: url.host };
}

/** The bytes of one request; `close` asks the server to end the connection after answering. */
export function requestBytes(t: HttpTarget, opts: { method?: string; close?: boolean; headers?: string[] } = {}): Buffer {
  const lines = [
    `${opts.method ?? 'GET'} ${t.path} HTTP/1.1`,
    `Host: ${t.authority}`,
    'User-Agent: trellis-bench',
    ...(opts.close ? ['Connection: close'] : []),
    ...(opts.headers ?? []),
  ];
  return Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
}
