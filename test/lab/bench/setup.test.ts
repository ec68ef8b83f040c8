// What the bench sets up before measuring: HAProxy configs, the lab's manifests, the scale batch, prerequisites.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { haproxyConfig } from '../../../lab/bench/haproxy.js';
import { installCommand, missingPrereqs, onPath, PREREQS } from '../../../lab/bench/prereqs.js';
import { probeObjects, scaleObjects } from '../../../lab/bench/scale.js';
import { benchManifests, extraObjects, handshakeManifests, pinned } from '../../../lab/bench/topology.js';
import { loadManifests } from '../../../lab/cluster/manifests.js';
import { planLab } from '../../../lab/cluster/plan.js';
import { validateObject } from '../../../agent/model/validate.js';

const base = {
  certFile: '/x/side.pem',
  caFile: '/x/ca.pem',
  ciphersuite: 'TLS_AES_256_GCM_SHA384',
  group: 'X25519',
};

describe('haproxyConfig', () => {
  it('originates TLS 1.3 with a client certificate, one thread, full handshakes (L4)', () => {
    const cfg = haproxyConfig({ ...base, layer: 'l4', role: 'origin', listen: '127.0.0.1:18080', upstream: '10.244.2.3:15443' });
    expect(cfg).toContain('  nbthread 1\n');
    expect(cfg).toContain('  ssl-default-server-options ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3\n');
    expect(cfg).toContain('  ssl-default-server-ciphersuites TLS_AES_256_GCM_SHA384\n');
    expect(cfg).toContain('  mode tcp\n');
    expect(cfg).toContain('  bind 127.0.0.1:18080\n');
    expect(cfg).toContain('  server terminate 10.244.2.3:15443 ssl crt /x/side.pem ca-file /x/ca.pem verify required no-ssl-reuse\n');
  });

  it('terminates with client-certificate verification, and speaks HTTP/2 between the pair at L7', () => {
    const cfg = haproxyConfig({ ...base, layer: 'l7', role: 'terminate', listen: '10.244.2.3:15444', upstream: '127.0.0.1:8080' });
    expect(cfg).toContain('  mode http\n');
    expect(cfg).toContain('  ssl-default-bind-curves X25519\n');
    expect(cfg).toContain('  bind 10.244.2.3:15444 ssl crt /x/side.pem ca-file /x/ca.pem verify required alpn h2\n');
    expect(cfg).toContain('  server app 127.0.0.1:8080\n');
    const origin = haproxyConfig({ ...base, layer: 'l7', role: 'origin', listen: '127.0.0.1:18081', upstream: '10.244.2.3:15444' });
    expect(origin).toMatch(/server terminate .* verify required no-ssl-reuse alpn h2\n/);
  });

  const tmp = mkdtempSync(path.join(os.tmpdir(), 'trl-t-haproxy-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it.runIf(onPath('haproxy') && onPath('openssl'))('is accepted by the installed haproxy (-c)', () => {
    const key = path.join(tmp, 'key.pem');
    const crt = path.join(tmp, 'crt.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', crt, '-subj', '/CN=t', '-days', '1'], { stdio: 'ignore' });
    const pem = path.join(tmp, 'side.pem');
    writeFileSync(pem, execFileSync('cat', [crt, key]));
    for (const layer of ['l4', 'l7'] as const) {
      for (const role of ['origin', 'terminate'] as const) {
        const file = path.join(tmp, `${layer}-${role}.cfg`);
        const listen = role === 'origin' ? '127.0.0.1:18080' : '127.0.0.1:15443';
        writeFileSync(file, haproxyConfig({ ...base, certFile: pem, caFile: crt, layer, role, listen, upstream: '127.0.0.1:8080' }));
        expect(() => execFileSync('haproxy', ['-c', '-q', '-f', file], { stdio: 'pipe' })).not.toThrow();
      }
    }
  });
});

describe('bench manifests', () => {
  it('make a lab plan: meshed and plain client on node-a, server on node-b, opaque-TCP and HTTP Services', async () => {
    const plan = planLab('bench', await loadManifests(benchManifests({ serverCpu: 0 })));
    expect(plan.nodes.map((n) => n.name)).toEqual(['node-a', 'node-b']);
    expect(plan.pods.map((p) => `${p.namespace}/${p.name}@${p.node}`).sort()).toEqual([
      'bench-mesh/client@node-a',
      'bench-mesh/server@node-b',
      'bench-plain/client@node-a',
      'bench-plain/server@node-b',
    ]);
    const server = plan.pods.find((p) => p.namespace === 'bench-mesh' && p.name === 'server')!;
    expect(server.containers[0]!.argv).toEqual(['taskset', '-c', '0', 'trellis', 'tool', 'http-echo', '--port', '8080', '--body-bytes', '1024']);
    expect(plan.namespaces.find((n) => n.metadata.name === 'bench-mesh')?.metadata.annotations).toEqual({ 'trellis.dev/mesh': 'enabled' });
    expect(plan.namespaces.find((n) => n.metadata.name === 'bench-plain')?.metadata.annotations).toBeUndefined();
    const tcp = plan.services.find((s) => s.namespace === 'bench-mesh' && s.name === 'server')!;
    expect(tcp.ports).toEqual([{ name: 'tcp', port: 80, targetPort: 8080, appProtocol: 'tcp' }]);
    // trellis-l7's HTTP Services reach the meshed server on a port of their own: trellis-l4's port is behind
    // opaque TCP Services only, so no agent can take it for HTTP.
    expect(server.containers.map((c) => c.argv.slice(6, 8))).toEqual([['--port', '8080'], ['--port', '8081'], ['--port', '8082']]);
    expect(server.containers[2]!.argv.at(-1)).toBe('--h2c');
    expect(plan.services.find((s) => s.namespace === 'bench-mesh' && s.name === 'server-h2')!.ports).toEqual([{ name: 'h2c', port: 80, targetPort: 8082, appProtocol: 'kubernetes.io/h2c' }]);
    for (const name of ['server-l7', 'server-v1', 'server-v2']) {
      expect(plan.services.find((s) => s.namespace === 'bench-mesh' && s.name === name)!.ports).toEqual([{ name: 'http', port: 80, targetPort: 8081, appProtocol: 'http' }]);
    }
    const endpoints8080 = plan.services.filter((s) => s.ports.some((p) => p.targetPort === 8080) && s.namespace === 'bench-mesh');
    expect(endpoints8080.map((s) => s.name)).toEqual(['server']);
    expect(plan.vips.find((v) => v.service === 'bench-plain/server')?.backends).toHaveLength(1);
  });

  it('make a second, mesh-only lab for the connection rate with a handshake per connection', async () => {
    const plan = planLab('benchh', await loadManifests(handshakeManifests({ serverCpu: 0 })));
    expect(plan.pods.map((p) => `${p.namespace}/${p.name}@${p.node}`).sort()).toEqual(['bench-mesh/client@node-a', 'bench-mesh/server@node-b']);
    expect(plan.namespaces.find((n) => n.metadata.name === 'bench-mesh')?.metadata.annotations).toEqual({ 'trellis.dev/mesh': 'enabled' });
    expect(plan.namespaces.find((n) => n.metadata.name === 'bench-plain')).toBeUndefined();
    expect(plan.services.map((s) => `${s.namespace}/${s.name}`)).toEqual(['bench-mesh/server']);
  });

  it('run servers unpinned on a 1-CPU machine', () => {
    expect(pinned(undefined, ['a'])).toEqual(['a']);
    expect(pinned(1, ['a'])).toEqual(['taskset', '-c', '1', 'a']);
  });

  it('carry a valid 90/10 HTTPRoute for trellis-l7', () => {
    const [route] = extraObjects();
    expect(validateObject(route).ok).toBe(true);
    expect(JSON.stringify(route)).toContain('"weight":90');
  });
});

describe('scale batch', () => {
  it('is 10 000 valid Services with 50 000 distinct fake endpoints outside the pod range', () => {
    const objects = scaleObjects({ services: 10_000, endpointsPerService: 5 });
    expect(objects).toHaveLength(20_001);
    const services = objects.filter((o) => o.kind === 'Service');
    const slices = objects.filter((o) => o.kind === 'EndpointSlice') as { endpoints: { addresses: string[] }[] }[];
    expect(services).toHaveLength(10_000);
    const ips = slices.flatMap((s) => s.endpoints.flatMap((e) => e.addresses));
    expect(new Set(ips).size).toBe(50_000);
    expect(ips.every((ip) => ip.startsWith('10.250.'))).toBe(true);
    const vips = services.map((s) => (s as { spec: { clusterIP: string } }).spec.clusterIP);
    expect(new Set(vips).size).toBe(10_000);
    expect(vips.at(-1)).toBe('10.96.139.15');
    for (const o of [objects[0], services[0], slices[0], objects.at(-1)]) expect(validateObject(o).ok).toBe(true);
  });

  it('probes each repeat through its own Service in the mesh namespace', () => {
    const a = probeObjects(0, '10.244.2.2');
    const b = probeObjects(1, '10.244.2.2');
    expect(a.vip).toBe('10.96.99.10');
    expect(b.vip).toBe('10.96.99.11');
    expect(a.objects.map((o) => `${o.kind}/${o.metadata.namespace}/${o.metadata.name}`)).toEqual([
      'Service/bench-mesh/scale-probe-0',
      'EndpointSlice/bench-mesh/scale-probe-0-1',
    ]);
  });
});

describe('prerequisites', () => {
  it('name the missing commands and the one apt-get line that installs them', () => {
    const missing = missingPrereqs((c) => c !== 'haproxy' && c !== 'taskset');
    expect(missing.map((m) => m.command)).toEqual(['haproxy', 'taskset']);
    expect(installCommand(missing)).toBe('apt-get install -y haproxy util-linux');
    expect(missingPrereqs(() => true)).toEqual([]);
    expect(PREREQS.map((p) => p.command)).toContain('nft');
  });

  it('look on PATH and in the sbin directories', () => {
    expect(onPath('sh', '/bin:/usr/bin')).toBe(true);
    expect(onPath('no-such-command-trellis', '/bin')).toBe(false);
  });
});

describe('h2load', () => {
  it('reads the summary of a run, and refuses output without one', async () => {
    const { parseH2load, h2loadArgs } = await import('../../../lab/bench/h2load.js');
    const out = [
      'starting benchmark...',
      'finished in 2.00s, 10245.50 req/s, 11.06MB/s',
      'requests: 20491 total, 20507 started, 20491 done, 20489 succeeded, 2 failed, 1 errored, 0 timeout',
      'status codes: 20489 2xx, 0 3xx, 0 4xx, 2 5xx',
    ].join('\n');
    expect(parseH2load(out)).toEqual({ rps: 10245.5, succeeded: 20489, failed: 2, errored: 1, timeout: 0, statuses: { '2xx': 20489, '3xx': 0, '4xx': 0, '5xx': 2 } });
    expect(() => parseH2load('connect: Connection refused')).toThrow(/no summary/);
    expect(h2loadArgs('http://10.96.0.13/', 16, 2, 1)).toEqual(['h2load', '-c', '16', '-m', '1', '-D', '2', '--warm-up-time=1', 'http://10.96.0.13/']);
  });
});

describe('pods per node', () => {
  it('makes a one-node lab of idle pods whose namespace is not meshed yet', async () => {
    const { podsManifests, PODS_NAMESPACE } = await import('../../../lab/bench/pods.js');
    const plan = planLab('benchp', await loadManifests(podsManifests(100)));
    expect(plan.nodes.map((n) => n.name)).toEqual(['node-a']);
    expect(plan.pods).toHaveLength(100);
    expect(new Set(plan.pods.map((p) => p.ip)).size).toBe(100);
    expect(plan.namespaces.find((n) => n.metadata.name === PODS_NAMESPACE)?.metadata.annotations).toBeUndefined();
  });
});
