// Layer: the answer. After the tries, the last response goes to the client with the rule's and the backendRef's
// response header modifiers applied; with no response, 504 after a timeout, 503 otherwise (gRPC: DEADLINE_EXCEEDED,
// UNAVAILABLE).
import type { Clock } from '../../clock.js';
import { applyHeaderModifier } from '../../model/routes/index.js';
import { local, relay } from '../relay.js';
import { GRPC, type Layer } from './call.js';

export function respond(inputs: { clock: Clock }): Layer {
  return (next) => async (call) => {
    await next(call);
    const a = call.attempt;
    if (a.answered) return;
    if (!a.response) {
      const timedOut = a.error === 'timeout';
      call.rec.error = a.message;
      return local(call.res, call.req, call.rec, timedOut ? 504 : 503, timedOut ? GRPC.DEADLINE_EXCEEDED : GRPC.UNAVAILABLE, timedOut ? 'upstream request timeout' : 'upstream connect error or disconnect/reset before headers');
    }
    const up = a.response;
    const rule = call.matched?.rule;
    const backend = call.backend;
    if (rule?.responseHeaders || backend?.responseHeaders) {
      if (rule?.responseHeaders) applyHeaderModifier(rule.responseHeaders, up.headers);
      if (backend?.responseHeaders) applyHeaderModifier(backend.responseHeaders, up.headers);
    }
    await relay(call.req, up, call.res, call.rec, inputs.clock, call.deadline);
  };
}
