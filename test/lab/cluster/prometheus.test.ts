// The lab's Prometheus (`lab up --prometheus`): its config from the lab's nodes, its rules from manifests/monitoring/,
// and (root) a real one in its own netns, found by the viewer, gone after `down` and, when the lab's owner died,
// after `sweep`, with the host's own netns untouched.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { Lab, sweep } from '../../../lab/cluster/lab.js';
import { labEnvPids } from '../../../lab/cluster/procs.js';
import { prometheusConfig, prometheusGet, rulesFile } from '../../../lab/cluster/prometheus.js';
import type { LabNode } from '../../../lab/cluster/plan.js';
import { locate } from '../../../viz/prom/locate.js';
import { PromClient } from '../../../viz/prom/client.js';
import { requireRoot } from '../../support/root.js';
import { until } from '../../support/until.js';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const stateRoot = mkdtempSync(path.join(os.tmpdir(), 'trellis-prom-'));
afterAll(() => rmSync(stateRoot, { recursive: true, force: true }));

const node = (i: number): LabNode => ({
  name: `node-${i}`,
  index: i,
  netns: `trl-x-node-${i}`,
  netnsPath: `/var/run/netns/trl-x-node-${i}`,
  fabricIp: `172.30.0.${10 + i}`,
  gatewayIp: `10.244.${i}.1`,
  podCidr: `10.244.${i}.0/24`,
});

describe('the lab Prometheus config', () => {
  it('scrapes every node’s agent at its fabric address, labelled with the node, at the stated interval', () => {
    const config = parse(prometheusConfig({ lab: 'x', nodes: [node(1), node(2)], scrapeInterval: '2s', rulesFile: 'rules.yml' }));
    expect(config).toEqual({
      global: { scrape_interval: '2s', scrape_timeout: '2s', evaluation_interval: '2s' },
      rule_files: ['rules.yml'],
      scrape_configs: [
        {
          job_name: 'trellis-agent',
          metrics_path: '/metrics',
          static_configs: [
            { targets: ['172.30.0.11:15020'], labels: { node: 'node-1' } },
            { targets: ['172.30.0.12:15020'], labels: { node: 'node-2' } },
          ],
        },
      ],
    });
  });

  it('loads the groups of manifests/monitoring/prometheusrule.yaml', () => {
    const manifest = parse(readFileSync(path.join(ROOT, 'manifests/monitoring/prometheusrule.yaml'), 'utf8')) as { spec: { groups: unknown } };
    expect(parse(rulesFile(ROOT))).toEqual({ groups: manifest.spec.groups });
  });
});

const MANIFEST = `
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop}
spec:
  nodeName: n1
  containers: [{name: c, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: shop}
spec:
  nodeName: n2
  containers: [{name: c, command: [sleep, infinity]}]
`;

const labNetns = (lab: string) => readdirSync('/var/run/netns').filter((n) => n.startsWith(`trl-${lab}-`));
const host = () => ['addr', 'route', 'rule'].map((what) => execFileSync('ip', [what], { encoding: 'utf8' })).join('\n');

describe('the lab Prometheus (root)', () => {
  it('runs in a netns of its own, answers the viewer, and is gone after down and after sweep', async () => {
    requireRoot('lab Prometheus tests');
    const file = path.join(stateRoot, 'shop.yaml');
    writeFileSync(file, MANIFEST);
    const before = host();
    for (const how of ['down', 'sweep'] as const) {
      const name = `p${how[0]}${Math.random().toString(36).slice(2, 5)}`;
      const lab = await Lab.up(file, { name, stateRoot, agents: false, prometheus: { scrapeInterval: '1s' } });
      try {
        expect(lab.prometheus).toMatchObject({ url: 'http://172.30.0.3:9090', netns: `trl-${name}-prom`, scrapeInterval: '1s' });
        expect(labNetns(name)).toContain(`trl-${name}-prom`);
        expect((await prometheusGet(lab.prometheus!, '/-/ready')).status).toBe(200);
        // The viewer finds it through the lab's endpoints file, and reads its targets (no agents: down).
        const found = locate({ lab: name }, stateRoot);
        expect(found.objectsDir).toBe(lab.clusterDir);
        const nodes = await until('the first scrapes', async () => {
          const up = await new PromClient(found.transport).query('up{job="trellis-agent"}');
          return up.length === 2 && up.map((s) => `${s.labels.node} ${s.value}`).sort();
          // Prometheus hands discovered targets to its scrapers every 5 s: the first scrape comes that late.
        }, 15_000);
        expect(nodes).toEqual(['n1 0', 'n2 0']);
        expect(existsSync(path.join(lab.stateDir, 'prometheus', 'data'))).toBe(true);
        expect(labEnvPids((l) => l === name).length).toBeGreaterThan(0);
      } finally {
        // `down` as a user runs it; `sweep` as after a crash of the process that brought it up.
        if (how === 'down') await lab.down();
        else expect(await sweep({ prefix: `trl-${name}-`, stateRoot })).toContain(`netns trl-${name}-prom`);
      }
      expect(labNetns(name)).toEqual([]);
      expect(labEnvPids((l) => l === name)).toEqual([]);
      expect(existsSync(path.join(stateRoot, name))).toBe(false);
    }
    expect(host()).toBe(before);
  });
});
