import { describe, expect, it } from 'vitest';
import { Drain } from '../../agent/proxy/drain.js';

describe('drain', () => {
  it('resolves at once with nothing in flight', async () => {
    expect(await new Drain().wait(1000)).toBe(0);
  });
  it('waits for connections in flight, and counts a double leave once', async () => {
    const d = new Drain();
    const a = d.enter();
    const b = d.enter();
    const waiting = d.wait(5000);
    a();
    a();
    expect(d.active()).toBe(1);
    setTimeout(b, 20);
    expect(await waiting).toBe(0);
  });
  it('gives up after its limit and says how many are left', async () => {
    const d = new Drain();
    d.enter();
    expect(await d.wait(30)).toBe(1);
  });
});
