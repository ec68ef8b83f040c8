// Workload tools: many idle keep-alive connections held open through a path, so a proxy's memory per idle
// connection can be read. Each connection carries one request first, so the whole path is set up.
import net from 'node:net';
import { ResponseParser } from '../load/http-response.js';
import { LabError } from '../errors.js';
import { parseHttpUrl, requestBytes, type HttpTarget } from './http-url.js';
import { codeOf } from './wait.js';

export interface ConnHoldOptions {
  url: string;
  count: number;
  /** Longest hold, in seconds, after all connections are open; `release` ends it sooner. */
  holdS: number;
  /** Connections being opened at once; default 50. */
  parallel?: number;
  /** Per connection, to open it and get its answer; default 10 s. */
  timeoutMs?: number;
}

export interface ConnHoldReport {
  /** Connections that got their answer and were held. */
  open: number;
  failed: number;
  error_counts: Record<string, number>;
  /** Of the open ones, how many the other side closed while they were held. */
  closed_while_held: number;
}

export const MAX_HELD = 20_000;

/**
 * Opens the connections, calls `ready` once every one is open (or failed), holds them until `release`
 * resolves or holdS passes, then closes them all.
 */
export async function connHold(
  opts: ConnHoldOptions,
  ready: (r: ConnHoldReport) => void,
  release: Promise<void>,
): Promise<ConnHoldReport> {
  if (!(Number.isInteger(opts.count) && opts.count >= 1 && opts.count <= MAX_HELD)) throw new LabError('EINVAL', `count must be 1 to ${MAX_HELD}`);
  if (!(opts.holdS > 0 && opts.holdS <= 3600)) throw new LabError('EINVAL', 'hold must be above 0 and at most 3600 s');
  const target = parseHttpUrl(opts.url);
  const request = requestBytes(target);
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const parallel = Math.max(1, Math.min(opts.parallel ?? 50, opts.count));
  const held: { socket: net.Socket; closed: boolean }[] = [];
  const report: ConnHoldReport = { open: 0, failed: 0, error_counts: {}, closed_while_held: 0 };
  let next = 0;
  const opener = async (): Promise<void> => {
    while (next < opts.count) {
      next++;
      const r = await openOne(target, request, timeoutMs);
      if ('socket' in r) {
        const entry = { socket: r.socket, closed: false };
        r.socket.on('close', () => (entry.closed = true));
        held.push(entry);
        report.open++;
      } else {
        report.failed++;
        report.error_counts[r.code] = (report.error_counts[r.code] ?? 0) + 1;
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: parallel }, opener));
    ready({ ...report });
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([release, new Promise<void>((res) => (timer = setTimeout(res, opts.holdS * 1000)))]);
    clearTimeout(timer);
    report.closed_while_held = held.filter((h) => h.closed).length;
    return report;
  } finally {
    for (const h of held) h.socket.destroy();
  }
}

/** One connection with its first request answered, or why it could not be had. */
function openOne(target: HttpTarget, request: Buffer, timeoutMs: number): Promise<{ socket: net.Socket } | { code: string }> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: target.host, port: target.port, noDelay: true });
    let settled = false;
    const settle = (r: { socket: net.Socket } | { code: string }): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if ('code' in r) socket.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => settle({ code: 'ETIMEDOUT' }), timeoutMs);
    const parser = new ResponseParser((r) => settle(r.status < 400 && !r.close ? { socket } : { code: r.close ? 'ECLOSED' : String(r.status) }));
    socket.on('connect', () => socket.write(request));
    socket.on('data', (chunk: Buffer) => {
      try {
        parser.feed(chunk);
      } catch (err) {
        socket.destroy(err as Error);
      }
    });
    socket.on('error', (err) => settle({ code: codeOf(err) }));
    socket.on('close', () => settle({ code: 'ECLOSED' }));
  });
}
