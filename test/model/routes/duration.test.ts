// Route compilation: the GEP-2257 and FaultInjection duration formats.
import { describe, expect, it } from 'vitest';
import { parseFaultDuration, parseGatewayDuration } from '../../../agent/model/routes/index.js';

describe('parseGatewayDuration (GEP-2257)', () => {
  it.each([
    ['0s', 0],
    ['1h', 3_600_000],
    ['5m', 300_000],
    ['1h5m', 3_900_000],
    ['1h30m30s500ms', 5_430_500],
    ['01h', 3_600_000],
    ['00060m', 3_600_000],
    ['250ms', 250],
    ['1ms', 1],
    ['99999h', 99_999 * 3_600_000],
    ['1s1s', 2_000],
  ])('%s = %d ms', (text, ms) => {
    expect(parseGatewayDuration(text)).toBe(ms);
  });

  it.each(['', '1', '1.5s', '-1s', '1d', '1us', '100000s', '1h1m1s1ms1h', ' 1s', '1S', 's'])('rejects "%s"', (text) => {
    expect(parseGatewayDuration(text)).toBeUndefined();
  });
});

describe('parseFaultDuration (FaultInjection fixedDelay)', () => {
  it.each([
    ['1.5s', 1_500],
    ['100ms', 100],
    ['2m', 120_000],
    ['1h', 3_600_000],
    ['0.25s', 250],
  ])('%s = %d ms', (text, ms) => {
    expect(parseFaultDuration(text)).toBe(ms);
  });

  it.each(['', '1', '1.s', 's', '1m30s', '-1s'])('rejects "%s"', (text) => {
    expect(parseFaultDuration(text)).toBeUndefined();
  });
});
