// Root-only: the bench's config scale through the kube source (lab/bench/scale-kube.ts), at a small size: a
// cluster-mode lab comes up, a batch of Services and ready Pods goes in through the API, the controller's
// EndpointSlices reach the agents, every measurement is reported, and the lab is gone afterwards.
import { randomInt } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { KUBE_SCALE_METRICS, measureKubeScale } from '../../../lab/bench/scale-kube.js';
import { ProcReader } from '../../../lab/bench/procfs.js';
import type { Lab } from '../../../lab/cluster/lab.js';
import { requireRoot } from '../../support/root.js';

describe('config scale through the kube source (root)', () => {
  it('measures a small batch end to end and tears its lab down', async () => {
    requireRoot('the kube config-scale bench');
    const name = `s${Array.from({ length: 4 }, () => 'abcdefghijklmnopqrstuvwxyz0123456789'[randomInt(36)]).join('')}`;
    const results: Record<string, number[]> = {};
    const machine: Record<string, unknown> = {};
    let lab: Lab | undefined;
    try {
      await measureKubeScale({
        name,
        size: { services: 20, endpointsPerService: 2 },
        probes: 1,
        agentArgs: [],
        logLevel: 'info',
        procs: new ProcReader(),
        onLab: (l) => (lab = l),
        add: (metric, value) => (results[metric] ??= []).push(value),
        machine,
        log: (line) => process.stderr.write(`${line}\n`),
      });
    } finally {
      await lab?.down();
    }
    expect(Object.keys(results).sort()).toEqual(KUBE_SCALE_METRICS.map((m) => m.name).sort());
    for (const [metric, values] of Object.entries(results)) expect(values.every((v) => v > 0), metric).toBe(true);
    expect(machine.scale_kube).toMatchObject({ services: 20, endpoints: 40, pods: 40 });
    expect(readdirSync('/var/run/netns').filter((n) => n.startsWith(`trl-${name}-`))).toEqual([]);
  });
});
