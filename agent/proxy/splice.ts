// Moves bytes both ways between a downstream and an upstream, exactly: backpressure (a side stops reading while
// the other cannot take more), half-close passed along (FIN <-> END_STREAM), and a reset on one side turned
// into a reset on the other.
import http2 from 'node:http2';
import net from 'node:net';
import type { Duplex } from 'node:stream';

/**
 * Byte counts, told in batches: at most every COUNT_FLUSH_MS while bytes flow, and the rest before the
 * splice resolves, so totals are exact when it has. Per chunk (16 KB HTTP/2 frames: thousands a second) a
 * counter update with its label-set hash was a visible share of a bulk transfer's CPU.
 */
export interface SpliceHooks {
  /** Bytes read from downstream and written upstream (request direction). */
  downToUp(n: number): void;
  /** Bytes read from upstream and written downstream (response direction). */
  upToDown(n: number): void;
}

/** How stale the byte counters of a busy connection may be. */
export const COUNT_FLUSH_MS = 250;

export interface SpliceOutcome {
  /** The first error on either side, if the splice ended by reset or failure. */
  error?: Error;
  /** Which side failed first. */
  side?: 'downstream' | 'upstream';
}

/** Aborts a side so its peer sees a reset, not an orderly close. */
export function resetSide(s: Duplex): void {
  if (s.destroyed) return;
  if (s instanceof net.Socket) {
    // After our own FIN the kernel cannot turn the close into a reset (libuv answers EINVAL): close instead.
    if (s.writableEnded || s.connecting) s.destroy();
    else s.resetAndDestroy();
  } else if (isHttp2Stream(s)) {
    s.close(http2.constants.NGHTTP2_CONNECT_ERROR);
  } else {
    s.destroy();
  }
}

function isHttp2Stream(s: Duplex): s is http2.Http2Stream {
  return typeof (s as http2.Http2Stream).close === 'function' && 'rstCode' in s;
}

/** An HTTP/2 stream that closed with RST_STREAM (other than NO_ERROR) ended by reset. */
function resetByPeer(s: Duplex): boolean {
  if (!isHttp2Stream(s)) return false;
  const code = s.rstCode;
  return code !== undefined && code !== http2.constants.NGHTTP2_NO_ERROR;
}

export function splice(down: Duplex, up: Duplex, hooks: SpliceHooks): Promise<SpliceOutcome> {
  return new Promise((resolve) => {
    const outcome: SpliceOutcome = {};
    let open = 2;
    const fail = (side: 'downstream' | 'upstream', err: Error) => {
      if (!outcome.error) {
        outcome.error = err;
        outcome.side = side;
      }
      resetSide(side === 'downstream' ? up : down);
      resetSide(side === 'downstream' ? down : up);
    };
    const closed = (side: 'downstream' | 'upstream', s: Duplex) => () => {
      if (resetByPeer(s) && !outcome.error) fail(side, Object.assign(new Error('stream reset by peer'), { code: 'ECONNRESET' }));
      else if (!s.readableEnded && !outcome.error && s.readable) {
        // Closed without FIN or error: treat as reset so the other side does not wait forever.
        fail(side, Object.assign(new Error('closed before end of stream'), { code: 'ECONNRESET' }));
      }
      if (--open === 0) {
        flush();
        resolve(outcome);
      }
    };
    let toUp = 0;
    let toDown = 0;
    let timer: NodeJS.Timeout | undefined;
    const flush = () => {
      if (timer) clearTimeout(timer);
      timer = undefined;
      if (toUp > 0) hooks.downToUp(toUp);
      if (toDown > 0) hooks.upToDown(toDown);
      toUp = toDown = 0;
    };
    // Each direction counts, writes, and stops reading while the other side's buffer is full: what pipe() does,
    // with two listeners instead of the nine pipe() adds, which an idle connection holds for as long as it lives.
    const toUpWrite = writer(down, up);
    const toDownWrite = writer(up, down);
    down.on('data', (chunk: Buffer) => {
      toUp += chunk.length;
      timer ??= setTimeout(flush, COUNT_FLUSH_MS);
      if (!toUpWrite(chunk) && up.writableLength >= pauseAt(up)) down.pause();
    });
    up.on('data', (chunk: Buffer) => {
      toDown += chunk.length;
      timer ??= setTimeout(flush, COUNT_FLUSH_MS);
      if (!toDownWrite(chunk) && down.writableLength >= pauseAt(down)) up.pause();
    });
    up.on('drain', () => down.resume());
    down.on('drain', () => up.resume());
    // A side that was paused on purpose before the splice (a first chunk read by hand) flows again, as pipe() did.
    down.resume();
    up.resume();
    down.on('error', (err) => fail('downstream', err));
    up.on('error', (err) => fail('upstream', err));
    down.on('close', closed('downstream', down));
    up.on('close', closed('upstream', up));
    // FIN is passed on by hand, one turn of the loop late: an HTTP/2 stream reset by its peer ends its readable
    // side just before it reports the reset, and that must become a reset downstream, not a FIN.
    const passEnd = (side: 'downstream' | 'upstream', from: Duplex, to: Duplex) => () =>
      setImmediate(() => {
        if (outcome.error) return;
        if (resetByPeer(from)) fail(side, Object.assign(new Error('stream reset by peer'), { code: 'ECONNRESET' }));
        else to.end();
      });
    down.on('end', passEnd('downstream', down, up));
    up.on('end', passEnd('upstream', up, down));
  });
}

/**
 * How much a side may hold unwritten before its source pauses: a few of its high-water marks, not one. A socket
 * reads 64 KB at a time, as much as an HTTP/2 stream's mark: pausing at the mark stopped and restarted the
 * socket's reading (two epoll changes) for every chunk of a bulk transfer.
 */
function pauseAt(s: Duplex): number {
  return 4 * s.writableHighWaterMark;
}

/**
 * Writes to `to`, the chunks of one turn of the event loop in one system call when they come from an HTTP/2
 * stream and go to a socket: the stream hands its DATA over in the pieces TLS records cut it into (8 KB on
 * average), and a write(2) per piece was most of the destination agent's system calls in a bulk transfer.
 */
function writer(from: Duplex, to: Duplex): (chunk: Buffer) => boolean {
  if (!(to instanceof net.Socket) || !isHttp2Stream(from)) return (chunk) => to.write(chunk);
  let corked = false;
  const uncork = () => {
    corked = false;
    to.uncork();
  };
  return (chunk) => {
    if (!corked) {
      corked = true;
      to.cork();
      setImmediate(uncork);
    }
    return to.write(chunk);
  };
}

/** Resolves when a dialled socket is connected; rejects with its dial error. */
export function whenConnected(sock: net.Socket): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    sock.once('connect', () => {
      sock.off('error', reject);
      resolve(sock);
    });
    sock.once('error', reject);
  });
}
