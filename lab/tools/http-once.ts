// Workload tools: one HTTP/1.1 exchange on a fresh connection that the server closes first (Connection:
// close), so the TIME_WAIT state stays on the server side and a fast client never runs out of ports.
import net from 'node:net';
import { ResponseParser } from '../load/http-response.js';
import { TrellisError } from '../../agent/errors.js';
import { LabError } from '../errors.js';
import type { HttpTarget } from './http-url.js';
import { codeOf } from './wait.js';

export type OnceResult = { ok: true; status: number; ms: number } | { ok: false; code: string; ms: number };

/** Connects, sends `request` (which should carry Connection: close), reads the response, waits for the close. */
export function httpOnce(target: HttpTarget, request: Buffer, timeoutMs: number): Promise<OnceResult> {
  const started = performance.now();
  return new Promise((resolve) => {
    let status: number | undefined;
    let settled = false;
    const settle = (r: OnceResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    const socket = net.connect({ host: target.host, port: target.port, noDelay: true });
    const timer = setTimeout(() => {
      // Answered but not closed in time still counts as answered.
      if (status !== undefined) settle({ ok: true, status, ms: performance.now() - started });
      else settle({ ok: false, code: 'ETIMEDOUT', ms: performance.now() - started });
    }, timeoutMs);
    // Closing first would leave TIME_WAIT here: after the response, wait for the server's FIN (Node answers
    // it with ours), which makes this side the passive closer.
    const parser = new ResponseParser((r) => (status = r.status));
    socket.on('connect', () => socket.write(request));
    socket.on('data', (chunk: Buffer) => {
      try {
        parser.feed(chunk);
      } catch (err) {
        socket.destroy(err instanceof TrellisError ? err : new LabError('EPROTO', String(err)));
      }
    });
    socket.on('error', (err) => {
      if (status === undefined) settle({ ok: false, code: codeOf(err), ms: performance.now() - started });
    });
    socket.on('close', () => {
      parser.end();
      const ms = performance.now() - started;
      settle(status === undefined ? { ok: false, code: 'ECLOSED', ms } : { ok: true, status, ms });
    });
  });
}
