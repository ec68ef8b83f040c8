// L7 resilience, per route rule: decides whether a failed attempt is retried and after how long, from the
// HTTPRoute rule's retry stanza (Gateway API GEP-1731: codes, attempts, backoff) and the route's limits.
//
// GEP-1731 (gateway-api apis/v1 HTTPRouteRetry) as followed here:
//   - `codes` are the HTTP statuses that are retried; connection errors (connect failure, reset, per-try
//     timeout) are retried whenever a retry stanza exists, as the GEP asks, but only before any byte of the
//     response reached the client: after that the answer is committed and replaying would corrupt it;
//   - `attempts` is the number of retries (not tries): attempts 2 means up to three tries in all;
//     unspecified, 1, as Linkerd's retry.linkerd.io/limit;
//   - `backoff` is a floor: no retry leaves before it. Above the floor the delay grows exponentially with full
//     jitter, up to a cap: retry k waits base + random x (min(cap, base x 2^k) - base);
//   - the whole exchange, retries and their delays included, stays within the request timeout.
// The body rule is Linkerd's (requests whose body is over 64 KiB are not retried): only a body that was buffered
// whole within the cap can be replayed. The budget is asked last, so a refusal for any other reason never spends it.

import { TrellisError } from '../../errors.js';
import type { RetryGate } from './retry-budget.js';

export const RETRY_DEFAULTS = Object.freeze({ attempts: 1, backoffMs: 25, maxBackoffMs: 1_000, bodyCapBytes: 64 * 1024 });

/** The retry stanza of an HTTPRoute rule, compiled (durations in ms). */
export interface RetryConfig {
  /** HTTP statuses to retry (GEP-1731 allows 400..599). */
  codes?: readonly number[];
  /** Retries after the first try. */
  attempts?: number;
  /** Minimum delay before a retry (GEP-1731 backoff). */
  backoffMs?: number;
}

export interface RetryLimits {
  /** The rule's request timeout (timeouts.request); the retries and their delays fit inside it. Absent or 0: none. */
  requestTimeoutMs?: number;
  /** Largest request body that is buffered for replay. */
  bodyCapBytes: number;
}

export interface RetryPolicyOptions {
  /** Uniform in [0, 1); injected so tests are deterministic. */
  random: () => number;
  /** Upper bound of the exponential part of the delay; never below the configured backoff. */
  maxBackoffMs?: number;
}

export type RetryError = 'connect' | 'reset' | 'timeout';

export interface RetryInput {
  /** The try that just failed, 1-based: 1 is the original request. */
  attempt: number;
  /** Status of the response, when one came back. */
  status?: number;
  /** Connection-level failure, when no response came back. */
  error?: RetryError;
  /** True once any byte of the response went to the client; such an exchange is never retried. */
  responseStarted?: boolean;
  /** Time since the request arrived. */
  elapsedMs: number;
  /** Request body bytes buffered so far. */
  bodyBytes: number;
  /** Whether the request body ended within what was buffered. */
  bodyComplete: boolean;
  /** The destination Service's retry budget. */
  budget: RetryGate;
}

export type RetryRefusal = 'not-retryable' | 'attempts' | 'budget' | 'deadline' | 'body-too-large';
export type RetryDecision = { retry: true; delayMs: number } | { retry: false; reason: RetryRefusal };

// Refusals are shared frozen values: the common path (a success, a non-retryable status) allocates nothing.
const refusal = (reason: RetryRefusal): RetryDecision => Object.freeze({ retry: false, reason });
const NOT_RETRYABLE = refusal('not-retryable');
const ATTEMPTS = refusal('attempts');
const BUDGET = refusal('budget');
const DEADLINE = refusal('deadline');
const BODY_TOO_LARGE = refusal('body-too-large');

export class RetryPolicy {
  readonly attempts: number;
  readonly backoffMs: number;
  readonly maxBackoffMs: number;
  readonly requestTimeoutMs: number | undefined;
  readonly bodyCapBytes: number;
  private readonly retryable = new Uint8Array(600); // indexed by status
  private readonly random: () => number;

  constructor(config: RetryConfig, limits: RetryLimits, opts: RetryPolicyOptions) {
    for (const code of config.codes ?? []) {
      if (!Number.isInteger(code) || code < 400 || code > 599) {
        throw new TrellisError('ECONFIG', `retry: code ${code} is not an HTTP status in 400..599; list statuses such as 502, 503, 504`);
      }
      this.retryable[code] = 1;
    }
    const attempts = config.attempts ?? RETRY_DEFAULTS.attempts;
    if (!Number.isInteger(attempts) || attempts < 0) {
      throw new TrellisError('ECONFIG', `retry: attempts ${attempts} must be a whole number of retries, 0 or more`);
    }
    const backoff = config.backoffMs ?? RETRY_DEFAULTS.backoffMs;
    if (!(backoff >= 0 && Number.isFinite(backoff))) {
      throw new TrellisError('ECONFIG', `retry: backoff ${backoff} ms must be a duration of 0 or more`);
    }
    if (!(limits.bodyCapBytes >= 0)) {
      throw new TrellisError('ECONFIG', `retry: body cap ${limits.bodyCapBytes} must be 0 or more bytes`);
    }
    this.attempts = attempts;
    this.backoffMs = backoff;
    this.maxBackoffMs = Math.max(backoff, opts.maxBackoffMs ?? RETRY_DEFAULTS.maxBackoffMs);
    this.requestTimeoutMs = limits.requestTimeoutMs ? limits.requestTimeoutMs : undefined;
    this.bodyCapBytes = limits.bodyCapBytes;
    this.random = opts.random;
  }

  decide(input: RetryInput): RetryDecision {
    if (input.responseStarted) return NOT_RETRYABLE;
    if (input.error === undefined) {
      const s = input.status;
      if (s === undefined || !(s >= 0 && s < 600) || this.retryable[s] !== 1) return NOT_RETRYABLE;
    }
    if (input.attempt > this.attempts) return ATTEMPTS;
    if (!input.bodyComplete || input.bodyBytes > this.bodyCapBytes) return BODY_TOO_LARGE;
    const delayMs = this.delayFor(input.attempt);
    if (this.requestTimeoutMs !== undefined && input.elapsedMs + delayMs >= this.requestTimeoutMs) return DEADLINE;
    if (!input.budget.tryRetry()) return BUDGET;
    return { retry: true, delayMs };
  }

  /** Delay before retry number `k` (1-based): the backoff floor plus full jitter up to min(cap, backoff x 2^k). */
  delayFor(k: number): number {
    const base = this.backoffMs;
    const ceiling = Math.min(this.maxBackoffMs, base * 2 ** Math.min(k, 30));
    return base + this.random() * (ceiling - base);
  }
}
