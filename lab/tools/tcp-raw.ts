// Workload tools: raw bytes over TCP, for what a well-behaved client would never send (malformed HTTP,
// request smuggling, oversized headers) and for server-first protocols: it reports what came back and when.
import net from 'node:net';
import { LabError } from '../errors.js';
import { formatTarget, type Target } from './target.js';
import { codeOf } from './wait.js';

export interface TcpRawOptions extends Target {
  /** Written in one go right after connecting (nothing when absent). */
  data?: Buffer;
  /** Half-close after writing. */
  halfClose?: boolean;
  /** Stop reading once nothing more arrived for this long after the last byte (or after connecting); default 1 s. */
  idleMs?: number;
  /** The whole exchange; default 5 s. */
  timeoutMs?: number;
  /** Keep at most this many received bytes; default 64 KiB. */
  maxBytes?: number;
}

export interface TcpRawReport {
  connected: boolean;
  sent: number;
  /** Received bytes as latin1 text (one char per byte), at most maxBytes of them. */
  received: string;
  receivedBytes: number;
  connect_ms: number | null;
  /** From connected to the first byte received; null when nothing came. */
  first_byte_ms: number | null;
  /** How reading stopped: the server ended ('eof'), reset ('reset'), went quiet ('idle'), or time ran out. */
  end: 'eof' | 'reset' | 'idle' | 'timeout' | 'error';
  /** The HTTP status in the first line received, when it is an HTTP response. */
  httpStatus: number | null;
  error?: string;
}

export function tcpRaw(opts: TcpRawOptions): Promise<TcpRawReport> {
  const idleMs = opts.idleMs ?? 1000;
  const timeoutMs = opts.timeoutMs ?? 5000;
  const maxBytes = opts.maxBytes ?? 64 * 1024;
  const started = performance.now();
  const report: TcpRawReport = {
    connected: false, sent: 0, received: '', receivedBytes: 0, connect_ms: null, first_byte_ms: null, end: 'timeout', httpStatus: null,
  };
  const chunks: Buffer[] = [];
  let kept = 0;
  let connectedAt = 0;

  return new Promise((resolve) => {
    const socket = net.connect({ host: opts.host, port: opts.port, allowHalfOpen: true, noDelay: true });
    let idle: NodeJS.Timeout | undefined;
    let settled = false;
    const finish = (end: TcpRawReport['end'], err?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(overall);
      clearTimeout(idle);
      socket.destroy();
      report.end = end;
      if (err !== undefined) report.error = `${codeOf(err)}: ${(err as Error).message ?? String(err)}`;
      report.received = Buffer.concat(chunks).toString('latin1');
      const m = /^HTTP\/\d(?:\.\d)? (\d{3})/.exec(report.received);
      report.httpStatus = m ? Number(m[1]) : null;
      resolve(report);
    };
    const overall = setTimeout(() => finish('timeout'), timeoutMs);
    const armIdle = (): void => {
      clearTimeout(idle);
      idle = setTimeout(() => finish('idle'), idleMs);
    };
    socket.on('connect', () => {
      connectedAt = performance.now();
      report.connected = true;
      report.connect_ms = round(connectedAt - started);
      armIdle();
      if (opts.data && opts.data.length > 0) {
        // A server that answers early and closes may make the rest of this write fail: what it answered counts.
        socket.write(opts.data, (err) => {
          if (!err) report.sent = opts.data!.length;
        });
      }
      if (opts.halfClose) socket.end();
    });
    socket.on('data', (c: Buffer) => {
      if (report.first_byte_ms === null) report.first_byte_ms = round(performance.now() - connectedAt);
      report.receivedBytes += c.length;
      if (kept < maxBytes) {
        const part = c.subarray(0, maxBytes - kept);
        chunks.push(part);
        kept += part.length;
      }
      armIdle();
    });
    socket.on('end', () => finish('eof'));
    socket.on('error', (err) => {
      const code = codeOf(err);
      if (!report.connected) finish('error', err);
      else if (code === 'ECONNRESET' || code === 'EPIPE') finish('reset');
      else finish('error', err);
    });
    socket.on('close', () => finish(report.connected ? 'eof' : 'error', report.connected ? undefined : new LabError('ECLOSED', `${formatTarget(opts)}: closed before connecting`)));
  });
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
