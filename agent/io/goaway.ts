// HTTP/2 graceful shutdown in two steps (RFC 9113 section 6.8), as nghttp2's shutdown notice and Envoy do it: a
// first GOAWAY with the largest stream id tells the client to open no new stream while everything it has sent is
// still served; a moment later the real GOAWAY names the last stream processed. A single GOAWAY would refuse the
// streams crossing it on the wire, which a client that does not retry REFUSED_STREAM reports as failures.
import http2 from 'node:http2';

/** Between the notice and the final GOAWAY: longer than any round trip to a client on the node. */
export const GOAWAY_NOTICE_MS = 1000;
const MAX_STREAM_ID = 2 ** 31 - 1;

/** Starts the two-step GOAWAY; the session then ends once its streams have (Node's close()). */
export function shutdownGracefully(session: http2.Http2Session, noticeMs = GOAWAY_NOTICE_MS): void {
  if (session.closed || session.destroyed) return;
  try {
    session.goaway(http2.constants.NGHTTP2_NO_ERROR, MAX_STREAM_ID);
  } catch {
    // The session went away meanwhile.
    return;
  }
  setTimeout(() => {
    if (!session.closed && !session.destroyed) session.close();
  }, noticeMs).unref();
}
