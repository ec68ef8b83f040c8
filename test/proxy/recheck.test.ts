// Open opaque connections are re-authorized when the policy set changes: a new DENY cuts them.
import { describe, expect, it } from 'vitest';
import { PolicyRecheck } from '../../agent/proxy/recheck.js';
import { evaluateConnection } from '../../agent/security/index.js';
import type { KubeObject } from '../../agent/model/objects.js';
import { compile, type MeshState } from '../../agent/state/store.js';

const pod: KubeObject = {
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name: 'db', namespace: 'shop', labels: { app: 'db' } },
  spec: { nodeName: 'n1', containers: [{ name: 'c' }] },
  status: { podIP: '10.244.1.9' },
} as KubeObject;

const denyClient = {
  apiVersion: 'security.trellis.dev/v1alpha1',
  kind: 'AuthorizationPolicy',
  metadata: { name: 'no-client', namespace: 'shop' },
  spec: { selector: { matchLabels: { app: 'db' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/client'] } }] }] },
} as unknown as KubeObject;

function check(state: MeshState, principal: string) {
  return evaluateConnection(state.policies, {
    workload: state.workloads.get('shop/db'),
    sourceIdentity: principal,
    sourceIp: '10.244.2.5',
    destinationIp: '10.244.1.9',
    destinationPort: 5432,
    protocol: 'tcp',
  }).decision;
}

describe('PolicyRecheck', () => {
  it('cuts the open connections a new policy denies, keeps the others, and ignores snapshots without policy changes', () => {
    const before = compile([pod], 'cluster.local', 1);
    const recheck = new PolicyRecheck();
    const cut: string[] = [];
    for (const who of ['client', 'other']) {
      const principal = `spiffe://cluster.local/ns/shop/sa/${who}`;
      expect(check(before, principal).allowed).toBe(true);
      recheck.track((s) => check(s, principal), (d) => cut.push(`${who}: ${d.code} ${d.policy}`));
    }
    // No policy change: nothing is cut.
    const same = compile([pod], 'cluster.local', 2, before);
    expect(recheck.apply(same, before)).toBe(0);
    const after = compile([pod, denyClient], 'cluster.local', 3, same);
    expect(recheck.apply(after, same)).toBe(1);
    expect(cut).toEqual(['client: denied shop/no-client']);
    expect(recheck.size).toBe(1);
  });
});
