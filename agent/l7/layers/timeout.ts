// Layer: timeouts.request. The whole exchange, retries included, must be answered by the deadline (0: none);
// the try layer and the relay read it.
import type { Layer } from './call.js';

export const timeout: Layer = (next) => (call) => {
  const ms = call.matched?.rule.timeouts.requestMs;
  if (ms) call.deadline = performance.now() + ms;
  return next(call);
};
