// Stream wrappers for the L7 servers and clients: replaying bytes a sniff already read, and shielding an
// HTTP/2 stream (an HBONE tunnel) from the mixed string/Buffer writev that Node's HTTP code issues. Node 24's
// StreamBase writev copies string chunks into storage that lives only for the call, while an HTTP/2 stream
// sends its data later: the first bytes of an HTTP/1.1 head written with writeHead() + write() arrive as
// garbage (reproduced with a plain http.Server over a CONNECT stream). Handing it Buffers only avoids that.
import { Duplex } from 'node:stream';

/** A duplex over `inner` that hands it Buffers only (strings are encoded here, one write per chunk). */
export function bytesOnly(inner: Duplex): Duplex {
  return prefixed(inner, undefined);
}

/** A duplex that yields `head` first, then whatever `socket` reads; writes and closes go to the socket. */
export function prefixed(socket: Duplex, head: Buffer | undefined): Duplex {
  const d = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      socket.write(chunk, cb);
    },
    final(cb) {
      socket.end();
      cb();
    },
    destroy(err, cb) {
      socket.destroy(err ?? undefined);
      cb(err);
    },
  });
  // Idle timeouts (http.Agent's free sockets, the HTTP server's) are the inner stream's.
  const inner = socket as Duplex & { setTimeout?: (ms: number) => unknown };
  if (typeof inner.setTimeout === 'function') {
    socket.on('timeout', () => d.emit('timeout'));
    Object.assign(d, {
      setTimeout(ms: number, cb?: () => void) {
        inner.setTimeout!(ms);
        if (cb) d.once('timeout', cb);
        return d;
      },
    });
  }
  if (head) d.push(head);
  socket.on('data', (c: Buffer) => {
    if (!d.push(c)) socket.pause();
  });
  socket.once('end', () => d.push(null));
  socket.once('error', (e) => d.destroy(e));
  socket.once('close', () => d.destroy());
  return d;
}
