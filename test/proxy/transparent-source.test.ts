import { describe, expect, it } from 'vitest';
import { transparentSource } from '../../agent/dataplane.js';

describe('transparentSource: the address a connection to the app leaves from to keep the caller’s', () => {
  it('is the caller’s own address, unmapped from IPv6 when it came in as IPv4', () => {
    expect(transparentSource('10.244.1.2', '10.244.2.3')).toBe('10.244.1.2');
    expect(transparentSource('::ffff:10.244.1.2', '10.244.2.3')).toBe('10.244.1.2');
    expect(transparentSource('fd00::5', 'fd00::9')).toBe('fd00::5');
  });

  it('is none without a caller, across families, for the app’s own address, or for something that is not an IP', () => {
    expect(transparentSource(undefined, '10.244.2.3')).toBeUndefined();
    expect(transparentSource('fd00::5', '10.244.2.3')).toBeUndefined();
    expect(transparentSource('10.244.1.2', 'fd00::9')).toBeUndefined();
    expect(transparentSource('10.244.2.3', '10.244.2.3')).toBeUndefined();
    expect(transparentSource('web.shop', '10.244.2.3')).toBeUndefined();
  });
});
