// Bench: h2load (nghttp2's load generator, Debian's nghttp2-client) for the h2c paths. The Node load tools speak
// HTTP/1.1; a Node HTTP/2 client on the load CPU would measure itself more than the proxies.
import { LabError } from '../errors.js';

export interface H2loadResult {
  /** Requests per second over the measured duration. */
  rps: number;
  succeeded: number;
  failed: number;
  errored: number;
  timeout: number;
  /** Responses by status class ("2xx" ...). */
  statuses: Record<string, number>;
}

/** Arguments for a closed-loop run: `connections` clients with one stream each, `seconds` measured after a warm-up. */
export function h2loadArgs(url: string, connections: number, seconds: number, warmupS: number): string[] {
  return ['h2load', '-c', String(connections), '-m', '1', '-D', String(seconds), `--warm-up-time=${warmupS}`, url];
}

/** Reads h2load's summary ("finished in 2.00s, 10245.50 req/s, ..." and the "requests:" line). */
export function parseH2load(text: string): H2loadResult {
  const finished = /finished in [\d.]+m?s, ([\d.]+) req\/s/.exec(text);
  const requests = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(text);
  if (!finished || !requests) throw new LabError('ETOOL', `h2load printed no summary: ${text.trim().slice(-400)}`);
  const statuses: Record<string, number> = {};
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(text);
  if (codes) ['2xx', '3xx', '4xx', '5xx'].forEach((k, i) => (statuses[k] = Number(codes[i + 1])));
  return {
    rps: Number(finished[1]),
    succeeded: Number(requests[4]),
    failed: Number(requests[5]),
    errored: Number(requests[6]),
    timeout: Number(requests[7]),
    statuses,
  };
}
