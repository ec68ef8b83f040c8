// The same-node path end to end: a meshed client calling meshed servers on its own node is carried by its agent in
// process (no HBONE, no TLS, nothing on the pods' veths), with everything the HBONE path gives: the bytes exactly,
// half-close and reset, both reporters' metrics and access lines, per-request L7 handling at the destination side, the
// caller's address at the app, and a new DENY cutting an open connection. A server on the other node is the contrast
// (HBONE on 15008), and a lab with --same-node off shows the agent going through HBONE to itself. Opaque connections'
// bytes moved in user space and by the kernel (--same-node-splice kernel), each in a lab of its own. Needs root.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KubeObject } from '../../agent/model/objects.js';
import { connectInNetns } from '../../agent/native/index.js';
import { Lab } from '../../lab/cluster/lab.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const MB = 1024 * 1024;
const APPS = path.join(import.meta.dirname, 'fixtures', 'same-node-apps.mjs');
const CLIENT = 'spiffe://cluster.local/ns/mesh/sa/client';

/** client, sink, echo, web and rst on node-a; far-sink on node-b. */
const MANIFESTS = `
apiVersion: v1
kind: Namespace
metadata: {name: mesh, annotations: {trellis.dev/mesh: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: mesh, labels: {app: client}}
spec: {nodeName: node-a, serviceAccountName: client, containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: sink, namespace: mesh, labels: {app: sink}}
spec:
  nodeName: node-a
  serviceAccountName: sink
  containers: [{name: c, command: [trellis, tool, tcp-sink, --port, "9000"], ports: [{containerPort: 9000}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: mesh, labels: {app: echo}}
spec:
  nodeName: node-a
  serviceAccountName: echo
  containers: [{name: c, command: [trellis, tool, tcp-echo, --port, "7000"], ports: [{containerPort: 7000}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: mesh, labels: {app: web}}
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{name: c, command: [node, ${APPS}, http, "8080"], ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: rst, namespace: mesh, labels: {app: rst}}
spec:
  nodeName: node-a
  serviceAccountName: rst
  containers: [{name: c, command: [node, ${APPS}, reset, "7200"], ports: [{containerPort: 7200}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: far-sink, namespace: mesh, labels: {app: far-sink}}
spec:
  nodeName: node-b
  serviceAccountName: far-sink
  containers: [{name: c, command: [trellis, tool, tcp-sink, --port, "9000"], ports: [{containerPort: 9000}]}]
---
apiVersion: v1
kind: Service
metadata: {name: sink, namespace: mesh}
spec: {selector: {app: sink}, ports: [{name: tcp, port: 9000, targetPort: 9000}]}
---
apiVersion: v1
kind: Service
metadata: {name: far-sink, namespace: mesh}
spec: {selector: {app: far-sink}, ports: [{name: tcp, port: 9000, targetPort: 9000}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mesh}
spec: {selector: {app: echo}, ports: [{name: tcp-echo, port: 70, targetPort: 7000}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: mesh}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: rst, namespace: mesh}
spec: {selector: {app: rst}, ports: [{name: tcp-rst, port: 7200, targetPort: 7200}]}
`;

function objects(yamlText: string): KubeObject[] {
  return parseAllDocuments(yamlText).map((d) => d.toJS() as KubeObject);
}

/**
 * Runs `fn` while tcpdump watches the pod's own interface (its veth's end in the pod: everything that reaches the pod
 * from the node); returns the TCP segments it saw, one line each.
 */
async function segmentsSeen(lab: Lab, pod: string, fn: () => Promise<void>): Promise<string[]> {
  const dump = spawn('nsenter', [`--net=${lab.pod(pod).netnsPath}`, 'tcpdump', '-i', 'eth0', '-n', '-l', '-q', 'tcp'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  dump.stdout.on('data', (d: Buffer) => (out += d.toString()));
  dump.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise((r) => dump.once('close', r));
  try {
    await until('tcpdump to start', async () => err.includes('listening on'), 10_000);
    await fn();
    // The last segments (FIN, ACK) reach tcpdump's line buffer a moment later.
    await new Promise((r) => setTimeout(r, 300));
  } finally {
    dump.kill('SIGINT');
    await exited;
  }
  return out.split('\n').filter((l) => l.includes(' IP '));
}

const hbone = (lines: string[]) => lines.filter((l) => /\.15008[ :]/.test(l));

async function metrics(lab: Lab, node = 'node-a') {
  return parsePrometheus(await lab.metrics(node));
}

async function tcpSend(lab: Lab, to: string, bytes: number): Promise<{ sha256: string }> {
  const send = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-send', '--to', to, '--bytes', String(bytes)], { timeoutMs: 120_000 });
  expect(send.code, `${send.stderr} ${send.stdout}`).toBe(0);
  const result = JSON.parse(send.stdout.trim().split('\n').at(-1)!) as { match: boolean; sha256: string; reply: string };
  expect(result.match).toBe(true);
  expect(result.reply).toContain(`sha256=${result.sha256} bytes=${bytes}`);
  return result;
}

interface Raw { connected: boolean; received: string; end: string; error?: string; httpStatus: number | null }

async function tcpRaw(lab: Lab, to: string, args: string[]): Promise<Raw> {
  const r = await lab.exec('mesh/client', ['trellis', 'tool', 'tcp-raw', '--to', to, ...args]);
  return JSON.parse(r.stdout.trim()) as Raw;
}

// The same tests with the bytes of opaque connections moved in user space (the default) and by the kernel.
describe.each(['user', 'kernel'] as const)('the same-node path (--same-node on, --same-node-splice %s)', (splice) => {
  const labName = `s${splice[0]}${Math.random().toString(36).slice(2, 6)}`;
  let lab: Lab;
  const vip = (name: string) => lab.services.find((s) => s.name === name)!.clusterIP;

  beforeAll(async () => {
    requireRoot('end-to-end same-node tests');
    lab = await Lab.up(objects(MANIFESTS), { name: labName, agentArgs: ['--same-node-splice', splice] });
  });

  afterAll(async () => {
    await lab?.down();
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  it('carries 50 MB byte-identical to a server on its own node with nothing on the veths, counted exactly on both reporters, one access line each', async () => {
    const before = await metrics(lab);
    const bytes = 50 * MB;
    let sha = '';
    // What the agent read from its sockets meanwhile (its whole process: every thread): the kernel moved the payload.
    const agentPid = (await lab.status()).nodes.find((n) => n.name === 'node-a')!.agent!.pid;
    const readSoFar = () => Number(/^rchar: (\d+)$/m.exec(readFileSync(`/proc/${agentPid}/io`, 'utf8'))![1]);
    const readBefore = readSoFar();
    const seen = await segmentsSeen(lab, 'mesh/sink', async () => {
      sha = (await tcpSend(lab, `${vip('sink')}:9000`, bytes)).sha256;
    });
    const agentRead = readSoFar() - readBefore;
    const splices = (await metrics(lab)).filter((x) => x.name === 'trellis_same_node_splices_total').map((x) => `${JSON.stringify(x.labels)}=${x.value}`);
    console.log(`the agent read ${agentRead} bytes while it carried ${bytes} (${splice} splice; ${splices.join(' ')})`);
    // The kernel splice: no payload byte crossed into the agent; in user space it read every byte (and the reply).
    if (splice === 'kernel') expect(agentRead).toBeLessThan(bytes / 10);
    else expect(agentRead).toBeGreaterThanOrEqual(bytes);
    await until(`the ${splice} splice to be counted`, async () => sumOf(await metrics(lab), 'trellis_same_node_splices_total', { splice }) - sumOf(before, 'trellis_same_node_splices_total', { splice }) === 1);
    // The client's agent connected to the sink from inside the sink's netns: no segment crossed its veth, HBONE or other.
    expect(hbone(seen)).toEqual([]);
    expect(seen).toEqual([]);
    const reply = `sha256=${sha} bytes=${bytes}\n`;
    const src = { reporter: 'source', source_workload: 'client', destination_workload: 'sink', connection_security_policy: 'mutual_tls', destination_service: 'sink.mesh.svc.cluster.local' };
    const dst = { ...src, reporter: 'destination', source_principal: CLIENT, destination_principal: 'spiffe://cluster.local/ns/mesh/sa/sink' };
    const delta = async (name: string, match: Record<string, string>) => sumOf(await metrics(lab), name, match) - sumOf(before, name, match);
    await until('both reporters to record the close', async () =>
      (await delta('trellis_tcp_connections_closed_total', src)) === 1 && (await delta('trellis_tcp_connections_closed_total', dst)) === 1);
    for (const labels of [src, dst]) {
      expect(await delta('trellis_tcp_connections_opened_total', labels)).toBe(1);
      expect(await delta('trellis_tcp_received_bytes_total', labels)).toBe(bytes);
      expect(await delta('trellis_tcp_sent_bytes_total', labels)).toBe(Buffer.byteLength(reply));
    }
    expect(await delta('trellis_same_node_connections_total', { protocol: 'tcp' })).toBe(1);
    const access = () => lab.agentLog('node-a').split('\n').filter((l) => l.includes('"log":"access"') && l.includes(`"bytes_received":${bytes},`));
    await until('the access lines', async () => access().length === 2);
    await new Promise((r) => setTimeout(r, 200));
    const lines = access().map((l) => JSON.parse(l) as { direction: string; src: { principal: string; ip: string }; dst: { principal: string; workload: string }; bytes_sent: number; security: string; authz?: { decision: string } });
    expect(lines.map((l) => l.direction).sort()).toEqual(['inbound', 'outbound']);
    for (const line of lines) {
      expect(line).toMatchObject({ src: { principal: CLIENT }, dst: { principal: 'spiffe://cluster.local/ns/mesh/sa/sink', workload: 'mesh/sink' }, bytes_sent: Buffer.byteLength(reply), security: 'mutual_tls' });
      // Both sides know the caller by its pod's address, as over HBONE (in eBPF mode the app's socket is on loopback).
      expect(line.src.ip, line.direction).toBe(lab.pod('mesh/client').ip);
    }
    const inbound = lines.find((l) => l.direction === 'inbound')!;
    expect(inbound.authz).toMatchObject({ decision: 'allow' });
  });

  it('goes over HBONE to a server on the other node (the contrast)', async () => {
    const before = await metrics(lab);
    const seen = await segmentsSeen(lab, 'mesh/far-sink', async () => {
      await tcpSend(lab, `${vip('far-sink')}:9000`, 2 * MB);
    });
    expect(hbone(seen).length).toBeGreaterThan(10);
    expect(seen.length).toBe(hbone(seen).length);
    expect(sumOf(await metrics(lab), 'trellis_same_node_connections_total')).toBe(sumOf(before, 'trellis_same_node_connections_total'));
  });

  it('passes a half-close (the server answers after the client shut its side, then closes) and a reset', async () => {
    // tcp-sink answers only once it has read the client's FIN, then ends: the client reads the answer, then EOF.
    const half = await tcpRaw(lab, `${vip('sink')}:9000`, ['--send', 'half-closed', '--half-close', '--timeout-ms', '5000']);
    expect(half).toMatchObject({ connected: true, end: 'eof', received: `sha256=${createHash('sha256').update('half-closed').digest('hex')} bytes=11\n` });
    // The server resets once it has read something: the client sees the reset, not an orderly end.
    const reset = await tcpRaw(lab, `${vip('rst')}:7200`, ['--send', 'reset me', '--timeout-ms', '5000']);
    expect(reset).toMatchObject({ connected: true, end: 'reset', received: '' });
  });

  it('serves HTTP through an HTTP Service port in process: per-request metrics on both reporters, the app sees the caller', async () => {
    const before = await metrics(lab);
    let answer: Raw | undefined;
    const seen = await segmentsSeen(lab, 'mesh/web', async () => {
      answer = await tcpRaw(lab, `${vip('web')}:80`, ['--send', 'GET /who HTTP/1.1\\r\\nhost: web\\r\\nconnection: close\\r\\n\\r\\n', '--timeout-ms', '5000']);
    });
    expect(hbone(seen)).toEqual([]);
    expect(answer!.httpStatus).toBe(200);
    const body = JSON.parse(answer!.received.slice(answer!.received.indexOf('\r\n\r\n') + 4)) as { remote: string; xfcc: string | null };
    // The caller's address (--preserve-source-ip) and its identity, set by the destination side of the agent.
    expect(body.remote.replace(/^::ffff:/, '')).toBe(lab.pod('mesh/client').ip);
    expect(body.xfcc).toBe(`By=spiffe://cluster.local/ns/mesh/sa/web;URI=${CLIENT}`);
    const labels = { source_workload: 'client', destination_workload: 'web', response_code: '200', connection_security_policy: 'mutual_tls' };
    const delta = async (reporter: string) => sumOf(await metrics(lab), 'trellis_requests_total', { ...labels, reporter }) - sumOf(before, 'trellis_requests_total', { ...labels, reporter });
    await until('both reporters to count the request', async () => (await delta('source')) === 1 && (await delta('destination')) === 1);
    expect(sumOf(await metrics(lab), 'trellis_same_node_connections_total', { protocol: 'http1' })).toBeGreaterThanOrEqual(1);

    // Straight to the pod's IP the source carries the call as opaque TCP; the destination side finds the port declared
    // HTTP and parses it (a byte pair between the two): the app still gets the caller's identity, never a forged one.
    const direct = await tcpRaw(lab, `${lab.pod('mesh/web').ip}:8080`, ['--send', 'GET /direct HTTP/1.1\\r\\nhost: web\\r\\nx-forwarded-client-cert: forged\\r\\nconnection: close\\r\\n\\r\\n', '--timeout-ms', '5000']);
    expect(direct.httpStatus).toBe(200);
    const seenDirect = JSON.parse(direct.received.slice(direct.received.indexOf('\r\n\r\n') + 4)) as { remote: string; xfcc: string | null };
    expect(seenDirect.xfcc).toBe(`By=spiffe://cluster.local/ns/mesh/sa/web;URI=${CLIENT}`);
    await until('the destination side to count the direct request', async () =>
      sumOf(await metrics(lab), 'trellis_requests_total', { ...labels, reporter: 'destination' }) - sumOf(before, 'trellis_requests_total', { ...labels, reporter: 'destination' }) === 2);
  });

  it('cuts an open same-node connection when a new AuthorizationPolicy denies it', async () => {
    const s = connectInNetns(lab.pod('mesh/client').netnsPath, { host: vip('echo'), port: 70, timeoutMs: 3000 });
    let got = '';
    let cut: string | undefined;
    s.on('data', (d: Buffer) => (got += d.toString()));
    s.on('error', (e: NodeJS.ErrnoException) => (cut ??= e.code ?? 'error'));
    s.on('close', () => (cut ??= 'close'));
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    const policy = objects(`
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: mesh}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/mesh/sa/client"]}}]}]
`);
    try {
      s.write('before;');
      await until('the echo', async () => got.includes('before;'), 3000);
      const mark = lab.agentLog('node-a').length;
      await lab.apply(policy);
      await until('the open connection to be cut', async () => cut !== undefined, 5000);
      expect(cut).toBe('ECONNRESET');
      expect(lab.agentLog('node-a').slice(mark)).toMatch(new RegExp(`"principal":"${CLIENT}".*open connection cut: the policies now deny it`));
      // New connections are refused at once, by a reset: the client reads it, or meets it writing (EPIPE), as the
      // refusal comes as soon as the agent accepted the connection.
      const again = await tcpRaw(lab, `${vip('echo')}:70`, ['--send', 'after', '--timeout-ms', '3000']);
      expect(again.received).toBe('');
      if (again.end !== 'reset') expect(again).toMatchObject({ end: 'error', error: expect.stringMatching(/^(EPIPE|ECONNRESET)/) });
      // The cut connection's inbound line carries the decision that ended it.
      const line = await until('the cut connection\'s access line', async () =>
        lab.agentLog('node-a').slice(mark).split('\n').find((l) => l.includes('"log":"access"') && l.includes('"direction":"inbound"') && l.includes('"bytes_received":7,')), 3000);
      expect(JSON.parse(line)).toMatchObject({ authz: { decision: 'deny', policy: 'mesh/deny-client' } });
    } finally {
      s.destroy();
      await lab.remove('AuthorizationPolicy', 'mesh', 'deny-client');
    }
  });
});

describe('--same-node off', () => {
  const labName = `so${Math.random().toString(36).slice(2, 6)}`;
  let lab: Lab;

  beforeAll(async () => {
    requireRoot('end-to-end same-node tests');
    lab = await Lab.up(objects(MANIFESTS), { name: labName, agentArgs: ['--same-node', 'off'] });
  });

  afterAll(async () => {
    await lab?.down();
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  it('carries a call to a server of the same node over HBONE to the agent itself', async () => {
    const vip = lab.services.find((s) => s.name === 'sink')!.clusterIP;
    const seen = await segmentsSeen(lab, 'mesh/sink', async () => {
      await tcpSend(lab, `${vip}:9000`, 2 * MB);
    });
    expect(hbone(seen).length).toBeGreaterThan(10);
    const m = await metrics(lab);
    expect(sumOf(m, 'trellis_same_node_connections_total')).toBe(0);
    expect(sumOf(m, 'trellis_tcp_received_bytes_total', { reporter: 'destination', destination_workload: 'sink', connection_security_policy: 'mutual_tls' })).toBe(2 * MB);
  });
});
