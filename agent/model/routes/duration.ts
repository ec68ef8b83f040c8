// Route compilation: the two duration formats routes carry, read once when routes are compiled.
// Gateway API fields use GEP-2257; FaultInjection keeps Istio's format so existing fault specs port unchanged.

const GEP2257 = /^([0-9]{1,5}(h|m|s|ms)){1,4}$/;
// "ms" before "m": the pattern above accepts "1ms" only as milliseconds.
const GEP2257_PART = /([0-9]{1,5})(ms|h|m|s)/g;
const UNIT_MS: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1_000, ms: 1 };

/**
 * A GEP-2257 duration ("10s", "1h30m", "250ms") in milliseconds, or undefined when the text is not one.
 * Components add up, as Go's time.ParseDuration does ("1s1s" is 2 s); "0s" is 0 (the timeout is disabled).
 */
export function parseGatewayDuration(text: string): number | undefined {
  if (!GEP2257.test(text)) return undefined;
  let total = 0;
  for (const m of text.matchAll(GEP2257_PART)) total += Number(m[1]) * UNIT_MS[m[2]!]!;
  return total;
}

const ISTIO = /^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$/;

/** An Istio-style duration ("1.5s", "100ms", "2m") in whole milliseconds, or undefined. */
export function parseFaultDuration(text: string): number | undefined {
  const m = ISTIO.exec(text);
  if (!m) return undefined;
  const ms = Math.round(Number(m[1]) * UNIT_MS[m[2]!]!);
  return Number.isFinite(ms) ? ms : undefined;
}
