// Workload tools: the HOST:PORT a client tool dials, parsed once at the command line.
import { LabError } from '../errors.js';

export interface Target {
  host: string;
  port: number;
}

/** Parses `host:port` or `[v6]:port`. */
export function parseTarget(text: string): Target {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:\s]+):(\d+)$/.exec(text);
  const port = Number(m?.[2]);
  if (!m?.[1] || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new LabError('EINVAL', `"${text}" is not HOST:PORT (use [addr]:port for IPv6)`);
  }
  return { host: m[1], port };
}

export function formatTarget({ host, port }: Target): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
