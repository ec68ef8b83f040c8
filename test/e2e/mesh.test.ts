// The foundation end to end, as a user runs it: a two-node lab of real network namespaces, real nft capture,
// real HBONE over mTLS between two agent processes. Needs root.
import { execFile, spawn } from 'node:child_process';
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCa } from '../../agent/identity/ca.js';
import { WorkloadCerts } from '../../agent/identity/certs.js';
import { systemClock } from '../../agent/clock.js';
import { Lab } from '../../lab/cluster/lab.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import type { ApiObject } from '../../lab/controlplane/client.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import { requireRoot } from '../support/root.js';
import { captureLogger } from '../support/logger.js';

const run = promisify(execFile);
const fixtures = path.join(import.meta.dirname, 'fixtures', 'mesh.yaml');
const MB = 1024 * 1024;

async function metrics(lab: Lab, node: string) {
  return parsePrometheus(await lab.metrics(node));
}

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 5000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function captureRules(lab: Lab, ref: string): Promise<string> {
  const r = await run('nsenter', [`--net=${lab.pod(ref).netnsPath}`, 'nft', 'list', 'ruleset']);
  return r.stdout;
}

async function listening(lab: Lab, ref: string): Promise<string> {
  const r = await run('nsenter', [`--net=${lab.pod(ref).netnsPath}`, 'ss', '-ltnH']);
  return r.stdout;
}

// The same tests with the agents in local mode (`--source dir`, in-process CA) and in cluster mode (`--source kube`
// against a real control plane in the lab's fabric, with real service-account tokens and certificates from the
// identity service; the lab plays the kubelet), see lab/cluster/cluster.ts. Capture as the agents choose it (auto: the
// eBPF mode where the kernel allows it), and in local mode once more with nftables both ways, the portable fallback.
describe.each([['dir', 'auto'], ['dir', 'nft'], ['kube', 'auto']] as const)('two-node mesh in network namespaces (--source %s, --capture %s)', (mode, capture) => {
  const labName = `e${mode[0]}${capture[0]}${Math.random().toString(36).slice(2, 5)}`;
  let lab: Lab;
  let sinkVip: string;
  let echoVip: string;

  beforeAll(async () => {
    requireRoot('end-to-end mesh tests');
    lab = await Lab.up(fixtures, { name: labName, cluster: mode === 'kube', agentArgs: ['--capture', capture] });
    sinkVip = lab.services.find((s) => s.name === 'sink')!.clusterIP;
    echoVip = lab.services.find((s) => s.name === 'echo')!.clusterIP;
  });

  afterAll(async () => {
    await lab?.down();
    const { stdout } = await run('ip', ['netns', 'list']);
    expect(stdout).not.toContain(`trl-${labName}-`);
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  it('carries 50 MB from a meshed client to a meshed server across nodes, byte-identical, over TLS 1.3 only', async () => {
    const server = lab.pod('mesh/sink');
    const pcapDir = mkdtempSync(path.join(tmpdir(), 'trellis-pcap-'));
    const pcap = path.join(pcapDir, 'sink.pcap');
    // Capture on the server pod's external interface for the whole transfer.
    const dump = spawn('nsenter', [`--net=${server.netnsPath}`, 'tcpdump', '-i', 'eth0', '-U', '-n', '-s', '256', '-w', pcap, 'tcp'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let dumpErr = '';
    dump.stderr.on('data', (d: Buffer) => (dumpErr += d.toString()));
    try {
      await until('tcpdump to start', async () => dumpErr.includes('listening on'), 10_000);
      const marker = 'TRELLIS-PLAINTEXT-MARKER-0123456789';
      const started = performance.now();
      const send = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-send', '--to', `${sinkVip}:9000`, '--bytes', String(50 * MB)], { timeoutMs: 120_000 });
      const seconds = (performance.now() - started) / 1000;
      expect(send.code, send.stderr).toBe(0);
      const result = JSON.parse(send.stdout.trim().split('\n').at(-1)!) as { match: boolean; sent: number; reply: string; sha256: string };
      expect(result.match).toBe(true);
      expect(result.reply).toContain(`sha256=${result.sha256}`);
      expect(result.reply).toContain(`bytes=${50 * MB}`);
      console.log(`50 MB through the mesh in ${seconds.toFixed(2)} s (${((50 * 8) / seconds).toFixed(0)} Mbit/s, including process start)`);
      const probe = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-connect', '--to', `${sinkVip}:9000`, '--send', marker]);
      expect(probe.code, probe.stderr).toBe(0);
    } finally {
      dump.kill('SIGINT');
      await new Promise((r) => dump.once('close', r));
    }
    const raw = readFileSync(pcap);
    rmSync(pcapDir, { recursive: true, force: true });
    // Only HBONE on the wire: no TCP segment to or from any port but 15008.
    const other = await new Promise<string>((resolve, reject) => {
      const t = spawn('tcpdump', ['-r', '-', '-n', 'tcp and not port 15008'], { stdio: ['pipe', 'pipe', 'ignore'] });
      let out = '';
      t.stdout.on('data', (d: Buffer) => (out += d.toString()));
      t.on('close', () => resolve(out));
      t.on('error', reject);
      t.stdin.end(raw);
    });
    expect(other.trim()).toBe('');
    expect(raw.includes(Buffer.from('TRELLIS-PLAINTEXT-MARKER'))).toBe(false);
    // TLS 1.3: the ServerHello's supported_versions extension selects 0x0304.
    expect(raw.includes(Buffer.from('002b00020304', 'hex'))).toBe(true);
    expect(raw.length).toBeGreaterThan(10_000);
  });

  it('counts exactly the bytes moved, on both nodes (no framing overhead: payload is counted at the app side)', async () => {
    const before = {
      a: await metrics(lab, 'node-a'),
      b: await metrics(lab, 'node-b'),
    };
    const bytes = 3 * MB + 123;
    const send = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-send', '--to', `${sinkVip}:9000`, '--bytes', String(bytes)], { timeoutMs: 60_000 });
    expect(send.code, send.stderr).toBe(0);
    const { sha256 } = JSON.parse(send.stdout.trim().split('\n').at(-1)!) as { sha256: string };
    // What the sink writes back, byte for byte.
    const reply = `sha256=${sha256} bytes=${bytes}\n`;
    const src = { reporter: 'source', source_workload: 'client', destination_workload: 'sink', connection_security_policy: 'mutual_tls', destination_service: 'sink.mesh.svc.cluster.local' };
    const dst = { reporter: 'destination', source_workload: 'client', destination_workload: 'sink', connection_security_policy: 'mutual_tls', source_principal: 'spiffe://cluster.local/ns/mesh/sa/client' };
    const delta = async (node: 'a' | 'b', name: string, match: Record<string, string>) =>
      sumOf(await metrics(lab, `node-${node}`), name, match) - sumOf(before[node], name, match);
    await until('both agents to record the close', async () =>
      (await delta('a', 'trellis_tcp_connections_closed_total', src)) === 1 && (await delta('b', 'trellis_tcp_connections_closed_total', dst)) === 1);
    expect(await delta('a', 'trellis_tcp_connections_opened_total', src)).toBe(1);
    expect(await delta('a', 'trellis_tcp_received_bytes_total', src)).toBe(bytes);
    expect(await delta('a', 'trellis_tcp_sent_bytes_total', src)).toBe(Buffer.byteLength(reply));
    expect(await delta('b', 'trellis_tcp_received_bytes_total', dst)).toBe(bytes);
    expect(await delta('b', 'trellis_tcp_sent_bytes_total', dst)).toBe(Buffer.byteLength(reply));
    // One access-log line per connection on each side, with both identities and the same byte counts.
    const access = (node: string) =>
      lab.agentLog(node).split('\n').filter((l) => l.includes('"log":"access"') && l.includes(`"bytes_received":${bytes},`));
    // The audit trail writes its lines a few tens of milliseconds after the connection closed (it gathers them).
    for (const node of ['node-a', 'node-b']) await until(`the access line on ${node}`, async () => access(node).length === 1);
    for (const node of ['node-a', 'node-b']) {
      const lines = access(node);
      expect(lines).toHaveLength(1);
      const line = JSON.parse(lines[0]!) as { src: { principal: string }; dst: { principal: string }; bytes_sent: number; security: string };
      expect(line).toMatchObject({ src: { principal: 'spiffe://cluster.local/ns/mesh/sa/client' }, dst: { principal: 'spiffe://cluster.local/ns/mesh/sa/sink' }, bytes_sent: Buffer.byteLength(reply), security: 'mutual_tls' });
    }
  });

  it('runs one capture mode, the one asked for, and captures both ways its way', async () => {
    const m = await metrics(lab, 'node-b');
    const running = (['nft', 'ebpf'] as const).filter((c) => sumOf(m, 'trellis_capture_mode', { mode: c }) === 1);
    expect(running).toHaveLength(1);
    if (capture === 'nft') expect(running).toEqual(['nft']);
    const ebpf = running[0] === 'ebpf';
    // nft redirects inbound to 15006 and outbound to 15001; the eBPF mode's programs need no NAT at all: its table
    // holds guards only.
    for (const ref of ['mesh/echo', 'mesh/client']) {
      const rules = await captureRules(lab, ref);
      expect(rules.includes('redirect to :15006'), ref).toBe(!ebpf);
      expect(rules.includes('redirect to :15001'), ref).toBe(!ebpf);
      // eBPF mode's nat chains hold no rule (they keep NAT's hooks for a hand-over from nft mode: capture/rules.ts).
      const natRules = [...rules.matchAll(/type nat hook \w+ priority [^;]+; policy accept;([^}]*)\}/g)].map((m) => m[1]!.trim()).filter(Boolean);
      expect(natRules.length > 0, ref).toBe(!ebpf);
    }
    // The outbound programs on the cgroup root, one set per agent (both of this lab's, on one host), as bpftool shows.
    const root = (await run('findmnt', ['-n', '-t', 'cgroup2', '-o', 'TARGET'])).stdout.split('\n').find((l) => l.trim())!.trim();
    const attached = JSON.parse((await run('bpftool', ['-j', 'cgroup', 'show', root])).stdout.trim() || '[]') as { name: string; attach_type: string }[];
    const outbound = { trellis_conn4: 'cgroup_inet4_connect', trellis_peer4: 'cgroup_inet4_getpeername', trellis_outops: 'cgroup_sock_ops' };
    for (const [name, type] of Object.entries(outbound)) {
      const ours = attached.filter((p) => p.name === name && p.attach_type === type);
      if (ebpf) expect(ours.length, name).toBeGreaterThanOrEqual(2);
    }
    // A meshed client's connection still goes through the mesh: counted by its own agent (the source) and, in eBPF
    // mode, redirected by the connect4 program.
    const a = await metrics(lab, 'node-a');
    const opened = sumOf(a, 'trellis_tcp_connections_opened_total', { reporter: 'source', source_workload: 'client', destination_workload: 'echo' });
    const redirected = sumOf(a, 'trellis_capture_connect_total', { verdict: 'redirected' });
    const echoVip = lab.services.find((svc) => svc.name === 'echo')!.clusterIP;
    const r = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-connect', '--to', `${echoVip}:70`, '--send', 'via-mesh']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('via-mesh');
    await until('node-a to record the connection', async () =>
      sumOf(await metrics(lab, 'node-a'), 'trellis_tcp_connections_opened_total', { reporter: 'source', source_workload: 'client', destination_workload: 'echo' }) > opened);
    const after = sumOf(await metrics(lab, 'node-a'), 'trellis_capture_connect_total', { verdict: 'redirected' });
    if (ebpf) expect(after).toBeGreaterThan(redirected);
    else expect(after).toBe(0);
  });

  it('leaves pods outside the mesh untouched, and serves them in plaintext (permissive)', async () => {
    expect(await captureRules(lab, 'plain/outsider')).not.toContain('trellis');
    expect(await listening(lab, 'plain/outsider')).not.toMatch(/:1500[168]\b/);
    expect(await captureRules(lab, 'mesh/client')).toContain('table inet trellis');
    const before = await metrics(lab, 'node-a');
    const r = await lab.exec('plain/outsider', ['trellis', 'tool', 'tcp-connect', '--to', `${echoVip}:70`, '--send', 'hello']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('hello');
    // No agent on node-a saw it as a source...
    const after = await metrics(lab, 'node-a');
    expect(sumOf(after, 'trellis_tcp_connections_opened_total', { source_workload: 'outsider' })).toBe(sumOf(before, 'trellis_tcp_connections_opened_total', { source_workload: 'outsider' }));
    // ...and node-b's agent labels it as plaintext.
    await until('inbound plaintext to be recorded', async () =>
      sumOf(await metrics(lab, 'node-b'), 'trellis_tcp_connections_closed_total', { reporter: 'destination', source_workload: 'outsider', connection_security_policy: 'none' }) >= 1);
  });

  it("lets the node's health probes reach a meshed pod directly", async () => {
    const node = lab.nodes.find((n) => n.name === 'node-b')!;
    const echo = lab.pod('mesh/echo');
    const before = sumOf(await metrics(lab, 'node-b'), 'trellis_tcp_connections_opened_total', { destination_workload: 'echo' });
    const r = await lab.execInNode('node-b', [process.execPath, path.resolve('dist/agent/main.js'), 'tool', 'tcp-connect', '--to', `${echo.ip}:7000`, '--send', 'probe']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('probe');
    expect(node.gatewayIp).toBeTruthy();
    expect(sumOf(await metrics(lab, 'node-b'), 'trellis_tcp_connections_opened_total', { destination_workload: 'echo' })).toBe(before);
  });

  it('refuses an HBONE peer with a certificate from another CA, and a CONNECT to another pod', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'trellis-rogue-'));
    const { logger } = captureLogger();
    const foreign = LocalCa.generate({ trustDomain: 'cluster.local' });
    // In cluster mode the lab's CA is the identity service's (the trellis-ca Secret).
    const real = LocalCa.load(path.join(lab.stateDir, 'ca'));
    const sink = lab.pod('mesh/sink');
    const echo = lab.pod('mesh/echo');
    const issue = async (ca: LocalCa, name: string) => {
      const certs = new WorkloadCerts({ signer: ca, trustBundle: ca.rootCertPem, ttlMs: 3_600_000, clock: systemClock, logger });
      const svid = await certs.get(`spiffe://cluster.local/ns/plain/sa/${name}`);
      certs.close();
      writeFileSync(path.join(dir, `${name}.crt`), svid.certPem);
      writeFileSync(path.join(dir, `${name}.key`), svid.keyPem);
    };
    try {
      await issue(foreign, 'rogue');
      await issue(real, 'insider');
      writeFileSync(path.join(dir, 'ca.crt'), real.rootCertPem);
      const attempt = async (name: string, host: string, target: string) => {
        const r = await lab.exec('plain/outsider', [process.execPath, path.resolve('test/support/rogue-hbone.mjs'), host, '15008', target, path.join(dir, `${name}.crt`), path.join(dir, `${name}.key`), path.join(dir, 'ca.crt')]);
        return JSON.parse(r.stdout.trim()) as { outcome: string; detail: unknown };
      };
      expect((await attempt('rogue', sink.ip, `${sink.ip}:9000`)).outcome).toBe('refused');
      await until('the refusal to be logged', async () => /refused HBONE peer/.test(lab.agentLog('node-b')));
      // A valid identity may not use one pod's HBONE port to reach another pod.
      const cross = await attempt('insider', sink.ip, `${echo.ip}:7000`);
      expect(cross).toMatchObject({ outcome: 'refused', detail: 403 });
      // Control: the same valid identity reaches the pod it asked for.
      expect((await attempt('insider', sink.ip, `${sink.ip}:9000`)).outcome).toBe('connected');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('fails closed when the destination agent is down, and recovers when it is back', async () => {
    await lab.stopAgent('node-b');
    try {
      const r = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-connect', '--to', `${echoVip}:70`, '--send', 'must-not-pass', '--timeout-ms', '3000']);
      expect(r.code).not.toBe(0);
      expect(r.stdout).not.toContain('must-not-pass');
      // Plaintext straight to the pod (bypassing the client agent) is redirected to the dead 15006: refused too.
      const direct = await lab.exec('plain/outsider', ['trellis', 'tool', 'tcp-connect', '--to', `${lab.pod('mesh/echo').ip}:7000`, '--send', 'must-not-pass', '--timeout-ms', '3000']);
      expect(direct.code).toBe(3);
    } finally {
      await lab.startAgent('node-b');
    }
    const again = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-connect', '--to', `${echoVip}:70`, '--send', 'back']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain('back');
  });

  it('lets a connection in flight finish when its agent is told to stop (drain)', async () => {
    // A client that holds a connection open for 2 s, talking before and after the agent gets SIGTERM.
    const script = `
      const s = require('net').connect(70, '${echoVip}');
      let got = '';
      s.on('data', (d) => (got += d));
      s.on('connect', () => { s.write('first;'); setTimeout(() => s.end('second'), 2000); });
      s.on('end', () => { console.log(got); process.exit(got === 'first;second' ? 0 : 1); });
      s.on('error', (e) => { console.error(e.message); process.exit(2); });`;
    const opened = () => metrics(lab, 'node-a').then((m) => sumOf(m, 'trellis_tcp_connections_opened_total', { destination_workload: 'echo' }) - sumOf(m, 'trellis_tcp_connections_closed_total', { destination_workload: 'echo' }));
    const client = lab.exec('mesh/client', ['node', '-e', script], { timeoutMs: 30_000 });
    await until('the connection to be open', async () => (await opened()) === 1, 10_000);
    await lab.stopAgent('node-a');
    try {
      const r = await client;
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.trim()).toBe('first;second');
      expect(lab.agentLog('node-a')).toMatch(/"drained":1,"cut":0/);
    } finally {
      await lab.startAgent('node-a');
    }
  });

  it('enrols and unenrols a running pod within 2 s when its annotation flips, without restarts', async () => {
    const startedOut = performance.now();
    await lab.setPodAnnotation('mesh/client', 'trellis.dev/mesh', 'disabled');
    await until('capture rules to be removed', async () => !(await captureRules(lab, 'mesh/client')).includes('trellis'), 2000);
    const outMs = performance.now() - startedOut;
    // Rules go first, then the listeners (and, in eBPF mode, the pod's program): they follow within the same bound.
    await until('listeners to be gone', async () => !/:15001\b/.test(await listening(lab, 'mesh/client')), 2000);
    const startedIn = performance.now();
    await lab.setPodAnnotation('mesh/client', 'trellis.dev/mesh', null);
    await until('capture rules to be back', async () => (await captureRules(lab, 'mesh/client')).includes('table inet trellis'), 2000);
    const inMs = performance.now() - startedIn;
    await until('listeners to be back', async () => /:15001\b/.test(await listening(lab, 'mesh/client')), 2000);
    console.log(`unenrol took ${outMs.toFixed(0)} ms, enrol took ${inMs.toFixed(0)} ms`);
    const r = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-connect', '--to', `${echoVip}:70`, '--send', 'again']);
    expect(r.code, r.stderr).toBe(0);
  });

  // Readiness drives endpoints: the lab reports the pod not ready as a kubelet would on a failing probe, the
  // EndpointSlice controller marks its endpoint not ready, and the client's agent stops sending to it.
  if (mode === 'kube') it('stops routing to a pod reported not ready, and routes again once it is ready', async () => {
    const slice = async () => {
      const list = await lab.kube.list<{ metadata: { name?: string }; endpoints?: { addresses: string[]; conditions?: { ready?: boolean } }[] }>(
        { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', namespace: 'mesh' },
        { labelSelector: 'kubernetes.io/service-name=echo' },
      );
      return list.items.flatMap((s) => s.endpoints ?? []);
    };
    const send = (text: string) => lab.exec('mesh/client', ['trellis', 'tool', 'tcp-connect', '--to', `${echoVip}:70`, '--send', text, '--timeout-ms', '3000']);
    await lab.setPodReady('mesh/echo', false);
    try {
      await until('the controller to mark the endpoint not ready', async () => (await slice()).every((e) => e.conditions?.ready === false), 10_000);
      await until('the agent to stop routing to it', async () => (await send('not-ready')).code !== 0, 10_000);
    } finally {
      await lab.setPodReady('mesh/echo', true);
    }
    await until('the controller to mark it ready again', async () => (await slice()).some((e) => e.conditions?.ready === true), 10_000);
    await until('the agent to route to it again', async () => {
      const r = await send('ready-again');
      return r.code === 0 && r.stdout.includes('ready-again');
    }, 10_000);
  });

  if (mode === 'dir') it('reports an invalid YAML file and changes nothing', async () => {
    const bad = path.join(lab.clusterDir, 'zz-broken.yaml');
    const logBefore = lab.agentLog('node-a').length;
    writeFileSync(bad, 'apiVersion: v1\nkind: Pod\nmetadata: {name: [broken\n');
    try {
      await until('the error to be logged', async () => lab.agentLog('node-a').slice(logBefore).includes('zz-broken.yaml'));
      expect(lab.agentLog('node-a').slice(logBefore)).toMatch(/invalid YAML/);
      await stillMeshed();
    } finally {
      rmSync(bad, { force: true });
    }
  });

  // The real API server refuses what is invalid to Kubernetes (a pod IP that is no IP); what it stores and the agent
  // still refuses is a policy with a field Trellis does not know, kept by the CRD (x-kubernetes-preserve-unknown-fields).
  if (mode === 'kube') it('reports an invalid object from the API server and changes nothing', async () => {
    const logBefore = lab.agentLog('node-a').length;
    const broken: ApiObject = {
      apiVersion: 'security.trellis.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'broken', namespace: 'plain' },
      spec: { rules: [{ from: [{ source: { namespaces: ['mesh'], notPrincipal: ['cluster.local/ns/mesh/sa/old'] } }] }] },
    };
    await lab.kube.apply(broken);
    try {
      await until('the error to be logged', async () => lab.agentLog('node-a').slice(logBefore).includes('notPrincipal'));
      await stillMeshed();
      await until('Accepted=False written to its status', async () => {
        const o = (await lab.kube.get({ apiVersion: String(broken.apiVersion), kind: String(broken.kind), namespace: 'plain', name: 'broken' })) as { status?: { conditions?: { type: string; status: string; message: string }[] } } | undefined;
        const c = o?.status?.conditions?.find((x) => x.type === 'Accepted');
        return c?.status === 'False' && c.message.includes('notPrincipal');
      });
    } finally {
      await lab.kube.delete({ apiVersion: String(broken.apiVersion), kind: String(broken.kind), namespace: 'plain', name: 'broken' });
    }
  });

  if (mode === 'kube') it('keeps the data path working while kube-apiserver is stopped, with the config age rising', async () => {
    await lab.controlPlane.stopApiServer();
    try {
      await until('config age to pass 2 s', async () => sumOf(await metrics(lab, 'node-a'), 'trellis_config_age_seconds') > 2, 10_000);
      const r = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-connect', '--to', `${echoVip}:70`, '--send', 'outage']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain('outage');
    } finally {
      await lab.controlPlane.startApiServer();
    }
    await until('config age to drop', async () => sumOf(await metrics(lab, 'node-a'), 'trellis_config_age_seconds') < 2, 40_000);
    // Changes made after recovery still arrive: flip the client out of the mesh and back.
    await lab.setPodAnnotation('mesh/client', 'trellis.dev/mesh', 'disabled');
    await until('capture rules to be removed', async () => !(await captureRules(lab, 'mesh/client')).includes('trellis'), 5000);
    await lab.setPodAnnotation('mesh/client', 'trellis.dev/mesh', null);
    await until('capture rules to be back', async () => (await captureRules(lab, 'mesh/client')).includes('table inet trellis'), 5000);
  });

  async function stillMeshed() {
    expect(await captureRules(lab, 'mesh/client')).toContain('table inet trellis');
    const r = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-connect', '--to', `${echoVip}:70`, '--send', 'still']);
    expect(r.code, r.stderr).toBe(0);
    expect(sumOf(await metrics(lab, 'node-a'), 'trellis_config_errors_total')).toBeGreaterThan(0);
  }
});
