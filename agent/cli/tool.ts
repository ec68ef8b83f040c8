// `trellis tool <name>`: the small workloads lab pods run as their container command (servers and
// clients for the demo and end-to-end tests). Flags are parsed here; the tools live in agent/tools/.
import { type Command, InvalidArgumentError } from 'commander';
import { hostname } from 'node:os';
import { wrapError } from '../errors.js';
import { startBanner } from '../tools/banner.js';
import { startHttpEcho } from '../tools/http-echo.js';
import { httpLoad } from '../tools/http-load.js';
import type { ToolServer } from '../tools/server.js';
import { parseTarget, type Target } from '../tools/target.js';
import { tcpConnect } from '../tools/tcp-connect.js';
import { startTcpEcho } from '../tools/tcp-echo.js';
import { tcpSend } from '../tools/tcp-send.js';
import { startTcpSink } from '../tools/tcp-sink.js';

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
    .action(async (o: { to: Target; bytes: number; chunk: number; seed: string; idleTimeoutMs: number }) => {
      const { to, ...rest } = o;
      const outcome = await tcpSend({ ...to, ...rest });
      if (outcome.exitCode === 2) process.stderr.write(`${outcome.error.message}\n`);
      else process.stdout.write(`${JSON.stringify(outcome.report)}\n`);
      process.exitCode = outcome.exitCode;
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
    .action((o: { port: number; host: string; name?: string }) => {
      const name = o.name ?? process.env.POD_NAME ?? hostname();
      return runUntilSignal('http-echo', startHttpEcho({ ...o, name, log }));
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
}
