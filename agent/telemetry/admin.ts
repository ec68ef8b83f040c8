// The node-facing HTTP endpoints: Prometheus metrics (:15020 /metrics, and /debug/policies for `trellis policy
// describe --agent`) and readiness (:15021 /healthz/ready).
import http from 'node:http';

export interface Readiness {
  /** Undefined when ready, else why not (shown to the prober). */
  notReadyReason(): string | undefined;
}

export interface DebugViews {
  /**
   * What /debug/policies?workload=NAMESPACE/POD shows: the policies that apply to the workload as plain data, or
   * undefined when the agent does not know it. Read-only, like the metrics beside it.
   */
  describePolicies?(workload: string): unknown;
}

/** The exposition /metrics serves, made at each scrape. */
export type MetricsCollector = () => Promise<{ body: string; contentType: string }>;

export function metricsServer(collect: MetricsCollector, debug: DebugViews = {}): http.Server {
  return http.createServer((req, res) => {
    const [path, query] = splitUrl(req.url);
    if (req.method === 'GET' && path === '/debug/policies' && debug.describePolicies) {
      const workload = new URLSearchParams(query).get('workload');
      if (!workload || !/^[^/\s]+\/[^/\s]+$/.test(workload)) {
        return json(res, 400, { error: 'name the workload: /debug/policies?workload=NAMESPACE/POD' });
      }
      const view = debug.describePolicies(workload);
      if (view === undefined) return json(res, 404, { error: `pod ${workload} is not known to this agent (check the name, or ask the agent of the node it runs on)` });
      return json(res, 200, view);
    }
    if (req.method === 'GET' && path === '/metrics') {
      collect().then(
        ({ body, contentType }) => {
          res.writeHead(200, { 'content-type': contentType });
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
    res.end(`not found: try /metrics${debug.describePolicies ? ' or /debug/policies?workload=NAMESPACE/POD' : ''}\n`);
  });
}

function splitUrl(url: string | undefined): [string, string] {
  const q = url?.indexOf('?') ?? -1;
  return q === -1 ? [url ?? '', ''] : [url!.slice(0, q), url!.slice(q + 1)];
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(`${JSON.stringify(body, null, 2)}\n`);
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

/**
 * Listens with SO_REUSEPORT: during a hand-over the next agent on the node opens the same admin ports while this one
 * still serves them (each request reaches one of the two), so readiness of a particular process is told by its
 * ready file (ReadyFile), not by this port.
 */
export function listen(server: http.Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, host, reusePort: true }, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
