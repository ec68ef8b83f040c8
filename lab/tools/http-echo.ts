// Workload tools: an HTTP/1.1 backend that says who answered, so routing and load balancing can be observed.
import http from 'node:http';
import { serve, type ListenOptions, type ToolServer } from './server.js';

export interface HttpEchoReply {
  name: string;
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
}

/**
 * Answers every request 200 with {name, method, url, headers}; connections stay alive between requests.
 * With `bodyBytes`, answers with that many bytes instead (a fixed payload, as the benchmark wants).
 */
export function startHttpEcho(opts: ListenOptions & { name: string; bodyBytes?: number }): Promise<ToolServer> {
  const fixed = opts.bodyBytes === undefined ? undefined : Buffer.alloc(opts.bodyBytes, 0x78);
  const server = http.createServer((req, res) => {
    // Drain the body first so the connection can carry the next request.
    req.resume();
    req.on('end', () => {
      if (fixed) {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': fixed.length });
        res.end(fixed);
        return;
      }
      const reply: HttpEchoReply = {
        name: opts.name,
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
      };
      const body = JSON.stringify(reply);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  // Longer than common client idle timeouts, so the client, not the server, closes idle connections.
  server.keepAliveTimeout = 65_000;
  server.on('clientError', (_err, socket) => socket.destroy());
  return serve('http-echo', server, opts);
}
