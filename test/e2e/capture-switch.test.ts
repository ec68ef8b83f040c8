// A hand-over between capture modes, as an upgrade that changes --capture (or a node whose kernel gains what eBPF
// mode needs) does it: each node's agent is replaced by one of the other mode (`restartAgent` with `--capture`), while
// new connections flow from a meshed client (outbound capture on node-a, HBONE, inbound on node-b) and from a
// plaintext caller outside the mesh (inbound capture on node-b). No connection may fail across the switches, and
// each pod ends with the capture of the mode now running: the nft redirects, or the sk_lookup program, the outbound
// programs and no NAT. While agents of both modes run, each reads the other's original destinations (NAT's, or the
// outbound programs' record).
// Needs root.
import { execFile } from 'node:child_process';
import { statSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab } from '../../lab/cluster/lab.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const run = promisify(execFile);
const fixtures = path.join(import.meta.dirname, 'fixtures', 'mesh.yaml');
const labName = `cs${Math.random().toString(36).slice(2, 5)}`;

/** New connections one after another to host:70 for `ms`, each sending "x" and expecting it back; a JSON summary. */
const loop = (host: string, ms: number) => `
  const net = require('net'); const end = Date.now() + ${ms};
  let ok = 0, failed = 0; const errors = {};
  (function next() {
    if (Date.now() > end) { console.log(JSON.stringify({ ok, failed, errors })); process.exit(0); }
    const s = net.connect(70, '${host}'); let got = '';
    const fail = (e) => { failed++; errors[e.code || e.message] = (errors[e.code || e.message] || 0) + 1; s.destroy(); setTimeout(next, 20); };
    s.setTimeout(3000, () => fail(new Error('timeout')));
    s.on('error', fail);
    s.on('data', (d) => (got += d));
    s.on('end', () => { if (got === 'x') ok++; else fail(new Error('answer ' + JSON.stringify(got))); s.destroy(); setTimeout(next, 20); });
    s.end('x');
  })();`;

describe('hand-over between capture modes (two-node lab, ebpf -> nft -> ebpf)', () => {
  let lab: Lab;
  let echoVip: string;

  const metrics = async (node: string) => parsePrometheus(await lab.metrics(node));
  const rules = async (ref: string) => (await run('nsenter', [`--net=${lab.pod(ref).netnsPath}`, 'nft', 'list', 'ruleset'])).stdout;
  /** sk_lookup links on the pod's netns. */
  const skLookups = async (ref: string): Promise<number> => {
    const ino = statSync(lab.pod(ref).netnsPath).ino;
    const { stdout } = await run('bpftool', ['-j', 'link', 'show']);
    return (JSON.parse(stdout) as { type: string; attach_type?: string; netns_ino?: number }[]).filter((l) => l.type === 'netns' && l.attach_type === 'sk_lookup' && l.netns_ino === ino).length;
  };
  const modeOf = async (node: string): Promise<string[]> => {
    const m = await metrics(node);
    return ['nft', 'ebpf'].filter((mode) => sumOf(m, 'trellis_capture_mode', { mode }) === 1);
  };

  /**
   * Replaces both agents, node-b then node-a, with `--capture mode` under load. To eBPF mode no connection may fail. To
   * nft mode one may still be reset, an open race (about one connection in 500 during the switch, in one run of four
   * or five; docs/install.md): the test holds it to that, and fails on two.
   */
  async function switchTo(mode: 'nft' | 'ebpf'): Promise<void> {
    const allowed = mode === 'nft' ? 1 : 0;
    const loads = Promise.all(['plain/outsider', 'mesh/client'].map((pod) => lab.exec(pod, ['node', '-e', loop(echoVip, 12_000)], { timeoutMs: 40_000 })));
    await new Promise((r) => setTimeout(r, 1000));
    await lab.restartAgent('node-b', { agentArgs: ['--capture', mode] });
    await lab.restartAgent('node-a', { agentArgs: ['--capture', mode] });
    const results = await loads;
    const noted = (node: string) => lab.agentLog(node).split('\n').filter((l) => /"level":(4|5)\d/.test(l)).slice(-30).join('\n');
    if (results.some((r) => !r.stdout.includes('"failed":0'))) console.log(`node-a:\n${noted('node-a')}\nnode-b:\n${noted('node-b')}`);
    for (const [i, r] of results.entries()) {
      expect(r.code, r.stderr).toBe(0);
      const summary = JSON.parse(r.stdout.trim()) as { ok: number; failed: number };
      expect(summary.failed, `${['plaintext', 'meshed'][i]} caller, switching to ${mode}: ${JSON.stringify(summary)}`).toBeLessThanOrEqual(allowed);
      expect(summary.ok).toBeGreaterThan(20);
    }
    for (const node of ['node-a', 'node-b']) expect(await modeOf(node), node).toEqual([mode]);
  }

  beforeAll(async () => {
    requireRoot('end-to-end capture mode hand-over tests');
    lab = await Lab.up(fixtures, { name: labName, agentArgs: ['--capture', 'ebpf'] });
    echoVip = lab.services.find((s) => s.name === 'echo')!.clusterIP;
    // Lab.up waits for the pods to listen on their declared ports (echo's 7000).
  });

  afterAll(async () => {
    await lab?.down();
    const { stdout } = await run('ip', ['netns', 'list']);
    expect(stdout).not.toContain(`trl-${labName}-`);
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  it('starts in eBPF mode: inbound by sk_lookup, no inbound redirect', async () => {
    for (const node of ['node-a', 'node-b']) expect(await modeOf(node), node).toEqual(['ebpf']);
    expect(await skLookups('mesh/echo')).toBe(1);
    expect(await rules('mesh/echo')).not.toContain('redirect to :15006');
  });

  it('hands over to nft agents without a failed connection, and the pods end with the nft redirect and no program', async () => {
    await switchTo('nft');
    await until('the sk_lookup program of the old agent to go', async () => (await skLookups('mesh/echo')) === 0, 5000);
    expect(await rules('mesh/echo')).toContain('redirect to :15006');
    expect(await rules('mesh/client')).toContain('redirect to :15001');
  });

  it('hands back to eBPF agents without a failed connection, and the pods end without the inbound redirect', async () => {
    await switchTo('ebpf');
    expect(await skLookups('mesh/echo')).toBe(1);
    expect(await rules('mesh/echo')).not.toContain('redirect to :15006');
    // Outbound by the connect4/6 programs: no NAT left in the client's table.
    expect(await rules('mesh/client')).not.toContain('redirect');
  });
});
