// Workload tools: one TCP exchange whose exit code says what the network did (allowed, refused/reset,
// blackholed), for policy and capture checks in end-to-end tests.
import net from 'node:net';
import { LabError } from '../errors.js';
import { formatTarget, type Target } from './target.js';
import { codeOf, waitFor } from './wait.js';

export interface TcpConnectOptions extends Target {
  /** Covers the connect and the whole exchange; defaults to 5 s. */
  timeoutMs?: number;
  /** Sent right after connecting; the client half-closes after it (at once when absent). */
  send?: string;
}

/**
 * exitCode 0: connected and the server ended in order; 3: refused or reset; 4: timed out;
 * 2: any other failure (no route, bad address...).
 */
export interface TcpConnectOutcome {
  exitCode: 0 | 2 | 3 | 4;
  connected: boolean;
  received: string;
  /** Why it failed: 'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT'... */
  code?: string;
  message?: string;
}

const REFUSED_OR_RESET = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ECLOSED']);

export async function tcpConnect(opts: TcpConnectOptions): Promise<TcpConnectOutcome> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const where = formatTarget(opts);
  const socket = net.connect({ host: opts.host, port: opts.port });
  socket.on('error', () => {});
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  const received = (): string => Buffer.concat(chunks).toString('utf8');
  const timer = setTimeout(() => {
    socket.destroy(new LabError('ETIMEDOUT', `${where}: no orderly end within ${timeoutMs} ms`));
  }, timeoutMs);

  let connected = false;
  try {
    await waitFor(socket, 'connect', 'connecting');
    connected = true;
    socket.end(opts.send ?? '');
    await waitFor(socket, 'end', 'waiting for the server to end');
    return { exitCode: 0, connected, received: received() };
  } catch (err) {
    const code = codeOf(err);
    const exitCode = code === 'ETIMEDOUT' ? 4 : REFUSED_OR_RESET.has(code) ? 3 : 2;
    const message = `${where}: ${err instanceof Error ? err.message : String(err)}`;
    return { exitCode, connected, received: received(), code, message };
  } finally {
    clearTimeout(timer);
    socket.destroy();
  }
}
