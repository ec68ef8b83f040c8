// An HTTP/2 session ends when its transport does. Node's session closes with its socket, but the mesh's sockets are
// half-open (each direction's FIN is passed along on its own), so a peer's FIN leaves such a socket open for writing
// and the session looking alive: a peer gone without GOAWAY (killed, crashed, its node rebooted) would keep a pooled
// session whose new streams are never answered.
import type http2 from 'node:http2';
import type { Duplex } from 'node:stream';

/**
 * Destroys `session` and `transport` when the transport ends (the peer sent FIN): nothing more can arrive on it, and
 * a reset that follows would find the transport without the session's error handler.
 */
export function endWithTransport(session: http2.Http2Session, transport: Duplex): void {
  transport.once('end', () => {
    if (!session.destroyed) session.destroy();
    transport.destroy();
  });
}
