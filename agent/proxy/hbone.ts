// HBONE: TCP tunnelled as HTTP/2 CONNECT streams over mutual TLS 1.3 to the destination pod's port 15008.
// Shared pieces of the client pool and the server: authority parsing, window sizes, the ports never tunnelled to.
import { HBONE_PORT, HEALTH_PORT, INBOUND_PLAINTEXT_PORT, METRICS_PORT, OUTBOUND_PORT } from '../constants.js';

/**
 * Stream and connection flow-control windows: large enough for bulk transfer, bounded per stream. A stream
 * whose app reads slowly holds at most its window in the receiving agent, and a session at most 16 MB in all.
 * 4 MB (as ztunnel): one bulk stream through two agents on one CPU took ~6% less CPU per GB than with 1 MB
 * (paired runs), and larger windows did not help further.
 *
 * DATA frames stay 16 KB whatever SETTINGS_MAX_FRAME_SIZE the peer allows: Node's HTTP/2 never sends larger
 * ones (it has no nghttp2 read-length callback), so a larger maxFrameSize setting would change nothing.
 */
export const STREAM_WINDOW = 4 << 20;
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
