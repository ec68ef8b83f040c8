// The node-facing HTTP endpoints: Prometheus metrics (:15020 /metrics) and readiness (:15021 /healthz/ready).
import http from 'node:http';
import type { Registry } from 'prom-client';

export interface Readiness {
  /** Undefined when ready, else why not (shown to the prober). */
  notReadyReason(): string | undefined;
}

export function metricsServer(registry: Registry): http.Server {
  return http.createServer((req, res) => {
    if (req.method === 'GET' && req.url?.split('?')[0] === '/metrics') {
      registry.metrics().then(
        (body) => {
          res.writeHead(200, { 'content-type': registry.contentType });
          res.end(body);
        },
        (err: Error) => {
          res.writeHead(500, { 'content-type': 'text/plain' });
          res.end(`metrics collection failed: ${err.message}\n`);
        },
      );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found: try /metrics\n');
  });
}

export function healthServer(readiness: Readiness): http.Server {
  return http.createServer((req, res) => {
    const path = req.url?.split('?')[0];
    if (path === '/healthz/ready') {
      const reason = readiness.notReadyReason();
      res.writeHead(reason ? 503 : 200, { 'content-type': 'text/plain' });
      res.end(reason ? `not ready: ${reason}\n` : 'ready\n');
      return;
    }
    if (path === '/healthz/live') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('live\n');
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found: try /healthz/ready\n');
  });
}

export function listen(server: http.Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
