// Workload tools: a server-speaks-first protocol (SMTP/MySQL-like), which protocol detection must not wait on.
import net from 'node:net';
import { dropOnError, serve, type ListenOptions, type ToolServer } from './server.js';

export const DEFAULT_BANNER = '220 trellis-banner ready';

/** On connect writes `text\r\n` before reading anything, then echoes like tcp-echo. */
export function startBanner(opts: ListenOptions & { text?: string }): Promise<ToolServer> {
  const banner = `${opts.text ?? DEFAULT_BANNER}\r\n`;
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    dropOnError(socket);
    socket.write(banner);
    socket.pipe(socket);
  });
  return serve('banner', server, opts);
}
