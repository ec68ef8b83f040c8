// The idle reclaimer: a full GC only on an idle agent whose heap grew past what the last one left; the C heap
// trimmed every tick.
import { describe, expect, it } from 'vitest';
import { MemoryReclaimer } from '../../agent/telemetry/memory.js';

const MB = 1024 * 1024;

function fake(opts: { gc?: boolean } = {}) {
  const s = { cpu: 0, now: 0, heap: 20 * MB, gcs: 0, trims: 0 };
  const r = new MemoryReclaimer({
    cpuMicros: () => s.cpu,
    heapUsed: () => s.heap,
    gc:
      opts.gc === false
        ? undefined
        : () => {
            s.gcs++;
            s.heap = 22 * MB;
          },
    trim: () => void s.trims++,
    now: () => s.now,
  });
  /** 10 s pass, with `cpuMs` of CPU spent and the heap at `heapMb`. */
  const tick = (cpuMs: number, heapMb: number) => {
    s.now += 10_000;
    s.cpu += cpuMs * 1000;
    s.heap = heapMb * MB;
    return r.tick();
  };
  return { s, tick };
}

describe('MemoryReclaimer', () => {
  it('runs no GC under traffic, however big the heap, and trims every tick', () => {
    const { s, tick } = fake();
    expect(tick(3000, 70)).toEqual({ gc: false });
    expect(tick(500, 70)).toEqual({ gc: false });
    expect(s.gcs).toBe(0);
    expect(s.trims).toBe(2);
  });

  it('runs one full GC once the agent is idle and its heap grew past the last GC by 16 MB', () => {
    const { s, tick } = fake();
    expect(tick(3000, 60)).toEqual({ gc: false });
    expect(tick(50, 60)).toEqual({ gc: true });
    // The GC left 22 MB: no second one while the heap stays near that.
    expect(tick(50, 30)).toEqual({ gc: false });
    expect(tick(50, 39)).toEqual({ gc: true });
    expect(s.gcs).toBe(2);
  });

  it('leaves a small heap alone even when idle', () => {
    const { s, tick } = fake();
    expect(tick(10, 30)).toEqual({ gc: false });
    expect(s.gcs).toBe(0);
    expect(s.trims).toBe(1);
  });

  it('without --expose-gc it only trims', () => {
    const { s, tick } = fake({ gc: false });
    expect(tick(10, 80)).toEqual({ gc: false });
    expect(s.trims).toBe(1);
  });
});
