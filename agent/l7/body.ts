// A message body between the two sides of an exchange: the side that reads it off the wire pushes chunks, the
// side that sends it on reads them, with backpressure both ways. No Node stream per message: a bodiless request
// or response shares one ended Body, and a body is one small object with an array of chunks that waited.
import type { Headers } from './headers.js';

/** Where a body's bytes go. */
export interface BodyReader {
  /** One chunk; false when the reader is full (the body then waits for pull()). */
  data(chunk: Buffer): boolean;
  /** The last byte arrived; HTTP/2 and chunked HTTP/1.1 may carry trailers. */
  end(trailers: Headers | undefined): void;
  /** The body broke midway (the peer reset, a limit was passed). */
  error(reason: string): void;
}

/** What the producer is told (the parser of the connection the body arrives on). */
export interface BodyProducer {
  /** The reader can take more: start reading from the wire again. */
  resume(): void;
  /** Nobody will read the rest: stop, and drop the connection if the body was not read whole. */
  cancel(): void;
}

const NO_PRODUCER: BodyProducer = { resume: () => undefined, cancel: () => undefined };

/** Chunks a body holds for a reader that is not attached or is full, before its producer is paused. */
const HIGH_WATER_BYTES = 64 * 1024;

export class Body {
  /** A body with no bytes, already ended (GET, HEAD, most responses to them). */
  static readonly EMPTY: Body = Body.of(Buffer.alloc(0));

  /** Chunks that arrived while the reader was absent or full. */
  private queue: Buffer[] | undefined;
  private held = 0;
  private reader: BodyReader | undefined;
  /** The reader takes data now (it has not answered false since its last pull()). */
  private ready = false;
  /** The producer was told to stop reading (push() returned false). */
  private stopped = false;
  private finished = false;
  private told = false;
  private trailers: Headers | undefined;
  private failure: string | undefined;
  /** Bytes received so far (what request_bytes and response_bytes report). */
  received = 0;

  constructor(
    private producer: BodyProducer = NO_PRODUCER,
    /** Content-Length when the message announced one; undefined for chunked or close-delimited bodies. */
    readonly length: number | undefined = undefined,
  ) {}

  /** A body that is all here: a buffered request replayed for a retry or a mirror, a local answer. */
  static of(bytes: Buffer): Body {
    const b = new Body(NO_PRODUCER, bytes.length);
    if (bytes.length > 0) b.push(bytes);
    b.finish(undefined);
    return b;
  }

  get ended(): boolean {
    return this.finished;
  }

  /** Why the body broke, once it did. */
  get failed(): string | undefined {
    return this.failure;
  }

  // ---- producer side ----

  /** A chunk from the wire; false when the producer should stop reading until it is resumed. */
  push(chunk: Buffer): boolean {
    this.received += chunk.length;
    if (this.ready && !this.queue) {
      if (this.reader!.data(chunk)) return true;
      this.ready = false;
      this.stopped = true;
      return false;
    }
    (this.queue ??= []).push(chunk);
    this.held += chunk.length;
    if (this.held < HIGH_WATER_BYTES) return true;
    this.stopped = true;
    return false;
  }

  finish(trailers: Headers | undefined): void {
    if (this.finished) return;
    this.finished = true;
    this.trailers = trailers;
    this.tell();
  }

  fail(reason: string): void {
    if (this.finished) return;
    this.finished = true;
    this.failure = reason;
    this.queue = undefined;
    this.held = 0;
    this.tell();
  }

  /** Sets the producer (a body made before its connection could be told to pause). */
  producedBy(producer: BodyProducer): void {
    this.producer = producer;
  }

  // ---- reader side ----

  /** Attaches the one reader; what already arrived is delivered at once. */
  read(reader: BodyReader): void {
    // An ended body with nothing left (Body.EMPTY among them) is told at once and keeps no state: shareable.
    if (this.finished && !this.queue) {
      if (this.failure !== undefined) reader.error(this.failure);
      else reader.end(this.trailers);
      return;
    }
    this.reader = reader;
    this.pull();
  }

  /** The reader can take more (again). */
  pull(): void {
    if (!this.reader) return;
    this.ready = true;
    const q = this.queue;
    if (q) {
      while (q.length > 0) {
        const c = q.shift()!;
        this.held -= c.length;
        const r: BodyReader = this.reader;
        if (!r.data(c)) {
          if (this.reader === r) this.ready = false;
          break;
        }
        if (this.reader !== r) return;
      }
      if (q.length > 0) return;
      this.queue = undefined;
    }
    this.tell();
    if (this.stopped && this.ready && !this.finished) {
      this.stopped = false;
      this.producer.resume();
    }
  }

  /** Nobody will read this body (the request was answered without it, or the attempt was abandoned). */
  discard(): void {
    if (this.finished && !this.queue) return;
    this.reader = DISCARD;
    this.ready = true;
    this.queue = undefined;
    this.held = 0;
    if (!this.finished) this.producer.cancel();
  }

  /**
   * The whole body as one Buffer if it ends within `cap` bytes, for a retry or a mirror to send again; undefined
   * when it is larger (then what was read so far stays in front and the body can still be read once, streamed).
   */
  collect(cap: number): Promise<Buffer | undefined> {
    return new Promise((resolve) => {
      const taken: Buffer[] = [];
      let size = 0;
      const collector: BodyReader = {
        data: (chunk) => {
          taken.push(chunk);
          size += chunk.length;
          if (size <= cap) return true;
          // Over the cap: put back what was read and let a later reader stream it.
          this.reader = undefined;
          this.ready = false;
          this.queue = this.queue ? [...taken, ...this.queue] : taken;
          this.held += size;
          resolve(undefined);
          return false;
        },
        end: () => resolve(taken.length === 1 ? taken[0]! : Buffer.concat(taken, size)),
        error: () => resolve(undefined),
      };
      this.read(collector);
    });
  }

  /** Tells the reader the end (once), when nothing is left in front of it. */
  private tell(): void {
    const r = this.reader;
    if (!r || this.told || !this.finished || this.queue) return;
    this.told = true;
    if (this.failure !== undefined) r.error(this.failure);
    else r.end(this.trailers);
  }
}

const DISCARD: BodyReader = { data: () => true, end: () => undefined, error: () => undefined };
