// An in-memory byte pipe with two ends, the tunnel of a same-node L7 call (proxy/same-node.ts): the source agent's
// HTTP client writes one end, the destination's inbound HTTP server reads the other, with no socket, TLS or HTTP/2 in
// between. It behaves as a TCP connection does toward the code on either end: end() is a FIN (the other end reads
// to its end and may still write), and destroying an end before both directions finished is a reset (the other end
// fails with ECONNRESET), which is what splice.ts and the HTTP code already handle for sockets and HBONE streams.
import { Duplex } from 'node:stream';

class PairEnd extends Duplex {
  peer!: PairEnd;
  /** A write held until the peer reads again: backpressure, at most one chunk in flight beyond its buffer. */
  private held: (() => void) | undefined;

  constructor() {
    super({ allowHalfOpen: true });
  }

  override _read(): void {
    const held = this.peer.held;
    if (held) {
      this.peer.held = undefined;
      held();
    }
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.peer.destroyed) return callback(resetError('the other end of the tunnel is gone'));
    if (this.peer.push(chunk)) callback();
    else this.held = callback;
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (!this.peer.destroyed) this.peer.push(null);
    callback();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.held = undefined;
    // Both directions ended: an orderly close, the peer closes by itself once it has read everything. Anything else is
    // a reset, and what the peer had not read yet is lost, as with TCP.
    const orderly = this.writableFinished && this.readableEnded;
    if (!orderly && !this.peer.destroyed) this.peer.destroy(resetError('the other end of the tunnel reset it'));
    callback(err);
  }
}

function resetError(message: string): Error {
  return Object.assign(new Error(message), { code: 'ECONNRESET' });
}

/** Two connected ends: what one writes, the other reads. */
export function bytePair(): [Duplex, Duplex] {
  const a = new PairEnd();
  const b = new PairEnd();
  a.peer = b;
  b.peer = a;
  return [a, b];
}
