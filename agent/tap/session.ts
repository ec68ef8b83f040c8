// One open tap stream, on the main thread: every thread's observations for it arrive here (the main thread's hub
// directly, the workers' in batches), pass its rate bound, get their ids and go out; what the bound or a reader too
// slow for the events refuses is counted, and the count rides on the next message (or on a summary within a
// second). The stream ends at its limit, at its duration, or with the agent, with a last summary.
import type { Clock, TimerHandle } from '../clock.js';
import type { Observation, TapEvent } from './events.js';
import { RateBound } from './limiter.js';

/** Where a session's events go: the gRPC stream (server.ts), or a test's array. */
export interface TapSink {
  write(event: TapEvent): void;
  /** Events written and not yet sent: past MAX_BACKLOG the reader is too slow and observations are dropped. */
  backlog(): number;
  end(): void;
}

/** Events a stream may hold for a slow reader before observations are dropped. */
export const MAX_BACKLOG = 4096;
/** How soon drops no event carried are told in a summary. */
export const SUMMARY_MS = 1000;

export interface TapSessionInputs {
  id: number;
  node: string;
  /** Observations after which the stream ends; 0: none. */
  limit: number;
  /** 0: until the reader goes. */
  durationMs: number;
  maxRps: number;
  sink: TapSink;
  clock: Clock;
  /** Told once, when the session ends (by itself or closed). */
  onEnd: (session: TapSession) => void;
  /** Told of every observation dropped for this stream, wherever it was (a metric). */
  onDrop?: (n: number) => void;
}

export class TapSession {
  readonly id: number;
  readonly maxRps: number;
  delivered = 0;
  droppedTotal = 0;
  /** Dropped since the last message told it. */
  private pending = 0;
  private seq = 0;
  private ended = false;
  private readonly bound: RateBound;
  private readonly durationTimer: TimerHandle | undefined;
  private summaryTimer: TimerHandle | undefined;

  constructor(private readonly inputs: TapSessionInputs) {
    this.id = inputs.id;
    this.maxRps = inputs.maxRps;
    this.bound = new RateBound(inputs.maxRps, () => inputs.clock.now());
    if (inputs.durationMs > 0) this.durationTimer = inputs.clock.after(inputs.durationMs, () => this.end('duration'));
    this.tick();
  }

  get closed(): boolean {
    return this.ended;
  }

  /** An observation from any thread's hub. */
  deliver(obs: Observation): void {
    if (this.ended) return;
    if (this.inputs.sink.backlog() > MAX_BACKLOG || !this.bound.take()) {
      this.drop(1);
      return;
    }
    const id = ++this.seq;
    for (let i = 0; i < obs.length; i++) {
      const e: TapEvent = { ...obs[i]!, id };
      if (i === 0 && this.pending > 0) {
        e.dropped = this.pending;
        this.pending = 0;
      }
      this.inputs.sink.write(e);
    }
    this.delivered++;
    if (this.inputs.limit > 0 && this.delivered >= this.inputs.limit) this.end('limit');
  }

  /** Observations a hub's bound (this thread's or a worker's) dropped for this tap. */
  drop(n: number): void {
    if (this.ended) return;
    this.pending += n;
    this.droppedTotal += n;
    this.inputs.onDrop?.(n);
  }

  /** Ends the stream with a last summary (`why` says why), or silently when the reader went away (`why` undefined). */
  end(why?: string): void {
    if (this.ended) return;
    this.ended = true;
    this.durationTimer?.cancel();
    this.summaryTimer?.cancel();
    if (why !== undefined) {
      this.inputs.sink.write(this.summary(why));
      this.inputs.sink.end();
    }
    this.inputs.onEnd(this);
  }

  private tick(): void {
    this.summaryTimer = this.inputs.clock.after(SUMMARY_MS, () => {
      if (this.ended) return;
      if (this.pending > 0 && this.inputs.sink.backlog() <= MAX_BACKLOG) this.inputs.sink.write(this.summary(''));
      this.tick();
    });
  }

  private summary(end: string): TapEvent {
    const e: TapEvent = {
      node: this.inputs.node,
      reporter: '',
      timestampMs: this.inputs.clock.now(),
      summary: { delivered: this.delivered, droppedTotal: this.droppedTotal, ...(end && { end }) },
    };
    if (this.pending > 0) e.dropped = this.pending;
    this.pending = 0;
    return e;
  }
}
