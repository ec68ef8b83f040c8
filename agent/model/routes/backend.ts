// Route lookup: the traffic split. One weighted pick per request over weights summed at compile time;
// randomness is injected so tests are deterministic.
import type { CompiledBackend, ErrorBackend, MatchedRule } from './types.js';

const NO_BACKENDS: ErrorBackend = Object.freeze({
  kind: 'Error', weight: 0, status: 500, grpcStatus: 14, reason: 'the rule has no backendRefs',
});
const ALL_ZERO: ErrorBackend = Object.freeze({
  kind: 'Error', weight: 0, status: 500, grpcStatus: 14, reason: 'every backendRef of the rule has weight 0',
});

/**
 * The backend for one request, in proportion to the weights. An unresolved backendRef is an ErrorBackend that
 * keeps its weight, so its share is answered 500; no backendRefs, or all weights 0, answer 500 too (spec).
 * `random` returns a number in [0, 1).
 */
export function pickBackend(matched: MatchedRule, random: () => number): CompiledBackend {
  const rule = matched.rule;
  const total = rule.totalWeight;
  if (total === 0) return rule.backends.length === 0 ? NO_BACKENDS : ALL_ZERO;
  const backends = rule.backends;
  if (backends.length === 1) return backends[0]!;
  const x = random() * total;
  const sums = rule.cumulativeWeights;
  for (let i = 0; i < sums.length; i++) {
    if (x < sums[i]!) return backends[i]!;
  }
  // random() returned 1 (outside its contract) or rounding: the last backend with weight.
  for (let i = backends.length - 1; i >= 0; i--) if (backends[i]!.weight > 0) return backends[i]!;
  return ALL_ZERO;
}
