// `trellis tool <name>`: the small workloads lab pods run as their container command (servers and
// clients for the demo and end-to-end tests). Flags are parsed here; the tools live in lab/tools/.
import { type Command, InvalidArgumentError } from 'commander';
import { hostname } from 'node:os';
import { wrapError } from '../../agent/errors.js';
import { startBanner } from '../tools/banner.js';
import { grpcClient } from '../tools/grpc-client.js';
import { DEFAULT_GRPC_METHOD, startGrpcEcho } from '../tools/grpc-echo.js';
import { httpClient, type HttpRequestSpec } from '../tools/http-client.js';
import { startL7Echo } from '../tools/l7-echo.js';
import { tcpRaw } from '../tools/tcp-raw.js';
import { wsClient } from '../tools/ws-client.js';
import { bulkSend } from '../tools/bulk-send.js';
import { connHold } from '../tools/conn-hold.js';
import { connRate } from '../tools/conn-rate.js';
import { httpBench } from '../tools/http-bench.js';
import { startHttpEcho } from '../tools/http-echo.js';
import { httpLoad } from '../tools/http-load.js';
import type { ToolServer } from '../tools/server.js';
import { parseTarget, type Target } from '../tools/target.js';
import { tcpConnect } from '../tools/tcp-connect.js';
import { startTcpEcho } from '../tools/tcp-echo.js';
import { tcpSend } from '../tools/tcp-send.js';
import { startTcpSink } from '../tools/tcp-sink.js';
import { waitHttp } from '../tools/wait-http.js';

function integer(min: number, max: number): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`expected an integer from ${min} to ${max}`);
    }
    return n;
  };
}

const port = integer(0, 65535);
const positive = integer(1, Number.MAX_SAFE_INTEGER);

/** A byte count, optionally with k, m or g (KiB, MiB, GiB). */
function byteCount(value: string): number {
  const m = /^(\d+)([kmg]?)i?b?$/i.exec(value.trim());
  const scale = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m?.[2] ?? '').toLowerCase()];
  const n = Number(m?.[1]) * (scale ?? NaN);
  if (!m || !Number.isSafeInteger(n)) throw new InvalidArgumentError('expected a byte count such as 1048576 or 5m');
  return n;
}

function target(value: string): Target {
  try {
    return parseTarget(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

function seconds(value: string): number {
  const n = Number(value);
  if (!(n > 0)) throw new InvalidArgumentError('expected a positive number of seconds');
  return n;
}

function nonNegative(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !(n >= 0) || !Number.isFinite(n)) throw new InvalidArgumentError('expected a number, 0 or more');
  return n;
}

const json = (value: unknown): void => void process.stdout.write(`${JSON.stringify(value)}\n`);

/** Collects a repeatable "Name: value" option into a header map (lowercase names). */
function header(value: string, previous: Record<string, string> = {}): Record<string, string> {
  const colon = value.indexOf(':');
  const name = value.slice(0, colon).trim().toLowerCase();
  if (colon <= 0 || !/^[!#$%&'*+\-.^_`|~0-9a-z]+$/.test(name)) {
    throw new InvalidArgumentError('expected "Name: value", e.g. "x-echo-status: 503"');
  }
  return { ...previous, [name]: value.slice(colon + 1).trim() };
}

function requestList(value: string): HttpRequestSpec[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    throw new InvalidArgumentError('expected a JSON list such as \'[{"path": "/v2", "headers": {"version": "two"}}]\'');
  }
  if (!Array.isArray(parsed) || parsed.some((r) => typeof r !== 'object' || r === null || Array.isArray(r))) {
    throw new InvalidArgumentError('expected a JSON list of objects with method, path, headers, body');
  }
  return parsed as HttpRequestSpec[];
}

function base64(value: string): Buffer {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(value)) throw new InvalidArgumentError('expected base64');
  return Buffer.from(value, 'base64');
}

/** Keeps a tool server up until SIGTERM/SIGINT, then closes it and exits 0. */
async function runUntilSignal(name: string, start: Promise<ToolServer>): Promise<void> {
  let server: ToolServer;
  try {
    server = await start;
  } catch (err) {
    throw wrapError(name, err);
  }
  const stop = (): void => {
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

const log = (line: string): void => console.log(line);

export function registerToolCommands(program: Command): void {
  const tool = program
    .command('tool')
    .description('small workloads for lab pods: TCP and HTTP servers and clients used by the demo and e2e tests');

  tool
    .command('tcp-sink')
    .description('per connection: read until the client half-closes, reply "sha256=<hex> bytes=<n>", end')
    .requiredOption('--port <port>', 'listen port', port)
    .option('--host <addr>', 'listen address', '0.0.0.0')
    .action((o: { port: number; host: string }) => runUntilSignal('tcp-sink', startTcpSink({ ...o, log })));

  tool
    .command('tcp-send')
    .description(
      'send N seeded pseudo-random bytes, half-close, check the tcp-sink reply; prints JSON. ' +
        'Exit 0 on a match, 1 on a mismatch, 2 when the connection fails',
    )
    .requiredOption('--to <host:port>', 'tcp-sink address', target)
    .requiredOption('--bytes <n>', 'how many bytes (k, m, g suffixes for KiB, MiB, GiB)', byteCount)
    .option('--chunk <n>', 'bytes generated and written per step', byteCount, 65536)
    .option('--seed <s>', 'payload seed; the same seed sends the same bytes', 'trellis')
    .option('--idle-timeout-ms <ms>', 'give up when nothing moves for this long', positive, 30_000)
    .option('--bytes-per-s <n>', 'pace the sending to at most N bytes a second (k, m, g suffixes): a long-lived stream', byteCount)
    .option('--streams <n>', 'this many connections at once, each sending the same (one line each; the exit code is the worst)', positive, 1)
    .action(async (o: { to: Target; bytes: number; chunk: number; seed: string; idleTimeoutMs: number; bytesPerS?: number; streams: number }) => {
      const { to, bytesPerS, streams, ...rest } = o;
      const outcomes = await Promise.all(
        Array.from({ length: streams }, () => tcpSend({ ...to, ...rest, ...(bytesPerS && { bytesPerSecond: bytesPerS }) })),
      );
      for (const outcome of outcomes) {
        if (outcome.exitCode === 2) process.stderr.write(`${outcome.error.message}\n`);
        else process.stdout.write(`${JSON.stringify(outcome.report)}\n`);
      }
      process.exitCode = Math.max(...outcomes.map((x) => x.exitCode));
    });

  tool
    .command('tcp-echo')
    .description('echo bytes; when the client half-closes, end after echoing')
    .requiredOption('--port <port>', 'listen port', port)
    .option('--host <addr>', 'listen address', '0.0.0.0')
    .action((o: { port: number; host: string }) => runUntilSignal('tcp-echo', startTcpEcho({ ...o, log })));

  tool
    .command('banner')
    .description('server speaks first: write the banner line on connect, then echo')
    .requiredOption('--port <port>', 'listen port', port)
    .option('--host <addr>', 'listen address', '0.0.0.0')
    .option('--text <text>', 'banner line (sent with CRLF)', '220 trellis-banner ready')
    .action((o: { port: number; host: string; text: string }) => runUntilSignal('banner', startBanner({ ...o, log })));

  tool
    .command('http-echo')
    .description('HTTP/1.1 server answering every request 200 with JSON {name, method, url, headers}')
    .requiredOption('--port <port>', 'listen port', port)
    .option('--host <addr>', 'listen address', '0.0.0.0')
    .option('--name <name>', 'name in replies (default: $POD_NAME, else the hostname)')
    .option('--body-bytes <n>', 'answer with this many bytes instead of the JSON (k, m suffixes)', byteCount)
    .option('--h2c', 'speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1')
    .action((o: { port: number; host: string; name?: string; bodyBytes?: number; h2c?: boolean }) => {
      const name = o.name ?? process.env.POD_NAME ?? hostname();
      return runUntilSignal('http-echo', startHttpEcho({ ...o, name, log }));
    });

  tool
    .command('l7-echo')
    .description(
      'HTTP/1.1, h2c (prior knowledge) and WebSocket on one port, answering JSON {name, method, path, query, host, ' +
        'headers, protocol, bodyLength, n}. Request headers x-echo-status: NNN and x-echo-delay-ms: N steer the answer',
    )
    .requiredOption('--port <port>', 'listen port', port)
    .option('--host <addr>', 'listen address', '0.0.0.0')
    .option('--name <name>', 'name in replies (default: $POD_NAME, else the hostname)')
    .option('--fail-every <n>', 'answer every Nth request 503', positive)
    .option('--log-requests', 'print one JSON line per request, protocol error and WebSocket')
    .action((o: { port: number; host: string; name?: string; failEvery?: number; logRequests?: boolean }) => {
      const name = o.name ?? process.env.POD_NAME ?? hostname();
      return runUntilSignal('l7-echo', startL7Echo({ ...o, name, log }));
    });

  tool
    .command('grpc-echo')
    .description(
      'gRPC over h2c: /trellis.test.Echo/Echo and /Hello answer JSON {name, method, metadata} with trailer ' +
        'x-echo-trailer: <name>; metadata x-echo-grpc-status: N fails the call with status N, x-echo-delay-ms: N delays it',
    )
    .requiredOption('--port <port>', 'listen port', port)
    .option('--host <addr>', 'listen address', '0.0.0.0')
    .option('--name <name>', 'name in replies (default: $POD_NAME, else the hostname)')
    .option('--log-requests', 'print one JSON line per call')
    .action((o: { port: number; host: string; name?: string; logRequests?: boolean }) => {
      const name = o.name ?? process.env.POD_NAME ?? hostname();
      return runUntilSignal('grpc-echo', startGrpcEcho({ ...o, name, log }));
    });

  tool
    .command('http-client')
    .description(
      'send N requests over C keep-alive connections (or one h2c session) and print one JSON summary: counts by ' +
        'status, by answering backend (l7-echo name) and, with --replies, the first replies whole. Exit 2 when none got a response',
    )
    .requiredOption('--url <url>', 'http:// URL')
    .option('--count <n>', 'requests to send', positive, 1)
    .option('--concurrency <c>', 'connections (HTTP/1.1) or streams in flight (h2c)', positive, 1)
    .option('--http2', 'HTTP/2 over cleartext with prior knowledge')
    .option('-X, --method <method>', 'request method', 'GET')
    .option('-H, --header <name: value>', 'request header (repeatable)', header, {})
    .option('--body <text>', 'request body')
    .option('--body-bytes <n>', 'request body of N bytes (k, m suffixes)', byteCount)
    .option('--chunked', 'HTTP/1.1: send the body chunked, without Content-Length')
    .option('--requests <json>', 'per-request method/path/headers/body, used in turn', requestList)
    .option('--replies <n>', 'keep the first N replies whole', integer(0, 10_000), 0)
    .option('--timeout-ms <ms>', 'per request', positive, 10_000)
    .option('--duration-s <s>', 'start no request after this many seconds', seconds)
    .option('--interval-ms <ms>', 'pause between an answer and the same worker\'s next request', integer(0, 3_600_000))
    .option('--request-id-prefix <p>', 'request i carries x-request-id: <p><i> (to find each one in access logs)')
    .action(
      async (o: {
        url: string;
        count: number;
        concurrency: number;
        http2?: boolean;
        method: string;
        header: Record<string, string>;
        body?: string;
        bodyBytes?: number;
        chunked?: boolean;
        requests?: HttpRequestSpec[];
        replies: number;
        timeoutMs: number;
        durationS?: number;
        intervalMs?: number;
        requestIdPrefix?: string;
      }) => {
        const { header: headers, bodyBytes, body, ...rest } = o;
        const summary = await httpClient({
          ...rest,
          headers,
          ...(body !== undefined ? { body } : bodyBytes !== undefined ? { body: 'x'.repeat(bodyBytes) } : {}),
        });
        json(summary);
        if (summary.sent > 0 && Object.keys(summary.statusCounts).every((k) => !/^\d+$/.test(k))) process.exitCode = 2;
      },
    );

  tool
    .command('grpc-client')
    .description(
      'N unary gRPC calls (h2c) with raw bytes; prints one JSON summary: counts by grpc-status, by answering backend, ' +
        'and the trailers seen. Exit 2 when no call got an answer from a server',
    )
    .requiredOption('--to <host:port>', 'server address', target)
    .option('--count <n>', 'calls', positive, 1)
    .option('--concurrency <c>', 'calls in flight', positive, 1)
    .option('--method <path>', '/package.Service/Method', DEFAULT_GRPC_METHOD)
    .option('-H, --metadata <name: value>', 'request metadata (repeatable)', header, {})
    .option('--body <text>', 'request message bytes')
    .option('--replies <n>', 'keep the first N calls whole', integer(0, 10_000), 0)
    .option('--timeout-ms <ms>', 'deadline per call', positive, 10_000)
    .action(
      async (o: { to: Target; count: number; concurrency: number; method: string; metadata: Record<string, string>; body?: string; replies: number; timeoutMs: number }) => {
        const { to, ...rest } = o;
        const summary = await grpcClient({ ...to, ...rest });
        json(summary);
        if (summary.sent > 0 && Object.keys(summary.names).length === 0 && summary.ok === 0) process.exitCode = 2;
      },
    );

  tool
    .command('ws-client')
    .description('WebSocket: send N messages (text and binary in turn), check each echo; prints JSON. Exit 0 when all came back')
    .requiredOption('--url <url>', 'ws:// URL')
    .option('--messages <n>', 'messages to send', positive, 10)
    .option('--size <n>', 'bytes per message', positive, 64)
    .option('--timeout-ms <ms>', 'the whole exchange', positive, 10_000)
    .action(async (o: { url: string; messages: number; size: number; timeoutMs: number }) => {
      const r = await wsClient(o);
      json(r);
      if (!(r.connected && r.echoed === o.messages)) process.exitCode = r.connected ? 1 : 2;
    });

  tool
    .command('tcp-raw')
    .description(
      'connect, write the given bytes as they are, print one JSON line with what came back (latin1), when the first ' +
        'byte came and how the exchange ended. Exit 2 when the connection failed',
    )
    .requiredOption('--to <host:port>', 'address to connect to', target)
    .option('--send <text>', 'text to send (\\r and \\n are CR and LF)')
    .option('--send-b64 <base64>', 'bytes to send, base64', base64)
    .option('--half-close', 'half-close after sending')
    .option('--idle-ms <ms>', 'stop once nothing came for this long', positive, 1000)
    .option('--timeout-ms <ms>', 'the whole exchange', positive, 5000)
    .action(async (o: { to: Target; send?: string; sendB64?: Buffer; halfClose?: boolean; idleMs: number; timeoutMs: number }) => {
      const data = o.sendB64 ?? (o.send === undefined ? undefined : Buffer.from(o.send.replaceAll('\\r', '\r').replaceAll('\\n', '\n'), 'latin1'));
      const r = await tcpRaw({ ...o.to, ...(data && { data }), halfClose: o.halfClose ?? false, idleMs: o.idleMs, timeoutMs: o.timeoutMs });
      json(r);
      if (!r.connected) process.exitCode = 2;
    });

  tool
    .command('http-load')
    .description(
      'send at most N GET requests over C keep-alive connections; prints a JSON summary. ' +
        'Exit 0 when it ran, 2 when no request succeeded',
    )
    .requiredOption('--url <url>', 'http:// URL')
    .requiredOption('--count <n>', 'most requests to send', positive)
    .option('--concurrency <c>', 'keep-alive connections', positive, 1)
    .option('--duration-s <s>', 'start no request after this many seconds', seconds)
    .option('--interval-ms <ms>', 'pause between requests on one connection', integer(0, 3_600_000))
    .option('--timeout-ms <ms>', 'per request', positive, 10_000)
    .action(
      async (o: {
        url: string;
        count: number;
        concurrency: number;
        durationS?: number;
        intervalMs?: number;
        timeoutMs: number;
      }) => {
        const outcome = await httpLoad(o);
        process.stdout.write(`${JSON.stringify(outcome.summary)}\n`);
        if (outcome.exitCode === 2) process.stderr.write(`http-load: no request to ${o.url} succeeded\n`);
        process.exitCode = outcome.exitCode;
      },
    );

  tool
    .command('tcp-connect')
    .description(
      'connect, send TEXT (if given) and half-close, print what comes back. ' +
        'Exit 0 on an orderly end, 3 refused/reset, 4 timeout, 2 other failures',
    )
    .requiredOption('--to <host:port>', 'address to connect to', target)
    .option('--timeout-ms <ms>', 'limit for the connect and the whole exchange', positive, 5000)
    .option('--send <text>', 'text to send before half-closing')
    .action(async (o: { to: Target; timeoutMs: number; send?: string }) => {
      const outcome = await tcpConnect({ ...o.to, timeoutMs: o.timeoutMs, send: o.send });
      const received = outcome.received;
      process.stdout.write(received && !received.endsWith('\n') ? `${received}\n` : received);
      if (outcome.code) {
        // The code goes to stdout on its own line so scripts can match it; the detail goes to stderr.
        process.stdout.write(`${outcome.code}\n`);
        process.stderr.write(`tcp-connect: ${outcome.message ?? outcome.code}\n`);
      }
      process.exitCode = outcome.exitCode;
    });

  tool
    .command('http-bench')
    .description(
      'HTTP/1.1 load at a fixed rate over C keep-alive connections (open loop: latency counts from when each ' +
        'request was due); --rate 0 runs closed loop for the most req/s. Prints a JSON report',
    )
    .requiredOption('--url <url>', 'http:// URL')
    .requiredOption('--rate <r>', 'requests per second; 0 for closed loop', nonNegative)
    .requiredOption('--duration-s <s>', 'measured seconds', seconds)
    .option('--connections <c>', 'keep-alive connections', positive, 16)
    .option('--warmup-s <s>', 'seconds at the same load before measuring', nonNegative, 0)
    .option('--timeout-ms <ms>', 'per request', positive, 10_000)
    .action(async (o: { url: string; rate: number; durationS: number; connections: number; warmupS: number; timeoutMs: number }) => {
      json(await httpBench(o));
    });

  tool
    .command('bulk-send')
    .description('bulk throughput: N parallel HTTP POSTs streaming a chunked body for the duration; prints JSON with gbps')
    .requiredOption('--url <url>', 'http:// URL of a server that reads the body, then answers (http-echo)')
    .requiredOption('--duration-s <s>', 'seconds to stream', seconds)
    .option('--streams <n>', 'parallel connections', positive, 1)
    .option('--chunk <n>', 'body bytes per chunk (k, m suffixes)', byteCount, 65536)
    .action(async (o: { url: string; durationS: number; streams: number; chunk: number }) => {
      const r = await bulkSend({ url: o.url, durationS: o.durationS, streams: o.streams, chunkBytes: o.chunk });
      json(r);
      if (r.ok_streams === 0) process.exitCode = 2;
    });

  tool
    .command('conn-rate')
    .description('new connections per second: connect, one request (Connection: close), close; repeated for the duration')
    .requiredOption('--url <url>', 'http:// URL')
    .requiredOption('--duration-s <s>', 'seconds', seconds)
    .option('--concurrency <c>', 'connections in progress at once', positive, 8)
    .option('--timeout-ms <ms>', 'per connection', positive, 5000)
    .action(async (o: { url: string; durationS: number; concurrency: number; timeoutMs: number }) => {
      const r = await connRate(o);
      json(r);
      if (r.ok === 0) process.exitCode = 2;
    });

  tool
    .command('conn-hold')
    .description(
      'open N keep-alive connections (one request each), print {"event":"ready",...}, hold them until stdin ' +
        'closes or --hold-s passes, then close them and print a JSON report',
    )
    .requiredOption('--url <url>', 'http:// URL')
    .requiredOption('--count <n>', 'connections', positive)
    .option('--hold-s <s>', 'longest hold after all are open', seconds, 60)
    .option('--parallel <n>', 'connections being opened at once', positive, 50)
    .action(async (o: { url: string; count: number; holdS: number; parallel: number }) => {
      process.stdin.resume();
      const release = new Promise<void>((resolve) => {
        process.stdin.once('end', resolve);
        process.stdin.once('close', resolve);
      });
      const r = await connHold(o, (ready) => json({ event: 'ready', ...ready }), release);
      json(r);
      process.stdin.pause();
      if (r.open === 0) process.exitCode = 2;
    });

  tool
    .command('wait-http')
    .description(
      'poll a URL (fresh connection per try) until it answers below 400, or with --until fail until it does not; ' +
        'prints {"event":"polling"} after the first try, then JSON with at_ms (wall clock). Exit 1 on timeout',
    )
    .requiredOption('--url <url>', 'http:// URL')
    .option('--timeout-s <s>', 'give up after', seconds, 60)
    .option('--interval-ms <ms>', 'pause between tries', integer(0, 60_000), 20)
    .option('--until <what>', 'ok | fail', 'ok')
    .action(async (o: { url: string; timeoutS: number; intervalMs: number; until: string }) => {
      if (o.until !== 'ok' && o.until !== 'fail') throw new InvalidArgumentError('--until takes ok or fail');
      const r = await waitHttp({ ...o, until: o.until }, (first) => json({ event: 'polling', first }));
      json(r);
      if (!r.met) process.exitCode = 1;
    });
}
