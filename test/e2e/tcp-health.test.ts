// TCP health per edge end to end (issue 18): a two-node lab in eBPF mode whose agents each run the sockops program on
// a cgroup of their own (the lab gives each one, as a container runtime does). One edge is slowed, one loses packets,
// one is left clean, all in node-b's netns (the lab's): this kernel has no netem, so the slow edge is node-b's veth
// toward `slow` limited to 20 Mbit/s by htb with a 128 KB queue (a bulk transfer fills it: up to some 80 ms of
// queueing, a 64 KB GSO packet included),
// and the lossy edge drops every tenth packet toward `lossy` by an nft rule (numgen inc: counted, not random, as veth
// forwards GSO packets of up to 64 KB, so a transfer is a few dozen packets and random loss could miss it). A bounded
// transfer over each shows the slow edge's RTT in the range of its queue and the lossy edge's retransmissions, the
// clean edge (nearly) none. A sockops link and a pod's sk_lookup link detached with bpftool are attached again by the drift
// check and counted; after `lab down` no program of the lab is left. Needs root. (Performance is measured in bench.)
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectInNetns } from '../../agent/native/index.js';
import { Lab } from '../../lab/cluster/lab.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const run = promisify(execFile);
const fixtures = path.join(import.meta.dirname, 'fixtures', 'tcp-health.yaml');
const labName = `th${Math.random().toString(36).slice(2, 5)}`;
const MB = 1024 * 1024;
/** Per edge: about a second through the slow edge's 20 Mbit/s; at least 64 packets (of 64 KB at most) toward the lossy one. */
const BYTES: Record<string, number> = { clean: 4 * MB, slow: 2 * MB, lossy: 4 * MB };

interface BpfLink {
  id: number;
  prog_id: number;
  type: string;
  attach_type?: string;
  netns_ino?: number;
  cgroup_id?: number;
}

async function links(): Promise<BpfLink[]> {
  const { stdout } = await run('bpftool', ['-j', 'link', 'show']);
  return JSON.parse(stdout) as BpfLink[];
}

async function progExists(id: number): Promise<boolean> {
  return run('bpftool', ['-j', 'prog', 'show', 'id', String(id)]).then(
    () => true,
    () => false,
  );
}

/** The cgroup id of a cgroup v2 directory: its inode number. */
function cgroupId(dir: string): number {
  return statSync(dir).ino;
}

describe('TCP health per edge (sockops, two-node lab, --capture ebpf)', () => {
  let lab: Lab;
  const seenProgs = new Set<number>();
  const metrics = async (node: string) => parsePrometheus(await lab.metrics(node));
  const edge = (dst: string) => ({ source_workload: 'client', destination_workload: dst });
  /** A metric of one edge, added over both reporters. */
  const sum = async (name: string, dst: string) => sumOf(await metrics('node-a'), name, edge(dst)) + sumOf(await metrics('node-b'), name, edge(dst));
  /** The node-side veth of a pod (in its node's netns): what netem is put on. */
  const vethTo = async (ref: string): Promise<string> => {
    const { stdout } = await run('ip', ['-n', lab.node('node-b').netns, 'route', 'get', lab.pod(ref).ip]);
    const dev = / dev (\S+)/.exec(stdout)?.[1];
    if (!dev) throw new Error(`no route to ${ref}: ${stdout}`);
    return dev;
  };
  /** The sockops links on each agent's cgroup. */
  const sockopsLinks = async (): Promise<BpfLink[]> => (await links()).filter((l) => l.type === 'cgroup' && l.attach_type === 'cgroup_sock_ops');

  beforeAll(async () => {
    requireRoot('end-to-end TCP health tests');
    lab = await Lab.up(fixtures, { name: labName, agentArgs: ['--capture', 'ebpf', '--drift-interval', '2s'] });
    // The apps are up when their ports accept; probed from node-b, whose probe address the capture leaves alone.
    for (const ref of ['mesh/clean', 'mesh/slow', 'mesh/lossy']) {
      await until(`${ref} to listen on 9000`, () =>
        new Promise<boolean>((resolve) => {
          const s = connectInNetns(lab.node('node-b').netnsPath, { host: lab.pod(ref).ip, port: 9000, timeoutMs: 1000 });
          s.once('connect', () => (s.destroy(), resolve(true)));
          s.once('error', () => resolve(false));
        }), 20_000);
    }
    const nodeB = lab.node('node-b').netns;
    const slow = await vethTo('mesh/slow');
    await run('tc', ['-n', nodeB, 'qdisc', 'add', 'dev', slow, 'root', 'handle', '1:', 'htb', 'default', '1']);
    await run('tc', ['-n', nodeB, 'class', 'add', 'dev', slow, 'parent', '1:', 'classid', '1:1', 'htb', 'rate', '20mbit', 'ceil', '20mbit']);
    // In bytes: veth forwards GSO packets of up to 64 KB, a queue of packets would hold seconds of them.
    await run('tc', ['-n', nodeB, 'qdisc', 'add', 'dev', slow, 'parent', '1:1', 'bfifo', 'limit', '131072']);
    const loss = `table inet trellis_test_loss {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n    ip daddr ${lab.pod('mesh/lossy').ip} numgen inc mod 10 == 0 counter drop\n  }\n}\n`;
    await new Promise<void>((resolve, reject) => {
      const child = execFile('ip', ['netns', 'exec', nodeB, 'nft', '-f', '-'], (err) => (err ? reject(err) : resolve()));
      child.stdin!.end(loss);
    });
  });

  afterAll(async () => {
    await lab?.down();
    // Held by the agents' file descriptors, nothing pinned: gone with them, and their cgroups with the lab.
    expect(seenProgs.size).toBeGreaterThan(0);
    for (const id of seenProgs) expect(await progExists(id), `prog ${id}`).toBe(false);
    const { stdout } = await run('sh', ['-c', 'ls /sys/fs/cgroup/unified /sys/fs/cgroup 2>/dev/null || true']);
    expect(stdout).not.toContain(`trl-${labName}-`);
  });

  it('attaches one sockops program per agent, to the agent\'s own cgroup, and says so', async () => {
    const sockops = await sockopsLinks();
    for (const node of ['node-a', 'node-b']) {
      const line = lab.agentLog(node).split('\n').find((l) => l.includes('"msg":"tcp health: sockops program'));
      expect(line, lab.agentLog(node).slice(-2000)).toBeDefined();
      const cgroup = JSON.parse(line!).cgroup as string;
      expect(cgroup).toContain(`trl-${labName}-${node}`);
      const mine = sockops.filter((l) => l.cgroup_id === cgroupId(`/sys/fs/cgroup/unified/trl-${labName}-${node}`));
      expect(mine).toHaveLength(1);
      seenProgs.add(mine[0]!.prog_id);
      expect(sumOf(await metrics(node), 'trellis_kernel_feature', { feature: 'sock_ops' })).toBe(1);
      expect(sumOf(await metrics(node), 'trellis_tcp_health_enabled', {})).toBe(1);
    }
  });

  it('shows the slowed edge\'s RTT around its delay, the lossy edge\'s retransmissions, and none on the clean edge', async () => {
    for (const dst of ['clean', 'slow', 'lossy']) {
      const vip = lab.services.find((s) => s.name === dst)!.clusterIP;
      const send = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-send', '--to', `${vip}:9000`, '--bytes', String(BYTES[dst])], { timeoutMs: 60_000 });
      expect(send.code, send.stderr).toBe(0);
    }
    // Both reporters record the connection when it closes.
    for (const dst of ['clean', 'slow', 'lossy']) {
      await until(`both agents to record the connection to ${dst}`, async () => (await sum('trellis_tcp_rtt_seconds_count', dst)) >= 2, 20_000);
    }
    // The sender's view (node-a's socket toward node-b): its segments wait in the slow edge's queue, 128 KB at
    // 20 Mbit/s, up to some 80 ms. The figure is the socket's smoothed RTT when it closes, after the queue has drained
    // for the transfer's last ACKs: on a loaded machine it was seen as low as 4.3 ms, so the bound is two segments'
    // time on that link (about 1 ms each), well above the clean edge's (a few hundred microseconds here).
    const sourceMean = async (dst: string) => {
      const m = await metrics('node-a');
      const labels = { reporter: 'source', ...edge(dst) };
      return sumOf(m, 'trellis_tcp_rtt_seconds_sum', labels) / sumOf(m, 'trellis_tcp_rtt_seconds_count', labels);
    };
    const slow = await sourceMean('slow');
    expect(slow).toBeGreaterThanOrEqual(0.002);
    expect(slow).toBeLessThan(0.5);
    expect(await sourceMean('clean')).toBeLessThan(slow);
    // The sender is node-a's agent (HBONE toward the pod behind the lossy edge): a tenth of at least 64 packets lost,
    // each one segment or more. The clean edge loses nothing; on a loaded machine an ACK late by more than the probe
    // timeout (10 ms at these RTTs) still makes the kernel send a tail loss probe, and a SYN not answered within a
    // second is sent again, both counted as retransmissions by the kernel, so a couple are allowed.
    const lossy = sumOf(await metrics('node-a'), 'trellis_tcp_retransmits_total', { reporter: 'source', ...edge('lossy') });
    const dropped = (await run('ip', ['netns', 'exec', lab.node('node-b').netns, 'nft', 'list', 'table', 'inet', 'trellis_test_loss'])).stdout;
    expect(lossy, `${dropped}\n${(await lab.metrics('node-a')).split('\n').filter((l) => l.startsWith('trellis_tcp_retransmits_total')).join('\n')}`).toBeGreaterThanOrEqual(6);
    const clean = await sum('trellis_tcp_retransmits_total', 'clean');
    expect(clean).toBeLessThanOrEqual(2);
    process.stderr.write(`tcp health: slow edge RTT ${(slow * 1000).toFixed(1)} ms (clean ${((await sourceMean('clean')) * 1e6).toFixed(0)} us); retransmits lossy ${lossy}, clean ${clean}\n`);
  });

  it('attaches a detached sockops link and a detached sk_lookup link again, and counts each', async () => {
    const cg = cgroupId(`/sys/fs/cgroup/unified/trl-${labName}-node-b`);
    const sockops = (await sockopsLinks()).find((l) => l.cgroup_id === cg)!;
    const ino = statSync(lab.pod('mesh/slow').netnsPath).ino;
    const skLookup = (await links()).find((l) => l.type === 'netns' && l.attach_type === 'sk_lookup' && l.netns_ino === ino)!;
    expect(sockops).toBeDefined();
    expect(skLookup).toBeDefined();
    const repairs = async (what: string) => sumOf(await metrics('node-b'), 'trellis_capture_drift_repairs_total', { what });
    const before = { sockops: await repairs('sockops'), skLookup: await repairs('sk_lookup') };
    await run('bpftool', ['link', 'detach', 'id', String(sockops.id)]);
    await run('bpftool', ['link', 'detach', 'id', String(skLookup.id)]);
    await until('the drift check to attach both again', async () => (await repairs('sockops')) > before.sockops && (await repairs('sk_lookup')) > before.skLookup, 20_000);
    const now = await links();
    const again = now.filter((l) => l.type === 'cgroup' && l.attach_type === 'cgroup_sock_ops' && l.cgroup_id === cg);
    expect(again).toHaveLength(1);
    expect(again[0]!.prog_id).toBe(sockops.prog_id);
    expect(now.filter((l) => l.type === 'netns' && l.attach_type === 'sk_lookup' && l.netns_ino === ino).map((l) => l.prog_id)).toEqual([skLookup.prog_id]);
    // Still measuring, and the pod still reachable through its program.
    const countBefore = await sum('trellis_tcp_rtt_seconds_count', 'slow');
    const slowVip = lab.services.find((s) => s.name === 'slow')!.clusterIP;
    const send = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-send', '--to', `${slowVip}:9000`, '--bytes', '65536'], { timeoutMs: 30_000 });
    expect(send.code, send.stderr).toBe(0);
    await until('the new connection to be recorded', async () => (await sum('trellis_tcp_rtt_seconds_count', 'slow')) >= countBefore + 2, 20_000);
  });
});
