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
  it('in eBPF mode keeps outbound and, instead of the inbound redirect, resets new connections no agent socket takes', () => {
    const e = captureRuleset({ probeSources: ['10.244.1.1'], inbound: 'sk_lookup' });
    expect(e).toMatch(/redirect to :15001/);
    expect(e).not.toMatch(/redirect to :15006/);
    expect(e).not.toMatch(/hook prerouting/);
    expect(e).toMatch(/chain input \{\n\s+type filter hook input priority -110; policy accept;\n\s+iifname "lo" return\n\s+ip saddr 10\.244\.1\.1 return\n\s+tcp dport 15008 return\n\s+tcp flags & \(syn \| ack\) == syn socket mark != 0x539 reject with tcp reset\n/);
    // The same outbound and reply-routing chains as in nft mode.
    const chains = (text: string) => text.split(/\n  chain /).filter((c) => !c.startsWith('prerouting') && !c.startsWith('input'));
    expect(chains(e)).toEqual(chains(r));
  });
  it('in eBPF mode with outbound by connect4/6: no NAT at all, an outbound guard resets new TCP leaving the pod not to loopback and not from the agent', () => {
    const e = captureRuleset({ probeSources: ['10.244.1.1'], inbound: 'sk_lookup', outbound: 'connect' });
    expect(e).not.toMatch(/redirect/);
    // NAT's hooks stay registered for connections an nft-mode agent redirected before a hand-over, by nat chains that
    // hold no rule.
    const nat = [...e.matchAll(/chain (\w+) \{\n\s+type nat hook (\w+) priority -110; policy accept;\n([^}]*)\}/g)];
    expect(nat.map((m) => [m[1], m[2], m[3]!.trim()])).toEqual([['nat_kept_prerouting', 'prerouting', ''], ['nat_kept_output', 'output', '']]);
    expect(e).toMatch(
      /chain output \{\n\s+type filter hook output priority filter; policy accept;\n\s+oifname "lo" return\n\s+ip daddr 127\.0\.0\.0\/8 return\n\s+ip6 daddr ::1 return\n\s+meta mark 0x539 return\n\s+meta mark 0x53a return\n\s+tcp flags & \(syn \| ack\) == syn reject with tcp reset\n\s+\}/,
    );
    // The inbound guard and reply routing as with outbound by nft.
    const rest = (text: string) => text.split(/\n  chain /).filter((c) => !c.startsWith('output') && !c.startsWith('nat_kept'));
    expect(rest(e)).toEqual(rest(captureRuleset({ probeSources: ['10.244.1.1'], inbound: 'sk_lookup' })));
  });
  it('replaces only its own table, atomically', () => {
    expect(r.startsWith('table inet trellis {}\ndelete table inet trellis\n')).toBe(true);
    expect(removalRuleset()).toBe('table inet trellis {}\ndelete table inet trellis\n');
  });
});
