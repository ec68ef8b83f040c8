import { describe, expect, it } from 'vitest';
import { captureRuleset, removalRuleset } from '../../agent/capture/rules.js';

describe('capture rules', () => {
  const r = captureRuleset({ probeSources: ['10.244.1.1'] });
  it('redirects outbound TCP to 15001 except loopback and marked sockets', () => {
    expect(r).toMatch(/oifname "lo" return\n\s+meta mark 0x539 return/);
    expect(r).toMatch(/redirect to :15001/);
  });
  it('lets HBONE and node probes through and redirects the rest of inbound TCP to 15006', () => {
    expect(r).toMatch(/ip saddr 10\.244\.1\.1 return/);
    expect(r).toMatch(/tcp dport 15008 return\n\s+meta l4proto tcp redirect to :15006/);
  });
  it('replaces only its own table, atomically', () => {
    expect(r.startsWith('table inet trellis {}\ndelete table inet trellis\n')).toBe(true);
    expect(removalRuleset()).toBe('table inet trellis {}\ndelete table inet trellis\n');
  });
});
