// The tap hub of one thread: the request path's only contact with tap. Records call it as they finish (l7/record.ts,
// proxy/connection.ts), behind one check of `active`, false while no tap is open: then a request pays that check
// and nothing else. While taps are open, each record is matched against each tap's compiled tree, and events are
// built once, only when a tap matched and its rate bound admits them; what the bound refuses is counted, not queued.
// The main thread's hub hands events to its streams (session.ts); a worker thread's, to the batch it sends to the
// main thread (workers/worker.ts), so every thread's traffic reaches every tap.
import { eventBuilders, type BuildContext, type EventBuilders, type Observation, type RejectedRequest, type TappedConnection, type TappedRequest } from './events.js';
import { RateBound } from './limiter.js';
import { compileMatch, type Match, type Matcher } from './match.js';

/** One open tap as every thread's hub knows it (cloned to the worker threads as it is). */
export interface TapSpec {
  readonly id: number;
  readonly match?: Match | undefined;
  /** Observations per second this thread may emit for it. */
  readonly maxRps: number;
}

export interface TapHubInputs {
  node: string;
  /** Lowercase header names whose values are redacted. */
  redact: ReadonlySet<string>;
  /** Unix milliseconds (the clock's): the rate bound and the events' timestamps. */
  now: () => number;
  /** An observation a tap matched and its bound admitted. */
  emit: (tap: number, obs: Observation) => void;
  /** An observation a tap matched and its bound refused. */
  onDrop: (tap: number) => void;
  /** Told when the hub turns active or idle. */
  onActive?: (active: boolean) => void;
  builders?: EventBuilders;
}

interface CompiledTap {
  readonly id: number;
  readonly match: Matcher;
  readonly bound: RateBound;
}

export class TapHub {
  /** False while no tap is open: the one thing the request path reads. */
  active = false;
  private taps: readonly CompiledTap[] = [];
  private readonly ctx: BuildContext;
  private readonly build: EventBuilders;

  constructor(private readonly inputs: TapHubInputs) {
    this.ctx = Object.freeze({ node: inputs.node, redact: inputs.redact, now: inputs.now });
    this.build = inputs.builders ?? eventBuilders;
  }

  /** The taps open now, replacing the previous set; a tap kept from it keeps its bound. Specs were checked when opened. */
  set(specs: readonly TapSpec[]): void {
    const before = new Map(this.taps.map((t) => [t.id, t]));
    this.taps = specs.map((s) => {
      const kept = before.get(s.id);
      return kept && kept.bound.rate === s.maxRps ? kept : { id: s.id, match: compileMatch(s.match), bound: new RateBound(s.maxRps, this.inputs.now) };
    });
    const active = this.taps.length > 0;
    if (active !== this.active) {
      this.active = active;
      this.inputs.onActive?.(active);
    }
  }

  /** Ids of the taps open on this thread. */
  open(): number[] {
    return this.taps.map((t) => t.id);
  }

  /** A request finished (both reporters). */
  request(rec: TappedRequest, seconds: number, requestBytes: number): void {
    const taps = this.taps;
    const route = rec.route?.route;
    let obs: Observation | undefined;
    for (let i = 0; i < taps.length; i++) {
      const t = taps[i]!;
      if (!t.match(rec.src, rec.dst, rec.req, route)) continue;
      if (!t.bound.take()) {
        this.inputs.onDrop(t.id);
        continue;
      }
      obs ??= this.build.request(this.ctx, rec, seconds, requestBytes);
      this.inputs.emit(t.id, obs);
    }
  }

  /** An opaque connection opened or closed. */
  connection(rec: TappedConnection, phase: 'open' | 'close', durationMs = 0, error?: string): void {
    const taps = this.taps;
    const f = rec.fields;
    let obs: Observation | undefined;
    for (let i = 0; i < taps.length; i++) {
      const t = taps[i]!;
      if (!t.match(f.src, f.dst, undefined, undefined)) continue;
      if (!t.bound.take()) {
        this.inputs.onDrop(t.id);
        continue;
      }
      obs ??= this.build.connection(this.ctx, rec, phase, durationMs, error);
      this.inputs.emit(t.id, obs);
    }
  }

  /** A connection refused by policy before any byte moved (proxy/inbound.ts): a close with no bytes and the decision. */
  deniedConnection(fields: TappedConnection['fields']): void {
    this.connection({ fields, bytesIn: 0, bytesOut: 0 }, 'close', 0, 'denied by policy');
  }

  /** A request refused before it was parsed whole (malformed, oversized). */
  rejected(r: RejectedRequest): void {
    const taps = this.taps;
    let obs: Observation | undefined;
    for (let i = 0; i < taps.length; i++) {
      const t = taps[i]!;
      if (!t.match(r.src, r.dst, undefined, undefined)) continue;
      if (!t.bound.take()) {
        this.inputs.onDrop(t.id);
        continue;
      }
      obs ??= this.build.rejected(this.ctx, r);
      this.inputs.emit(t.id, obs);
    }
  }
}
