// HBONE: TCP tunnelled as HTTP/2 CONNECT streams over mutual TLS 1.3 to the destination pod's port 15008.
// Shared pieces of the client pool and the server: authority parsing, window sizes, the ports never tunnelled to.
import { HBONE_PORT, HEALTH_PORT, INBOUND_PLAINTEXT_PORT, METRICS_PORT, OUTBOUND_PORT } from '../constants.js';

/** Stream and connection flow-control windows: large enough for bulk transfer, bounded per stream. */
export const STREAM_WINDOW = 1 << 20;
export const SESSION_WINDOW = 16 << 20;
export const MAX_CONCURRENT_STREAMS = 1000;

/** Ports of the agent itself; a tunnel or a plaintext redirect to them would loop. */
export const AGENT_PORTS: ReadonlySet<number> = new Set([OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT, METRICS_PORT, HEALTH_PORT]);

export function formatAuthority(ip: string, port: number): string {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

export function parseAuthority(authority: string | undefined): { ip: string; port: number } | undefined {
  if (!authority) return undefined;
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(authority) ?? /^([0-9.]+):(\d{1,5})$/.exec(authority);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  return { ip: m[1]!, port };
}
