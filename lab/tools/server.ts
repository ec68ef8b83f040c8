// Workload tools (what lab pods run): the shared shape of a tool server, listening until closed.
import type { Server, Socket } from 'node:net';

export interface ToolServer {
  /** The bound port (useful when asked for port 0). */
  readonly port: number;
  /** Stops listening and drops open connections, so SIGTERM exits promptly. */
  close(): Promise<void>;
}

export interface ListenOptions {
  port: number;
  /** Defaults to 0.0.0.0: lab pods are reached on their pod IP. */
  host?: string;
  /** Receives the one "listening" line; silent when absent. */
  log?: (line: string) => void;
}

/** Listens with `server` and returns its handle; rejects with the listen error (EADDRINUSE...). */
export async function serve(name: string, server: Server, opts: ListenOptions): Promise<ToolServer> {
  const host = opts.host ?? '0.0.0.0';
  const open = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    open.add(socket);
    socket.once('close', () => open.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port: opts.port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : opts.port;
  opts.log?.(`${name} listening on ${host.includes(':') ? `[${host}]` : host}:${port}`);
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of open) socket.destroy();
      }),
  };
}

/** Server-side sockets meet resets from clients; a reset ends that connection, never the tool. */
export function dropOnError(socket: Socket): void {
  socket.on('error', () => socket.destroy());
}
