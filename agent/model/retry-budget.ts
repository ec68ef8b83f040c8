// RetryBudget (traffic.trellis.dev/v1alpha1): at most one per Service, read and checked once per snapshot; the
// budget itself (agent/l7/policy/retry-budget.ts) runs on the request path.
import type { KubeObject } from './objects.js';
import { parseGatewayDuration } from './routes/duration.js';
import type { ServiceInfo } from './services.js';

/** The RetryBudget CRD's defaults (manifests/crds/retrybudgets.yaml), which are Linkerd's and Finagle's. */
export const RETRY_BUDGET_DEFAULTS = Object.freeze({ retryRatio: 0.2, minRetriesPerSecond: 10, ttlMs: 10_000 });

/** A RetryBudget (traffic.trellis.dev/v1alpha1) as compiled for its target Service. */
export interface RetryBudgetSpec {
  /** namespace/name of the RetryBudget object. */
  readonly source: string;
  readonly retryRatio: number;
  readonly minRetriesPerSecond: number;
  readonly ttlMs: number;
}

/** RetryBudget objects: one per target Service (the oldest by name wins a tie; the others are reported). */
export function compileRetryBudgets(objects: readonly KubeObject[], services: ReadonlyMap<string, ServiceInfo>): { budgets: Map<string, RetryBudgetSpec>; errors: string[] } {
  const budgets = new Map<string, RetryBudgetSpec>();
  const errors: string[] = [];
  const list = objects.filter((o) => o.kind === 'RetryBudget').sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  for (const o of list) {
    const namespace = o.metadata.namespace ?? 'default';
    const source = `${namespace}/${o.metadata.name}`;
    const where = `RetryBudget ${source}`;
    const spec = ((o as { spec?: unknown }).spec ?? {}) as Record<string, unknown>;
    const target = (spec.targetRef ?? {}) as Record<string, unknown>;
    if (target.kind !== 'Service' || (target.group ?? '') !== '' || typeof target.name !== 'string') {
      errors.push(`${where}: spec.targetRef must name a Service ({group: "", kind: Service, name})`);
      continue;
    }
    const ratio = spec.retryRatio ?? RETRY_BUDGET_DEFAULTS.retryRatio;
    const min = spec.minRetriesPerSecond ?? RETRY_BUDGET_DEFAULTS.minRetriesPerSecond;
    const ttlMs = spec.ttl === undefined ? RETRY_BUDGET_DEFAULTS.ttlMs : typeof spec.ttl === 'string' ? parseGatewayDuration(spec.ttl) : undefined;
    if (typeof ratio !== 'number' || !(ratio >= 0 && ratio <= 1)) {
      errors.push(`${where}: spec.retryRatio must be a number from 0 to 1`);
      continue;
    }
    if (typeof min !== 'number' || !Number.isInteger(min) || min < 0 || min > 100_000) {
      errors.push(`${where}: spec.minRetriesPerSecond must be an integer from 0 to 100000`);
      continue;
    }
    if (ttlMs === undefined || ttlMs < 1_000 || ttlMs > 60_000) {
      errors.push(`${where}: spec.ttl must be a duration from 1s to 60s such as "10s"`);
      continue;
    }
    const key = `${namespace}/${target.name}`;
    if (!services.has(key)) errors.push(`${where}: spec.targetRef: Service ${key} does not exist (the budget applies once it does)`);
    if (budgets.has(key)) {
      errors.push(`${where}: Service ${key} already has RetryBudget ${budgets.get(key)!.source}; this one is ignored`);
      continue;
    }
    budgets.set(key, Object.freeze({ source, retryRatio: ratio, minRetriesPerSecond: min, ttlMs }));
  }
  return { budgets, errors };
}

