// Test support: one real control plane per test file (lab/controlplane/: etcd, kube-apiserver and
// kube-controller-manager built from source) in a netns of its own, with Trellis installed as docs/install.md
// says, a forwarder so that code under test on the host reaches it through a kubeconfig, real service-account
// tokens, and the API server's audit log read back as the list of requests the code made.
import { randomInt, sign } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ControlPlane, API_PORT, writeKubeconfigFile } from '../../lab/controlplane/controlplane.js';
import { installTrellis } from '../../lab/controlplane/install.js';
import type { ApiObject, KubeClient } from '../../lab/controlplane/client.js';
import { createPod, registerNode } from '../../lab/cluster/kubelet.js';
import { DEFAULT_STATE_ROOT, nodeFabricIp, nodePodCidr, netnsPath } from '../../lab/cluster/names.js';
import { ApiForward } from './api-forward.js';
import { requireRoot } from './root.js';

export const TRELLIS_SYSTEM = 'trellis-system';
export const AGENT_USER = 'system:serviceaccount:trellis-system:trellis-agent';
export const IDENTITY_USER = 'system:serviceaccount:trellis-system:trellis-identity';

/** One API request, from the audit log. */
export interface AuditedRequest {
  verb: string;
  group: string;
  version: string;
  resource: string;
  subresource?: string;
  namespace?: string;
  name?: string;
  user: string;
  /** HTTP status; 0 while a watch is still open. */
  code: number;
  /** The authorizer's decision: allow or forbid. */
  decision: string;
  uri: string;
}

export interface TestCluster {
  cp: ControlPlane;
  /** The admin's client (inside the netns). */
  api: KubeClient;
  /** 127.0.0.1:<port> on the host, to the API server. */
  forward: ApiForward;
  /** Scratch files (kubeconfigs, tokens); removed by close(). */
  dir: string;
  /** A kubeconfig on the host, through the forwarder, for a token (default: the admin's client certificate). */
  kubeconfig(name: string, token?: string): string;
  /** Registers a Node object (with its Lease), as the lab's kubelet does. */
  node(name: string, index?: number): Promise<void>;
  /**
   * A Pod object of trellis-agent on `node` (as the DaemonSet's), reported running, and a real token of the
   * trellis-agent service account bound to it, for `audiences` (default: the API server's).
   */
  agentToken(node: string, opts?: { audiences?: string[]; expirationSeconds?: number }): Promise<{ token: string; pod: { name: string; uid: string } }>;
  /** Requests recorded since the control plane started (with `audit: true`). */
  audit(): AuditedRequest[];
  close(): Promise<void>;
}

function randomName(prefix: string): string {
  const chars = 'abcdefghijklmnopqrstuvwxyz0123456789';
  return prefix + Array.from({ length: 5 }, () => chars[randomInt(chars.length)]).join('');
}

/**
 * Starts a control plane for a test file (call in beforeAll; close() in afterAll). `install`: Gateway API CRDs
 * and manifests/ applied (default true). Needs root.
 */
export async function startTestCluster(opts: { audit?: boolean; install?: boolean } = {}): Promise<TestCluster> {
  requireRoot('tests against the real control plane');
  const lab = randomName('c');
  const stateDir = path.join(DEFAULT_STATE_ROOT, lab);
  const dir = mkdtempSync(path.join(tmpdir(), 'trellis-cp-'));
  const cp = await ControlPlane.start({ lab, dir: path.join(stateDir, 'controlplane'), ...(opts.audit !== undefined && { audit: opts.audit }) });
  let forward: ApiForward | undefined;
  const agentPods = new Map<string, { name: string; uid: string }>();
  const nodes = new Map<string, number>();
  const close = async () => {
    await forward?.close();
    await cp.stop();
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    if (opts.install !== false) await installTrellis(cp);
    forward = await ApiForward.start(netnsPath(cp.netns), { host: '127.0.0.1', port: API_PORT });
  } catch (err) {
    await close();
    throw err;
  }
  const fwd = forward;
  const cluster: TestCluster = {
    cp,
    api: cp.admin,
    forward: fwd,
    dir,
    kubeconfig(name, token) {
      const file = path.join(dir, `${name}.kubeconfig`);
      const user = token !== undefined ? { token } : { certPem: cp.pki.admin.certPem, keyPem: cp.pki.admin.keyPem };
      writeKubeconfigFile(file, { server: fwd.url, caPem: cp.pki.ca.certPem, user });
      return file;
    },
    async node(name, index = nodes.size + 1) {
      if (nodes.has(name)) return;
      await registerNode(cp.admin, { name, index, netns: '', netnsPath: '', fabricIp: nodeFabricIp(index), gatewayIp: `10.244.${index}.1`, podCidr: nodePodCidr(index) });
      nodes.set(name, index);
    },
    async agentToken(node, tokenOpts = {}) {
      await cluster.node(node);
      let pod = agentPods.get(node);
      if (!pod) {
        const name = `trellis-agent-${node}`;
        const object = {
          apiVersion: 'v1',
          kind: 'Pod',
          metadata: { name, namespace: TRELLIS_SYSTEM, labels: { 'app.kubernetes.io/name': 'trellis-agent' } },
          spec: { nodeName: node, serviceAccountName: 'trellis-agent', hostNetwork: true, containers: [{ name: 'agent', image: 'ghcr.io/trellis-mesh/trellis:0.1.0' }] },
        };
        const ip = nodeFabricIp(nodes.get(node)!);
        const uid = await createPod(cp.admin, { object: object as never, ip, hostIp: ip, ready: true });
        pod = { name, uid };
        agentPods.set(node, pod);
      }
      const t = await cp.admin.createToken(TRELLIS_SYSTEM, 'trellis-agent', { boundPod: pod, ...tokenOpts });
      return { token: t.token, pod };
    },
    audit() {
      if (!cp.auditLogFile) throw new Error('startTestCluster({ audit: true }) records requests');
      return readAudit(cp.auditLogFile);
    },
    close,
  };
  return cluster;
}

/**
 * A real service-account token with its claims edited and signed again with the cluster's signing key (RS256, the
 * same kid): what an older API server would have issued, or a token from the past. The API server checks it as
 * any token it issued.
 */
export function resignToken(cp: ControlPlane, token: string, edit: (claims: Record<string, unknown>) => void): string {
  const [header, payload] = token.split('.') as [string, string];
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>;
  edit(claims);
  const body = `${header}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  return `${body}.${sign('sha256', Buffer.from(body), cp.pki.serviceAccount.keyPem).toString('base64url')}`;
}

/** The audit log as one entry per request (a watch's ResponseStarted and ResponseComplete count once). */
export function readAudit(file: string): AuditedRequest[] {
  const byId = new Map<string, AuditedRequest>();
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  for (const line of text.split('\n')) {
    if (!line) continue;
    const e = JSON.parse(line) as {
      auditID: string;
      stage: string;
      verb: string;
      requestURI: string;
      user: { username: string };
      objectRef?: { resource?: string; subresource?: string; namespace?: string; name?: string; apiGroup?: string; apiVersion?: string };
      responseStatus?: { code?: number };
      annotations?: Record<string, string>;
    };
    const r = e.objectRef;
    if (!r?.resource) continue; // non-resource URLs (/version, /readyz...)
    byId.set(e.auditID, {
      verb: e.verb,
      group: r.apiGroup ?? '',
      version: r.apiVersion ?? '',
      resource: r.resource,
      ...(r.subresource && { subresource: r.subresource }),
      ...(r.namespace && { namespace: r.namespace }),
      ...(r.name && { name: r.name }),
      user: e.user.username,
      code: e.stage === 'ResponseComplete' ? (e.responseStatus?.code ?? 0) : 0,
      decision: e.annotations?.['authorization.k8s.io/decision'] ?? '',
      uri: e.requestURI,
    });
  }
  return [...byId.values()];
}

export type { ApiObject };
