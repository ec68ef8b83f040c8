// The agent's taps, on the main thread: opens and ends tap streams (session.ts), tells every thread's hub which taps
// are open (this thread's directly, the worker threads' through `subscribe`), and routes the observations and drop
// counts that come back to their streams. It knows nothing of gRPC: server.ts is one way in, a test another.
import type { Clock } from '../clock.js';
import { TrellisError } from '../errors.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { EventBuilders, Observation } from './events.js';
import { TapHub, type TapSpec } from './hub.js';
import { compileMatch, type Match } from './match.js';
import { TapSession, type TapSink } from './session.js';

/** What a caller asks for (tap.proto's ObserveRequest). */
export interface ObserveParams {
  limit: number;
  durationMs: number;
  /** 0: the agent's cap. */
  maxRps: number;
  match?: Match | undefined;
}

/** What a worker thread sends back: the observations its hub admitted, and how many its bound dropped, per tap. */
export interface TapBatch {
  events: [tap: number, obs: Observation][];
  dropped: [tap: number, n: number][];
}

/** Taps open at once on one agent; one more is refused. */
export const MAX_TAPS = 16;
/** The longest duration a tap may ask for. */
export const MAX_DURATION_MS = 24 * 3600_000;

export interface TapServiceInputs {
  node: string;
  /** Lowercase header names whose values are redacted. */
  redact: ReadonlySet<string>;
  /** The most observations per second one tap may have (--tap-max-rps); a tap asking for more gets this. */
  maxRps: number;
  clock: Clock;
  metrics: Metrics;
  builders?: EventBuilders;
}

export class TapService {
  /** The main thread's hub, which its data plane's records call. */
  readonly hub: TapHub;
  private readonly sessions = new Map<number, TapSession>();
  private readonly listeners = new Set<(specs: readonly TapSpec[]) => void>();
  private specs: readonly TapSpec[] = [];
  private nextId = 1;
  private stopped = false;

  constructor(private readonly inputs: TapServiceInputs) {
    const { metrics } = inputs;
    this.hub = new TapHub({
      node: inputs.node,
      redact: inputs.redact,
      now: () => inputs.clock.now(),
      emit: (tap, obs) => this.sessions.get(tap)?.deliver(obs),
      onDrop: (tap) => this.dropped(tap, 1),
      onActive: (active) => metrics.tapActiveThreads.set(active ? 1 : 0),
      ...(inputs.builders && { builders: inputs.builders }),
    });
  }

  get size(): number {
    return this.sessions.size;
  }

  /** The taps open now, as every hub gets them. */
  current(): readonly TapSpec[] {
    return this.specs;
  }

  /** Opens a tap; refuses (EINVAL, EUNAVAILABLE) with what to change. */
  open(params: ObserveParams, sink: TapSink): TapSession {
    if (this.stopped) throw new TrellisError('EUNAVAILABLE', 'the agent is stopping: tap its successor');
    if (this.sessions.size >= MAX_TAPS) throw new TrellisError('EUNAVAILABLE', `${MAX_TAPS} taps are open on node ${this.inputs.node}: close one, or wait for one to end`);
    if (!Number.isInteger(params.limit) || params.limit < 0) throw new TrellisError('EINVAL', `limit ${params.limit}: a whole number, 0 for none`);
    if (!Number.isInteger(params.durationMs) || params.durationMs < 0 || params.durationMs > MAX_DURATION_MS) {
      throw new TrellisError('EINVAL', `duration ${params.durationMs} ms: from 0 (until the caller goes) to 24h`);
    }
    compileMatch(params.match);
    const maxRps = params.maxRps > 0 ? Math.min(params.maxRps, this.inputs.maxRps) : this.inputs.maxRps;
    const id = this.nextId++;
    const session = new TapSession({
      id,
      node: this.inputs.node,
      limit: params.limit,
      durationMs: params.durationMs,
      maxRps,
      sink,
      clock: this.inputs.clock,
      onEnd: (s) => this.ended(s),
      onDrop: (n) => this.inputs.metrics.tapDropped.inc(n),
    });
    this.sessions.set(id, session);
    this.inputs.metrics.tapStreams.set(this.sessions.size);
    this.publish([...this.specs, { id, match: params.match, maxRps }]);
    return session;
  }

  /** Worker threads are told the open taps now and at every change. */
  subscribe(fn: (specs: readonly TapSpec[]) => void): () => void {
    this.listeners.add(fn);
    fn(this.specs);
    return () => this.listeners.delete(fn);
  }

  /** A worker thread's batch. */
  fromWorker(batch: TapBatch): void {
    for (const [tap, n] of batch.dropped) this.dropped(tap, n);
    for (const [tap, obs] of batch.events) this.sessions.get(tap)?.deliver(obs);
  }

  /** Ends every stream with a last summary; no tap opens after this. */
  stop(): void {
    this.stopped = true;
    for (const s of [...this.sessions.values()]) s.end('agent stopping');
  }

  private dropped(tap: number, n: number): void {
    this.sessions.get(tap)?.drop(n);
  }

  private ended(s: TapSession): void {
    if (!this.sessions.delete(s.id)) return;
    this.inputs.metrics.tapStreams.set(this.sessions.size);
    this.publish(this.specs.filter((x) => x.id !== s.id));
  }

  private publish(specs: readonly TapSpec[]): void {
    this.specs = specs;
    this.hub.set(specs);
    for (const fn of this.listeners) fn(specs);
  }
}
