// Workload tools: an echo server whose half-close follows the client's, to test that proxies propagate FIN.
import net from 'node:net';
import { dropOnError, serve, type ListenOptions, type ToolServer } from './server.js';

/** Echoes bytes; when the client ends, ends after the last echoed byte. */
export function startTcpEcho(opts: ListenOptions): Promise<ToolServer> {
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    dropOnError(socket);
    socket.pipe(socket);
  });
  return serve('tcp-echo', server, opts);
}
