// Root-only: capture drift in real pod netns. Rules deleted or changed and listeners killed behind the agent's back
// are found and repaired, and counted; intact pods are left alone.
import { randomBytes, randomInt } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DriftChecker, parseProcNetTcp } from '../../agent/capture/drift.js';
import { requireRoot } from '../support/root.js';
import { AGENT_LISTENERS, CaptureAgent, PodNet, listening, namespace, pod, run, type TestPod } from './harness.js';

const prefix = `trl-t-drift-${randomBytes(3).toString('hex')}`;

function table(ns: string): string {
  return run('ip', 'netns', 'exec', ns, 'nft', '-a', 'list', 'table', 'inet', 'trellis');
}

/** Socket inodes of the listeners in a netns: a reopened listener has a new one. */
function listenerInodes(ns: string): string[] {
  return parseProcNetTcp(run('ip', 'netns', 'exec', ns, 'cat', '/proc/net/tcp')).map((l) => `${l.host}:${l.port}=${l.inode}`).sort();
}

async function repairs(agent: CaptureAgent, what: string): Promise<number> {
  const m = await agent.metrics.captureDriftRepairs.get();
  return m.values.find((v) => v.labels.what === what)?.value ?? 0;
}

describe('capture drift repair', () => {
  const podNet = new PodNet(prefix, `10.252.${randomInt(1, 250)}`);
  let agent: CaptureAgent;
  let drift: DriftChecker;
  let a: TestPod;
  let b: TestPod;

  beforeAll(async () => {
    requireRoot('drift tests');
    podNet.create();
    a = podNet.addPod('a', 2);
    b = podNet.addPod('b', 3);
    agent = new CaptureAgent({ probeSources: ['10.252.0.1'] });
    await agent.apply([
      namespace('mesh', true),
      pod('mesh', 'a', { ip: a.ip, netns: a.path }),
      pod('mesh', 'b', { ip: b.ip, netns: b.path }),
    ]);
    expect(agent.enrolment.pods()).toEqual(['mesh/a', 'mesh/b']);
    drift = new DriftChecker({
      enrolment: agent.enrolment,
      probeSources: ['10.252.0.1'],
      intervalMs: 200,
      metrics: agent.metrics,
      logger: agent.log.logger,
    });
  });

  afterAll(() => {
    drift?.stop();
    agent?.close();
    podNet.destroy();
  });

  it('leaves intact pods alone', async () => {
    const before = [table(a.ns), table(b.ns), listenerInodes(a.ns), listenerInodes(b.ns)];
    const report = await drift.check();
    expect(report).toEqual({ checked: 2, repaired: { rules: [], listeners: [], bpf: [] }, failed: [] });
    expect([table(a.ns), table(b.ns), listenerInodes(a.ns), listenerInodes(b.ns)]).toEqual(before);
    expect(await repairs(agent, 'rules')).toBe(0);
    expect(await repairs(agent, 'listeners')).toBe(0);
  });

  it('reinstalls a deleted table', async () => {
    const intactB = table(b.ns);
    run('nsenter', `--net=${a.path}`, 'nft', 'delete', 'table', 'inet', 'trellis');
    const report = await drift.check();
    expect(report.repaired).toEqual({ rules: ['mesh/a'], listeners: [], bpf: [] });
    expect(table(a.ns)).toContain('redirect to :15001');
    expect(table(a.ns)).toContain('ip saddr 10.252.0.1 return');
    expect(table(b.ns)).toBe(intactB);
    expect(await repairs(agent, 'rules')).toBe(1);
  });

  it('reinstalls a table someone changed (a rule added or removed)', async () => {
    // An inserted rule ahead of ours lets traffic to 10/8 skip the mesh.
    run('nsenter', `--net=${a.path}`, 'nft', 'insert', 'rule', 'inet', 'trellis', 'output', 'ip', 'daddr', '10.0.0.0/8', 'return');
    expect((await drift.check()).repaired.rules).toEqual(['mesh/a']);
    expect(table(a.ns)).not.toContain('10.0.0.0/8');
    // A rule of ours deleted: the inbound redirect.
    const handle = /redirect to :15006 # handle (\d+)/.exec(table(a.ns))?.[1];
    expect(handle).toBeDefined();
    run('nsenter', `--net=${a.path}`, 'nft', 'delete', 'rule', 'inet', 'trellis', 'prerouting', 'handle', handle!);
    expect((await drift.check()).repaired.rules).toEqual(['mesh/a']);
    expect(table(a.ns)).toContain('redirect to :15006');
    expect(await repairs(agent, 'rules')).toBe(3);
    // Repaired means identical again: the next pass finds nothing.
    expect((await drift.check()).repaired).toEqual({ rules: [], listeners: [], bpf: [] });
  });

  it('reopens a listener killed behind its back, without touching the other pod', async () => {
    const intactB = listenerInodes(b.ns);
    // ss -K destroys the listening socket in the kernel; Node does not notice, the agent's drift check must.
    run('nsenter', `--net=${a.path}`, 'ss', '-K', '-ltn', 'sport', '=', ':15006');
    expect(listening(a.ns)).not.toContain('0.0.0.0:15006');
    const report = await drift.check();
    expect(report.repaired).toEqual({ rules: [], listeners: ['mesh/a'], bpf: [] });
    expect(listening(a.ns)).toEqual(AGENT_LISTENERS);
    expect(listenerInodes(b.ns)).toEqual(intactB);
    expect(await repairs(agent, 'listeners')).toBe(1);
    expect((await drift.check()).repaired).toEqual({ rules: [], listeners: [], bpf: [] });
  });

  it('runs by itself every interval once started', async () => {
    drift.start();
    try {
      run('nsenter', `--net=${b.path}`, 'nft', 'delete', 'table', 'inet', 'trellis');
      run('nsenter', `--net=${b.path}`, 'ss', '-K', '-ltn', 'sport', '=', ':15001');
      const deadline = Date.now() + 5000;
      while ((await repairs(agent, 'rules')) < 4 || (await repairs(agent, 'listeners')) < 2) {
        if (Date.now() > deadline) throw new Error('the periodic drift check did not repair pod b');
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(table(b.ns)).toContain('redirect to :15001');
      expect(listening(b.ns)).toEqual(AGENT_LISTENERS);
    } finally {
      drift.stop();
    }
    const text = await agent.metrics.registry.getSingleMetricAsString('trellis_capture_drift_repairs_total');
    expect(text).toContain('trellis_capture_drift_repairs_total{what="rules"} 4');
    expect(text).toContain('trellis_capture_drift_repairs_total{what="listeners"} 2');
  });

  it('skips a pod whose netns is gone (it is leaving) and a pod unenrolled meanwhile', async () => {
    podNet.removePod(b);
    const report = await drift.check();
    expect(report.checked).toBe(1);
    expect(report.repaired).toEqual({ rules: [], listeners: [], bpf: [] });
    // Unenrolled between the look and the repair: the repair is a no-op, not a reinstall.
    expect(await agent.enrolment.repairRules('mesh/gone', '/nowhere')).toBe(false);
    expect(await agent.enrolment.reopenListeners('mesh/gone', '/nowhere')).toBe(false);
  });

  it('parses /proc/net/tcp listeners', () => {
    const text = [
      '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
      '   0: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123 1 0000 100 0 0 10 0',
      '   1: 00000000:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 124 1 0000 100 0 0 10 0',
      '   2: 0500FC0A:3A99 0600FC0A:D431 01 00000000:00000000 00:00000000 00000000     0        0 125 1 0000 100 0 0 10 0',
    ].join('\n');
    expect(parseProcNetTcp(text)).toEqual([
      { host: '127.0.0.1', port: 15001, inode: '123' },
      { host: '0.0.0.0', port: 15006, inode: '124' },
    ]);
  });
});
