// One request on its way through the outbound layers: what every layer reads, and what each one decides for the
// layers after it (the rule, the deadline, the backend, the endpoint, the outcome of a try).
import type { Clock } from '../../clock.js';
import type { RetryBudget } from '../policy/retry-budget.js';
import type { PickedEndpoint } from '../policy/balancer.js';
import type { MatchedRule, ServiceBackend } from '../../model/routes/index.js';
import type { MeshState } from '../../state/store.js';
import type { Metrics } from '../../telemetry/metrics.js';
import type { CallContext, L7Request, Responder } from '../exchange.js';
import type { RetryError } from '../policy/retry.js';
import type { RequestRecord } from '../record.js';
import type { Upstreams, UpstreamEndpoint, UpstreamRequest, UpstreamResponse } from '../upstream.js';

/** The outcome of one try: a response head, or why there is none. */
export interface Attempt {
  /** A layer answered the client itself (no endpoint, the client left): nothing more to send. */
  answered?: boolean;
  response?: UpstreamResponse;
  error?: RetryError;
  message?: string;
  /** Failed on a reused keep-alive connection (the server may have closed it while idle). */
  reusedClosed?: boolean;
}

export interface Call {
  readonly ctx: CallContext;
  readonly req: L7Request;
  readonly res: Responder;
  readonly rec: RequestRecord;
  /** One snapshot per request: a request finishes on the route it started with. */
  readonly state: MeshState;
  /** The route rule that matched, when the Service port has routes. */
  matched?: MatchedRule;
  /** performance.now() by which the whole exchange (retries included) must be answered. */
  deadline?: number;
  /** The request body, read whole (within the cap) for a retry or a mirror to send again. */
  buffered?: Buffer;
  /** The backend the split picked; retries stay on it. */
  backend?: ServiceBackend;
  budget?: RetryBudget;
  /** The request as sent upstream (filters applied). */
  upstream?: UpstreamRequest;
  /** The endpoint of the try in flight. */
  picked?: PickedEndpoint<UpstreamEndpoint>;
  /** The last try's outcome. */
  attempt: Attempt;
}

export type Handler = (call: Call) => Promise<void>;
/** A route feature: given what comes after it, the handler that does its part and calls on (or answers). */
export type Layer = (next: Handler) => Handler;

/** What the layers are built from. */
export interface LayerInputs {
  upstreams: Upstreams;
  metrics: Metrics;
  clock: Clock;
  random: () => number;
  /** Largest request body buffered for retries and mirrors. */
  bodyCapBytes: number;
  /** Mirrored copies give up after this long. */
  mirrorTimeoutMs: number;
}

/** gRPC status codes the layers answer with. */
export const GRPC = { NOT_FOUND: 5, UNIMPLEMENTED: 12, INTERNAL: 13, UNAVAILABLE: 14, DEADLINE_EXCEEDED: 4 } as const;

/** The attempt of a call a layer answered itself. */
export const ANSWERED: Attempt = Object.freeze({ answered: true });
/** The attempt of a call before its first try. */
export const NO_ATTEMPT: Attempt = Object.freeze({});

/** A handler that has answered: nothing more to do. */
export const DONE: Promise<void> = Promise.resolve();

/** Composes layers in the order given (the first is outermost) over a terminal handler. */
export function compose(layers: readonly Layer[], terminal: Handler): Handler {
  let h = terminal;
  for (let i = layers.length - 1; i >= 0; i--) h = layers[i]!(h);
  return h;
}

/** Waits ms on the clock, or until the client goes away. */
export function sleep(clock: Clock, ms: number, res: Responder): Promise<void> {
  if (ms <= 0) return DONE;
  return new Promise((resolve) => {
    const t = clock.after(ms, resolve);
    res.onClose(() => {
      t.cancel();
      resolve();
    });
  });
}
