// The address a pod's captured connection is recorded from: the socket's peer, or the pod's own behind loopback.
import { describe, expect, it } from 'vitest';
import { sourceAddress, type Workload } from '../../agent/state/workload.js';

describe('sourceAddress', () => {
  const pod = { ip: '10.244.1.2' } as Workload;
  it("is the socket's peer address when the connection came over the pod's interface (nft capture)", () => {
    expect(sourceAddress(pod, '10.244.1.2')).toBe('10.244.1.2');
    expect(sourceAddress(pod, '10.244.1.9')).toBe('10.244.1.9');
  });
  it("is the pod's own address when the app's connect was sent to the agent on loopback (eBPF capture)", () => {
    expect(sourceAddress(pod, '127.0.0.1')).toBe('10.244.1.2');
    expect(sourceAddress(pod, '::ffff:127.0.0.1')).toBe('10.244.1.2');
    expect(sourceAddress(pod, '::1')).toBe('10.244.1.2');
  });
  it('keeps what it has when the pod has no address yet, or the socket none', () => {
    expect(sourceAddress({ ip: undefined } as Workload, '127.0.0.1')).toBe('127.0.0.1');
    expect(sourceAddress(pod, undefined)).toBeUndefined();
  });
});
