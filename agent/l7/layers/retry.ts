// Layer: retries (GEP-1731). Each try picks an endpoint anew (within the backend the split chose); a try that
// fails in a way the rule lists is tried again after a jittered backoff, within the attempts, the request
// deadline, the buffered body and the Service's retry budget. A keep-alive connection the server closed while
// idle costs one immediate resend, as undici does.
import type { CompiledRule } from '../../model/routes/index.js';
import { RetryPolicy } from '../policy/retry.js';
import { ANSWERED, sleep, type Call, type Layer, type LayerInputs } from './call.js';

/** Methods a client may expect to be sent twice (RFC 9110 9.2.2): resent on a reused connection that was closed. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

export function retry(inputs: Pick<LayerInputs, 'clock' | 'random' | 'metrics' | 'bodyCapBytes'>): Layer {
  // Compiled rules are frozen per snapshot; their policies live as long as they do.
  const policies = new WeakMap<CompiledRule, RetryPolicy>();
  const policyFor = (rule: CompiledRule): RetryPolicy => {
    let policy = policies.get(rule);
    if (!policy) {
      const r = rule.retry!;
      const requestMs = rule.timeouts.requestMs || undefined;
      policy = new RetryPolicy(
        { codes: r.codes, attempts: r.attempts, ...(r.backoffMs !== undefined && { backoffMs: r.backoffMs }) },
        { ...(requestMs !== undefined && { requestTimeoutMs: requestMs }), bodyCapBytes: inputs.bodyCapBytes },
        { random: inputs.random },
      );
      policies.set(rule, policy);
    }
    return policy;
  };
  return (next) => async (call) => {
    const rule = call.matched?.rule;
    const policy = rule?.retry && rule.retry.attempts > 0 ? policyFor(rule) : undefined;
    const buffered = call.buffered;
    for (let n = 1; ; n++) {
      await next(call);
      if (call.attempt.answered) return;
      if (call.res.closed) {
        call.attempt.response?.abort();
        call.rec.error = 'client went away';
        call.attempt = ANSWERED;
        return;
      }
      if (n === 1 && call.attempt.error === 'reset' && call.attempt.reusedClosed && replayable(call)) {
        if (buffered) call.upstream = { ...call.upstream!, body: buffered };
        await next(call);
        if (call.attempt.answered) return;
      }
      const timedOut = call.deadline !== undefined && performance.now() >= call.deadline;
      if (!policy || timedOut) return;
      const a = call.attempt;
      const decision = policy.decide({
        attempt: n,
        status: a.response?.status,
        error: a.error,
        elapsedMs: performance.now() - call.req.startedAt,
        bodyBytes: buffered ? buffered.length : Infinity,
        bodyComplete: buffered !== undefined,
        budget: call.budget!,
      });
      if (!decision.retry) {
        if (decision.reason === 'budget') inputs.metrics.retryBudgetExhausted.inc({ destination_service: call.backend!.host });
        return;
      }
      inputs.metrics.retries.inc({ destination_service: call.backend!.host });
      call.rec.retries++;
      a.response?.abort();
      await sleep(inputs.clock, decision.delayMs, call.res);
      if (call.res.closed) {
        call.rec.error = 'client went away during a retry backoff';
        call.attempt = ANSWERED;
        return;
      }
    }
  };
}

/** Whether the request can go out again: its body was buffered, or it has none and resending it is harmless. */
function replayable(call: Call): boolean {
  if (call.buffered) return true;
  const body = call.req.body;
  return body.ended && body.received === 0 && IDEMPOTENT.has(call.req.method);
}
