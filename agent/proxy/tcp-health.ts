// TCP health per connection: the socket a connection uses toward its peer (the other agent's HBONE session, or a
// client or server outside the mesh) is known by its cookie, and when the connection ends its smoothed RTT and
// retransmissions are read from the sockops program's map (capture/tcp-health.ts) for trellis_tcp_rtt_seconds and
// trellis_tcp_retransmits_total. The socket toward the app is never read: it is the pod's loopback, not an edge.
import type http2 from 'node:http2';
import type net from 'node:net';
import { forgetTcpStats, readTcpStats, socketCookie, socketFd, type TcpStats } from '../native/index.js';

/** What a connection record reads when it finishes, and every minute while a long one moves bytes. */
export interface PeerSocketHealth {
  /**
   * The socket's RTT now (seconds) and the retransmissions since the previous reading that are this connection's;
   * undefined when the map has nothing. `final`: the connection is over (its own socket's entry is taken).
   */
  read(final: boolean): { rttSeconds: number; retransmits: number } | undefined;
}

export interface TcpHealthReaderInputs {
  /** The stats map's fd (the main thread holds the map; every thread of the agent reads it by this fd). */
  mapFd: number;
  read?: (mapFd: number, cookie: number, remove: boolean) => TcpStats | undefined;
  forget?: (mapFd: number, cookie: number) => void;
  cookieOf?: (socket: net.Socket) => number;
}

/** A socket many connections share (an HBONE session): each connection is given the retransmissions since the last. */
interface Shared {
  cookie: number;
  retransmits: number;
}

export class TcpHealthReader {
  private readonly read: (mapFd: number, cookie: number, remove: boolean) => TcpStats | undefined;
  private readonly forget: (mapFd: number, cookie: number) => void;
  private readonly cookieOf: (socket: net.Socket) => number;
  private readonly sessions = new WeakMap<object, Shared | null>();

  constructor(private readonly inputs: TcpHealthReaderInputs) {
    this.read = inputs.read ?? readTcpStats;
    this.forget = inputs.forget ?? forgetTcpStats;
    this.cookieOf = inputs.cookieOf ?? ((s) => socketCookie(socketFd(s)));
  }

  /** A socket this connection alone uses: its cookie now (its fd is gone at close), its entry taken at the end. */
  own(socket: net.Socket): PeerSocketHealth | undefined {
    let cookie: number;
    try {
      cookie = this.cookieOf(socket);
    } catch {
      return undefined;
    }
    return this.reading({ cookie, retransmits: 0 }, true);
  }

  /** The HBONE session a stream rides on: its socket's RTT, and the retransmissions since the session's last reading. */
  session(session: http2.Http2Session | undefined): PeerSocketHealth | undefined {
    if (!session) return undefined;
    let shared = this.sessions.get(session);
    if (shared === undefined) {
      shared = this.track(session);
      this.sessions.set(session, shared);
    }
    return shared ? this.reading(shared, false) : undefined;
  }

  /** Readings of one entry, each with the retransmissions since the previous one; `owned`: taken at the final one. */
  private reading(entry: Shared, owned: boolean): PeerSocketHealth {
    return {
      read: (final) => {
        const s = this.safeRead(entry.cookie, owned && final);
        if (!s) return undefined;
        const retransmits = Math.max(0, s.retransmits - entry.retransmits);
        entry.retransmits = s.retransmits;
        return { rttSeconds: s.srttUs / 1e6, retransmits };
      },
    };
  }

  private track(session: http2.Http2Session): Shared | null {
    const socket = session.socket as net.Socket | undefined;
    if (!socket || session.destroyed) return null;
    let cookie: number;
    try {
      cookie = this.cookieOf(socket);
    } catch {
      return null;
    }
    // The session's entry goes with it.
    session.once('close', () => this.safeForget(cookie));
    return { cookie, retransmits: 0 };
  }

  private safeRead(cookie: number, remove: boolean): TcpStats | undefined {
    try {
      return this.read(this.inputs.mapFd, cookie, remove);
    } catch {
      return undefined;
    }
  }

  private safeForget(cookie: number): void {
    try {
      this.forget(this.inputs.mapFd, cookie);
    } catch {
      // The map is gone with the agent stopping.
    }
  }
}
