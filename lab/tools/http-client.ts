// Workload tools: a bounded HTTP client for the L7 tests. N requests over a few keep-alive HTTP/1.1 connections
// or one h2c session; the summary counts answers by status and by the backend that gave them (l7-echo's name),
// and can keep the first replies whole, so a test sees routing, header filters and errors from one run.
import http from 'node:http';
import http2 from 'node:http2';
import { LabError } from '../errors.js';
import { ECHO_NAME_HEADER } from './l7-echo.js';
import { codeOf } from './wait.js';

/** One request's own method, path, headers and body; what it leaves out comes from the run's options. */
export interface HttpRequestSpec {
  method?: string;
  /** Path and query, replacing the URL's. */
  path?: string;
  headers?: Record<string, string>;
  body?: string;
}

export interface HttpClientOptions {
  url: string;
  /** Requests to send in all. */
  count: number;
  /** HTTP/1.1 connections, or streams in flight on the one h2c session; default 1. */
  concurrency?: number;
  /** HTTP/2 over cleartext with prior knowledge (no Upgrade), as gRPC and meshes speak it. */
  http2?: boolean;
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  /** HTTP/1.1: send the body in two chunks, with Transfer-Encoding: chunked instead of Content-Length. */
  chunked?: boolean;
  /** Request i takes requests[i % length] over the options above. */
  requests?: HttpRequestSpec[];
  /** Keep the first N replies whole (status, headers, body) in the summary. */
  replies?: number;
  /** Per request; default 10 s. */
  timeoutMs?: number;
  /** Start no request after this many seconds. */
  durationS?: number;
  /** Pause between one request's answer and the next request of the same worker (an open loop at a bounded rate). */
  intervalMs?: number;
  /** Request i carries x-request-id: <prefix><i>, so each request can be found in the mesh's access logs. */
  requestIdPrefix?: string;
}

export interface HttpReply {
  /** Request number, from 0. */
  i: number;
  /** Status code, or the error code when no response came ('ECONNRESET', 'ETIMEDOUT'...). */
  status: number | string;
  ms: number;
  headers: Record<string, string | string[]>;
  /** The JSON body parsed, or its text (the first 4 KiB). */
  body: unknown;
}

export interface HttpClientSummary {
  sent: number;
  /** Responses below 400. */
  ok: number;
  /** Responses of 400 and above, and requests without a response. */
  failed: number;
  /** By status ("200"), or by error code without a response. */
  statusCounts: Record<string, number>;
  /** By the answering backend's name (l7-echo's JSON, else its x-echo-name header); answers without one are not counted. */
  names: Record<string, number>;
  /** By "<name> <status>", to tell which backend failed. */
  nameStatus: Record<string, number>;
  /** The protocol l7-echo says the request arrived in ("http/1.1", "h2"): what the mesh sent upstream. */
  backendProtocols: Record<string, number>;
  p50_ms: number | null;
  p99_ms: number | null;
  max_ms: number | null;
  /** HTTP/2: requests sent a second time because the server refused their stream unprocessed (GOAWAY crossing them). */
  refused_retried?: number;
  replies?: HttpReply[];
}

const MAX_BODY_TEXT = 4096;
/** HTTP/1-only headers that HTTP/2 forbids; dropped from h2 requests. */
const CONNECTION_HEADERS = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'host']);

type Outcome = { status: number; ms: number; headers: Record<string, string | string[]>; body: Buffer } | { error: string; ms: number };

export async function httpClient(opts: HttpClientOptions): Promise<HttpClientSummary> {
  const url = new URL(opts.url);
  if (url.protocol !== 'http:') throw new LabError('EINVAL', `http-client speaks plain HTTP (and h2c) only, got ${opts.url}`);
  const concurrency = Math.max(1, opts.concurrency ?? 1);
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const deadline = opts.durationS === undefined ? Infinity : performance.now() + opts.durationS * 1000;
  const keep = opts.replies ?? 0;
  const transport = opts.http2 ? new H2Transport(url, timeoutMs) : new H1Transport(url, concurrency, timeoutMs);

  const summary: HttpClientSummary = {
    sent: 0, ok: 0, failed: 0, statusCounts: {}, names: {}, nameStatus: {}, backendProtocols: {}, p50_ms: null, p99_ms: null, max_ms: null,
  };
  const replies: HttpReply[] = [];
  const latencies: number[] = [];
  const bump = (m: Record<string, number>, k: string): void => void (m[k] = (m[k] ?? 0) + 1);

  const record = (i: number, o: Outcome): void => {
    if ('error' in o) {
      bump(summary.statusCounts, o.error);
      summary.failed++;
      if (i < keep) replies.push({ i, status: o.error, ms: round(o.ms), headers: {}, body: null });
      return;
    }
    latencies.push(o.ms);
    bump(summary.statusCounts, String(o.status));
    if (o.status < 400) summary.ok++;
    else summary.failed++;
    const body = parseBody(o.body);
    const fromBody = typeof body === 'object' && body !== null ? (body as { name?: unknown; protocol?: unknown }) : {};
    const header = o.headers[ECHO_NAME_HEADER];
    const name = typeof fromBody.name === 'string' ? fromBody.name : typeof header === 'string' ? header : undefined;
    if (name !== undefined) {
      bump(summary.names, name);
      bump(summary.nameStatus, `${name} ${o.status}`);
    }
    if (typeof fromBody.protocol === 'string') bump(summary.backendProtocols, fromBody.protocol);
    if (i < keep) replies.push({ i, status: o.status, ms: round(o.ms), headers: o.headers, body });
  };

  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < opts.count && performance.now() < deadline) {
      const i = next++;
      summary.sent++;
      record(i, await transport.send(requestFor(opts, url, i)));
      if (opts.intervalMs) await new Promise((resolve) => setTimeout(resolve, opts.intervalMs));
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    transport.close();
  }
  latencies.sort((a, b) => a - b);
  summary.p50_ms = percentile(latencies, 0.5);
  summary.p99_ms = percentile(latencies, 0.99);
  summary.max_ms = latencies.length ? round(latencies.at(-1)!) : null;
  if (transport instanceof H2Transport) summary.refused_retried = transport.retried;
  if (keep > 0) summary.replies = replies.sort((a, b) => a.i - b.i);
  return summary;
}

interface Request {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: Buffer;
  chunked: boolean;
}

function requestFor(opts: HttpClientOptions, url: URL, i: number): Request {
  const spec = opts.requests?.length ? opts.requests[i % opts.requests.length]! : {};
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...opts.headers, ...spec.headers })) headers[k.toLowerCase()] = v;
  if (opts.requestIdPrefix !== undefined) headers['x-request-id'] = `${opts.requestIdPrefix}${i}`;
  const body = spec.body ?? opts.body;
  return {
    method: (spec.method ?? opts.method ?? 'GET').toUpperCase(),
    path: spec.path ?? `${url.pathname}${url.search}`,
    headers,
    ...(body !== undefined && { body: Buffer.from(body) }),
    chunked: opts.chunked ?? false,
  };
}

interface Transport {
  send(r: Request): Promise<Outcome>;
  close(): void;
}

class H1Transport implements Transport {
  private readonly agent: http.Agent;

  constructor(
    private readonly url: URL,
    concurrency: number,
    private readonly timeoutMs: number,
  ) {
    this.agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  }

  send(r: Request): Promise<Outcome> {
    const started = performance.now();
    return new Promise((resolve) => {
      let settled = false;
      const settle = (o: Outcome): void => {
        if (settled) return;
        settled = true;
        resolve(o);
      };
      const fail = (err: unknown): void => settle({ error: codeOf(err), ms: performance.now() - started });
      const headers: Record<string, string> = { ...r.headers };
      if (r.chunked) headers['transfer-encoding'] = 'chunked';
      const req = http.request(
        { host: this.url.hostname, port: this.url.port || 80, method: r.method, path: r.path, headers, agent: this.agent },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () =>
            settle({ status: res.statusCode ?? 0, ms: performance.now() - started, headers: flatHeaders(res.headers), body: Buffer.concat(chunks) }),
          );
          res.on('error', fail);
          res.on('close', () => {
            if (!res.complete) fail(new LabError('ECONNRESET', 'response cut short'));
          });
        },
      );
      req.setTimeout(this.timeoutMs, () => req.destroy(new LabError('ETIMEDOUT', `no response within ${this.timeoutMs} ms`)));
      req.on('error', fail);
      const writeBody = (): void => {
        if (!r.body) {
          req.end();
        } else if (r.chunked) {
          const half = Math.ceil(r.body.length / 2);
          req.write(r.body.subarray(0, half));
          req.end(r.body.subarray(half));
        } else {
          req.end(r.body);
        }
      };
      // With Expect: 100-continue the body waits for the server's (or the mesh's) go-ahead.
      if (/100-continue/i.test(r.headers.expect ?? '') && r.body) req.once('continue', writeBody);
      else writeBody();
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/** Outcomes of a stream the server never processed: safe to send again. */
const REFUSED = new Set(['ERR_HTTP2_STREAM_ERROR NGHTTP2_REFUSED_STREAM', 'ERR_HTTP2_GOAWAY_SESSION']);

class H2Transport implements Transport {
  private session: http2.ClientHttp2Session | undefined;

  constructor(
    private readonly url: URL,
    private readonly timeoutMs: number,
  ) {}

  /** The session, reconnected when the last one went away (GOAWAY, reset). */
  private current(): http2.ClientHttp2Session {
    if (!this.session || this.session.closed || this.session.destroyed) {
      const s = http2.connect(this.url.origin);
      s.on('error', () => {});
      this.session = s;
    }
    return this.session;
  }

  /** Streams refused unprocessed and sent again (the count stays on the transport for the summary). */
  retried = 0;

  /**
   * Sends, and sends again once on a new session when the server refused the stream unprocessed (REFUSED_STREAM, or
   * a GOAWAY that crossed the request), as HTTP/2 clients such as gRPC's and Go's do (RFC 9113 section 8.7).
   */
  async send(r: Request): Promise<Outcome> {
    const first = await this.attempt(r);
    if (!('error' in first) || !REFUSED.has(first.error)) return first;
    this.retried++;
    const again = await this.attempt(r);
    return 'error' in again ? again : { ...again, ms: again.ms + first.ms };
  }

  private attempt(r: Request): Promise<Outcome> {
    const started = performance.now();
    return new Promise((resolve) => {
      let settled = false;
      const settle = (o: Outcome): void => {
        if (settled) return;
        settled = true;
        resolve(o);
      };
      const fail = (err: unknown): void => settle({ error: codeOf(err), ms: performance.now() - started });
      const headers: http2.OutgoingHttpHeaders = { ':method': r.method, ':path': r.path };
      for (const [k, v] of Object.entries(r.headers)) {
        if (k === 'host') headers[':authority'] = v;
        else if (!CONNECTION_HEADERS.has(k)) headers[k] = v;
      }
      let stream: http2.ClientHttp2Stream;
      try {
        stream = this.current().request(headers, { endStream: !r.body });
      } catch (err) {
        fail(err);
        return;
      }
      const chunks: Buffer[] = [];
      let status = 0;
      let got: Record<string, string | string[]> = {};
      stream.on('response', (h) => {
        status = Number(h[':status']);
        got = flatHeaders(h);
      });
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => settle({ status, ms: performance.now() - started, headers: got, body: Buffer.concat(chunks) }));
      stream.on('error', fail);
      stream.on('close', () => {
        if (status === 0) fail(new LabError('ECONNRESET', `stream closed without a response (RST_STREAM code ${stream.rstCode ?? 0})`));
      });
      stream.setTimeout(this.timeoutMs, () => {
        fail(new LabError('ETIMEDOUT', `no response within ${this.timeoutMs} ms`));
        stream.close(http2.constants.NGHTTP2_CANCEL);
      });
      if (r.body) {
        const half = Math.ceil(r.body.length / 2);
        stream.write(r.body.subarray(0, half));
        stream.end(r.body.subarray(half));
      }
    });
  }

  close(): void {
    this.session?.close();
  }
}

function flatHeaders(h: http.IncomingHttpHeaders | http2.IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(h)) {
    if (v === undefined || k.startsWith(':')) continue;
    out[k] = typeof v === 'number' ? String(v) : v;
  }
  return out;
}

function parseBody(body: Buffer): unknown {
  const text = body.subarray(0, MAX_BODY_TEXT).toString('utf8');
  if (body.length <= MAX_BODY_TEXT) {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      // Not JSON: the text is the body.
    }
  }
  return text;
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

function percentile(sorted: number[], q: number): number | null {
  if (sorted.length === 0) return null;
  return round(sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? 0);
}
