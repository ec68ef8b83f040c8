// `trellis tap --kubeconfig` before it reaches any agent (viz/tap/cluster.ts): a kubeconfig it cannot use, a user with
// no token to show the agents, an API server it cannot reach, each said with what to do. In-process; the way through a
// real API server to real agents: test/e2e/tap-cluster.test.ts.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LocalCa } from '../../agent/identity/ca.js';
import { writeKubeconfigFile } from '../../lab/controlplane/controlplane.js';
import { clusterAgents } from '../../viz/tap/cluster.js';

const dir = mkdtempSync(path.join(tmpdir(), 'trellis-tap-kc-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const caPem = LocalCa.generate({ trustDomain: 'cluster.local' }).rootCertPem;

describe('trellis tap --kubeconfig, finding the agents', () => {
  it('a kubeconfig that is not there, or not one', async () => {
    await expect(clusterAgents(path.join(dir, 'none'))).rejects.toMatchObject({ code: 'ECONFIG', message: expect.stringMatching(/--kubeconfig .*none: cannot load/) });
    const junk = path.join(dir, 'junk');
    writeFileSync(junk, '{not: [yaml');
    await expect(clusterAgents(junk)).rejects.toMatchObject({ code: 'ECONFIG' });
  });

  it('a user with a client certificate only: nothing to show the agents, and how to get a token', async () => {
    const file = path.join(dir, 'cert.kubeconfig');
    writeKubeconfigFile(file, { server: 'https://127.0.0.1:6443', caPem, user: { certPem: caPem, keyPem: 'unused' } });
    await expect(clusterAgents(file)).rejects.toMatchObject({ code: 'ECONFIG', message: expect.stringMatching(/has no bearer token .*kubectl create token/) });
  });

  it('an API server that does not answer', async () => {
    // A port that was free a moment ago: nothing listens there.
    const free = net.createServer();
    await new Promise<void>((r) => free.listen(0, '127.0.0.1', () => r()));
    const port = (free.address() as net.AddressInfo).port;
    await new Promise((r) => free.close(r));
    const file = path.join(dir, 'token.kubeconfig');
    writeKubeconfigFile(file, { server: `https://127.0.0.1:${port}`, caPem, user: { token: 't0ken' } });
    await expect(clusterAgents(file)).rejects.toMatchObject({ code: 'EUNAVAILABLE', message: expect.stringMatching(/cannot find the agents in trellis-system: .*is the API server reachable\?/) });
  });
});
