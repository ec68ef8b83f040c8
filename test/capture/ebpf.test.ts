// Root-only: the eBPF capture mode's inbound in real pod netns, with the agent's capture side built in-process as
// agent/app.ts builds it (Enrolment, real PodProxy listeners, the pods' sk_lookup programs loaded and linked for real):
// a connection to a pod lands on the agent and reaches the app; the rules carry the guard, not the redirect, and drift
// repair knows that ruleset; a listener killed behind the agent's back is refused meanwhile and followed once
// reopened; unenrolment and close take every program away. The host's own netns is never attached to.
import { execFileSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { statSync } from 'node:fs';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DriftChecker } from '../../agent/capture/drift.js';
import { connectInNetns, listenFdInNetns } from '../../agent/native/index.js';
import { requireRoot } from '../support/root.js';
import { AGENT_LISTENERS, CaptureAgent, PodNet, listening, namespace, pod, run, type TestPod } from './harness.js';

const prefix = `trl-t-ebpf-${randomBytes(3).toString('hex')}`;

/** The sk_lookup links on a netns, by bpftool. */
function links(netnsPath: string): { id: number; prog_id: number }[] {
  const ino = statSync(netnsPath).ino;
  const all = JSON.parse(execFileSync('bpftool', ['-j', 'link', 'show'], { encoding: 'utf8' })) as { id: number; prog_id: number; type: string; attach_type?: string; netns_ino?: number }[];
  return all.filter((l) => l.type === 'netns' && l.attach_type === 'sk_lookup' && l.netns_ino === ino);
}

/** Sends `text` from inside `from` to ip:port and resolves with the reply, or rejects with the socket's error code. */
function exchange(from: TestPod, ip: string, port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connectInNetns(from.path, { host: ip, port, timeoutMs: 2000 });
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString()));
    s.on('error', (err: Error & { code?: string }) => reject(Object.assign(new Error(err.code ?? err.message), { code: err.code })));
    s.on('end', () => resolve(got));
    s.on('connect', () => s.end(`${text}\n`));
  });
}

async function opened(agent: CaptureAgent, workload: string): Promise<number> {
  const m = await agent.metrics.registry.getSingleMetric('trellis_tcp_connections_opened_total')!.get();
  return m.values.filter((v) => v.labels.destination_workload === workload).reduce((n, v) => n + v.value, 0);
}

describe('eBPF capture mode: inbound by sk_lookup (in-process agent, real pod netns)', () => {
  const podNet = new PodNet(prefix, `10.251.${randomInt(1, 250)}`);
  let agent: CaptureAgent;
  let drift: DriftChecker;
  let a: TestPod;
  let b: TestPod;
  let app: net.Server;
  const seen = new Set<number>();

  beforeAll(async () => {
    requireRoot('eBPF capture tests');
    podNet.create();
    a = podNet.addPod('a', 2);
    b = podNet.addPod('b', 3);
    // The app in pod a: an echo on 7000.
    app = net.createServer((s) => {
      s.on('error', () => undefined);
      s.pipe(s);
    });
    app.listen({ fd: listenFdInNetns(a.path, { host: '0.0.0.0', port: 7000 }) });
    agent = new CaptureAgent({ probeSources: [podNet.hubIp], inbound: 'sk_lookup' });
    await agent.apply([namespace('mesh', true), namespace('plain', false), pod('mesh', 'a', { ip: a.ip, netns: a.path }), pod('plain', 'b', { ip: b.ip, netns: b.path })]);
    expect(agent.enrolment.pods()).toEqual(['mesh/a']);
    drift = new DriftChecker({ enrolment: agent.enrolment, probeSources: [podNet.hubIp], inbound: 'sk_lookup', intervalMs: 200, metrics: agent.metrics, logger: agent.log.logger });
  });

  afterAll(async () => {
    drift?.stop();
    agent?.close();
    app?.close();
    for (const id of seen) expect(JSON.parse(execFileSync('bpftool', ['-j', 'link', 'list'], { encoding: 'utf8' })).some((l: { id: number }) => l.id === id), `link ${id}`).toBe(false);
    podNet.destroy();
  });

  it('links one program to the enrolled pod, none to the other, and installs the guard instead of the redirect', () => {
    const la = links(a.path);
    expect(la).toHaveLength(1);
    for (const l of la) seen.add(l.id);
    expect(links(b.path)).toEqual([]);
    const table = run('ip', 'netns', 'exec', a.ns, 'nft', 'list', 'table', 'inet', 'trellis');
    expect(table).toContain('redirect to :15001');
    expect(table).not.toContain(':15006');
    expect(table).toMatch(/socket mark != 0x0*539 reject with tcp reset/);
  });

  it('hands a connection from another pod to the agent, which carries it to the app', async () => {
    const before = await opened(agent, 'a');
    expect(await exchange(b, a.ip, 7000, 'hello')).toBe('hello\n');
    expect(await opened(agent, 'a')).toBe(before + 1);
    expect(agent.steering!.verdicts().steered).toBeGreaterThanOrEqual(1);
    // The agent's own connection to the app, from the pod's address, was left alone by the program.
    expect(agent.steering!.verdicts().local).toBeGreaterThanOrEqual(1);
  });

  it('drift repair knows the eBPF ruleset: intact is intact, a deleted table comes back with the guard', async () => {
    expect((await drift.check()).repaired).toEqual({ rules: [], listeners: [], bpf: [] });
    run('nsenter', `--net=${a.path}`, 'nft', 'delete', 'table', 'inet', 'trellis');
    expect((await drift.check()).repaired).toEqual({ rules: ['mesh/a'], listeners: [], bpf: [] });
    expect(run('ip', 'netns', 'exec', a.ns, 'nft', 'list', 'table', 'inet', 'trellis')).toMatch(/socket mark != 0x0*539 reject/);
    expect((await drift.check()).repaired).toEqual({ rules: [], listeners: [], bpf: [] });
  });

  it('refuses while the listener is gone, and the program follows the reopened one', async () => {
    run('nsenter', `--net=${a.path}`, 'ss', '-K', '-ltn', 'sport', '=', ':15006');
    await expect(exchange(b, a.ip, 7000, 'must-not-pass')).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    // Killed in the kernel, the listener stays in the program's map, closed: the kernel refuses it for the lookup.
    const v = agent.steering!.verdicts();
    expect(v.no_listener + v.refused).toBeGreaterThanOrEqual(1);
    expect((await drift.check()).repaired).toEqual({ rules: [], listeners: ['mesh/a'], bpf: [] });
    expect(listening(a.ns)).toEqual([...AGENT_LISTENERS, '0.0.0.0:7000'].sort());
    expect(await exchange(b, a.ip, 7000, 'back')).toBe('back\n');
  });

  it('unenrolment detaches the program: the app is reached directly; enrolled again, captured again', async () => {
    const before = await opened(agent, 'a');
    await agent.apply([namespace('mesh', true), namespace('plain', false), pod('mesh', 'a', { ip: a.ip, netns: a.path, mesh: 'disabled' }), pod('plain', 'b', { ip: b.ip, netns: b.path })]);
    expect(links(a.path)).toEqual([]);
    expect(await exchange(b, a.ip, 7000, 'direct')).toBe('direct\n');
    expect(await opened(agent, 'a')).toBe(before);
    await agent.apply([namespace('mesh', true), namespace('plain', false), pod('mesh', 'a', { ip: a.ip, netns: a.path }), pod('plain', 'b', { ip: b.ip, netns: b.path })]);
    const again = links(a.path);
    expect(again).toHaveLength(1);
    for (const l of again) seen.add(l.id);
    expect(await exchange(b, a.ip, 7000, 'again')).toBe('again\n');
    expect(await opened(agent, 'a')).toBe(before + 1);
  });

  it('closing the enrolment detaches every program, and the guard then refuses', async () => {
    agent.enrolment.close();
    expect(links(a.path)).toEqual([]);
    // The app listens on 7000: only the guard's reset keeps the connection from reaching it.
    await expect(exchange(b, a.ip, 7000, 'must-not-pass')).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });
});
