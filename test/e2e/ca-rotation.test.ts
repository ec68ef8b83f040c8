// Root-only, cluster mode: a CA rotation with traffic flowing, done the way docs/install.md says, through the API
// server (`trellis ca trust`, `use`, `untrust` edit the trellis-ca Secret; the identity service reads it again and
// publishes the bundle; the lab, as the kubelet does, copies the ConfigMap to the agents' bundle file). Meanwhile
// meshed HTTP/1.1 keep-alive calls and a new connection per call run both ways between the two nodes, with workload
// certificates of one minute (renewed every 30 s under the load too): not one failed request, and at the end every
// agent holds certificates from the new root only and trusts it alone.
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectInNetns } from '../../agent/native/index.js';
import { Lab } from '../../lab/cluster/lab.js';
import { parsePrometheus } from '../../lab/load/promtext.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const fixtures = path.join(import.meta.dirname, 'fixtures', 'ca-rotation.yaml');
const LOAD_S = 45;
const NODES = ['node-a', 'node-b'] as const;

interface Summary {
  sent: number;
  ok: number;
  failed: number;
  statusCounts: Record<string, number>;
}

interface ConnReport {
  connections: number;
  ok: number;
  errors: number;
  error_counts: Record<string, number>;
}

/** What an agent's metrics say of its trust bundle (in order) and of the roots of the certificates it holds. */
interface AgentCerts {
  bundle: string[];
  /** By root fingerprint, the count of certificates; roots with none left out. */
  certs: Record<string, number>;
}

describe('CA rotation under load (cluster mode)', () => {
  const name = `c${Math.random().toString(36).slice(2, 6)}`;
  let lab: Lab;

  beforeAll(async () => {
    requireRoot('CA rotation tests');
    lab = await Lab.up(fixtures, {
      name,
      cluster: { identityArgs: ['--cert-ttl', '1m', '--ca-poll', '500ms', '--log-level', 'info'], bundleSyncMs: 1_000 },
      // A new HBONE session (a TLS handshake both ways) every 20 connections, so handshakes go on through every step.
      agentArgs: ['--cert-ttl', '1m', '--identity-ca-poll', '500ms', '--hbone-max-streams-per-session', '20'],
    });
  });

  afterAll(async () => {
    await lab?.down();
  });

  const vip = (service: string) => lab.services.find((s) => s.name === service)!.clusterIP;
  const tool = async <T>(pod: string, argv: string[]): Promise<T & { code: number; stderr: string }> => {
    const r = await lab.exec(pod, ['trellis', 'tool', ...argv], { timeoutMs: (LOAD_S + 60) * 1000 });
    const last = r.stdout.trim().split('\n').filter(Boolean).at(-1);
    return { ...(last ? (JSON.parse(last) as T) : ({} as T)), code: r.code, stderr: r.stderr };
  };
  const ca = async (...args: string[]) => {
    const r = await lab.execInNode('node-a', ['trellis', 'ca', ...args, '--kubeconfig', lab.adminKubeconfig]);
    expect(r.code, `trellis ca ${args.join(' ')}: ${r.stderr}`).toBe(0);
    return r.stdout;
  };
  const agentCerts = async (node: string): Promise<AgentCerts> => {
    const samples = parsePrometheus(await lab.metrics(node));
    const bundle = samples
      .filter((s) => s.name === 'trellis_trust_bundle_roots' && s.value === 1)
      .sort((a, b) => Number(a.labels['position']) - Number(b.labels['position']))
      .map((s) => s.labels['root']!);
    const certs = Object.fromEntries(samples.filter((s) => s.name === 'trellis_workload_certificates' && s.value > 0).map((s) => [s.labels['root']!, s.value]));
    return { bundle, certs };
  };
  const everyAgent = (what: string, ok: (c: AgentCerts) => boolean) =>
    until(what, async () => {
      const all = await Promise.all(NODES.map(agentCerts));
      return all.every(ok) && all;
    }, 30_000);
  /** The certificate the agent presents on a pod's HBONE port (TLS 1.3 sends it before asking for the client's). */
  const presented = async (node: string, pod: string): Promise<X509Certificate> => {
    const socket = tls.connect({
      socket: connectInNetns(lab.node(node).netnsPath, { host: lab.pod(pod).ip, port: 15008, timeoutMs: 5_000 }),
      rejectUnauthorized: false,
      ALPNProtocols: ['h2'],
    });
    try {
      await new Promise<void>((resolve, reject) => socket.once('secureConnect', () => resolve()).once('error', reject));
      return socket.getPeerX509Certificate()!;
    } finally {
      socket.destroy();
    }
  };

  it('adds the new root, switches the signing CA and removes the old root without a failed request or an agent restart', async () => {
    const oldPem = readFileSync(path.join(lab.stateDir, 'ca', 'ca.cert.pem'), 'utf8');
    const oldRoot = new X509Certificate(oldPem).fingerprint256;
    const next = path.join(lab.stateDir, 'ca-next');
    const created = await lab.execInNode('node-a', ['trellis', 'ca', 'create', '--out', next]);
    expect(created.code, created.stderr).toBe(0);
    const newPem = readFileSync(path.join(next, 'ca.cert.pem'), 'utf8');
    const newRoot = new X509Certificate(newPem).fingerprint256;
    const pids = async () => (await lab.status()).nodes.map((n) => n.agent?.pid);
    const before = await pids();

    for (const [client, server] of [['mesh/client-a', 'web-b'], ['mesh/client-b', 'web-a']] as const) {
      await until(`${client} -> ${server}`, async () => (await tool<Summary>(client, ['http-client', '--url', `http://${vip(server)}/warm`, '--count', '1'])).ok === 1, 20_000);
    }
    expect(await everyAgent('both agents to hold certificates from the lab root', (c) => c.bundle.join() === oldRoot && (c.certs[oldRoot] ?? 0) >= 2)).toBeTruthy();

    // The loads: ~100 req/s of HTTP/1.1 over 2 keep-alive connections and a new connection per call, each way.
    const started = Date.now();
    const loads = Promise.all([
      tool<Summary>('mesh/client-a', ['http-client', '--url', `http://${vip('web-b')}/ka`, '--count', '1000000', '--concurrency', '2', '--interval-ms', '20', '--duration-s', String(LOAD_S)]),
      tool<Summary>('mesh/client-b', ['http-client', '--url', `http://${vip('web-a')}/ka`, '--count', '1000000', '--concurrency', '2', '--interval-ms', '20', '--duration-s', String(LOAD_S)]),
      tool<ConnReport>('mesh/client-a', ['conn-rate', '--url', `http://${vip('web-b')}/conn`, '--duration-s', String(LOAD_S), '--concurrency', '1']),
      tool<ConnReport>('mesh/client-b', ['conn-rate', '--url', `http://${vip('web-a')}/conn`, '--duration-s', String(LOAD_S), '--concurrency', '1']),
    ]);
    const steps: string[] = [];
    const step = (what: string) => steps.push(`${what} at ${((Date.now() - started) / 1000).toFixed(1)} s`);
    await new Promise((resolve) => setTimeout(resolve, 3_000));

    // 1. The new root beside the old one; the old one still signs (first in the bundle).
    await ca('trust', next);
    step('trust sent');
    await everyAgent('every agent to trust both roots, the old one first', (c) => c.bundle.join() === [oldRoot, newRoot].join());
    step('both roots on every agent');

    // 2. The identity service signs with the new CA; agents renew what the old one signed as soon as they see the
    //    new root first in the bundle.
    await ca('use', next);
    step('use sent');
    await everyAgent('every certificate to be reissued by the new root', (c) => c.bundle[0] === newRoot && !c.certs[oldRoot] && (c.certs[newRoot] ?? 0) >= 2);
    step('every certificate from the new root');

    // 3. The old root leaves the bundle.
    await ca('untrust', oldRoot);
    step('untrust sent');
    const final = await everyAgent('every agent to trust the new root alone', (c) => c.bundle.join() === newRoot);
    step('the new root alone on every agent');
    const rotationMs = Date.now() - started;

    const [h1a, h1b, conna, connb] = await loads;
    console.log(
      `CA rotation under load: ${steps.join('; ')}\n` +
        `client-a -> web-b keep-alive ${JSON.stringify(h1a)}\nclient-b -> web-a keep-alive ${JSON.stringify(h1b)}\n` +
        `client-a -> web-b new connections ${JSON.stringify(conna)}\nclient-b -> web-a new connections ${JSON.stringify(connb)}`,
    );
    expect(rotationMs, 'the rotation must finish while the loads run').toBeLessThan((LOAD_S - 5) * 1000);
    for (const [what, s] of [['client-a -> web-b', h1a], ['client-b -> web-a', h1b]] as const) {
      expect(s.code, s.stderr).toBe(0);
      expect(s.failed, `${what}: ${JSON.stringify(s.statusCounts)}`).toBe(0);
      expect(s.ok, what).toBeGreaterThan(LOAD_S * 40);
    }
    for (const [what, c] of [['client-a -> web-b', conna], ['client-b -> web-a', connb]] as const) {
      expect(c.code, c.stderr).toBe(0);
      expect(c.errors, `${what} new connections: ${JSON.stringify(c.error_counts)}`).toBe(0);
      expect(c.ok, what).toBeGreaterThan(LOAD_S * 10);
    }

    // Every agent's certificates chain to the new root only, and it trusts nothing else; no agent was restarted.
    for (const c of final) expect(c).toEqual({ bundle: [newRoot], certs: { [newRoot]: expect.any(Number) } });
    expect(await pids()).toEqual(before);
    for (const [node, pod] of [['node-a', 'mesh/web-a'], ['node-b', 'mesh/web-b'], ['node-a', 'mesh/client-a']] as const) {
      const cert = await presented(node, pod);
      expect(cert.checkIssued(new X509Certificate(newPem)), `${pod}'s certificate`).toBe(true);
    }
    // The old root is gone from the published bundle, the Secret and the agents' file.
    const cm = await lab.kube.get({ apiVersion: 'v1', kind: 'ConfigMap', namespace: 'trellis-system', name: 'trellis-ca-root' });
    expect(((cm!['data'] as Record<string, string>)['root-cert.pem'] ?? '').match(/BEGIN CERTIFICATE/g)).toHaveLength(1);
    expect(new X509Certificate((cm!['data'] as Record<string, string>)['root-cert.pem']!).fingerprint256).toBe(newRoot);
    const status = JSON.parse(await ca('status', '-o', 'json')) as { synced: boolean; roots: { fingerprint: string; role: string }[] };
    expect(status).toMatchObject({ synced: true, roots: [{ fingerprint: newRoot, role: 'signs' }] });
    expect(status.roots).toHaveLength(1);

    // Certificates were renewed at half-life under the load too, and the switch renewed them at once.
    for (const node of NODES) {
      const log = lab.agentLog(node);
      expect(log, node).toContain('SVID is from another root than the one the identity service now signs with; renewing now');
      expect(log.split('\n').filter((l) => l.includes('"msg":"SVID renewed"')).length, node).toBeGreaterThanOrEqual(4);
    }
  });
});
