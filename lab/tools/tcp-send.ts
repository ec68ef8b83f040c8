// Workload tools: the sending end of a bulk transfer to tcp-sink; the digest it gets back proves integrity
// through the mesh, and the timing gives throughput.
import { createHash } from 'node:crypto';
import net from 'node:net';
import { TrellisError, wrapError } from '../../agent/errors.js';
import { LabError } from '../errors.js';
import { SeededBytes } from './payload.js';
import { formatTarget, type Target } from './target.js';
import { waitFor } from './wait.js';

export interface TcpSendOptions extends Target {
  bytes: number;
  /** Bytes generated and written per step; defaults to 64 KiB. */
  chunk?: number;
  /** Fixes the payload; the same seed always sends the same bytes. */
  seed?: string;
  /** Gives up when nothing moves for this long; defaults to 30 s. */
  idleTimeoutMs?: number;
  /** Paces the sending to at most this many bytes per second (a long-lived stream); unpaced when absent. */
  bytesPerSecond?: number;
}

export interface TcpSendReport {
  sent: number;
  sha256: string;
  reply: string;
  match: boolean;
  seconds: number;
  mbps: number;
}

/** exitCode 0: the sink saw exactly what was sent; 1: it did not; 2: the connection failed. */
export type TcpSendOutcome = { exitCode: 0 | 1; report: TcpSendReport } | { exitCode: 2; error: TrellisError };

export async function tcpSend(opts: TcpSendOptions): Promise<TcpSendOutcome> {
  const chunk = opts.chunk ?? 64 * 1024;
  const payload = new SeededBytes(opts.seed ?? 'trellis', chunk);
  const hash = createHash('sha256');
  const where = formatTarget(opts);
  const started = performance.now();
  const socket = net.connect({ host: opts.host, port: opts.port });
  // Kept for the whole run: an error between two waits must not become an uncaught exception.
  socket.on('error', () => {});
  const idleTimeoutMs = opts.idleTimeoutMs ?? 30_000;
  socket.setTimeout(idleTimeoutMs, () => {
    socket.destroy(new LabError('ETIMEDOUT', `no progress for ${idleTimeoutMs} ms`));
  });
  const replyChunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => replyChunks.push(c));

  let sent = 0;
  try {
    await waitFor(socket, 'connect', 'connecting');
    while (sent < opts.bytes) {
      const bytes = payload.next(Math.min(chunk, opts.bytes - sent));
      hash.update(bytes);
      sent += bytes.length;
      if (!socket.write(bytes)) await waitFor(socket, 'drain', `sending (${sent} bytes written)`);
      if (opts.bytesPerSecond) {
        const due = started + (sent / opts.bytesPerSecond) * 1000;
        const wait = due - performance.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      }
    }
    socket.end();
    await waitFor(socket, 'end', 'waiting for the reply');
  } catch (err) {
    socket.destroy();
    return { exitCode: 2, error: wrapError(`tcp-send to ${where}`, err) };
  }
  socket.destroy();

  const seconds = (performance.now() - started) / 1000;
  const sha256 = hash.digest('hex');
  const reply = Buffer.concat(replyChunks).toString('utf8').trim();
  const m = /^sha256=([0-9a-f]{64}) bytes=(\d+)$/.exec(reply);
  const match = m?.[1] === sha256 && Number(m[2]) === sent;
  const mbps = seconds > 0 ? Math.round(((sent * 8) / 1e6 / seconds) * 100) / 100 : 0;
  return {
    exitCode: match ? 0 : 1,
    report: { sent, sha256, reply, match, seconds: Math.round(seconds * 1000) / 1000, mbps },
  };
}
