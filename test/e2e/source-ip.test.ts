// Real apps behind the mesh. They see who calls: nginx (HTTP, parsed by both agents) and redis (an opaque port) see
// the caller's pod address, from a meshed caller (HBONE) and from a caller outside the mesh (plaintext), never the
// server pod's own. And nginx, which speaks HTTP/1.1 only, serves h2c clients on its port declared http. Real nginx
// and redis-server from Debian; a two-node lab of its own; needs root.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KubeObject } from '../../agent/model/objects.js';
import { connectInNetns } from '../../agent/native/index.js';
import { Lab } from '../../lab/cluster/lab.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const run = promisify(execFile);
const labName = `si${Math.random().toString(36).slice(2, 5)}`;
const dir = mkdtempSync(path.join(tmpdir(), 'trellis-source-ip-'));
const ACCESS_LOG = path.join(dir, 'access.log');

// nginx logs each request's peer address and a tag from the path; it runs as root in the pod's netns, so its
// files stay in this test's own directory.
const NGINX_CONF = `
daemon off;
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 64; }
http {
  log_format peer '$remote_addr $request_uri';
  access_log ${ACCESS_LOG} peer;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server { listen 8080; location / { return 200 "ok\\n"; } }
}
`;

const MANIFESTS = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, annotations: {trellis.dev/mesh: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{name: c, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: plain, labels: {app: outsider}}
spec:
  nodeName: node-a
  containers: [{name: c, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: www, namespace: shop, labels: {app: www}}
spec:
  nodeName: node-b
  serviceAccountName: www
  containers: [{name: nginx, command: [nginx, -c, ${dir}/nginx.conf], ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec:
  nodeName: node-b
  serviceAccountName: db
  containers: [{name: redis, command: [redis-server, --port, "6379", --save, "", --appendonly, "no", --protected-mode, "no", --dir, ${dir}], ports: [{containerPort: 6379}]}]
---
apiVersion: v1
kind: Service
metadata: {name: www, namespace: shop}
spec:
  selector: {app: www}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {app: db}
  ports: [{name: redis, port: 6379, targetPort: 6379}]
`;

let lab: Lab;

/** Waits until the app answers on its port, probed from its node (which the capture rules leave alone). */
async function listening(pod: string, port: number): Promise<void> {
  const ip = lab.pod(pod).ip;
  const node = lab.node('node-b');
  await until(`${pod} to listen on ${port}`, () =>
    new Promise<boolean>((resolve) => {
      const s = connectInNetns(node.netnsPath, { host: ip, port, timeoutMs: 1000 });
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    }), 20_000);
}

/** The addresses nginx logged for requests whose path carries `tag`. */
function nginxPeers(tag: string): string[] {
  let log = '';
  try {
    log = readFileSync(ACCESS_LOG, 'utf8');
  } catch {
    return [];
  }
  return log.split('\n').filter((l) => l.endsWith(`/${tag}`)).map((l) => l.split(' ')[0]!);
}

describe('apps see the caller’s address (two-node lab, nginx and redis)', () => {
  beforeAll(async () => {
    requireRoot('end-to-end source address tests');
    writeFileSync(path.join(dir, 'nginx.conf'), NGINX_CONF);
    lab = await Lab.up(parseAllDocuments(MANIFESTS).map((d) => d.toJS() as KubeObject), { name: labName });
    await listening('shop/www', 8080);
    await listening('shop/db', 6379);
  });

  afterAll(async () => {
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
    const { stdout } = await run('ip', ['netns', 'list']);
    expect(stdout).not.toContain(`trl-${labName}-`);
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  it('nginx logs the meshed caller’s and the plaintext caller’s own addresses, over keep-alive and new connections', async () => {
    const vip = lab.services.find((s) => s.namespace === 'shop' && s.name === 'www')!.clusterIP;
    const callers = [
      ['shop/web', 'meshed'],
      ['plain/outsider', 'plaintext'],
    ] as const;
    for (const [pod, tag] of callers) {
      // Three requests on one connection, then one on a new connection.
      const keepAlive = await lab.exec(pod, ['trellis', 'tool', 'http-client', '--url', `http://${vip}/${tag}`, '--count', '3', '--concurrency', '1']);
      expect(keepAlive.code, keepAlive.stderr).toBe(0);
      const once = await lab.exec(pod, ['trellis', 'tool', 'http-client', '--url', `http://${vip}/${tag}`, '--count', '1']);
      expect(once.code, once.stderr).toBe(0);
    }
    await until('nginx to log 8 requests', async () => nginxPeers('meshed').length + nginxPeers('plaintext').length >= 8, 10_000);
    expect(nginxPeers('meshed')).toEqual(Array(4).fill(lab.pod('shop/web').ip));
    expect(nginxPeers('plaintext')).toEqual(Array(4).fill(lab.pod('plain/outsider').ip));
  });

  it('an h2c client reaches nginx, which speaks HTTP/1.1 only, on a port declared http (the app gets HTTP/1.1)', async () => {
    const vip = lab.services.find((s) => s.namespace === 'shop' && s.name === 'www')!.clusterIP;
    for (const [pod, tag] of [['shop/web', 'h2c-meshed'], ['plain/outsider', 'h2c-plaintext']] as const) {
      const r = await lab.exec(pod, ['trellis', 'tool', 'http-client', '--http2', '--url', `http://${vip}/${tag}`, '--count', '3', '--timeout-ms', '3000']);
      const summary = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { ok: number; statusCounts: Record<string, number> };
      expect(summary, `${pod}: ${r.stderr}`).toMatchObject({ ok: 3, statusCounts: { '200': 3 } });
    }
    await until('nginx to log the h2c requests', async () => nginxPeers('h2c-meshed').length + nginxPeers('h2c-plaintext').length >= 6, 10_000);
  });

  it('redis lists the meshed caller’s address for its connection (an opaque port, carried as TCP)', async () => {
    const vip = lab.services.find((s) => s.namespace === 'shop' && s.name === 'db')!.clusterIP;
    const r = await lab.exec('shop/web', ['redis-cli', '-h', vip, '-p', '6379', 'CLIENT', 'LIST']);
    expect(r.code, r.stderr).toBe(0);
    // CLIENT LIST shows the connection that asks, with the address redis sees for it.
    const addrs = [...r.stdout.matchAll(/(?:^| )addr=([\d.]+):\d+/gm)].map((m) => m[1]);
    expect(addrs, r.stdout).toEqual([lab.pod('shop/web').ip]);
    expect(addrs).not.toContain(lab.pod('shop/db').ip);
  });
});
