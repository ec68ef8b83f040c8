// Workload tools: bulk throughput through a path. Each stream is one HTTP/1.1 POST whose chunked body
// streams for the duration; the server answers once it has read it all, so every byte counted arrived.
import net from 'node:net';
import { ResponseParser } from '../load/http-response.js';
import { LabError } from '../errors.js';
import { parseHttpUrl, requestBytes, type HttpTarget } from './http-url.js';
import { codeOf, waitFor } from './wait.js';

export interface BulkSendOptions {
  url: string;
  streams: number;
  durationS: number;
  /** Body bytes per chunk; default 64 KiB. */
  chunkBytes?: number;
  /** Give up on a stream when nothing moves for this long; default 30 s. */
  idleTimeoutMs?: number;
}

export interface BulkSendReport {
  streams: number;
  ok_streams: number;
  /** Body bytes the server confirmed it read (streams that got their answer). */
  bytes: number;
  /** From the first connect to the last answer. */
  seconds: number;
  gbps: number;
  error_counts: Record<string, number>;
}

export async function bulkSend(opts: BulkSendOptions): Promise<BulkSendReport> {
  if (!(Number.isInteger(opts.streams) && opts.streams >= 1 && opts.streams <= 256)) throw new LabError('EINVAL', 'streams must be 1 to 256');
  if (!(opts.durationS > 0 && opts.durationS <= 3600)) throw new LabError('EINVAL', 'duration must be above 0 and at most 3600 s');
  const chunkBytes = opts.chunkBytes ?? 64 * 1024;
  const target = parseHttpUrl(opts.url);
  // One chunk frame, written again and again: the payload's content does not matter to TLS or the proxies.
  const frame = Buffer.concat([Buffer.from(`${chunkBytes.toString(16)}\r\n`), Buffer.alloc(chunkBytes, 0x61), Buffer.from('\r\n')]);
  const head = requestBytes(target, { method: 'POST', headers: ['Content-Type: application/octet-stream', 'Transfer-Encoding: chunked'] });
  const started = performance.now();
  const deadline = started + opts.durationS * 1000;
  const results = await Promise.all(
    Array.from({ length: opts.streams }, () => oneStream(target, head, frame, chunkBytes, deadline, opts.idleTimeoutMs ?? 30_000)),
  );
  const report: BulkSendReport = { streams: opts.streams, ok_streams: 0, bytes: 0, seconds: 0, gbps: 0, error_counts: {} };
  let last = started;
  for (const r of results) {
    if ('code' in r) {
      report.error_counts[r.code] = (report.error_counts[r.code] ?? 0) + 1;
      continue;
    }
    report.ok_streams++;
    report.bytes += r.bytes;
    last = Math.max(last, r.doneAt);
  }
  report.seconds = Math.round(last - started) / 1000;
  report.gbps = report.seconds > 0 ? Math.round(((report.bytes * 8) / 1e9 / report.seconds) * 1000) / 1000 : 0;
  return report;
}

async function oneStream(
  target: HttpTarget,
  head: Buffer,
  frame: Buffer,
  chunkBytes: number,
  deadline: number,
  idleTimeoutMs: number,
): Promise<{ bytes: number; doneAt: number } | { code: string }> {
  const socket = net.connect({ host: target.host, port: target.port });
  socket.on('error', () => {});
  socket.setTimeout(idleTimeoutMs, () => socket.destroy(new LabError('ETIMEDOUT', `no progress for ${idleTimeoutMs} ms`)));
  let answer: ((status: number) => void) | undefined;
  const answered = new Promise<number>((resolve) => (answer = resolve));
  const parser = new ResponseParser((r) => answer!(r.status));
  socket.on('data', (chunk: Buffer) => {
    try {
      parser.feed(chunk);
    } catch (err) {
      socket.destroy(err as Error);
    }
  });
  let bytes = 0;
  try {
    await waitFor(socket, 'connect', 'connecting');
    socket.write(head);
    while (performance.now() < deadline) {
      bytes += chunkBytes;
      if (!socket.write(frame)) await waitFor(socket, 'drain', `sending (${bytes} bytes written)`);
    }
    if (socket.destroyed) throw new LabError('ECLOSED', 'connection closed while sending');
    socket.write('0\r\n\r\n');
    const closed = new Promise<never>((_, reject) => {
      socket.once('close', () => reject(new LabError('ECLOSED', 'connection closed before the answer')));
      socket.once('error', reject);
    });
    // It rejects when the socket goes, which is also after a good answer.
    closed.catch(() => {});
    const status = await Promise.race([answered, closed]);
    if (status >= 400) return { code: String(status) };
    return { bytes, doneAt: performance.now() };
  } catch (err) {
    return { code: codeOf(err) };
  } finally {
    socket.destroy();
  }
}
