// Layer: the traffic split. One weighted pick per request among the rule's backends (the Service itself when the
// port has no routes); retries stay on the backend picked. Counts the request against the backend's retry budget.
import { pickBackend, type ServiceBackend } from '../../model/routes/index.js';
import type { RetryBudgetSpec } from '../../model/retry-budget.js';
import type { ServiceInfo } from '../../model/services.js';
import type { MeshState } from '../../state/store.js';
import { RetryBudget } from '../policy/retry-budget.js';
import { local } from '../relay.js';
import { DONE, type Layer, type LayerInputs } from './call.js';

/** The default backend of a Service port without routes: the Service itself. */
export function selfBackend(service: ServiceInfo, port: number): ServiceBackend {
  return { kind: 'Service', weight: 1, service: service.key, namespace: service.namespace, name: service.name, port, host: service.host, filters: [] };
}

/** Retry budgets per destination Service, replaced when the Service's RetryBudget changes. */
export class Budgets {
  private readonly byService = new Map<string, { spec: RetryBudgetSpec | undefined; budget: RetryBudget }>();

  constructor(private readonly inputs: Pick<LayerInputs, 'clock'>) {}

  of(state: MeshState, service: string): RetryBudget {
    const spec = state.traffic.retryBudgets.get(service);
    const held = this.byService.get(service);
    if (held && held.spec === spec) return held.budget;
    const budget = new RetryBudget({ clock: this.inputs.clock, ...(spec && { retryRatio: spec.retryRatio, minRetriesPerSecond: spec.minRetriesPerSecond, ttlMs: spec.ttlMs }) });
    this.byService.set(service, { spec, budget });
    return budget;
  }
}

export function split(inputs: Pick<LayerInputs, 'random'>, budgets: Budgets): Layer {
  return (next) => (call) => {
    // Egress: a rule without backendRefs sends to where the client was going (as Linkerd's egress routes do).
    const backend = call.matched && !(call.ctx.egress && call.matched.rule.backends.length === 0)
      ? pickBackend(call.matched, inputs.random)
      : selfBackend(call.ctx.service, call.ctx.port);
    if (backend.kind === 'Error') {
      local(call.res, call.req, call.rec, backend.status, backend.grpcStatus, backend.reason);
      return DONE;
    }
    call.backend = backend;
    call.rec.destinationService = backend.host;
    const budget = budgets.of(call.state, backend.service);
    budget.onRequest();
    call.budget = budget;
    return next(call);
  };
}
