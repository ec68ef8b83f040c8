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

type SideName = 'downstream' | 'upstream';

/** The splice a side belongs to, kept on the side itself so the listeners below can be shared functions. */
const kSplice = Symbol('trellis.splice');
type Side = Duplex & { [kSplice]?: Splice };

export function splice(down: Duplex, up: Duplex, hooks: SpliceHooks): Promise<SpliceOutcome> {
  return new Promise((resolve) => {
    const s = new Splice(down, up, hooks, resolve);
    (down as Side)[kSplice] = s;
    (up as Side)[kSplice] = s;
    // Each direction counts, writes, and stops reading while the other side's buffer is full: what pipe() does,
    // with five listeners per side instead of the nine pipe() adds, which an idle connection holds for as long as
    // it lives. The listeners are shared by every splice (an emitter calls them with itself as `this`): closures
    // per connection were ~2 KB of each idle connection's heap, the splice's state alone is ~0.3 KB.
    for (const side of [down, up]) {
      side.on('data', onData);
      side.on('drain', onDrain);
      side.on('error', onError);
      side.on('close', onClose);
      side.on('end', onEnd);
    }
    // A side that was paused on purpose before the splice (a first chunk read by hand) flows again, as pipe() did.
    down.resume();
    up.resume();
  });
}

class Splice {
  readonly outcome: SpliceOutcome = {};
  private open = 2;
  /** Bytes not yet told to the hooks, and the timer that will tell them. */
  private toUp = 0;
  private toDown = 0;
  private timer: NodeJS.Timeout | undefined = undefined;
  /** Whether writes to up / to down are held until the end of the turn of the loop (see batches()). */
  private readonly batchUp: boolean;
  private readonly batchDown: boolean;

  constructor(
    readonly down: Duplex,
    readonly up: Duplex,
    private readonly hooks: SpliceHooks,
    private readonly resolve: (outcome: SpliceOutcome) => void,
  ) {
    this.batchUp = batches(down, up);
    this.batchDown = batches(up, down);
  }

  name(side: Duplex): SideName {
    return side === this.down ? 'downstream' : 'upstream';
  }

  other(side: Duplex): Duplex {
    return side === this.down ? this.up : this.down;
  }

  forward(from: Duplex, chunk: Buffer): void {
    const to = this.other(from);
    if (from === this.down) this.toUp += chunk.length;
    else this.toDown += chunk.length;
    this.timer ??= setTimeout(flushCounts, COUNT_FLUSH_MS, this);
    if (to === this.up ? this.batchUp : this.batchDown) {
      if (!to.writableCorked) {
        to.cork();
        setImmediate(uncork, to);
      }
    }
    if (!to.write(chunk) && to.writableLength >= pauseAt(to)) from.pause();
  }

  fail(side: SideName, err: Error): void {
    if (!this.outcome.error) {
      this.outcome.error = err;
      this.outcome.side = side;
    }
    resetSide(side === 'downstream' ? this.up : this.down);
    resetSide(side === 'downstream' ? this.down : this.up);
  }

  closed(s: Duplex): void {
    const side = this.name(s);
    if (resetByPeer(s) && !this.outcome.error) this.fail(side, Object.assign(new Error('stream reset by peer'), { code: 'ECONNRESET' }));
    else if (!s.readableEnded && !this.outcome.error && s.readable) {
      // Closed without FIN or error: treat as reset so the other side does not wait forever.
      this.fail(side, Object.assign(new Error('closed before end of stream'), { code: 'ECONNRESET' }));
    }
    if (--this.open === 0) {
      this.flush();
      this.resolve(this.outcome);
    }
  }

  /**
   * FIN is passed on by hand, one turn of the loop late: an HTTP/2 stream reset by its peer ends its readable
   * side just before it reports the reset, and that must become a reset downstream, not a FIN.
   */
  ended(from: Duplex): void {
    if (this.outcome.error) return;
    if (resetByPeer(from)) this.fail(this.name(from), Object.assign(new Error('stream reset by peer'), { code: 'ECONNRESET' }));
    else this.other(from).end();
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.toUp > 0) this.hooks.downToUp(this.toUp);
    if (this.toDown > 0) this.hooks.upToDown(this.toDown);
    this.toUp = this.toDown = 0;
  }
}

function onData(this: Side, chunk: Buffer): void {
  this[kSplice]!.forward(this, chunk);
}

function onDrain(this: Side): void {
  this[kSplice]!.other(this).resume();
}

function onError(this: Side, err: Error): void {
  const s = this[kSplice]!;
  s.fail(s.name(this), err);
}

function onClose(this: Side): void {
  this[kSplice]!.closed(this);
}

function onEnd(this: Side): void {
  setImmediate(passEnd, this);
}

function passEnd(from: Side): void {
  from[kSplice]!.ended(from);
}

function flushCounts(s: Splice): void {
  s.flush();
}

function uncork(s: Duplex): void {
  s.uncork();
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
 * Whether writes to `to` are corked until the end of the turn of the loop, so its chunks go out in one system
 * call: when they come from an HTTP/2 stream and go to a socket. The stream hands its DATA over in the pieces
 * TLS records cut it into (8 KB on average), and a write(2) per piece was most of the destination agent's
 * system calls in a bulk transfer.
 */
function batches(from: Duplex, to: Duplex): boolean {
  return to instanceof net.Socket && isHttp2Stream(from);
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
