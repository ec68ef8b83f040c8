// A bound on the PING frames an HTTP/2 peer may send: each one costs the agent a PING ACK, and nghttp2 only stops a
// flood whose ACKs pile up unread (its outbound-ACK limit), so a peer that reads its ACKs could go on forever. Past
// a burst, PINGs are allowed at a steady rate; beyond it the session gets GOAWAY (ENHANCE_YOUR_CALM) and closes.
// Keep-alive PINGs (seconds apart) and a client's RTT probes stay far below it.
import http2 from 'node:http2';

export interface PingLimit {
  /** PINGs a session may send at once. */
  readonly burst: number;
  /** PINGs per second it may keep sending after that. */
  readonly perSecond: number;
}

export const DEFAULT_PING_LIMIT: PingLimit = { burst: 100, perSecond: 10 };

/** Watches the session's PINGs; calls onFlood once, after ending the session, when the peer goes past the limit. */
export function limitPings(session: http2.Http2Session, onFlood: () => void, limit: PingLimit = DEFAULT_PING_LIMIT, now = () => performance.now()): void {
  let tokens = limit.burst;
  let last = now();
  let flooded = false;
  session.on('ping', () => {
    if (flooded) return;
    const t = now();
    tokens = Math.min(limit.burst, tokens + ((t - last) / 1000) * limit.perSecond);
    last = t;
    if (--tokens >= 0) return;
    flooded = true;
    if (!session.destroyed) {
      try {
        session.goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      } catch {
        // Already going away.
      }
      session.destroy();
    }
    onFlood();
  });
}
