// Root-only: a real lab (2 nodes, 3 pods, 1 Service, no agents, an internet) built from manifests: routed pod
// traffic across nodes, ClusterIP emulation, node-to-pod probes, pods reaching the internet, and that the host netns
// stays untouched and nothing is left behind by `down` or, after a crash, by `sweep`.
import { execFileSync, spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab, sweep } from '../../../lab/cluster/lab.js';
import { hostCgroup2 } from '../../../lab/cluster/cgroups.js';
import type { ExtensionObject, KubeObject, Pod } from '../../../agent/model/objects.js';
import { requireRoot } from '../../support/root.js';
import { trellis } from '../../support/trellis-cli.js';

function labName(): string {
  const chars = 'abcdefghijklmnopqrstuvwxyz0123456789';
  return `t${Array.from({ length: 4 }, () => chars[randomInt(chars.length)]).join('')}`;
}

const name = labName();
const stateRoot = mkdtempSync(path.join(os.tmpdir(), 'trellis-lab-'));

// Answers every connection with "<pod name> <peer address>" and closes.
const SERVER = `require('net').createServer((s) => s.end(process.env.POD_NAME + ' ' + s.remoteAddress.replace('::ffff:', '') + '\\n')).listen(+process.argv[1])`;
// Prints what host:port answers; exit 2 with the error code when the connection fails.
const CLIENT = `const s = require('net').connect({ host: process.argv[1], port: +process.argv[2] });
let out = ''; s.on('data', (d) => (out += d)); s.on('end', () => { process.stdout.write(out); process.exit(0); });
s.on('error', (e) => { process.stdout.write(e.code); process.exit(2); });
s.setTimeout(3000, () => { process.stdout.write('TIMEOUT'); process.exit(3); });`;

const manifest = `
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations: {trellis.dev/mesh: enabled}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, labels: {app: server}}
spec:
  nodeName: node-b
  serviceAccountName: server
  containers:
    - name: server
      command: [node, -e, ${JSON.stringify(SERVER)}, "8080"]
      ports: [{name: tcp, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: shop}
spec:
  selector: {app: server}
  ports: [{name: tcp, port: 80, targetPort: tcp}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  nodeName: node-a
  containers: [{name: client, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: local, labels: {app: local}}
spec:
  nodeName: node-a
  containers:
    - name: local
      command: [node, -e, ${JSON.stringify(SERVER)}, "7070"]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-server, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: server, port: 80}]
  rules: [{backendRefs: [{name: server, port: 80}]}]
`;

interface HostSnapshot {
  addr: unknown;
  route: unknown;
  nft: string;
}

function hostSnapshot(): HostSnapshot {
  const addr = JSON.parse(execFileSync('ip', ['-j', 'addr'], { encoding: 'utf8' })) as { addr_info?: Record<string, unknown>[] }[];
  // Lifetimes of dynamic addresses count down by themselves.
  for (const link of addr) for (const a of link.addr_info ?? []) for (const k of Object.keys(a)) if (k.endsWith('life_time')) delete a[k];
  return {
    addr,
    route: JSON.parse(execFileSync('ip', ['-j', 'route', 'show', 'table', 'all'], { encoding: 'utf8' })),
    nft: execFileSync('nft', ['list', 'ruleset'], { encoding: 'utf8' }),
  };
}

function labNetns(lab: string): string[] {
  try {
    return readdirSync('/var/run/netns').filter((n) => n.startsWith(`trl-${lab}-`));
  } catch {
    return [];
  }
}

/** Pids of live processes carrying the lab marker of `lab`. */
function markedPids(lab: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      if (readFileSync(`/proc/${p}/environ`, 'latin1').split('\0').includes(`TRELLIS_LAB=${lab}`)) {
        if (!/\) Z /.test(readFileSync(`/proc/${p}/stat`, 'utf8'))) out.push(Number(p));
      }
    } catch {
      // Exited while we looked.
    }
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms (${String(last)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('lab (root)', () => {
  let lab: Lab | undefined;
  let before: HostSnapshot;
  let pids: number[] = [];
  const timings: Record<string, number> = {};

  beforeAll(async () => {
    requireRoot('lab tests');
    before = hostSnapshot();
    const file = path.join(stateRoot, 'shop.yaml');
    writeFileSync(file, manifest);
    const t0 = Date.now();
    // Local mode without agents; cluster mode has its own file (cluster-mode.test.ts).
    lab = await Lab.up(file, { name, stateRoot, agents: false, internet: true });
    timings.up = Date.now() - t0;
    pids = (await lab.status()).pods.flatMap((p) => p.processes.map((r) => r.pid));
  });

  afterAll(async () => {
    try {
      await lab?.down();
      // Whatever happened above, nothing of this lab may outlive the suite.
      expect(labNetns(name)).toEqual([]);
      expect(markedPids(name)).toEqual([]);
    } finally {
      await sweep({ prefix: `trl-${name}-`, stateRoot }).catch(() => []);
      rmSync(stateRoot, { recursive: true, force: true });
    }
  });

  it('realizes the objects for the agents', async () => {
    const l = lab!;
    expect(l.nodes.map((n) => [n.name, n.fabricIp, n.gatewayIp])).toEqual([
      ['node-a', '172.30.0.11', '10.244.1.1'],
      ['node-b', '172.30.0.12', '10.244.2.1'],
    ]);
    const files = readdirSync(l.clusterDir).sort();
    expect(files).toEqual([
      'eps-shop.server-lab.yaml',
      'httproute-shop.to-server.yaml',
      'ns-default.yaml',
      'ns-shop.yaml',
      'pod-default.local.yaml',
      'pod-shop.client.yaml',
      'pod-shop.server.yaml',
      'svc-shop.server.yaml',
    ]);
    const server = parse(readFileSync(path.join(l.clusterDir, 'pod-shop.server.yaml'), 'utf8')) as Pod;
    expect(server.status).toMatchObject({ phase: 'Running', podIP: l.pod('shop/server').ip });
    expect(server.metadata.annotations?.['trellis.dev/netns']).toBe(`/var/run/netns/${l.pod('shop/server').netns}`);
    expect(l.services).toEqual([
      { namespace: 'shop', name: 'server', clusterIP: '10.96.0.10', ports: [{ name: 'tcp', port: 80, targetPort: 8080, targetPortName: 'tcp' }] },
    ]);
    const status = await l.status();
    expect(status.pods.map((p) => [p.name, p.mesh, p.processes.every((r) => r.alive)])).toEqual([
      ['server', 'enabled (namespace)', true],
      ['client', 'enabled (namespace)', true],
      ['local', '-', true],
    ]);
  });

  it("answers a new pod's first packet without the kernel's proxy ARP delay", async () => {
    const l = lab!;
    // Every pod's veth on its node answers ARP for the gateway at once (the kernel's default waits 0-0.8 s).
    for (const node of l.nodes) {
      const delays = execFileSync('ip', ['netns', 'exec', node.netns, 'sh', '-c', 'grep -H . /proc/sys/net/ipv4/neigh/tp*/proxy_delay'], { encoding: 'utf8' });
      const lines = delays.trim().split('\n');
      expect(lines.length).toBe((await l.status()).pods.filter((p) => p.node === node.name).length);
      for (const line of lines) expect(line).toMatch(/:0$/);
    }
    // The first connection of a pod that never sent a packet: ARP on both sides, then the handshake.
    const server = l.pod('shop/server');
    // (The server answers and closes; the client reads to the end, so neither side sees a reset.)
    const script = `const t = performance.now(); require('net').connect(8080, process.argv[1]).on('connect', () => console.log(Math.round(performance.now() - t))).on('data', () => {}).on('error', (e) => { console.log(e.code); process.exit(2); })`;
    // The server process may still be starting: a refused try is tried again (its ARP is done by then).
    const first = await until('server answers', async () => {
      const x = await l.exec('shop/client', ['node', '-e', script, server.ip]);
      return x.code === 0 ? x : undefined;
    });
    console.log(`a new pod's first connection across nodes: ${first.stdout.trim()} ms`);
  });

  it('routes pod to pod across nodes, from the pod IP', async () => {
    const l = lab!;
    const server = l.pod('shop/server');
    const r = await until('server answers', async () => {
      const x = await l.exec('shop/client', ['node', '-e', CLIENT, server.ip, '8080']);
      return x.code === 0 ? x : undefined;
    });
    expect(r.stdout.trim()).toBe(`server ${l.pod('shop/client').ip}`);
  });

  it('reaches its internet from every pod through its node, from the pod IP (no NAT)', async () => {
    const l = lab!;
    expect(l.internet).toEqual({ netns: `trl-${name}-inet`, netnsPath: `/var/run/netns/trl-${name}-inet`, network: '198.18.0.0/15' });
    const server = l.spawnInInternet(['node', '-e', SERVER.replace('process.env.POD_NAME', "'internet'"), '8080']);
    server.stdout!.resume();
    for (const [pod, ip] of [['shop/client', '198.18.0.7'], ['shop/server', '198.18.255.254'], ['local', '198.19.3.4']] as const) {
      const r = await until(`the internet answers ${pod} at ${ip}`, async () => {
        const x = await l.exec(pod, ['node', '-e', CLIENT, ip, '8080']);
        return x.code === 0 ? x : undefined;
      });
      expect(r.stdout.trim()).toBe(`internet ${l.pod(pod).ip}`);
    }
    // Outside 198.18.0.0/15 nothing answers: the nodes refuse it, nothing heads for the host.
    expect((await l.exec('shop/client', ['node', '-e', CLIENT, '198.20.0.1', '8080'])).stdout).toMatch(/EHOSTUNREACH|ENETUNREACH/);
  });

  it('emulates the ClusterIP across nodes', async () => {
    const l = lab!;
    const r = await until('VIP answers', async () => {
      const x = await l.exec('shop/client', ['node', '-e', CLIENT, '10.96.0.10', '80']);
      return x.code === 0 ? x : undefined;
    });
    expect(r.stdout.trim()).toBe(`server ${l.pod('shop/client').ip}`);
    // The node itself reaches the VIP too (output hook), from its own 10.244.i.1.
    const fromNode = await l.execInNode('node-a', ['node', '-e', CLIENT, '10.96.0.10', '80']);
    expect(fromNode.stdout.trim()).toBe('server 10.244.1.1');
    // A port the Service does not have is refused at once, not left to time out.
    const refused = await l.exec('shop/client', ['node', '-e', CLIENT, '10.96.0.10', '81']);
    expect(refused).toMatchObject({ code: 2, stdout: 'ECONNREFUSED' });
  });

  it('connects from the node netns to a local pod, from the probe source', async () => {
    const l = lab!;
    const local = l.pod('local');
    const r = await until('local pod answers', async () => {
      const x = await l.execInNode('node-a', ['node', '-e', CLIENT, local.ip, '7070']);
      return x.code === 0 ? x : undefined;
    });
    expect(r.stdout.trim()).toBe(`local ${l.nodes[0]!.gatewayIp}`);
  });

  it('reaches node ports from inside the node netns, never from the host', async () => {
    const l = lab!;
    const node = l.nodes[0]!;
    // Stands in for an agent's health port, bound to the node's fabric address only.
    const script = `require('http').createServer((q, s) => s.end('ready from ' + q.socket.remoteAddress)).listen(15021, '${node.fabricIp}', () => console.log('up'))`;
    const health = spawn('ip', ['netns', 'exec', node.netns, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise((resolve) => health.stdout.once('data', resolve));
      expect(await l.httpGetFromNode('node-a', 15021, '/healthz/ready')).toEqual({ status: 200, body: `ready from ${node.fabricIp}` });
      // Nothing listens on the metrics port in this netns: refused at once, not answered by anything outside.
      await expect(l.metrics('node-a')).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    } finally {
      health.kill('SIGKILL');
    }
  });

  it('gives exec the pod environment, exit code and stdin', async () => {
    const l = lab!;
    const env = await l.exec('shop/client', ['sh', '-c', 'echo $POD_NAME $POD_NAMESPACE $POD_IP $NODE_NAME; cat; exit 7'], {
      input: 'from stdin',
    });
    expect(env).toEqual({ code: 7, stdout: `client shop ${l.pod('shop/client').ip} node-a\nfrom stdin`, stderr: '' });
    const addr = await l.exec('shop/client', ['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0']);
    expect(addr.stdout).toContain(`${l.pod('shop/client').ip}/32`);
    await expect(l.exec('shop/client', ['sleep', '5'], { timeoutMs: 300 })).rejects.toMatchObject({ code: 'ETIMEDOUT' });
  });

  it('`trellis lab exec` takes its options before or after the pod, and the command after --', async () => {
    const ip = lab!.pod('shop/client').ip;
    const before = await trellis(['lab', 'exec', '--name', name, '--state-root', stateRoot, 'shop/client', '--', 'sh', '-c', 'echo $POD_IP; exit 3']);
    expect(before).toMatchObject({ code: 3, stdout: `${ip}\n` });
    const after = await trellis(['lab', 'exec', 'shop/client', '--name', name, '--state-root', stateRoot, '--', 'sh', '-c', 'echo $POD_NAME --name x']);
    expect(after).toMatchObject({ code: 0, stdout: 'client --name x\n' });
    // A command flag without -- before it is not taken for an option of exec: the error says where -- goes.
    const missing = await trellis(['lab', 'exec', 'shop/client', '--name', name, '--state-root', stateRoot, 'ls', '-l']);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain("unknown option '-l'");
    expect(missing.stderr).toContain('put -- before the command');
  });

  it('rewrites realized annotations atomically', async () => {
    const l = lab!;
    await l.setPodAnnotation('shop/client', 'trellis.dev/mesh', 'disabled');
    await l.setNamespaceAnnotation('default', 'trellis.dev/mesh', 'enabled');
    const status = await l.status();
    expect(status.pods.map((p) => p.mesh)).toEqual(['enabled (namespace)', 'disabled (pod)', 'enabled (namespace)']);
    await l.setPodAnnotation('shop/client', 'trellis.dev/mesh', null);
    const client = parse(readFileSync(path.join(l.clusterDir, 'pod-shop.client.yaml'), 'utf8')) as Pod;
    expect(client.metadata.annotations).toEqual({ 'trellis.dev/netns': `/var/run/netns/${l.pod('shop/client').netns}` });
    expect(readdirSync(l.clusterDir).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it('applies and removes routes and policies while up, in the files the agents read', async () => {
    const l = lab!;
    const read = (f: string) => parse(readFileSync(path.join(l.clusterDir, f), 'utf8')) as ExtensionObject;
    const original = read('httproute-shop.to-server.yaml');
    expect(original.spec.parentRefs).toEqual([{ group: '', kind: 'Service', name: 'server', port: 80 }]);

    const route = {
      apiVersion: 'gateway.networking.k8s.io/v1',
      kind: 'HTTPRoute',
      metadata: { name: 'to-server', namespace: 'shop' },
      spec: {
        parentRefs: [{ group: '', kind: 'Service', name: 'server', port: 80 }],
        rules: [{ filters: [{ type: 'ExtensionRef', extensionRef: { group: 'traffic.trellis.dev', kind: 'FaultInjection', name: 'slow' } }], backendRefs: [{ name: 'server', port: 80 }] }],
      },
    } as ExtensionObject;
    const fault = {
      apiVersion: 'traffic.trellis.dev/v1alpha1',
      kind: 'FaultInjection',
      metadata: { name: 'slow', namespace: 'shop' },
      spec: { delay: { fixedDelay: '200ms', percentage: { value: 100 } } },
    } as ExtensionObject;
    await l.apply([route, fault]);
    // Replaced, not recreated: the uid stays, so the agents see the same object changed.
    const replaced = read('httproute-shop.to-server.yaml');
    expect(replaced.metadata.uid).toBe(original.metadata.uid);
    expect(replaced.spec).toEqual(route.spec);
    const faultUid = read('fault-shop.slow.yaml').metadata.uid;
    expect(faultUid).toMatch(/^[0-9a-f-]{36}$/);
    expect(route.metadata.uid).toBeUndefined();

    // Refused before anything is written: fixed kinds, unknown namespaces.
    const pod = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'late', namespace: 'shop' }, spec: { nodeName: 'node-a', containers: [{ name: 'c' }] } } as KubeObject;
    await expect(l.apply([fault, pod])).rejects.toThrow(/a Pod is fixed when the lab comes up/);
    const elsewhere = { ...fault, metadata: { name: 'slow', namespace: 'nowhere' } };
    await expect(l.apply([elsewhere])).rejects.toMatchObject({ code: 'ENOTFOUND', message: expect.stringMatching(/namespace "nowhere" does not exist.*namespaces: default, shop/) });
    await expect(l.remove('Pod', 'shop', 'server')).rejects.toThrow(/lab\.remove takes HTTPRoute/);

    expect(await l.remove('FaultInjection', 'shop', 'slow')).toBe(true);
    expect(existsSync(path.join(l.clusterDir, 'fault-shop.slow.yaml'))).toBe(false);
    expect(await l.remove('FaultInjection', 'shop', 'slow')).toBe(false);
    expect(readdirSync(l.clusterDir).filter((f) => f.startsWith('.'))).toEqual([]);
    // A local-mode lab has no API server.
    expect(() => l.kube).toThrow(/runs in local mode: kube needs a lab brought up in cluster mode/);
  });

  it('is visible from another process through its state', async () => {
    const other = await Lab.attach(name, stateRoot);
    expect(other.pods.map((p) => p.name)).toEqual(['server', 'client', 'local']);
    await expect(Lab.attach('nolab', stateRoot)).rejects.toThrow(/lab 'nolab' is not up.*trellis lab up -f/);
    await expect(Lab.up(path.join(stateRoot, 'shop.yaml'), { name, stateRoot, agents: false })).rejects.toThrow(/already up/);
  });

  it('leaves the host netns unchanged while up', () => {
    expect(hostSnapshot()).toEqual(before);
  });

  it('down removes everything it made', async () => {
    const l = lab!;
    const spawned = l.spawn('shop/client', ['sleep', '1000']);
    const inInternet = l.spawnInInternet(['sleep', '1000']);
    const t0 = Date.now();
    await l.down();
    timings.down = Date.now() - t0;
    lab = undefined;
    expect(labNetns(name)).toEqual([]);
    expect([...pids, spawned.pid!, inInternet.pid!].filter(alive)).toEqual([]);
    expect(markedPids(name)).toEqual([]);
    expect(existsSync(l.stateDir)).toBe(false);
    expect(hostSnapshot()).toEqual(before);
    await l.down();
    process.stderr.write(`lab ${name}: up ${timings.up} ms, down ${timings.down} ms\n`);
  });

  it('sweep removes the leftovers of a crashed lab', async () => {
    // A lab whose owner died: its pods run on, detached, and its state stays behind.
    const crashed = labName();
    const crashedLab = await Lab.up(path.join(stateRoot, 'shop.yaml'), { name: crashed, stateRoot, agents: false, internet: true });
    const internetServer = crashedLab.spawnInInternet(['sleep', '1000']);
    // And bare leftovers with no state at all: a netns and a process inside it.
    const bare = labName();
    execFileSync('ip', ['netns', 'add', `trl-${bare}-node-1`]);
    // The cgroup its agent would have had (lab/cluster/cgroups.ts), where the host has cgroup v2.
    const cgroupRoot = hostCgroup2();
    const strayCgroup = cgroupRoot && path.join(cgroupRoot, `trl-${bare}-node-1`);
    if (strayCgroup) mkdirSync(strayCgroup);
    const stray = spawn('ip', ['netns', 'exec', `trl-${bare}-node-1`, 'sleep', '1000'], { detached: true, stdio: 'ignore' });
    await until('stray process in its netns', async () => {
      const inside = execFileSync('ip', ['netns', 'pids', `trl-${bare}-node-1`], { encoding: 'utf8' });
      return inside.split(/\s+/).includes(String(stray.pid)) ? true : undefined;
    });
    const crashedPids = markedPids(crashed);
    expect(crashedPids.length).toBeGreaterThan(0);

    const removed = [
      ...(await sweep({ prefix: `trl-${crashed}-`, stateRoot })),
      ...(await sweep({ prefix: `trl-${bare}-`, stateRoot })),
    ];
    expect(removed).toContain(`netns trl-${crashed}-fabric`);
    expect(removed).toContain(`netns trl-${crashed}-inet`);
    expect(removed).toContain(`netns trl-${bare}-node-1`);
    expect(removed).toContain(`state ${path.join(stateRoot, crashed)}`);
    expect(removed.some((r) => r.startsWith(`process ${stray.pid} `))).toBe(true);
    if (strayCgroup) {
      expect(removed).toContain(`cgroup ${strayCgroup}`);
      expect(existsSync(strayCgroup)).toBe(false);
    }
    expect([...labNetns(crashed), ...labNetns(bare)]).toEqual([]);
    expect([...crashedPids, stray.pid!, internetServer.pid!].filter(alive)).toEqual([]);
    expect(markedPids(crashed)).toEqual([]);
    expect(hostSnapshot()).toEqual(before);
    expect(await sweep({ prefix: `trl-${crashed}-`, stateRoot })).toEqual([]);
  });

  it('rejects bad manifests before making anything', async () => {
    const noNode = path.join(stateRoot, 'nonode.yaml');
    writeFileSync(noNode, 'apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: c}]}\n');
    await expect(Lab.up(noNode, { name: labName(), stateRoot, agents: false })).rejects.toThrow(
      /nonode\.yaml, document 1 \(Pod default\/web\): field spec\.nodeName: is required/,
    );
    const broken = path.join(stateRoot, 'broken.yaml');
    writeFileSync(broken, 'kind: Pod\nmetadata: {name: [x\n');
    await expect(Lab.up(broken, { name: labName(), stateRoot, agents: false })).rejects.toThrow(/broken\.yaml, document 1: invalid YAML/);
    await expect(sweep({ prefix: 'x-' })).rejects.toThrow(/must start with "trl-"/);
  });
});
