// Trace context headers: W3C traceparent/tracestate and B3 single and multi, read and written; malformed values are
// ignored, never crash and are never passed on.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Headers } from '../../agent/l7/headers.js';
import { TRACE_HEADERS, extract, inject, parseB3Single, parseTraceparent, parseTracestate } from '../../agent/tracing/context.js';

const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const S = '00f067aa0ba902b7';
const OWN = { traceId: T, spanId: 'b7ad6b7169203331', sampled: true, parentSpanId: S };

describe('traceparent', () => {
  it('reads version 00 and the sampled flag', () => {
    expect(parseTraceparent(`00-${T}-${S}-01`)).toEqual({ traceId: T, spanId: S, sampled: true });
    expect(parseTraceparent(`00-${T}-${S}-00`)).toEqual({ traceId: T, spanId: S, sampled: false });
    expect(parseTraceparent(`00-${T}-${S}-03`)?.sampled).toBe(true);
  });

  it('reads a later version by its first fields, and refuses what the specification refuses', () => {
    expect(parseTraceparent(`01-${T}-${S}-01-what-comes-next`)).toEqual({ traceId: T, spanId: S, sampled: true });
    for (const bad of [
      `ff-${T}-${S}-01`, // version ff
      `00-${T}-${S}-01-extra`, // 00 with more fields
      `00-${'0'.repeat(32)}-${S}-01`, // zero trace id
      `00-${T}-${'0'.repeat(16)}-01`, // zero span id
      `00-${T.toUpperCase()}-${S}-01`, // uppercase
      `00-${T}-${S}-1`,
      `00-${T.slice(1)}-${S}-01`,
      `00_${T}_${S}_01`,
      '',
      'garbage',
      `0g-${T}-${S}-01`,
    ]) {
      expect(parseTraceparent(bad), bad).toBeUndefined();
    }
  });
});

describe('tracestate', () => {
  it('keeps a valid list and drops an invalid one whole', () => {
    expect(parseTracestate('congo=t61rcWkgMzE,rojo=00f067aa0ba902b7')).toBe('congo=t61rcWkgMzE,rojo=00f067aa0ba902b7');
    expect(parseTracestate(['a=1', 'tenant@vendor=x'])).toBe('a=1,tenant@vendor=x');
    expect(parseTracestate('UPPER=1')).toBeUndefined();
    expect(parseTracestate('a=1,a=2')).toBeUndefined();
    expect(parseTracestate('novalue')).toBeUndefined();
    expect(parseTracestate('a=x\u0000y')).toBeUndefined();
    expect(parseTracestate(`a=${'x'.repeat(600)}`)).toBeUndefined();
    expect(parseTracestate(Array.from({ length: 33 }, (_, i) => `k${i}=v`).join(','))).toBeUndefined();
  });
});

describe('B3', () => {
  it('reads the single header, its sampling states and a 64-bit trace id', () => {
    expect(parseB3Single(`${T}-${S}-1`)).toEqual({ traceId: T, spanId: S, sampled: true, short: false });
    expect(parseB3Single(`${T}-${S}-d-${S}`)).toEqual({ traceId: T, spanId: S, sampled: true, short: false });
    expect(parseB3Single(`${T}-${S}`)).toEqual({ traceId: T, spanId: S, sampled: undefined, short: false });
    expect(parseB3Single(`a3ce929d0e0e4736-${S}-0`)).toEqual({ traceId: `0000000000000000a3ce929d0e0e4736`, spanId: S, sampled: false, short: true });
    expect(parseB3Single('0')).toBe('deny');
    for (const bad of [`${T}-${S}-x`, `${T}`, `${T}-${S}-1-zz`, `${T}-${S}-1-${S}-more`, `${'0'.repeat(32)}-${S}`]) expect(parseB3Single(bad), bad).toBeUndefined();
  });

  it('reads the multi-header form; debug means sampled', () => {
    expect(extract({ 'x-b3-traceid': T, 'x-b3-spanid': S, 'x-b3-sampled': '1' })).toEqual({ parent: { traceId: T, spanId: S, sampled: true }, b3: { multi: true, short: false }, deny: false });
    expect(extract({ 'x-b3-traceid': T, 'x-b3-spanid': S, 'x-b3-flags': '1' }).parent?.sampled).toBe(true);
    expect(extract({ 'x-b3-traceid': T, 'x-b3-spanid': S }).parent?.sampled).toBeUndefined();
    expect(extract({ 'x-b3-sampled': '0' })).toEqual({ parent: undefined, b3: { multi: true, short: false }, deny: true });
    expect(extract({ 'x-b3-traceid': T, 'x-b3-spanid': 'nothex' }).parent).toBeUndefined();
  });
});

describe('extract', () => {
  it('prefers W3C, then B3 single, then B3 multi, each only when valid', () => {
    const other = 'a3ce929d0e0e4736a3ce929d0e0e4736';
    expect(extract({ traceparent: `00-${T}-${S}-01`, b3: `${other}-${S}-0` }).parent).toMatchObject({ traceId: T, sampled: true });
    expect(extract({ traceparent: 'junk', b3: `${other}-${S}-0` }).parent).toMatchObject({ traceId: other, sampled: false });
    expect(extract({ traceparent: 'junk', b3: 'junk', 'x-b3-traceid': other, 'x-b3-spanid': S })).toMatchObject({ parent: { traceId: other }, b3: { multi: true } });
    expect(extract({ traceparent: 'junk', b3: 'junk', 'x-b3-traceid': 'junk', 'x-b3-spanid': S }).parent).toBeUndefined();
    expect(extract({ traceparent: 'junk', 'x-b3-traceid': other, 'x-b3-spanid': S }).parent).toMatchObject({ traceId: other });
    // A repeated traceparent is no traceparent.
    expect(extract({ traceparent: [`00-${T}-${S}-01`, `00-${T}-${S}-01`] }).parent).toBeUndefined();
    // tracestate only rides with a valid traceparent.
    expect(extract({ traceparent: `00-${T}-${S}-01`, tracestate: 'a=1' }).parent?.traceState).toBe('a=1');
    expect(extract({ traceparent: `00-${T}-${S}-01`, tracestate: 'BAD' }).parent?.traceState).toBeUndefined();
  });
});

describe('inject', () => {
  it('writes traceparent with this hop as the parent, and tracestate when the caller had a valid one', () => {
    const h: Headers = { traceparent: `00-${T}-${S}-01`, tracestate: 'a=1', other: 'kept' };
    inject(h, { ...OWN, traceState: 'a=1' }, undefined);
    expect(h).toEqual({ traceparent: `00-${T}-b7ad6b7169203331-01`, tracestate: 'a=1', other: 'kept' });
  });

  it('writes B3 back in the form the caller used, a 64-bit id as it came', () => {
    const single: Headers = { b3: `a3ce929d0e0e4736-${S}-1` };
    inject(single, { ...OWN, traceId: '0000000000000000a3ce929d0e0e4736' }, { multi: false, short: true });
    expect(single).toEqual({ traceparent: `00-0000000000000000a3ce929d0e0e4736-b7ad6b7169203331-01`, b3: `a3ce929d0e0e4736-b7ad6b7169203331-1-${S}` });
    const multi: Headers = { 'x-b3-traceid': T, 'x-b3-spanid': S, 'x-b3-flags': '1' };
    inject(multi, { ...OWN, sampled: false }, { multi: true, short: false });
    expect(multi).toEqual({ traceparent: `00-${T}-b7ad6b7169203331-00`, 'x-b3-traceid': T, 'x-b3-spanid': 'b7ad6b7169203331', 'x-b3-parentspanid': S, 'x-b3-sampled': '0' });
  });

  it('drops malformed trace headers instead of passing them on', () => {
    const h: Headers = { traceparent: 'garbage', tracestate: '\u0000', b3: 'nope', 'x-b3-traceid': 'zz', 'x-b3-spanid': 'zz', 'x-b3-sampled': 'maybe' };
    const e = extract(h);
    expect(e.parent).toBeUndefined();
    inject(h, { traceId: T, spanId: S, sampled: false }, e.b3);
    expect(h).toEqual({ traceparent: `00-${T}-${S}-00` });
  });

  it('never throws on any header values, and what it writes is always valid', () => {
    const value = fc.oneof(fc.string(), fc.array(fc.string(), { maxLength: 3 }), fc.constantFrom(`00-${T}-${S}-01`, `${T}-${S}-1`, T, S, '1', '0', 'd'));
    fc.assert(
      fc.property(fc.dictionary(fc.constantFrom(...TRACE_HEADERS), value), (raw) => {
        const h = { ...raw } as Headers;
        const e = extract(h);
        if (e.parent) {
          expect(e.parent.traceId).toMatch(/^[0-9a-f]{32}$/);
          expect(e.parent.spanId).toMatch(/^[0-9a-f]{16}$/);
        }
        inject(h, { traceId: e.parent?.traceId ?? T, spanId: S, sampled: true, traceState: e.parent?.traceState, parentSpanId: e.parent?.spanId }, e.b3);
        expect(parseTraceparent(h.traceparent as string)).toBeDefined();
        if (h.tracestate !== undefined) expect(parseTracestate(h.tracestate)).toBe(h.tracestate);
        if (h.b3 !== undefined) expect(parseB3Single(h.b3 as string)).toMatchObject({ spanId: S });
        for (const k of ['x-b3-traceid', 'x-b3-spanid', 'x-b3-parentspanid']) if (h[k] !== undefined) expect(h[k]).toMatch(/^[0-9a-f]{16}([0-9a-f]{16})?$/);
      }),
      { numRuns: 2000 },
    );
  });
});
