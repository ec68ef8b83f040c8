// Workload tools: a WebSocket client for the L7 tests (Node's built-in WebSocket). It sends N messages, text
// and binary in turn, one at a time, and checks that each comes back unchanged (l7-echo echoes frames).
import { randomBytes } from 'node:crypto';
import { LabError } from '../errors.js';

export interface WsClientOptions {
  /** ws:// URL. */
  url: string;
  messages: number;
  /** Bytes per message; default 64. */
  size?: number;
  /** The whole exchange; default 10 s. */
  timeoutMs?: number;
}

export interface WsClientReport {
  connected: boolean;
  sent: number;
  /** Messages that came back byte for byte. */
  echoed: number;
  mismatched: number;
  /** Close code the server answered our close with (1000 when all went well). */
  closeCode: number | null;
  ms: number;
  error?: string;
}

export async function wsClient(opts: WsClientOptions): Promise<WsClientReport> {
  const url = new URL(opts.url);
  if (url.protocol !== 'ws:') throw new LabError('EINVAL', `ws-client speaks plain ws:// only, got ${opts.url}`);
  const size = opts.size ?? 64;
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const started = performance.now();
  const report: WsClientReport = { connected: false, sent: 0, echoed: 0, mismatched: 0, closeCode: null, ms: 0 };
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';

  const incoming: (string | Buffer)[] = [];
  let wake: (() => void) | undefined;
  let failure: string | undefined;
  let closed = false;
  const poke = (): void => {
    wake?.();
    wake = undefined;
  };
  ws.addEventListener('message', (e: MessageEvent) => {
    incoming.push(typeof e.data === 'string' ? e.data : Buffer.from(e.data as ArrayBuffer));
    poke();
  });
  ws.addEventListener('error', () => {
    failure ??= 'EWEBSOCKET';
    poke();
  });
  ws.addEventListener('close', (e: CloseEvent) => {
    closed = true;
    report.closeCode = e.code;
    poke();
  });
  const timer = setTimeout(() => {
    failure ??= 'ETIMEDOUT';
    ws.close();
    poke();
  }, timeoutMs);
  /** Resolves when something happened (a message, an error, the close). */
  const next = (): Promise<void> => new Promise((resolve) => (wake = resolve));

  try {
    await new Promise<void>((resolve) => {
      ws.addEventListener('open', () => resolve());
      ws.addEventListener('error', () => resolve());
      ws.addEventListener('close', () => resolve());
    });
    report.connected = ws.readyState === WebSocket.OPEN;
    for (let i = 0; report.connected && i < opts.messages && !failure && !closed; i++) {
      const message: string | Buffer = i % 2 === 0 ? `${i}:${randomBytes(size).toString('base64').slice(0, size)}` : randomBytes(size);
      ws.send(message);
      report.sent++;
      while (incoming.length === 0 && !failure && !closed) await next();
      const back = incoming.shift();
      if (back === undefined) break;
      const same = typeof message === 'string' ? back === message : Buffer.isBuffer(back) && back.equals(message);
      if (same) report.echoed++;
      else report.mismatched++;
    }
    if (!closed) {
      ws.close(1000, 'done');
      while (!closed && !failure) await next();
    }
  } finally {
    clearTimeout(timer);
  }
  if (failure) report.error = failure;
  report.ms = Math.round((performance.now() - started) * 100) / 100;
  return report;
}
