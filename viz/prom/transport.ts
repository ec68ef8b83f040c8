// How the viewer reaches a Prometheus: over the network from here (a URL: a cluster's Prometheus, a port-forward),
// or by connecting from inside a lab's network namespace, as the lab itself reaches its services (the host's own
// netns has no route into a lab, and the lab adds none).
import http from 'node:http';
import { VizError } from '../errors.js';

export interface PromTransport {
  /** Where the queries go, for messages: the URL, and the netns when there is one. */
  readonly where: string;
  /** GET `pathAndQuery` (starting with /) below the base URL. */
  get(pathAndQuery: string): Promise<{ status: number; body: string }>;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/** A Prometheus at a URL (http or https; a path prefix such as /prometheus is kept). */
export function urlTransport(base: string, hint: string, timeoutMs = DEFAULT_TIMEOUT_MS): PromTransport {
  const root = base.replace(/\/+$/, '');
  return {
    where: root,
    async get(pathAndQuery) {
      let res: Response;
      try {
        res = await fetch(`${root}${pathAndQuery}`, { signal: AbortSignal.timeout(timeoutMs), redirect: 'follow' });
      } catch (err) {
        throw unreachable(root, err, hint, timeoutMs);
      }
      return { status: res.status, body: await res.text() };
    },
  };
}

/** A Prometheus that answers at `base` inside the network namespace `netnsPath` (a lab's). Needs root, as the lab. */
export function netnsTransport(base: string, netnsPath: string, hint: string, timeoutMs = DEFAULT_TIMEOUT_MS): PromTransport {
  const url = new URL(base);
  const host = url.hostname;
  const port = Number(url.port || 80);
  const prefix = url.pathname.replace(/\/+$/, '');
  const where = `${base.replace(/\/+$/, '')} (inside ${netnsPath})`;
  return {
    where,
    async get(pathAndQuery) {
      const { connectInNetns } = await import('../../agent/native/index.js');
      return new Promise((resolve, reject) => {
        const req = http.get(
          {
            host,
            port,
            path: `${prefix}${pathAndQuery}`,
            // No `agent`: with one, Node ignores createConnection and would connect from this process's netns.
            createConnection: () => connectInNetns(netnsPath, { host, port, timeoutMs }),
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (d: Buffer) => chunks.push(d));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
            res.on('error', (err) => reject(unreachable(where, err, hint, timeoutMs)));
          },
        );
        // A timer of its own: connectInNetns resets the socket's idle timeout once connected.
        const timer = setTimeout(() => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })), timeoutMs);
        req.on('close', () => clearTimeout(timer));
        req.on('error', (err) => reject(unreachable(where, err, hint, timeoutMs)));
      });
    },
  };
}

function unreachable(where: string, err: unknown, hint: string, timeoutMs: number): VizError {
  const e = err as { code?: string; name?: string; message?: string; cause?: { code?: string; message?: string } };
  const code = e.cause?.code ?? e.code;
  const why =
    e.name === 'TimeoutError' || code === 'ETIMEDOUT'
      ? `no answer in ${timeoutMs / 1000} s`
      : code === 'EPERM' || code === 'EACCES'
        ? `${code}: entering a lab's network namespace needs root (run it with sudo)`
        : (code ?? e.cause?.message ?? e.message ?? String(err));
  return new VizError('EPROMETHEUS', `cannot reach Prometheus at ${where}: ${why}; ${hint}`, { cause: err });
}
