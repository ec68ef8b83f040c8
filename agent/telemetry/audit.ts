// The audit trail's destination: the access logger (one JSON line per connection and per HTTP/gRPC request,
// written by proxy/connection.ts and l7/record.ts) writes here, never straight to a stream that could lose a
// line unnoticed. Every line is either written (trellis_audit_lines_total) or counted as dropped with the reason
// (trellis_audit_dropped_total{reason}): a failed write (ENOSPC, EIO, EPIPE...), the file gone with its
// directory (ENOENT), a backlog over its bound (backlog_full), or lines left at shutdown (closed).
//
// Destination: stdout by default (fd 1, where the container runtime collects it), or a file appended to and
// rotated by size as logrotate does (PATH -> PATH.1 -> ... -> PATH.<maxFiles>, the oldest overwritten). A file
// moved or deleted behind the agent's back (an external logrotate) is noticed within reopenCheckMs and reopened.
//
// Why not pino.destination (sonic-boom): on a failed write it emits 'error' without saying how many lines were
// lost, and it knows neither line counts nor sizes per write, which exact counting and rotation both need. The
// writer here is small: lines are queued as pino hands them over (one write() call per line) and the lines of
// flushDelayMs (20 ms; a pipe chunk's worth at once) go out together. The queue is bounded (maxBacklogBytes): when the destination falls
// behind for longer than that covers, lines are dropped and counted rather than buffered without end.
//  - A file is written with asynchronous fs.write, one at a time, on libuv's thread pool: a slow disk never
//    stalls the proxy, it fills the queue.
//  - A pipe (stdout under a container runtime) is written with writeSync in chunks of at most PIPE_BUF bytes cut
//    at line ends. The kernel writes such a chunk whole, so the agent's own log lines, written to the same pipe
//    by pino, never land inside an audit line; and a small write to a pipe costs a few microseconds, less than
//    a round trip through the thread pool (measured: about 40 000 lines/s through a pipe this way, half that
//    through the pool). That needs a non-blocking descriptor, so that a full pipe answers EAGAIN (waited out
//    with a timer, never counted as a loss; lines queue meanwhile) instead of stopping the event loop: the
//    agent's stdout is one (libuv opens a pipe so once process.stdout exists, and pino's logger makes it), and
//    a FIFO given as the file is opened so. A blocking pipe is written through the thread pool instead.
// Shutdown waits for the queue at most closeTimeoutMs: a stdout nobody reads must not hold the agent up; what
// is left is counted as dropped (closed).
import { constants as fsConstants, close, fstatSync, open, openSync, promises as fsp, readFileSync, write, writeSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import { systemClock, type Clock } from '../clock.js';
import { TrellisError } from '../errors.js';

export const DEFAULT_AUDIT_MAX_BYTES = 100 * 1024 * 1024;
export const DEFAULT_AUDIT_MAX_FILES = 5;
/** About 25 000 lines of a few hundred bytes: several seconds of a busy node's trail while its disk stalls. */
export const DEFAULT_AUDIT_BACKLOG_BYTES = 16 * 1024 * 1024;
/** Lines gathered for one write to a file: one buffer of this size at a time (a longer line gets its own). */
const ACCUMULATOR_BYTES = 64 * 1024;
/** Written accumulators kept for reuse (a gathering one, one being written, and a little slack). */
const SPARE_ACCUMULATORS = 4;
const NEWLINE = Buffer.from('\n');

/** Whole lines, encoded, waiting for one write. */
interface Pending {
  readonly bytes: Buffer;
  used: number;
  lines: number;
}

/** Writes to a pipe of at most this many bytes are atomic (POSIX PIPE_BUF on Linux). */
const PIPE_BUF = 4096;
/** Synchronous pipe writes in a row before the event loop gets a turn (256 KiB, well under a millisecond). */
const SYNC_CHUNKS_PER_TURN = 64;
/** Largest single write to a file. */
const FILE_CHUNK = 1024 * 1024;
/** Wait before writing again to a full non-blocking pipe (sonic-boom waits 100 ms; lines queue meanwhile). */
const EAGAIN_RETRY_MS = 10;
/** After a failed rotation, appending goes on for this long before the next attempt (not one attempt per write). */
const ROTATE_RETRY_MS = 10_000;
// O_NONBLOCK: nothing for a regular file; for a FIFO, writes answer EAGAIN instead of blocking (see the header).
const APPEND = fsConstants.O_WRONLY | fsConstants.O_APPEND | fsConstants.O_CREAT | fsConstants.O_NONBLOCK;
const DEFAULT_CLOSE_TIMEOUT_MS = 2000;
/**
 * Lines wait at most this long to be written. One write per turn of the event loop cost a thread-pool round
 * trip (or a pipe write) per request at L7 rates: about a fifth of the agent's CPU at 1 000 requests/s in the
 * bench. Gathered for 20 ms, a write carries tens of lines (Envoy flushes access logs every second).
 */
export const DEFAULT_AUDIT_FLUSH_DELAY_MS = 20;

export interface AuditOptions {
  /** Append to this file and rotate it by size; absent: stdout. */
  readonly file?: string;
  /** With file: rotate before a write would take the file past this size. */
  readonly maxBytes?: number;
  /** With file: rotated files kept (PATH.1 is the newest). */
  readonly maxFiles?: number;
  /** Lines waiting to be written beyond this many bytes are dropped and counted. */
  readonly maxBacklogBytes?: number;
  /** Where the counters are registered (the agent's registry). */
  readonly registry: Registry;
  /** The agent's own logger: the first failed write of an episode and the recovery are reported there. */
  readonly logger: Logger;
  /** False: no line is written (--no-audit). The agent's own log level never turns the trail off. */
  readonly enabled?: boolean;
  /** Fields on every line (the node, for instance); "log": "access" is added. */
  readonly base?: Readonly<Record<string, unknown>>;
  /** Without file: the descriptor to write to (1, stdout, unless a test says otherwise). Never closed. */
  readonly fd?: number;
  /** With file: how often the path is checked against the open file (moved or deleted behind our back). */
  readonly reopenCheckMs?: number;
  /** How long close() waits for the queue to be written before counting the rest as dropped. */
  readonly closeTimeoutMs?: number;
  /** Lines are gathered this long before a write (0: the lines of one turn of the event loop go together). */
  readonly flushDelayMs?: number;
  readonly clock?: Clock;
}

/**
 * Where access lines go. A pino logger is one (info); the agent's audit log also takes lines whose fields are
 * already JSON (line), which the request path builds by hand: pino's generic serializer was most of a line's cost.
 */
export interface AccessLog {
  info(fields: object, msg: string): void;
  /** One line from its fields as JSON members without braces (`"a":1,"b":"x"`); msg is "connection" or "request". */
  line?(members: string, msg: string): void;
}

export interface AuditLog {
  /** The access logger: one info line per connection and per request. */
  readonly logger: Logger;
  /** The same destination, with the fast path for lines built by hand. */
  readonly access: AccessLog;
  /** A whole line made elsewhere (a worker thread's access logger), written and counted like the others. */
  write(line: string): void;
  /** Resolves once every line logged so far is written or counted as dropped. */
  flush(): Promise<void>;
  /**
   * Flushes (for at most closeTimeoutMs), then closes the file; lines still queued then, and lines logged
   * afterwards, are counted as dropped (reason "closed").
   */
  close(): Promise<void>;
}

/** The counters the sink updates. */
interface AuditCounters {
  readonly written: Counter<string>;
  readonly dropped: Counter<string>;
}

/**
 * Builds the access logger and its destination. Opens the file now: a path that cannot be written fails the
 * agent's start with the reason, rather than dropping every line of its life.
 */
export function createAuditLog(opts: AuditOptions): AuditLog {
  const registers = [opts.registry];
  const counters: AuditCounters = {
    written: new Counter({ name: 'trellis_audit_lines_total', help: 'Audit (access log) lines written to their destination', registers }),
    dropped: new Counter({
      name: 'trellis_audit_dropped_total',
      help: 'Audit (access log) lines lost, by reason: a write error code (ENOSPC, EIO, ENOENT...), backlog_full, closed',
      labelNames: ['reason'],
      registers,
    }),
  };
  const sink = new AuditSink(opts, counters);
  new Gauge({
    name: 'trellis_audit_backlog_bytes',
    help: 'Audit lines queued for writing, in bytes; lines are dropped past the bound',
    registers,
    collect() {
      this.set(sink.backlog());
    },
  });
  const { logger, access } = accessLogTo((line) => sink.write(line), { enabled: opts.enabled !== false, base: opts.base });
  return {
    logger,
    access,
    write: (line) => void sink.write(line),
    flush: () => sink.flush(),
    close: () => sink.close(),
  };
}

/**
 * The access logger over a line writer: a pino logger (info) and the fast path for lines built by hand (line),
 * both writing the same JSON lines (level, time, the base fields, then the line's own). A worker thread makes one
 * over its batch to the main thread; createAuditLog, over the sink.
 */
export function accessLogTo(write: (line: string) => void, opts: { enabled: boolean; base?: Readonly<Record<string, unknown>> | undefined }): { logger: Logger; access: AccessLog } {
  const logger = pino(
    {
      level: opts.enabled ? 'info' : 'silent',
      base: { ...opts.base, log: 'access' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    { write },
  );
  // What pino writes before a line's own fields, for lines built by hand: the same level, time and base fields.
  const base = JSON.stringify({ ...opts.base, log: 'access' }).slice(1, -1);
  let lastMs = 0;
  let lastTime = '';
  const access: AccessLog = {
    info: (fields, msg) => logger.info(fields, msg),
    line(members, msg) {
      if (!opts.enabled) return;
      const now = Date.now();
      if (now !== lastMs) {
        lastMs = now;
        lastTime = new Date(now).toISOString();
      }
      write(`{"level":30,"time":"${lastTime}",${base},${members},"msg":"${msg}"}\n`);
    },
  };
  return { logger, access };
}

type Target =
  | { readonly kind: 'fd'; readonly fd: number }
  | { readonly kind: 'file'; readonly path: string };

/** pino's destination: write() takes one whole line. */
class AuditSink {
  readonly #counters: AuditCounters;
  readonly #logger: Logger;
  readonly #clock: Clock;
  readonly #target: Target;
  readonly #maxBytes: number;
  readonly #maxFiles: number;
  readonly #maxBacklog: number;
  readonly #reopenCheckMs: number;
  readonly #closeTimeoutMs: number;
  /** Largest write: PIPE_BUF to pipes, sockets and devices (atomic, see the header), else up to 1 MiB. */
  #chunk: number;
  /** Written with writeSync (not a regular file, and non-blocking: a pipe, a socket, a device). */
  #sync = false;
  /** Lines accepted and not yet written or counted as dropped. */
  #queuedLines = 0;
  /** close() gave up waiting: whatever is still in flight was counted as dropped, and is not counted again. */
  #abandoned = false;

  /**
   * Lines logged since the running drain took its batch, as bytes: each line is encoded at once into the chunk
   * being filled (off the JS heap), so the strings die young. Holding the lines of 20 ms as strings made every
   * young-generation collection copy, then promote, a few hundred KB of them at L7 rates.
   */
  #pending: Pending[] = [];
  /**
   * Accumulators whose write has completed, kept for the next lines. A new 64 KiB buffer per write lived long enough
   * (gathering, then the write) to be promoted out of V8's young generation, and dead ones then piled up as external
   * memory until a full GC: ~25 MB per agent at 4 000 requests/s, and that GC's cost on every request.
   */
  #spare: Buffer[] = [];
  /** Bytes queued: pending lines and the batch being written. */
  #backlog = 0;
  #draining = false;
  /** The pending write's timer while lines are being gathered (flushDelayMs). */
  #gathering: NodeJS.Timeout | undefined;
  readonly #flushDelayMs: number;
  #closed = false;
  #waiters: (() => void)[] = [];
  /** The last write stopped inside a line: the next starts on a fresh line so that no two lines run together. */
  #midLine = false;
  /** Set while writes fail, to report an episode once (and its end). */
  #failing: string | undefined;

  // File state.
  #fd: number | undefined;
  #size = 0;
  /** Rotation and reopen checks only make sense for a regular file (never for /dev/stdout or a FIFO). */
  #regular = false;
  #ino = 0;
  #dev = 0;
  #checkedAt = 0;
  #noRotateUntil = 0;

  constructor(opts: AuditOptions, counters: AuditCounters) {
    this.#counters = counters;
    this.#logger = opts.logger;
    this.#clock = opts.clock ?? systemClock;
    this.#maxBytes = opts.maxBytes ?? DEFAULT_AUDIT_MAX_BYTES;
    this.#maxFiles = opts.maxFiles ?? DEFAULT_AUDIT_MAX_FILES;
    this.#maxBacklog = opts.maxBacklogBytes ?? DEFAULT_AUDIT_BACKLOG_BYTES;
    this.#reopenCheckMs = opts.reopenCheckMs ?? 1000;
    this.#closeTimeoutMs = opts.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS;
    this.#flushDelayMs = opts.flushDelayMs ?? DEFAULT_AUDIT_FLUSH_DELAY_MS;
    if (this.#maxBytes < 1 || this.#maxFiles < 1) throw new TrellisError('ECONFIG', 'audit: maxBytes and maxFiles must be at least 1');
    if (opts.file !== undefined) {
      this.#target = { kind: 'file', path: opts.file };
      try {
        this.#opened(openSync(opts.file, APPEND, 0o640));
      } catch (err) {
        throw new TrellisError('ECONFIG', `cannot open the audit file ${opts.file}: ${(err as Error).message} (create its directory, or mount a writable volume there)`, { cause: err });
      }
      this.#chunk = this.#regular ? Math.min(FILE_CHUNK, this.#maxBytes) : PIPE_BUF;
      this.#sync = !this.#regular && nonBlocking(this.#fd!);
    } else {
      const fd = opts.fd ?? 1;
      this.#target = { kind: 'fd', fd };
      let st;
      try {
        st = fstatSync(fd);
      } catch {
        st = undefined;
      }
      this.#chunk = st?.isFile() ? FILE_CHUNK : PIPE_BUF;
      this.#sync = !st?.isFile() && nonBlocking(fd);
    }
  }

  backlog(): number {
    return this.#backlog;
  }

  write(line: string): boolean {
    if (this.#closed) {
      this.#counters.dropped.inc({ reason: 'closed' });
      return true;
    }
    const size = Buffer.byteLength(line);
    if (this.#backlog + size > this.#maxBacklog) {
      this.#counters.dropped.inc({ reason: 'backlog_full' });
      if (this.#failing === undefined) this.#report('backlog_full');
      return true;
    }
    // Into the chunk being filled when the whole line fits, else a new chunk (a line never straddles two writes).
    let last = this.#pending.at(-1);
    if (!last || last.used + size > last.bytes.length) {
      const standard = Math.min(this.#chunk, ACCUMULATOR_BYTES);
      const spare = size <= standard ? this.#spare.pop() : undefined;
      last = { bytes: spare?.length === standard ? spare : Buffer.allocUnsafe(Math.max(size, standard)), used: 0, lines: 0 };
      this.#pending.push(last);
    }
    last.used += last.bytes.write(line, last.used);
    last.lines++;
    this.#backlog += size;
    this.#queuedLines++;
    if (!this.#draining) {
      this.#draining = true;
      // The lines gathered meanwhile go out in one write; a chunk's worth goes at the end of this turn.
      if (this.#flushDelayMs > 0) this.#gathering = setTimeout(() => this.#drainNow(), this.#flushDelayMs);
      else setImmediate(() => void this.#drain());
    } else if (this.#gathering !== undefined && this.#backlog >= this.#chunk) {
      clearTimeout(this.#gathering);
      this.#gathering = undefined;
      setImmediate(() => void this.#drain());
    }
    return true;
  }

  #drainNow(): void {
    if (this.#gathering === undefined) return;
    clearTimeout(this.#gathering);
    this.#gathering = undefined;
    void this.#drain();
  }

  /** pino's logger.flush(cb): writes what is gathered now. */
  flush(cb?: (err?: Error) => void): Promise<void> {
    const done = !this.#draining ? Promise.resolve() : new Promise<void>((resolve) => this.#waiters.push(resolve));
    this.#drainNow();
    if (cb) void done.then(() => cb());
    return done;
  }

  async close(): Promise<void> {
    this.#closed = true;
    let timer: NodeJS.Timeout | undefined;
    const gaveUp = await Promise.race([
      this.flush().then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), this.#closeTimeoutMs))),
    ]);
    clearTimeout(timer);
    if (gaveUp && this.#queuedLines > 0) {
      this.#abandoned = true;
      this.#counters.dropped.inc({ reason: 'closed' }, this.#queuedLines);
      this.#queuedLines = 0;
      this.#report('closed');
    }
    if (this.#target.kind === 'file' && this.#fd !== undefined) {
      const fd = this.#fd;
      this.#fd = undefined;
      await closeFd(fd);
    }
  }

  async #drain(): Promise<void> {
    try {
      let chunks = 0;
      while (this.#pending.length > 0 && !this.#abandoned) {
        const batch = this.#pending;
        this.#pending = [];
        for (const p of batch) {
          if (this.#abandoned) break;
          await this.#writeChunk(p.bytes.subarray(0, p.used), p.lines);
          this.#backlog -= p.used;
          if (p.bytes.length === Math.min(this.#chunk, ACCUMULATOR_BYTES) && this.#spare.length < SPARE_ACCUMULATORS) this.#spare.push(p.bytes);
          // Synchronous writes of a large backlog (after a stall) give the event loop a turn now and then.
          if (this.#sync && ++chunks % SYNC_CHUNKS_PER_TURN === 0) await new Promise((resolve) => setImmediate(resolve));
        }
        // Lines logged while that write was out are gathered again (flushDelayMs), not written at once: written
        // at once, a busy agent made one write (a thread-pool round trip) per request or two. A chunk's worth, or
        // a flush waiting, goes now.
        if (this.#waiters.length === 0 && this.#backlog < this.#chunk) break;
      }
    } catch (err) {
      // A bug, not an I/O failure (those are counted in #writeChunk): say so, and keep the sink usable.
      this.#logger.error({ err }, 'audit trail: writer failed');
    } finally {
      this.#draining = false;
      if (this.#pending.length > 0 && !this.#abandoned) {
        this.#draining = true;
        if (this.#flushDelayMs > 0) this.#gathering = setTimeout(() => this.#drainNow(), this.#flushDelayMs);
        else setImmediate(() => void this.#drain());
      } else {
        const waiters = this.#waiters;
        this.#waiters = [];
        for (const w of waiters) w();
      }
    }
  }

  /** Writes `lines` lines, or counts those that did not make it whole. */
  async #writeChunk(bytes: Buffer, lines: number): Promise<void> {
    const fd = await this.#writableFd();
    if (typeof fd === 'string') return this.#lost(fd, lines);
    const buf = this.#midLine ? Buffer.concat([NEWLINE, bytes]) : bytes;
    if (this.#target.kind === 'file' && this.#regular && this.#size > 0 && this.#size + buf.length > this.#maxBytes && this.#clock.now() >= this.#noRotateUntil) {
      const rotated = await this.#rotate();
      if (typeof rotated === 'string') return this.#lost(rotated, lines);
      return this.#writeChunk(bytes, lines);
    }
    let done = 0;
    try {
      const gaveUp = () => this.#abandoned;
      while (done < buf.length) done += this.#sync ? await writeNow(fd, buf, done, gaveUp) : await writeSome(fd, buf, done, gaveUp);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'EUNKNOWN';
      // Lines written whole before the failure count as written; the one cut short and the rest are lost.
      let whole = 0;
      for (let k = this.#midLine ? 1 : 0; k < done; k++) if (buf[k] === 0x0a) whole++;
      if (done > 0) this.#midLine = buf[done - 1] !== 0x0a;
      this.#size += done;
      this.#wrote(whole);
      this.#lost(code, lines - whole);
      // The descriptor may be dead (EIO, ESTALE, a volume gone): a file is reopened for the next chunk.
      if (this.#target.kind === 'file') await this.#forget();
      return;
    }
    this.#midLine = false;
    this.#size += buf.length;
    this.#wrote(lines);
    if (this.#failing !== undefined) {
      this.#logger.info({ after: this.#failing }, 'audit trail: writing again');
      this.#failing = undefined;
    }
  }

  #wrote(lines: number): void {
    if (this.#abandoned || lines === 0) return;
    this.#queuedLines -= lines;
    this.#counters.written.inc(lines);
  }

  #lost(reason: string, lines: number): void {
    if (this.#abandoned) return;
    this.#queuedLines -= lines;
    if (lines > 0) this.#counters.dropped.inc({ reason }, lines);
    if (this.#failing !== reason) this.#report(reason);
  }

  #report(reason: string): void {
    this.#failing = reason;
    const where = this.#target.kind === 'file' ? this.#target.path : `fd ${this.#target.fd}`;
    const hint =
      reason === 'backlog_full'
        ? 'the destination is slower than the traffic; lines are dropped until it catches up'
        : reason === 'closed'
          ? `the destination took more than ${this.#closeTimeoutMs} ms to take the last lines at shutdown`
        : reason === 'ENOSPC'
          ? 'the disk is full; free space or lower --audit-max-bytes / --audit-max-files'
          : 'lines are dropped until a write succeeds';
    this.#logger.error({ reason, destination: where }, `audit trail: lines dropped (${hint}); counted in trellis_audit_dropped_total`);
  }

  /** The descriptor to write to, opening or reopening the file as needed; a string is why there is none. */
  async #writableFd(): Promise<number | string> {
    const t = this.#target;
    if (t.kind === 'fd') return t.fd;
    if (this.#fd !== undefined && this.#regular && this.#clock.now() - this.#checkedAt >= this.#reopenCheckMs) {
      this.#checkedAt = this.#clock.now();
      // Moved away (rotated by someone else) or deleted: what we write would never be read. Reopen the path.
      const st = await fsp.stat(t.path).catch(() => undefined);
      if (!st || st.ino !== this.#ino || st.dev !== this.#dev) await this.#forget();
    }
    if (this.#fd !== undefined) return this.#fd;
    const fd = await openFd(t.path);
    if (typeof fd === 'string') return fd;
    this.#opened(fd);
    return fd;
  }

  #opened(fd: number): void {
    const st = fstatSync(fd);
    this.#fd = fd;
    this.#regular = st.isFile();
    this.#size = st.size;
    // A fresh file starts on a fresh line whatever the last write to the old one did.
    if (st.size === 0) this.#midLine = false;
    this.#ino = st.ino;
    this.#dev = st.dev;
    this.#checkedAt = this.#clock.now();
  }

  async #forget(): Promise<void> {
    const fd = this.#fd;
    this.#fd = undefined;
    if (fd !== undefined) await closeFd(fd);
  }

  /** PATH.<n-1> -> PATH.<n> ... PATH -> PATH.1, then a new PATH. A string is why it failed. */
  async #rotate(): Promise<void | string> {
    const path = (this.#target as { path: string }).path;
    await this.#forget();
    try {
      for (let i = this.#maxFiles - 1; i >= 1; i--) {
        await fsp.rename(`${path}.${i}`, `${path}.${i + 1}`).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw err;
        });
      }
      await fsp.rename(path, `${path}.1`);
    } catch (err) {
      // Cannot rotate (permissions, the directory gone): keep appending rather than lose lines; the reopen
      // below says whether the path is writable at all.
      const code = (err as NodeJS.ErrnoException).code ?? 'EUNKNOWN';
      this.#noRotateUntil = this.#clock.now() + ROTATE_RETRY_MS;
      this.#logger.warn({ reason: code, file: path }, 'audit trail: cannot rotate; appending past --audit-max-bytes');
    }
    const fd = await this.#writableFd();
    if (typeof fd === 'string') return fd;
  }
}

/** Whether writes to fd answer EAGAIN rather than block (O_NONBLOCK, read from /proc: Trellis runs on Linux). */
function nonBlocking(fd: number): boolean {
  try {
    const flags = /^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
    return flags !== undefined && (parseInt(flags, 8) & fsConstants.O_NONBLOCK) !== 0;
  } catch {
    return false;
  }
}

/** One write on the thread pool (files, blocking pipes). */
function writeSome(fd: number, buf: Buffer, offset: number, gaveUp: () => boolean): Promise<number> {
  return new Promise((resolve, reject) => {
    const attempt = () =>
      write(fd, buf, offset, buf.length - offset, null, (err, n) => {
        if (err && err.code === 'EAGAIN') setTimeout(() => (gaveUp() ? reject(cancelled()) : attempt()), EAGAIN_RETRY_MS);
        else if (err) reject(err);
        else resolve(n);
      });
    attempt();
  });
}

/** Opens for appending (a plain descriptor: a FileHandle would close itself when collected); a string is why not. */
function openFd(path: string): Promise<number | string> {
  return new Promise((resolve) =>
    open(path, APPEND, 0o640, (err, fd) => resolve(err ? (err.code ?? 'EUNKNOWN') : fd)),
  );
}

/** One write now, on the event loop (pipes); EAGAIN (a full non-blocking pipe) is waited out with a timer. */
function writeNow(fd: number, buf: Buffer, offset: number, gaveUp: () => boolean): Promise<number> | number {
  try {
    return writeSync(fd, buf, offset, buf.length - offset);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
    return new Promise((resolve) => setTimeout(resolve, EAGAIN_RETRY_MS)).then(() => {
      if (gaveUp()) throw cancelled();
      return writeNow(fd, buf, offset, gaveUp);
    });
  }
}

/** The wait for a full pipe ended by close(): its lines were already counted. */
function cancelled(): NodeJS.ErrnoException {
  return Object.assign(new Error('audit trail closed while the destination was full'), { code: 'ECANCELED' });
}

function closeFd(fd: number): Promise<void> {
  return new Promise((resolve) => close(fd, () => resolve()));
}
