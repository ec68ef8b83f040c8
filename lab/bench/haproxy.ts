// Bench: HAProxy doing the mesh's job, the baseline of the comparison. Per layer, one process in the client
// pod (plaintext in on loopback, TLS 1.3 with a client certificate out) and one in the server pod (TLS in,
// client certificate verified against the lab's CA, plaintext to the app); one thread each. Layers: l4 (TCP
// mode), l7 (HTTP/1.1 in and out, HTTP/2 between), h2 (h2c in and out, HTTP/2 between).
import type { ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { LocalCa } from '../../agent/identity/ca.js';
import { generateKey, makeCsr } from '../../agent/identity/certs.js';
import { LabError } from '../errors.js';
import type { Lab } from '../cluster/lab.js';
import { run } from '../cluster/run.js';
import { PLAIN_CLIENT } from './paths.js';
import type { TlsCreds } from './tls-probe.js';
import { APP_PORT, H2_APP_PORT, HAPROXY_PORTS, PLAIN_SERVER, pinned } from './topology.js';

export type Layer = 'l4' | 'l7' | 'h2';

export interface HaproxyConfigInput {
  layer: Layer;
  /** Threads (nbthread); 1 unless the run compares the proxies on several CPUs. */
  threads?: number;
  role: 'origin' | 'terminate';
  /** origin: where to listen (127.0.0.1:port); terminate: server pod IP:port. */
  listen: string;
  /** origin: the terminating HAProxy (IP:port); terminate: the app (127.0.0.1:port). */
  upstream: string;
  /** PEM file with this side's certificate and key. */
  certFile: string;
  /** PEM file with the CA that signed the other side. */
  caFile: string;
  /** TLS 1.3 ciphersuite, as the agents negotiate it. */
  ciphersuite: string;
  /** Key exchange group the terminating side accepts. */
  group: string;
}

/** The whole haproxy.cfg for one side of one layer. */
export function haproxyConfig(c: HaproxyConfigInput): string {
  const tls13 = 'ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3';
  const lines = [
    'global',
    `  nbthread ${c.threads ?? 1}`,
    '  maxconn 4096',
    `  ssl-default-bind-options ${tls13}`,
    `  ssl-default-bind-ciphersuites ${c.ciphersuite}`,
    `  ssl-default-bind-curves ${c.group}`,
    `  ssl-default-server-options ${tls13}`,
    `  ssl-default-server-ciphersuites ${c.ciphersuite}`,
    '',
    'defaults',
    `  mode ${c.layer === 'l4' ? 'tcp' : 'http'}`,
    '  timeout connect 5s',
    '  timeout client 300s',
    '  timeout server 300s',
    ...(c.layer !== 'l4' ? ['  timeout http-request 30s', '  timeout http-keep-alive 300s'] : []),
    '',
    'frontend in',
  ];
  const h2 = c.layer !== 'l4' ? ' alpn h2' : '';
  // h2: the client and the app speak HTTP/2 with prior knowledge (h2c) too.
  const h2c = c.layer === 'h2' ? ' proto h2' : '';
  if (c.role === 'origin') {
    lines.push(
      `  bind ${c.listen}${h2c}`,
      '  default_backend out',
      '',
      'backend out',
      // no-ssl-reuse: every new connection is a full handshake, never a resumed session.
      `  server terminate ${c.upstream} ssl crt ${c.certFile} ca-file ${c.caFile} verify required no-ssl-reuse${h2}`,
    );
  } else {
    lines.push(
      `  bind ${c.listen} ssl crt ${c.certFile} ca-file ${c.caFile} verify required${h2}`,
      '  default_backend app',
      '',
      'backend app',
      `  server app ${c.upstream}${h2c}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/** Issues an RSA 2048 certificate for `identity` from the lab's CA, as the agents' SVIDs are made. */
export async function issueCert(ca: LocalCa, identity: string): Promise<TlsCreds> {
  const key = await generateKey();
  const certPem = await ca.sign(makeCsr(identity, key), { identity, ttlMs: 24 * 3600 * 1000 });
  return { keyPem: key.export({ type: 'pkcs8', format: 'pem' }) as string, certPem, caPem: ca.rootCertPem };
}

/** Certificates for the plain client and server pods, from the lab's CA (`<stateDir>/ca`). */
export async function plainPodCreds(lab: Lab): Promise<{ client: TlsCreds; server: TlsCreds }> {
  const ca = LocalCa.load(path.join(lab.stateDir, 'ca'));
  const id = (ref: string): string => {
    const p = lab.pod(ref);
    return `spiffe://${ca.trustDomain}/ns/${p.namespace}/sa/${p.serviceAccount}`;
  };
  return { client: await issueCert(ca, id(PLAIN_CLIENT)), server: await issueCert(ca, id(PLAIN_SERVER)) };
}

/**
 * Writes certificates and configs under dir and starts the four processes in the plain pods, pinned to
 * `cpu` when given; returns the (origin, terminate) pids per layer. The lab ends them on down(); a
 * process that exits at start fails the bench with its output.
 */
export async function startHaproxies(
  lab: Lab,
  opts: { dir: string; cpu?: number; threads?: number; ciphersuite: string; group: string; creds: { client: TlsCreds; server: TlsCreds } },
): Promise<Record<Layer, number[]>> {
  await fsp.mkdir(opts.dir, { recursive: true, mode: 0o700 });
  const server = lab.pod(PLAIN_SERVER);
  const { client: clientCreds, server: serverCreds } = opts.creds;
  const write = (name: string, text: string): Promise<string> => {
    const file = path.join(opts.dir, name);
    return fsp.writeFile(file, text, { mode: 0o600 }).then(() => file);
  };
  const caFile = await write('ca.pem', clientCreds.caPem);
  const clientPem = await write('client.pem', clientCreds.certPem + clientCreds.keyPem);
  const serverPem = await write('server.pem', serverCreds.certPem + serverCreds.keyPem);

  const pids: Record<Layer, number[]> = { l4: [], l7: [], h2: [] };
  for (const layer of ['l4', 'l7', 'h2'] as const) {
    const ports = HAPROXY_PORTS[layer];
    const app = layer === 'h2' ? H2_APP_PORT : APP_PORT;
    const sides = [
      { role: 'origin' as const, pod: PLAIN_CLIENT, listen: `127.0.0.1:${ports.listen}`, upstream: `${server.ip}:${ports.tls}`, certFile: clientPem },
      { role: 'terminate' as const, pod: PLAIN_SERVER, listen: `${server.ip}:${ports.tls}`, upstream: `127.0.0.1:${app}`, certFile: serverPem },
    ];
    for (const side of sides) {
      const cfg = await write(
        `haproxy-${layer}-${side.role}.cfg`,
        haproxyConfig({ layer, role: side.role, listen: side.listen, upstream: side.upstream, certFile: side.certFile, caFile, ciphersuite: opts.ciphersuite, group: opts.group, ...(opts.threads && { threads: opts.threads }) }),
      );
      const check = await run('haproxy', ['-c', '-q', '-f', cfg], { timeoutMs: 10_000 });
      if (check.code !== 0) throw new LabError('EHAPROXY', `haproxy rejects ${cfg}:\n${(check.stderr || check.stdout).trim()}`);
      const child = lab.spawn(side.pod, pinned(opts.cpu, ['haproxy', '-f', cfg, '-db']));
      pids[layer].push(await started(child, `haproxy ${layer} ${side.role} in ${side.pod}`));
    }
  }
  return pids;
}

/** The pid of a freshly spawned haproxy, once it has survived its start (it exits at once on a bad bind). */
async function started(child: ChildProcess, what: string): Promise<number> {
  let output = '';
  const keep = (d: Buffer): void => {
    output = (output + d.toString('utf8')).slice(-4000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const early = await Promise.race([exited, new Promise<'running'>((resolve) => setTimeout(() => resolve('running'), 500))]);
  if (early !== 'running' || child.pid === undefined) {
    throw new LabError('EHAPROXY', `${what} exited at start (code ${String(early)}):\n${output.trim()}`);
  }
  return child.pid;
}
