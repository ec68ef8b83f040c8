// Workload tools: waiting on a client socket without missing an error or a close that comes first.
import type { Socket } from 'node:net';
import { LabError } from '../errors.js';

/** Resolves on `event`; rejects on 'error', or on 'close' when the connection goes before `event` comes. */
export function waitFor(socket: Socket, event: 'connect' | 'drain' | 'end', what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (): void => {
      socket.off(event, onEvent);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const onEvent = (): void => {
      done();
      resolve();
    };
    const onError = (err: Error): void => {
      done();
      reject(err);
    };
    const onClose = (): void => {
      done();
      reject(new LabError('ECLOSED', `connection closed while ${what}`));
    };
    socket.once(event, onEvent);
    socket.once('error', onError);
    socket.once('close', onClose);
  });
}

/** The error's code ('ECONNREFUSED', 'ETIMEDOUT'...), or 'EUNKNOWN'. */
export function codeOf(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') return 'EUNKNOWN';
  // An HTTP/2 stream error says which: NGHTTP2_REFUSED_STREAM (safe to retry) is not NGHTTP2_INTERNAL_ERROR.
  const h2 = code === 'ERR_HTTP2_STREAM_ERROR' ? /NGHTTP2_[A-Z_]+/.exec(String((err as Error).message))?.[0] : undefined;
  return h2 ? `${code} ${h2}` : code;
}
