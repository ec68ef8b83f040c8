// The enrolment's work loop in-process, with its side effects faked: CNI enrolments arriving one after another do
// not hold the state back (an agent starting meanwhile finishes its first pass and gets ready), an ADD that names
// a pod's netns by another path than the one it is enrolled under leaves its capture alone, and in eBPF mode the
// pod's sk_lookup program comes and goes in its place in the order (and the steering adds up its verdicts).
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { Enrolment } from '../../agent/capture/enrolment.js';
import { InboundSteering, type LinkLike } from '../../agent/capture/sk-lookup.js';
import type { SkLookupVerdict } from '../../agent/native/index.js';
import { Store } from '../../agent/state/store.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import type { Workload } from '../../agent/state/workload.js';
import { NODE, TD, namespace, pod } from './harness.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'trl-t-enrol-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A file standing for a netns: enrolment tells netns apart by dev:inode, as of the real ones. */
function netnsFile(name: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, '');
  return file;
}

function setup(opts: { rulesMs?: number } = {}) {
  const calls: string[] = [];
  const enrolment = new Enrolment({
    node: NODE,
    probeSources: [],
    openListeners: async (p) => {
      calls.push(`open ${p.key} ${p.netnsPath}`);
      return { close: () => void calls.push(`close ${p.key}`) };
    },
    applyRules: async (netns, ruleset) => {
      await new Promise((resolve) => setTimeout(resolve, opts.rulesMs ?? 0));
      calls.push(`${ruleset.includes('redirect') ? 'capture' : 'release'} ${netns}`);
    },
    metrics: new Metrics({ defaultMetrics: false }),
    logger: pino({ level: 'silent' }),
  });
  const store = new Store({ trustDomain: TD, logger: pino({ level: 'silent' }) });
  return { enrolment, store, calls };
}

const workload = (store: Store, key: string, ip: string, netnsPath: string): Workload => ({ ...store.current().workloads.get(key)!, ip, netnsPath });

describe('Enrolment', () => {
  it('applies a new state between CNI enrolments, however many keep coming', async () => {
    const { enrolment, store } = setup({ rulesMs: 20 });
    const pods = Array.from({ length: 40 }, (_, i) => pod('mesh', `p${i}`));
    const state = store.replace([namespace('mesh', true), ...pods]);
    // A CNI ADD every 10 ms, each taking 20 ms in the loop: the queue is never empty while they come.
    let stop = false;
    const adds: Promise<void>[] = [];
    const feeder = (async () => {
      for (let i = 0; i < 40 && !stop; i++) {
        adds.push(enrolment.enrolNow(workload(store, `mesh/p${i}`, `10.0.0.${i + 2}`, netnsFile(`ns-${i}`)), { containerId: `c${i}` }));
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    })();
    await new Promise((resolve) => setTimeout(resolve, 50));
    const started = performance.now();
    await enrolment.reconcile(state);
    const waited = performance.now() - started;
    stop = true;
    await feeder;
    await Promise.all(adds);
    // One enrolment ahead of it at most, not the whole stream (40 x 20 ms).
    expect(waited).toBeLessThan(300);
    expect(enrolment.notReadyReason()).toBeUndefined();
    enrolment.close();
  });

  it('an ADD naming the netns a pod is enrolled in by another path keeps its capture in place', async () => {
    const { enrolment, store, calls } = setup();
    store.replace([namespace('mesh', true), pod('mesh', 'web')]);
    const real = netnsFile('web');
    const alias = path.join(dir, 'web-alias');
    symlinkSync(real, alias);
    await enrolment.enrolNow(workload(store, 'mesh/web', '10.0.0.9', real), { containerId: 'a' });
    expect(calls).toEqual([`open mesh/web ${real}`, `capture ${real}`]);
    // The same sandbox under another path (a hand-over, /run/netns against /var/run/netns): nothing torn down.
    await enrolment.enrolNow(workload(store, 'mesh/web', '10.0.0.9', alias), { containerId: 'a' });
    expect(calls).toHaveLength(2);
    // ...nor by the next pass over the state, which now knows the sandbox.
    await enrolment.reconcile(store.current());
    expect(calls).toHaveLength(2);
    expect(enrolment.enrolledPods().map((p) => p.netnsPath)).toEqual([real]);
    // Another netns is another sandbox: the capture moves.
    const other = netnsFile('web-2');
    await enrolment.enrolNow(workload(store, 'mesh/web', '10.0.0.9', other), { containerId: 'b' });
    expect(calls.slice(2)).toEqual([`release ${real}`, 'close mesh/web', `open mesh/web ${other}`, `capture ${other}`]);
    enrolment.close();
  });

  it('in eBPF mode links the sk_lookup program after the listeners and before the rules, and takes it away in order', async () => {
    const calls: string[] = [];
    let fds = 40;
    let failRules = false;
    const enrolment = new Enrolment({
      node: NODE,
      probeSources: [],
      openListeners: async (p) => {
        const fd = fds++;
        calls.push(`open ${p.key} fd ${fd}`);
        return { close: () => void calls.push(`close ${p.key} fd ${fd}`), inboundListenerFd: () => fd };
      },
      steerInbound: (p, fd) => {
        calls.push(`steer ${p.key} to fd ${fd}`);
        return { setListener: (next) => void calls.push(`steer ${p.key} to fd ${next}`), close: () => void calls.push(`unsteer ${p.key}`) };
      },
      applyRules: async (_netns, ruleset) => {
        if (failRules && ruleset.includes('redirect')) throw new Error('nft refused');
        calls.push(ruleset.includes('redirect') ? `rules ${ruleset.includes('redirect to :15006') ? 'nat' : 'guard'}` : 'release');
      },
      metrics: new Metrics({ defaultMetrics: false }),
      logger: pino({ level: 'silent' }),
    });
    const store = new Store({ trustDomain: TD, logger: pino({ level: 'silent' }) });
    store.replace([namespace('mesh', true), pod('mesh', 'web')]);
    const netns = netnsFile('web-ebpf');
    await enrolment.enrolNow(workload(store, 'mesh/web', '10.0.0.9', netns), { containerId: 'a' });
    expect(calls).toEqual(['open mesh/web fd 40', 'steer mesh/web to fd 40', 'rules guard']);
    // Drift repair of the listeners: the program is given the new one.
    await enrolment.reopenListeners('mesh/web', netns);
    expect(calls.slice(3)).toEqual(['close mesh/web fd 40', 'open mesh/web fd 41', 'steer mesh/web to fd 41']);
    await enrolment.repairRules('mesh/web', netns);
    expect(calls.slice(6)).toEqual(['rules guard']);
    // Unenrol: rules first, then the program, then the listeners.
    await enrolment.unenrolNow('mesh/web', { containerId: 'a' });
    expect(calls.slice(7)).toEqual(['release', 'unsteer mesh/web', 'close mesh/web fd 41']);
    // A failure after the program was linked leaves nothing linked.
    failRules = true;
    calls.length = 0;
    await expect(enrolment.enrolNow(workload(store, 'mesh/web', '10.0.0.9', netns), { containerId: 'b' })).rejects.toThrow('nft refused');
    expect(calls).toEqual(['open mesh/web fd 42', 'steer mesh/web to fd 42', 'unsteer mesh/web', 'close mesh/web fd 42']);
    // Stopping: listeners first (queued connections move to a successor's), then the programs.
    failRules = false;
    calls.length = 0;
    await enrolment.enrolNow(workload(store, 'mesh/web', '10.0.0.9', netns), { containerId: 'c' });
    enrolment.close();
    expect(calls.slice(3)).toEqual(['close mesh/web fd 43', 'unsteer mesh/web']);
  });

  it('in eBPF mode registers the pod with the outbound programs after its listeners and before its rules (guards only, no NAT), and releases it in order', async () => {
    const calls: string[] = [];
    let failRules = false;
    const enrolment = new Enrolment({
      node: NODE,
      probeSources: [],
      openListeners: async (p) => {
        calls.push(`open ${p.key}`);
        return { close: () => void calls.push(`close ${p.key}`), inboundListenerFd: () => 40 };
      },
      steerInbound: (p) => {
        calls.push(`steer ${p.key}`);
        return { setListener: () => undefined, close: () => void calls.push(`unsteer ${p.key}`) };
      },
      steerOutbound: (p) => {
        calls.push(`register ${p.key} ${p.ip} ${p.netnsPath}`);
        return { close: () => void calls.push(`unregister ${p.key}`) };
      },
      applyRules: async (_netns, ruleset) => {
        if (ruleset.includes('chain output')) {
          if (failRules) throw new Error('nft refused');
          calls.push(/redirect/.test(ruleset) ? 'rules nat' : 'rules guards');
        } else {
          calls.push('release');
        }
      },
      metrics: new Metrics({ defaultMetrics: false }),
      logger: pino({ level: 'silent' }),
    });
    const store = new Store({ trustDomain: TD, logger: pino({ level: 'silent' }) });
    store.replace([namespace('mesh', true), pod('mesh', 'web')]);
    const netns = netnsFile('web-connect');
    await enrolment.enrolNow(workload(store, 'mesh/web', '10.0.0.9', netns), { containerId: 'a' });
    expect(calls).toEqual(['open mesh/web', 'steer mesh/web', `register mesh/web 10.0.0.9 ${netns}`, 'rules guards']);
    await enrolment.unenrolNow('mesh/web', { containerId: 'a' });
    expect(calls.slice(4)).toEqual(['release', 'unregister mesh/web', 'unsteer mesh/web', 'close mesh/web']);
    // A failure after the registration leaves nothing registered.
    failRules = true;
    calls.length = 0;
    await expect(enrolment.enrolNow(workload(store, 'mesh/web', '10.0.0.9', netns), { containerId: 'b' })).rejects.toThrow('nft refused');
    expect(calls).toEqual(['open mesh/web', 'steer mesh/web', `register mesh/web 10.0.0.9 ${netns}`, 'unregister mesh/web', 'unsteer mesh/web', 'close mesh/web']);
    // Stopping: the pod stays registered (the programs go as a whole with the agent; a successor takes its connects).
    failRules = false;
    calls.length = 0;
    await enrolment.enrolNow(workload(store, 'mesh/web', '10.0.0.9', netns), { containerId: 'c' });
    enrolment.close();
    expect(calls.slice(4)).toEqual(['close mesh/web', 'unsteer mesh/web']);
  });

  it('the steering adds up its programs\' verdicts, those of detached ones included, and detaches all on close', () => {
    const verdicts = (steered: number): Record<SkLookupVerdict, number> => ({ steered, local: 1, exempt_port: 0, probe_source: 0, no_listener: 0, refused: 0 });
    const links: (LinkLike & { closed: boolean })[] = [];
    const steering = new InboundSteering({
      probeSources: ['10.0.0.1'],
      logger: pino({ level: 'silent' }),
      attach: (path, opts) => {
        expect(opts).toEqual({ listenerFd: 7, probeSources: ['10.0.0.1'], exemptPorts: [15008] });
        const n = links.length + 1;
        const link = {
          closed: false,
          netnsPath: path,
          setListener: () => undefined,
          verdicts: () => verdicts(n * 10),
          ids: () => ({ netnsInode: 1 }),
          reattach: () => undefined,
          close: () => void (link.closed = true),
        };
        links.push(link);
        return link;
      },
    });
    const p = (name: string) => ({ key: `mesh/${name}`, netnsPath: `/run/netns/${name}` }) as Workload;
    const a = steering.attach(p('a'), 7);
    steering.attach(p('b'), 7);
    expect(steering.verdicts()).toMatchObject({ steered: 30, local: 2 });
    a.close();
    a.close();
    expect(links[0]!.closed).toBe(true);
    expect(steering.verdicts()).toMatchObject({ steered: 30, local: 2 });
    steering.close();
    expect(links.every((l) => l.closed)).toBe(true);
    expect(steering.verdicts()).toMatchObject({ steered: 30, local: 2 });
  });

  it('links detached from outside are attached again by the drift check, the others left alone', () => {
    const made: { netnsPath: string; inode: number; reattached: number; closed: boolean }[] = [];
    const steering = new InboundSteering({
      probeSources: [],
      logger: pino({ level: 'silent' }),
      attach: (path) => {
        const state = { netnsPath: path, inode: 4026532000 + made.length, reattached: 0, closed: false };
        made.push(state);
        return {
          get closed() {
            return state.closed;
          },
          netnsPath: path,
          setListener: () => undefined,
          verdicts: () => ({ steered: 0, local: 0, exempt_port: 0, probe_source: 0, no_listener: 0, refused: 0 }),
          ids: () => ({ netnsInode: state.inode }),
          reattach: () => {
            state.reattached++;
            state.inode = 4026532999;
          },
          close: () => void (state.closed = true),
        };
      },
    });
    const p = (name: string) => ({ key: `mesh/${name}`, netnsPath: `/run/netns/${name}` }) as Workload;
    steering.attach(p('a'), 7);
    steering.attach(p('b'), 7);
    expect(steering.repairDetached()).toEqual([]);
    made[1]!.inode = 0;
    expect(steering.repairDetached()).toEqual(['/run/netns/b']);
    expect(made.map((m) => m.reattached)).toEqual([0, 1]);
    expect(steering.repairDetached()).toEqual([]);
  });
});
