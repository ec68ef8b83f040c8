// Workload tools: the receiving end of a bulk transfer. Proves every byte crossed the mesh intact.
import { createHash } from 'node:crypto';
import net from 'node:net';
import { dropOnError, serve, type ListenOptions, type ToolServer } from './server.js';

/** Per connection: reads until the client half-closes, answers `sha256=<hex> bytes=<n>\n`, ends. */
export function startTcpSink(opts: ListenOptions): Promise<ToolServer> {
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    dropOnError(socket);
    const hash = createHash('sha256');
    let bytes = 0;
    socket.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
    });
    socket.on('end', () => socket.end(`sha256=${hash.digest('hex')} bytes=${bytes}\n`));
  });
  return serve('tcp-sink', server, opts);
}
