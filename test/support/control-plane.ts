// A cluster control plane for lab tests: the fake API server and the real identity service (`trellis identity`,
// as a process), both in the lab's fabric netns, so the node agents run exactly as on a cluster:
// `--source kube` through client-node, certificates from the identity service with per-node tokens.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { LocalCa } from '../../agent/identity/ca.js';
import { CONTROL_PLANE_IP } from '../../lab/cluster/names.js';
import type { KubeMirror } from '../../lab/cluster/lab.js';
import { FakeApiServer } from './fake-apiserver.js';

export const IDENTITY_PORT = 15012;
const AGENT_SA = 'system:serviceaccount:trellis-system:trellis-agent';

export interface ControlPlane {
  api: FakeApiServer;
  identity: ChildProcess;
  caDir: string;
  mirror: KubeMirror;
  close(): Promise<void>;
}

/** Agent flags that point every node's agent at the control plane (`{node}` is filled in by the lab). */
export function controlPlaneAgentArgs(dir: string): string[] {
  return [
    '--identity-service', `${CONTROL_PLANE_IP}:${IDENTITY_PORT}`,
    '--identity-token-file', path.join(dir, 'token-{node}'),
    '--identity-ca-file', path.join(dir, 'root-cert.pem'),
  ];
}

/** What a kube-mode lab mirrors its realized objects into: the fake API server, as a controller writes them. */
export function apiMirror(api: FakeApiServer, kubeconfig: string): KubeMirror {
  return {
    kubeconfig,
    apply: (o) => api.apply(o),
    delete: (o) => api.remove(o.apiVersion, o.kind, o.metadata.namespace, o.metadata.name),
  };
}

export async function startControlPlane(fabricNetnsPath: string, dir: string, nodes: string[]): Promise<ControlPlane> {
  const api = await FakeApiServer.start({ netnsPath: fabricNetnsPath, host: CONTROL_PLANE_IP, port: 6443 });
  const kubeconfig = api.writeKubeconfig(path.join(dir, 'kubeconfig'));
  const caDir = path.join(dir, 'ca');
  const ca = LocalCa.loadOrCreate(caDir, 'cluster.local');
  const b64 = (f: string) => readFileSync(path.join(caDir, f)).toString('base64');
  api.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'trellis-system' } });
  api.apply({
    apiVersion: 'v1', kind: 'Secret', metadata: { name: 'trellis-ca', namespace: 'trellis-system' },
    type: 'Opaque', data: { 'ca.key.pem': b64('ca.key.pem'), 'ca.cert.pem': b64('ca.cert.pem') },
  });
  for (const node of nodes) {
    const token = `agent-${node}-${Math.random().toString(36).slice(2)}`;
    api.addToken(token, { username: AGENT_SA, audiences: ['trellis-identity'], node });
    writeFileSync(path.join(dir, `token-${node}`), token, { mode: 0o600 });
  }
  const identity = spawn(
    'ip',
    ['netns', 'exec', path.basename(fabricNetnsPath), process.execPath, path.resolve('dist/agent/main.js'), 'identity',
      '--listen', `${CONTROL_PLANE_IP}:${IDENTITY_PORT}`, '--dns-name', CONTROL_PLANE_IP, '--kubeconfig', kubeconfig, '--log-level', 'warn'],
    { stdio: ['ignore', 'inherit', 'inherit'] },
  );
  const close = async () => {
    if (identity.exitCode === null) {
      identity.kill('SIGTERM');
      await new Promise((r) => identity.once('exit', r));
    }
    await api.close();
  };
  try {
    // The service publishes the trust bundle when it is up; the agents read it from a file, as from a mounted ConfigMap.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const cm = api.get('v1', 'ConfigMap', 'trellis-system', 'trellis-ca-root') as { data?: Record<string, string> } | undefined;
      const root = cm?.data?.['root-cert.pem'];
      if (root) {
        if (root.trim() !== ca.rootCertPem.trim()) throw new Error('identity service published another root');
        writeFileSync(path.join(dir, 'root-cert.pem'), root);
        break;
      }
      if (identity.exitCode !== null) throw new Error(`identity service exited with ${identity.exitCode}`);
      if (Date.now() > deadline) throw new Error('identity service did not publish the trust bundle in 20 s');
      await new Promise((r) => setTimeout(r, 50));
    }
    // Its gRPC port must be open before the agents ask for certificates.
    await new Promise((r) => setTimeout(r, 200));
  } catch (err) {
    await close();
    throw err;
  }
  return { api, identity, caDir, mirror: apiMirror(api, kubeconfig), close };
}
