// Workload tools: an HTTP/1.1 (or h2c) backend that says who answered, so routing and load balancing can be
// observed; with a fixed body, the bench's server.
import http from 'node:http';
import http2 from 'node:http2';
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
export function startHttpEcho(opts: ListenOptions & { name: string; bodyBytes?: number; h2c?: boolean }): Promise<ToolServer> {
  const fixed = opts.bodyBytes === undefined ? undefined : Buffer.alloc(opts.bodyBytes, 0x78);
  if (opts.h2c) return startH2cEcho(opts, fixed);
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

/** HTTP/2 with prior knowledge (h2c): the same answers, one stream per request. */
function startH2cEcho(opts: ListenOptions & { name: string }, fixed: Buffer | undefined): Promise<ToolServer> {
  const server = http2.createServer({ settings: { maxConcurrentStreams: 1000 } });
  server.on('stream', (stream, headers) => {
    stream.on('error', () => undefined);
    stream.resume();
    stream.on('end', () => {
      if (stream.destroyed) return;
      if (fixed) {
        stream.respond({ ':status': 200, 'content-type': 'application/octet-stream', 'content-length': fixed.length });
        stream.end(fixed);
        return;
      }
      const body = JSON.stringify({ name: opts.name, method: headers[':method'], url: headers[':path'], headers });
      stream.respond({ ':status': 200, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      stream.end(body);
    });
  });
  server.on('sessionError', () => undefined);
  return serve('http-echo', server as unknown as import('node:net').Server, opts);
}
