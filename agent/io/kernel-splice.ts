// Moves the bytes of two local TCP sockets in the kernel (the same-node path's opaque connections, proxy/same-node.ts):
// both go into the same-node program's sockhash (native/bpf/same_node.bpf.c), which sends what one reads out of the
// other, so no payload byte enters user space. A redirect carries no FIN and no reset: the sockets stay in Node, which
// reads nothing from them but their end and their errors and passes those on itself, as splice.ts does: a reset at
// once, a FIN only once every byte redirected before it is in the other socket's send queue (a FIN sent earlier would
// cut the stream short: the kernel sends redirected bytes from a backlog of its own, after the agent's calls).
import type net from 'node:net';
import { constants } from 'node:os';
import { socketError, socketFd, socketPoke, socketQueues, socketTake, type SameNodeMaps } from '../native/index.js';
import { resetSide, type SpliceHooks, type SpliceOutcome } from './splice.js';

/** How long bytes left unread in a socket after the hand-over's poke may wait for the program, before user space takes the pair. */
const HANDOVER_WAIT_MS = 200;
const { ECONNRESET } = constants.errno;
/** The most bytes taken from a socket's receive queue in one call at the hand-over. */
const TAKE_MAX = 1 << 20;
/** Rounds of taking what arrived while the hand-over wrote on what it had taken. */
const TAKE_ROUNDS = 4;
/** How often a moving connection's counts are read and told (as splice.ts tells its counts, a little more lazily). */
const COUNT_PERIOD_MS = 1000;
/** The longest pause between two looks at a socket's send queue while a FIN waits for the bytes before it. */
const FIN_POLL_MAX_MS = 50;

type Held = net.Socket & { _handle?: { reading?: boolean; readStop?: () => number; readStart?: () => number } | null };

/** Why a pair was left to the user-space splice: the caller logs and counts it. */
export type KernelRefusal = 'ended' | 'unread_bytes' | 'unsettled' | 'failed';

export class KernelSplice {
  constructor(private readonly maps: SameNodeMaps) {}

  /**
   * Splices `down` and `up` as splice.ts does, the kernel moving the bytes; resolves when both sides closed. Resolves
   * with a refusal instead when the pair cannot be handed over without risk to the stream (one already ended, or bytes
   * the program would not take in order): reading is resumed and every byte Node had read is written on, so the
   * caller splices them in user space (those bytes are already told to the hooks). `onKernel`: told when the kernel
   * has the pair (the splice itself resolves only when the connection ends).
   */
  async splice(down: net.Socket, up: net.Socket, hooks: SpliceHooks, onKernel?: () => void): Promise<{ outcome: SpliceOutcome } | { refused: KernelRefusal }> {
    if (down.readableEnded || up.readableEnded || down.writableEnded || up.writableEnded || down.destroyed || up.destroyed) return { refused: 'ended' };
    const fds = [socketFd(down), socketFd(up)] as const;
    // 1. Node stops reading both: from now on what arrives stays in the kernel.
    hold(down);
    hold(up);
    // 2. What Node had already read (a sniff's bytes, a banner) goes on from user space, before anything the kernel moves.
    // (Told to the hooks as they go: they are counted whatever happens next.)
    const told = (n: [number, number]) => {
      if (n[0] > 0) hooks.downToUp(n[0]);
      if (n[1] > 0) hooks.upToDown(n[1]);
      return n[0] + n[1];
    };
    told([drainInto(down, up), drainInto(up, down)]);
    // A socket reset while its queue is taken: its recv took the error, which Node will not see again; passed on here.
    const resetMeanwhile = (err: unknown) => {
      release(down);
      release(up);
      resetSide(down);
      resetSide(up);
      return { outcome: { error: err as Error, side: 'downstream' as const } };
    };
    // And what waits in the kernel: the program sends on the buffers of a receive queue whole, so one Node had read part
    // of would go twice. Taken here (Node's reading is stopped), each queue is empty, and what arrives next is whole.
    try {
      told([take(fds[0], up), take(fds[1], down)]);
    } catch (err) {
      return resetMeanwhile(err);
    }
    await Promise.all([flushed(up), flushed(down)]);
    // What arrived while those bytes went out is taken too, a few rounds: a queue left full closes the sender's window,
    // and bytes stranded in it (below) would then wait for an arrival that cannot come.
    for (let round = 0; round < TAKE_ROUNDS && !down.destroyed && !up.destroyed; round++) {
      let more: number;
      try {
        more = told([take(fds[0], up), take(fds[1], down)]);
      } catch (err) {
        return resetMeanwhile(err);
      }
      if (more === 0) break;
      await Promise.all([flushed(up), flushed(down)]);
    }
    if (down.destroyed || up.destroyed) {
      release(down);
      release(up);
      return { refused: 'ended' };
    }
    // What each socket was given to send so far (a FIN passed later waits until the redirects add up to it), and what
    // Node read of what it received (the rest waits in its receive queue).
    let before;
    try {
      before = fds.map((fd) => socketQueues(fd));
    } catch (err) {
      release(down);
      release(up);
      throw err;
    }
    if (before.some((q) => !q.settled)) {
      // Bytes kept arriving between the reads: what Node took is not known exactly, and the hand-over would guess.
      release(down);
      release(up);
      return { refused: 'unsettled' };
    }
    const sent = before.map((q) => q.acked + q.outq);
    const read = before.map((q) => q.received - q.inq);
    // 3. Both into the sockhash: what they read from now on, the program sends on.
    let cookies: [number, number];
    try {
      cookies = this.maps.add(fds[0], fds[1]);
    } catch (err) {
      release(down);
      release(up);
      throw err;
    }
    try {
      // Bytes that reached a socket before the insert wait in its queue until the program runs for it, which it does on
      // an arrival: in order, but with nothing after them (a client waiting for its answer, a sender whose window the
      // full queue closed) they would wait for ever. A poke has the kernel run it now. They show as received, neither
      // read by Node nor taken; should they stay so, the pair goes back to user space after a while, which may read them
      // only if the program never sent anything on.
      for (const fd of fds) socketPoke(fd);
      const unread = () => fds.reduce((sum, fd, i) => sum + socketQueues(fd).received - read[i]! - (this.maps.counts(cookies[i]!, false)?.bytes ?? 0), 0);
      const deadline = performance.now() + HANDOVER_WAIT_MS;
      while (unread() > 0) {
        if (performance.now() >= deadline) {
          // From here the program sends nothing on: a socket without its entry is left to its reader.
          const moved = [this.maps.counts(cookies[0], true), this.maps.counts(cookies[1], true)];
          release(down);
          release(up);
          if (moved.every((c) => !c || c.bytes + c.dropped === 0)) return { refused: 'unread_bytes' };
          // The program ran between the looks and the removal: bytes went both ways, and which came first is lost.
          const error = Object.assign(new Error('the kernel splice hand-over raced with arriving bytes'), { code: 'EPROTO' });
          resetSide(down);
          resetSide(up);
          return { outcome: { error, side: 'downstream' } };
        }
        await new Promise((r) => setTimeout(r, 1));
      }
    } catch (err) {
      // A look failed (the socket went meanwhile): nothing more is sent on, and user space takes the pair if nothing was.
      const moved = [this.maps.counts(cookies[0], true), this.maps.counts(cookies[1], true)];
      release(down);
      release(up);
      if (moved.some((c) => c && c.bytes + c.dropped > 0)) {
        resetSide(down);
        resetSide(up);
        return { outcome: { error: err as Error, side: 'downstream' } };
      }
      throw err;
    }
    onKernel?.();
    return { outcome: await new KernelPair(this.maps, down, up, cookies, sent, hooks).run() };
  }
}

/** One pair in the kernel's hands until both its sockets closed. */
class KernelPair {
  private readonly outcome: SpliceOutcome = {};
  private open = 2;
  /** Bytes of each direction already told to the hooks (down to up, up to down). */
  private told = [0, 0];
  private timer: NodeJS.Timeout | undefined;
  private resolve!: (outcome: SpliceOutcome) => void;

  constructor(
    private readonly maps: SameNodeMaps,
    private readonly down: net.Socket,
    private readonly up: net.Socket,
    /** The sockets' cookies: their counts in the program's map. */
    private readonly cookies: readonly [number, number],
    /** What each socket had been given to send before the hand-over. */
    private readonly sent: readonly number[],
    private readonly hooks: SpliceHooks,
  ) {}

  run(): Promise<SpliceOutcome> {
    return new Promise((resolve) => {
      this.resolve = resolve;
      const sides = [this.down, this.up] as const;
      sides.forEach((s, i) => {
        const other = sides[1 - i]!;
        s.on('data', (chunk: Buffer) => this.fail(i, Object.assign(new Error(`${chunk.length} bytes reached user space past the kernel splice`), { code: 'EPROTO' })));
        s.on('error', (err: Error) => this.fail(i, err));
        s.once('end', () => this.ended(i, s, other));
        s.once('close', () => this.closed(s, i));
      });
      this.timer = setInterval(() => this.count(false), COUNT_PERIOD_MS);
      this.timer.unref();
      release(this.down);
      release(this.up);
    });
  }

  /**
   * Side `i` read its end. A socket in a sockhash reads a reset as an end too (the kernel's reader for such sockets
   * looks at "done" before the error): its pending error tells them apart.
   */
  private ended(i: number, s: net.Socket, other: net.Socket): void {
    const fd = fdOrUndefined(s);
    let errno = fd === undefined ? ECONNRESET : 0;
    if (fd !== undefined) {
      try {
        errno = socketError(fd);
      } catch {
        errno = ECONNRESET;
      }
    }
    if (errno !== 0) {
      const code = errno === ECONNRESET ? 'ECONNRESET' : `errno ${errno}`;
      return this.fail(i, Object.assign(new Error(errno === ECONNRESET ? 'connection reset by peer' : `socket error ${errno}`), { code }));
    }
    this.passFin(i, other, fdOrUndefined(other));
  }

  /** Side `i` ended (its peer's FIN): `to` gets a FIN once it has every byte the program sent on from `i` before it. */
  private passFin(i: number, to: net.Socket, fd: number | undefined): void {
    if (fd === undefined || this.outcome.error) return;
    let delay = 1;
    const look = () => {
      if (to.destroyed || this.outcome.error) return;
      let q: { acked: number; outq: number };
      let moved: number;
      try {
        q = socketQueues(fd);
        moved = this.maps.counts(this.cookies[i]!, false)?.bytes ?? 0;
      } catch (err) {
        return this.fail(i, err as Error);
      }
      if (q.acked + q.outq >= this.sent[1 - i]! + moved) {
        to.end();
        return;
      }
      setTimeout(look, delay);
      delay = Math.min(FIN_POLL_MAX_MS, delay * 2);
    };
    look();
  }

  private fail(i: number, err: Error): void {
    if (!this.outcome.error) {
      this.outcome.error = err;
      this.outcome.side = i === 0 ? 'downstream' : 'upstream';
    }
    resetSide(i === 0 ? this.up : this.down);
    resetSide(i === 0 ? this.down : this.up);
  }

  private closed(s: net.Socket, i: number): void {
    // Closed without FIN or error (destroyed by the agent: a policy cut it): the other side must not wait for ever.
    if (!s.readableEnded && !this.outcome.error) this.fail(i, Object.assign(new Error('closed before end of stream'), { code: 'ECONNRESET' }));
    if (--this.open > 0) return;
    clearInterval(this.timer);
    this.count(true);
    this.resolve(this.outcome);
  }

  /** Tells the hooks what the program moved since the last time; `final`: and forgets the pair's entries. */
  private count(final: boolean): void {
    let moved;
    try {
      moved = [this.maps.counts(this.cookies[0]!, final), this.maps.counts(this.cookies[1]!, final)];
    } catch {
      return;
    }
    const [a, b] = [moved[0]?.bytes ?? this.told[0]!, moved[1]?.bytes ?? this.told[1]!];
    if (a > this.told[0]!) this.hooks.downToUp(a - this.told[0]!);
    if (b > this.told[1]!) this.hooks.upToDown(b - this.told[1]!);
    this.told = [a, b];
    const dropped = (moved[0]?.dropped ?? 0) + (moved[1]?.dropped ?? 0);
    if (dropped > 0 && !this.outcome.error) this.outcome.error = Object.assign(new Error(`the kernel splice lost ${dropped} bytes (a socket left its map early)`), { code: 'EPROTO' });
  }
}

/** Stops Node reading a socket, so that what arrives stays in the kernel (its stream is paused too). */
function hold(s: Held): void {
  s.pause();
  const h = s._handle;
  if (h?.readStop) {
    h.readStop();
    // Node restarts reading when asked for more while it believes it is not reading: it must believe it is.
    h.reading = true;
  }
}

/**
 * Lets Node read again (it will see only the socket's end and errors while the pair is in the kernel's hands). The
 * handle is started here: the stream may still count a read asked for before hold(), and would not ask again.
 */
function release(s: Held): void {
  const h = s._handle;
  if (h?.readStart && !s.destroyed) {
    h.reading = true;
    h.readStart();
  }
  s.resume();
}

/** Writes on what Node had already read from `from` and not handed on; returns how many bytes. */
function drainInto(from: net.Socket, to: net.Socket): number {
  let n = 0;
  for (let chunk = from.read() as Buffer | null; chunk !== null; chunk = from.read() as Buffer | null) {
    to.write(chunk);
    n += chunk.length;
  }
  return n;
}

/** Writes on everything `fd`'s receive queue holds now (TAKE_MAX at a time); returns how many bytes. */
function take(fd: number, to: net.Socket): number {
  let n = 0;
  for (;;) {
    const bytes = socketTake(fd, TAKE_MAX);
    if (bytes.length > 0) to.write(bytes);
    n += bytes.length;
    if (bytes.length < TAKE_MAX) return n;
  }
}

/** Resolves once everything written to `s` is in the kernel (or `s` is gone). */
function flushed(s: net.Socket): Promise<void> {
  if (s.writableLength === 0 || s.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      s.off('drain', done);
      s.off('close', done);
      resolve();
    };
    s.on('drain', done);
    s.on('close', done);
  });
}

function fdOrUndefined(s: net.Socket): number | undefined {
  try {
    return socketFd(s);
  } catch {
    return undefined;
  }
}
