// The eBPF capture mode end to end (issue 18), as a user runs it: a two-node lab whose agents run with
// `--capture ebpf`. Inbound is each meshed pod's sk_lookup program, linked to its netns by its node's agent, handing
// connections to the agent's 15006 listener with no NAT; outbound is one set of cgroup connect4/6, getpeername4/6 and
// sockops programs per agent on the cgroup root, sending meshed pods' connects to the agent's 15001 listener with no
// NAT. Checked: the mode is said and exported; one program per meshed pod, the outbound programs on the cgroup root,
// no nft NAT at all; plaintext from outside and HBONE reach the apps with the metrics of nft mode and the caller's
// address; a meshed app sees the address it dialled as its peer; probes pass; policy is enforced; a pod fails closed
// both ways with its agent stopped; hand-overs refuse nothing, inbound or outbound; unenrolment takes the program
// away; and after `lab down` nothing BPF of the lab is left in the kernel. Needs root.
import { execFile } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cgroup2Mount } from '../../agent/capture/kernel.js';
import type { KubeObject } from '../../agent/model/objects.js';
import { connectInNetns } from '../../agent/native/index.js';
import { Lab } from '../../lab/cluster/lab.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const run = promisify(execFile);
const fixtures = path.join(import.meta.dirname, 'fixtures', 'mesh.yaml');
const MB = 1024 * 1024;
const labName = `eb${Math.random().toString(36).slice(2, 5)}`;
const MESHED = ['mesh/client', 'mesh/sink', 'mesh/echo'];

interface BpfLink {
  id: number;
  prog_id: number;
  type: string;
  attach_type?: string;
  netns_ino?: number;
}

/** The kernel's sk_lookup links on netns, as bpftool lists them. */
async function skLookupLinks(): Promise<BpfLink[]> {
  const { stdout } = await run('bpftool', ['-j', 'link', 'show']);
  return (JSON.parse(stdout) as BpfLink[]).filter((l) => l.type === 'netns' && l.attach_type === 'sk_lookup');
}

/** The outbound programs and the attach types bpftool names them by. */
const OUTBOUND = { trellis_conn4: 'cgroup_inet4_connect', trellis_conn6: 'cgroup_inet6_connect', trellis_peer4: 'cgroup_inet4_getpeername', trellis_peer6: 'cgroup_inet6_getpeername', trellis_outops: 'cgroup_sock_ops' } as const;

/** The programs attached to the root of the host's cgroup2 mount, as bpftool lists them. */
async function rootCgroupPrograms(): Promise<{ id: number; attach_type: string; name: string }[]> {
  const root = cgroup2Mount(readFileSync('/proc/self/mountinfo', 'utf8'))!.path;
  const { stdout } = await run('bpftool', ['-j', 'cgroup', 'show', root]);
  return JSON.parse(stdout || '[]') as { id: number; attach_type: string; name: string }[];
}

async function exists(kind: 'link' | 'prog', id: number): Promise<boolean> {
  return run('bpftool', ['-j', kind, 'show', 'id', String(id)]).then(
    () => true,
    () => false,
  );
}

async function progName(id: number): Promise<string | undefined> {
  const { stdout } = await run('bpftool', ['-j', 'prog', 'show', 'id', String(id)]);
  return (JSON.parse(stdout) as { name?: string }).name;
}

describe('eBPF capture mode: inbound by sk_lookup, outbound by connect4/6 (two-node lab, --capture ebpf)', () => {
  let lab: Lab;
  let echoVip: string;
  let sinkVip: string;
  /** Every link and program seen in the lab's pods: none may outlive `lab down`. */
  const seen = { links: new Set<number>(), progs: new Set<number>() };

  const metrics = async (node: string) => parsePrometheus(await lab.metrics(node));
  const ino = (ref: string) => statSync(lab.pod(ref).netnsPath).ino;
  /** The sk_lookup links on a pod's netns, recorded for the check after `lab down`. */
  const linksOf = async (ref: string): Promise<BpfLink[]> => {
    const links = (await skLookupLinks()).filter((l) => l.netns_ino === ino(ref));
    for (const l of links) {
      seen.links.add(l.id);
      seen.progs.add(l.prog_id);
    }
    return links;
  };
  const rules = async (ref: string) => (await run('nsenter', [`--net=${lab.pod(ref).netnsPath}`, 'nft', 'list', 'ruleset'])).stdout;
  const connect = (pod: string, to: string, send: string, timeoutMs = 3000) =>
    lab.exec(pod, ['trellis', 'tool', 'tcp-connect', '--to', to, '--send', send, '--timeout-ms', String(timeoutMs)]);
  const steered = async (node: string) => sumOf(await metrics(node), 'trellis_capture_sk_lookup_total', { verdict: 'steered' });

  beforeAll(async () => {
    requireRoot('end-to-end eBPF capture tests');
    lab = await Lab.up(fixtures, { name: labName, agentArgs: ['--capture', 'ebpf'] });
    echoVip = lab.services.find((s) => s.name === 'echo')!.clusterIP;
    sinkVip = lab.services.find((s) => s.name === 'sink')!.clusterIP;
    // The apps are up when their ports accept; probed from node-b, whose probe address the capture leaves alone.
    for (const [ref, port] of [['mesh/echo', 7000], ['mesh/sink', 9000]] as const) {
      await until(`${ref} to listen on ${port}`, () =>
        new Promise<boolean>((resolve) => {
          const s = connectInNetns(lab.node('node-b').netnsPath, { host: lab.pod(ref).ip, port, timeoutMs: 1000 });
          s.once('connect', () => (s.destroy(), resolve(true)));
          s.once('error', () => resolve(false));
        }), 20_000);
    }
  });

  afterAll(async () => {
    await lab?.down();
    const { stdout } = await run('ip', ['netns', 'list']);
    expect(stdout).not.toContain(`trl-${labName}-`);
    expect(labEnvPids((l) => l === labName)).toEqual([]);
    // Held by the agents' file descriptors: gone with them, nothing pinned, nothing for `lab sweep` to find.
    expect(seen.links.size).toBeGreaterThan(0);
    for (const id of seen.links) expect(await exists('link', id), `link ${id}`).toBe(false);
    for (const id of seen.progs) expect(await exists('prog', id), `prog ${id}`).toBe(false);
  });

  it('runs the eBPF mode, says so and why, and exports it with what the kernel offers', async () => {
    for (const node of ['node-a', 'node-b']) {
      const m = await metrics(node);
      expect(sumOf(m, 'trellis_capture_mode', { mode: 'ebpf' })).toBe(1);
      expect(sumOf(m, 'trellis_capture_mode', { mode: 'nft' })).toBe(0);
      for (const feature of ['btf', 'sk_lookup', 'sk_lookup_ifindex', 'sockmap', 'sk_lookup_program', 'nft_socket', 'cgroup2', 'cgroup_sock_addr', 'sock_ops', 'connect_program', 'netns_cookie']) {
        expect(sumOf(m, 'trellis_kernel_feature', { feature }), feature).toBe(1);
      }
      const line = lab.agentLog(node).split('\n').find((l) => l.includes('"msg":"capture mode ebpf'));
      expect(line).toBeDefined();
      expect(JSON.parse(line!)).toMatchObject({
        mode: 'ebpf',
        reason: expect.stringContaining('--capture ebpf: inbound by sk_lookup, outbound by cgroup connect4/6 programs'),
        kernel: { sk_lookup: true, sockmap: true, cgroup_sock_addr: true, connect_program: true },
        cgroupRoot: expect.any(String),
      });
    }
  });

  it('links one sk_lookup program per meshed pod and none elsewhere, the outbound programs on the cgroup root, and installs no nft NAT', async () => {
    for (const ref of MESHED) {
      const links = await linksOf(ref);
      expect(links, ref).toHaveLength(1);
      expect(await progName(links[0]!.prog_id)).toBe('trellis_inbound');
      const r = await rules(ref);
      // Guards only: no redirect, nothing NATed (its nat chains hold no rule: capture/rules.ts natKept says why).
      expect(r).not.toContain('redirect');
      expect(r).not.toContain(':15006');
      expect([...r.matchAll(/type nat hook \w+ priority [^;]+; policy accept;([^}]*)\}/g)].map((m) => m[1]!.trim())).toEqual(['', '']);
      expect(r).toMatch(/socket mark != 0x00000539 reject with tcp reset|socket mark != 0x539 reject with tcp reset/);
      expect(r).toMatch(/chain output \{\s+type filter hook output priority filter; policy accept;[^}]*tcp flags syn \/ syn,ack reject with tcp reset/);
    }
    // One set per agent on the root cgroup (both nodes' agents share this host's cgroup tree).
    const attached = await rootCgroupPrograms();
    for (const [name, type] of Object.entries(OUTBOUND)) {
      const ours = attached.filter((p) => p.name === name);
      expect(ours.length, name).toBeGreaterThanOrEqual(2);
      for (const p of ours) {
        expect(p.attach_type).toBe(type);
        seen.progs.add(p.id);
      }
    }
    expect(await linksOf('plain/outsider')).toEqual([]);
    expect(await rules('plain/outsider')).not.toContain('trellis');
  });

  it('carries plaintext from outside the mesh to the app: the original address kept, no NAT, the caller seen by the app', async () => {
    const echo = lab.pod('mesh/echo');
    const outsider = lab.pod('plain/outsider');
    const before = { metrics: await metrics('node-b'), steered: await steered('node-b') };
    // Through the Service (the lab's kube-proxy on node-a translates the VIP to the pod) and straight to the pod.
    for (const to of [`${echoVip}:70`, `${echo.ip}:7000`]) {
      const r = await connect('plain/outsider', to, 'hello');
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain('hello');
    }
    await until('both to be recorded as plaintext by node-b', async () =>
      sumOf(await metrics('node-b'), 'trellis_tcp_connections_closed_total', { reporter: 'destination', source_workload: 'outsider', destination_workload: 'echo', connection_security_policy: 'none' }) -
        sumOf(before.metrics, 'trellis_tcp_connections_closed_total', { reporter: 'destination', source_workload: 'outsider', destination_workload: 'echo', connection_security_policy: 'none' }) === 2);
    expect((await steered('node-b')) - before.steered).toBeGreaterThanOrEqual(2);

    // A connection held open: in the pod, the agent's accepted socket and the app's both have the address the client
    // dialled (echo:7000) and the client's as peer; nothing was sent to 15006; the agent's connection to the app
    // leaves from the client's address, bound to lo. (A line, so the agent's sniff sees at once it is not HTTP.)
    const hold = `const s = require('net').connect(7000, '${echo.ip}'); s.on('connect', () => { s.write('held\\n'); setTimeout(() => s.end(), 1500); }); s.on('data', () => {}); s.on('end', () => process.exit(0)); s.on('error', (e) => { console.error(e.message); process.exit(2); });`;
    const held = lab.exec('plain/outsider', ['node', '-e', hold]);
    let sockets: string[] = [];
    await until('the held connection to show in the pod', async () => {
      const { stdout } = await run('nsenter', [`--net=${echo.netnsPath}`, 'ss', '-tnH', 'state', 'established']);
      sockets = stdout.split('\n').filter(Boolean);
      return sockets.filter((l) => l.includes(`${echo.ip}:7000`) && l.includes(`${outsider.ip}:`)).length >= 2;
    }).catch(async (err: Error) => {
      const h = await held;
      throw new Error(`${err.message}; sockets: ${JSON.stringify(sockets)}; the client: exit ${h.code} ${h.stdout} ${h.stderr}`);
    });
    expect(sockets.some((l) => l.includes(':15006'))).toBe(false);
    expect(sockets.filter((l) => l.includes(`${outsider.ip}%lo:`))).toHaveLength(1);
    expect((await held).code).toBe(0);
  });

  it('carries HBONE from a meshed client byte for byte, counted exactly on both nodes as in nft mode', async () => {
    const before = { a: await metrics('node-a'), b: await metrics('node-b') };
    const bytes = 3 * MB + 7;
    const send = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-send', '--to', `${sinkVip}:9000`, '--bytes', String(bytes)], { timeoutMs: 60_000 });
    expect(send.code, send.stderr).toBe(0);
    const result = JSON.parse(send.stdout.trim().split('\n').at(-1)!) as { match: boolean; sha256: string };
    expect(result.match).toBe(true);
    const reply = Buffer.byteLength(`sha256=${result.sha256} bytes=${bytes}\n`);
    const src = { reporter: 'source', source_workload: 'client', destination_workload: 'sink', connection_security_policy: 'mutual_tls' };
    const dst = { reporter: 'destination', source_workload: 'client', destination_workload: 'sink', connection_security_policy: 'mutual_tls', source_principal: 'spiffe://cluster.local/ns/mesh/sa/client' };
    const delta = async (node: 'a' | 'b', name: string, match: Record<string, string>) => sumOf(await metrics(`node-${node}`), name, match) - sumOf(before[node], name, match);
    await until('both agents to record the close', async () =>
      (await delta('a', 'trellis_tcp_connections_closed_total', src)) === 1 && (await delta('b', 'trellis_tcp_connections_closed_total', dst)) === 1);
    expect(await delta('a', 'trellis_tcp_received_bytes_total', src)).toBe(bytes);
    expect(await delta('b', 'trellis_tcp_received_bytes_total', dst)).toBe(bytes);
    expect(await delta('b', 'trellis_tcp_sent_bytes_total', dst)).toBe(reply);
    // 15008 is left to the agent's HBONE listener: the program does not steer it.
    expect(sumOf(await metrics('node-b'), 'trellis_capture_sk_lookup_total', { verdict: 'exempt_port' })).toBeGreaterThan(0);
  });

  it('captures a meshed app\'s outbound without NAT: the original destination right, and getpeername gives the address it dialled', async () => {
    const echo = lab.pod('mesh/echo');
    const redirected = async () => sumOf(await metrics('node-a'), 'trellis_capture_connect_total', { verdict: 'redirected' });
    const opened = async () => sumOf(await metrics('node-a'), 'trellis_tcp_connections_opened_total', { reporter: 'source', source_workload: 'client', destination_workload: 'echo' });
    const before = { redirected: await redirected(), opened: await opened() };
    // The app asks whom it is connected to (Node's remoteAddress is getpeername), while the kernel's own view (ss) of
    // its socket is the agent's listener on loopback: redirected by connect4, no NAT.
    for (const [host, port] of [[echoVip, 70], [echo.ip, 7000]] as const) {
      const script = `const s = require('net').connect(${port}, '${host}'); let got = '';
        s.on('connect', () => { console.log(JSON.stringify({ peer: s.remoteAddress + ':' + s.remotePort, local: s.localPort })); s.write('dialled\\n'); });
        s.on('data', (d) => { got += d; if (got.includes('dialled')) setTimeout(() => s.end(), 500); });
        s.on('end', () => { console.log(JSON.stringify({ got })); process.exit(0); });
        s.on('error', (e) => { console.error(e.message); process.exit(2); });`;
      const held = lab.exec('mesh/client', ['node', '-e', script]);
      let kernel: string[] = [];
      await until('the client\'s socket to show in its netns', async () => {
        const { stdout } = await run('nsenter', [`--net=${lab.pod('mesh/client').netnsPath}`, 'ss', '-tnH', 'state', 'established']);
        kernel = stdout.split('\n').filter(Boolean);
        return kernel.some((l) => l.includes('127.0.0.1:15001'));
      });
      const r = await held;
      expect(r.code, r.stderr).toBe(0);
      const [first, last] = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { peer?: string; local?: number; got?: string });
      expect(first!.peer).toBe(`${host}:${port}`);
      expect(last!.got).toBe('dialled\n');
      // The kernel's view of the app's socket: connected to the agent's listener on loopback, from the same port.
      expect(kernel.some((l) => l.includes(`127.0.0.1:${first!.local}`) && l.includes('127.0.0.1:15001'))).toBe(true);
    }
    expect((await redirected()) - before.redirected).toBeGreaterThanOrEqual(2);
    await until('both connections to be recorded by node-a', async () => (await opened()) - before.opened >= 2);
  });

  it("lets the node's health probes reach the app directly", async () => {
    const echo = lab.pod('mesh/echo');
    const before = await metrics('node-b');
    const r = await lab.execInNode('node-b', [process.execPath, path.resolve('dist/agent/main.js'), 'tool', 'tcp-connect', '--to', `${echo.ip}:7000`, '--send', 'probe']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('probe');
    const after = await metrics('node-b');
    expect(sumOf(after, 'trellis_tcp_connections_opened_total', { destination_workload: 'echo' })).toBe(sumOf(before, 'trellis_tcp_connections_opened_total', { destination_workload: 'echo' }));
    expect(sumOf(after, 'trellis_capture_sk_lookup_total', { verdict: 'probe_source' })).toBeGreaterThan(sumOf(before, 'trellis_capture_sk_lookup_total', { verdict: 'probe_source' }));
  });

  it('enforces policy as nft mode does: STRICT refuses plaintext, a DENY refuses the meshed caller', async () => {
    const policies = parseAllDocuments(`apiVersion: security.trellis.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: mesh}
spec:
  selector: {matchLabels: {app: echo}}
  mtls: {mode: STRICT}
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-client, namespace: mesh}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
    - from: [{source: {principals: [cluster.local/ns/mesh/sa/client]}}]
`).map((d) => d.toJS() as KubeObject);
    const denied = () => metrics('node-b').then((m) => sumOf(m, 'trellis_authz_decisions_total', { decision: 'deny' }));
    const deniedBefore = await denied();
    await lab.apply(policies);
    try {
      // Nothing comes back from the app, which echoes all it gets.
      const refused = async (pod: string) => {
        const r = await connect(pod, `${echoVip}:70`, 'must-not-pass');
        return r.code !== 0 && !r.stdout.includes('must-not-pass');
      };
      await until('plaintext to echo to be refused', () => refused('plain/outsider'), 10_000);
      await until('the client to be refused', () => refused('mesh/client'), 10_000);
      expect(await denied()).toBeGreaterThan(deniedBefore);
    } finally {
      for (const o of policies) await lab.remove(o.kind, 'mesh', o.metadata.name);
    }
    await until('the client to be served again', async () => (await connect('mesh/client', `${echoVip}:70`, 'allowed')).code === 0, 10_000);
    await until('plaintext to be served again', async () => (await connect('plain/outsider', `${echoVip}:70`, 'allowed')).code === 0, 10_000);
  });

  it('fails closed while the destination agent is stopped (its programs gone with it), and recovers', async () => {
    const echo = lab.pod('mesh/echo');
    await lab.stopAgent('node-b');
    try {
      // The agent's links went with its process; the pod's guard resets what no agent socket takes.
      expect(await linksOf('mesh/echo')).toEqual([]);
      const direct = await connect('plain/outsider', `${echo.ip}:7000`, 'must-not-pass');
      expect(direct.code).toBe(3);
      expect(direct.stdout).not.toContain('must-not-pass');
      const meshed = await connect('mesh/client', `${echoVip}:70`, 'must-not-pass');
      expect(meshed.code).not.toBe(0);
      expect(meshed.stdout).not.toContain('must-not-pass');
    } finally {
      await lab.startAgent('node-b');
    }
    expect(await linksOf('mesh/echo')).toHaveLength(1);
    const again = await connect('plain/outsider', `${echo.ip}:7000`, 'back');
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain('back');
  });

  it('fails closed outbound while the client\'s agent is stopped (its outbound programs gone), and recovers', async () => {
    const echo = lab.pod('mesh/echo');
    const before = (await rootCgroupPrograms()).filter((p) => p.name === 'trellis_conn4').length;
    await lab.stopAgent('node-a');
    try {
      expect((await rootCgroupPrograms()).filter((p) => p.name === 'trellis_conn4').length).toBe(before - 1);
      // The pod's outbound guard resets what leaves the pod without the programs: refused, never around the mesh.
      for (const to of [`${echoVip}:70`, `${echo.ip}:7000`]) {
        const r = await connect('mesh/client', to, 'must-not-pass');
        expect(r.code, `${to}: ${r.stdout} ${r.stderr}`).toBe(3);
        expect(r.stdout).not.toContain('must-not-pass');
      }
    } finally {
      await lab.startAgent('node-a');
    }
    const again = await connect('mesh/client', `${echoVip}:70`, 'back');
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain('back');
  });

  it('hands over to a new agent without a refused connection, and the old one leaves no program behind', async () => {
    // New connections one after another (plaintext from outside and HBONE from the client) while node-b's agent is
    // replaced: the new one links its programs beside the old one's, which detaches when it stops.
    const loop = (ms: number) => `
      const net = require('net'); const host = '${echoVip}'; const end = Date.now() + ${ms};
      let ok = 0, failed = 0; const errors = {};
      (function next() {
        if (Date.now() > end) { console.log(JSON.stringify({ ok, failed, errors })); process.exit(0); }
        const s = net.connect(70, host); let got = '';
        const fail = (e) => { failed++; errors[e.code || e.message] = (errors[e.code || e.message] || 0) + 1; s.destroy(); setTimeout(next, 20); };
        s.setTimeout(3000, () => fail(new Error('timeout')));
        s.on('error', fail);
        s.on('data', (d) => (got += d));
        s.on('end', () => { if (got === 'x') ok++; else failed++; s.destroy(); setTimeout(next, 20); });
        s.end('x');
      })();`;
    const loads = Promise.all(['plain/outsider', 'mesh/client'].map((pod) => lab.exec(pod, ['node', '-e', loop(8000)], { timeoutMs: 30_000 })));
    await new Promise((r) => setTimeout(r, 1000));
    const oldLinks = await linksOf('mesh/echo');
    await lab.restartAgent('node-b');
    const results = await loads;
    // On a failure, the agents' warnings and errors around the hand-over say what happened.
    const noted = (node: string) => lab.agentLog(node).split('\n').filter((l) => /"level":(4|5)\d/.test(l)).slice(-30).join('\n');
    if (results.some((r) => !r.stdout.includes('"failed":0'))) console.log(`node-a:\n${noted('node-a')}\nnode-b:\n${noted('node-b')}`);
    for (const [i, r] of results.entries()) {
      expect(r.code, r.stderr).toBe(0);
      const summary = JSON.parse(r.stdout.trim()) as { ok: number; failed: number; errors: Record<string, number> };
      expect(summary, `${['plaintext', 'HBONE'][i]}: ${JSON.stringify(summary)}`).toMatchObject({ failed: 0 });
      expect(summary.ok).toBeGreaterThan(20);
    }
    const newLinks = await linksOf('mesh/echo');
    expect(newLinks).toHaveLength(1);
    expect(newLinks[0]!.id).not.toBe(oldLinks[0]!.id);
    expect(await exists('link', oldLinks[0]!.id)).toBe(false);

    // Outbound: the client's own agent is replaced while it dials. Both agents' outbound programs are on the cgroup
    // root for a while and either one's listener may take a connection: the new agent shares the old one's maps.
    const conn4 = async () => (await rootCgroupPrograms()).filter((p) => p.name === 'trellis_conn4').map((p) => p.id);
    const beforeRestart = await conn4();
    const outbound = lab.exec('mesh/client', ['node', '-e', loop(8000)], { timeoutMs: 30_000 });
    await new Promise((r) => setTimeout(r, 1000));
    await lab.restartAgent('node-a');
    const r = await outbound;
    if (!r.stdout.includes('"failed":0')) console.log(`node-a:\n${noted('node-a')}`);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout.trim()) as { ok: number; failed: number };
    expect(summary, `outbound: ${JSON.stringify(summary)}`).toMatchObject({ failed: 0 });
    expect(summary.ok).toBeGreaterThan(20);
    const started = lab.agentLog('node-a').split('\n').filter((l) => l.includes('"msg":"capture mode ebpf'));
    expect(JSON.parse(started.at(-1)!)).toMatchObject({ sharedMaps: true });
    // The old agent's programs went with it; the new one's replaced them.
    const afterRestart = await conn4();
    expect(afterRestart).toHaveLength(beforeRestart.length);
    expect(afterRestart.filter((id) => !beforeRestart.includes(id))).toHaveLength(1);
    for (const id of afterRestart) seen.progs.add(id);
  });

  it('unenrols a pod (its program detached, its app reached directly) and enrols it again', async () => {
    const echo = lab.pod('mesh/echo');
    await lab.setPodAnnotation('mesh/echo', 'trellis.dev/mesh', 'disabled');
    try {
      await until('the program to be detached', async () => (await linksOf('mesh/echo')).length === 0, 5000);
      await until('the rules to be gone', async () => !(await rules('mesh/echo')).includes('trellis'), 5000);
      const before = await metrics('node-b');
      const r = await connect('plain/outsider', `${echo.ip}:7000`, 'direct');
      expect(r.code, r.stderr).toBe(0);
      expect(sumOf(await metrics('node-b'), 'trellis_tcp_connections_opened_total', { destination_workload: 'echo' })).toBe(sumOf(before, 'trellis_tcp_connections_opened_total', { destination_workload: 'echo' }));
    } finally {
      await lab.setPodAnnotation('mesh/echo', 'trellis.dev/mesh', null);
    }
    await until('the program to be back', async () => (await linksOf('mesh/echo')).length === 1, 5000);
    await until('plaintext to be captured again', async () => {
      const before = await steered('node-b');
      return (await connect('plain/outsider', `${echo.ip}:7000`, 'again')).code === 0 && (await steered('node-b')) > before;
    }, 5000);
  });
});
