// Layer: the request body, read whole (up to the cap) only when a retry or a mirror may have to send it again;
// a larger body is streamed once and neither is possible for it.
import type { Handler, Layer, LayerInputs } from './call.js';

export function buffer(inputs: Pick<LayerInputs, 'bodyCapBytes'>): Layer {
  return (next) => {
    const buffered: Handler = async (call) => {
      const whole = await call.req.body.collect(inputs.bodyCapBytes);
      if (whole) {
        call.buffered = whole;
        call.rec.requestBytes = whole.length;
      }
      if (call.res.closed) return void (call.rec.error = 'client went away while sending the body');
      return next(call);
    };
    // Most requests pass straight on: no async frame, no promise of this layer's own.
    return (call) => {
      const rule = call.matched?.rule;
      const wanted = (rule?.retry && rule.retry.attempts > 0) || (rule?.mirrors.length ?? 0) > 0;
      return wanted ? buffered(call) : next(call);
    };
  };
}
