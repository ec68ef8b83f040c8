// Layer: FaultInjection. A delay (the client may leave meanwhile), then maybe an abort with an HTTP or gRPC status.
import type { FaultSpec } from '../../model/routes/index.js';
import { FaultDecider } from '../policy/fault.js';
import { grpcLocal, local } from '../relay.js';
import { GRPC, sleep, type Call, type Layer, type LayerInputs } from './call.js';

export function fault(inputs: Pick<LayerInputs, 'clock' | 'random'>): Layer {
  // Compiled faults are frozen per snapshot; their deciders live as long as they do.
  const deciders = new WeakMap<FaultSpec, FaultDecider>();
  const deciderFor = (spec: FaultSpec): FaultDecider => {
    let d = deciders.get(spec);
    if (!d) {
      d = new FaultDecider({
        ...(spec.delayMs !== undefined && { delayMs: spec.delayMs }),
        delayPercent: spec.delayPercent,
        ...(spec.abort && { abort: spec.abort.httpStatus !== undefined ? { httpStatus: spec.abort.httpStatus } : { grpcStatus: spec.abort.grpcStatus } }),
        abortPercent: spec.abortPercent,
      });
      deciders.set(spec, d);
    }
    return d;
  };
  return (next) => {
    const faulted = async (call: Call, spec: FaultSpec): Promise<void> => {
      const decision = deciderFor(spec).decide(inputs.random);
      if (decision.delayMs > 0) {
        await sleep(inputs.clock, decision.delayMs, call.res);
        if (call.res.closed) return void (call.rec.error = 'client went away during an injected delay');
      }
      if (decision.abort) {
        call.rec.fault = true;
        if (decision.abort.grpcStatus !== undefined) return grpcLocal(call.res, call.rec, decision.abort.grpcStatus, 'fault injected');
        return local(call.res, call.req, call.rec, decision.abort.httpStatus ?? 500, GRPC.UNAVAILABLE, 'fault injected');
      }
      return next(call);
    };
    // Without a fault on the rule the request passes straight on: no async frame, no promise of this layer's own.
    return (call) => {
      const spec = call.matched?.rule.fault;
      return spec ? faulted(call, spec) : next(call);
    };
  };
}

