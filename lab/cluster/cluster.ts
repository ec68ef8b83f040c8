// The lab's cluster mode: a real control plane in the fabric netns (lab/controlplane/), Trellis installed into it
// as docs/install.md says, and the lab playing the kubelet (kubelet.ts): Nodes with Leases, Pods with their status,
// Services given their ClusterIP by the real allocator, EndpointSlices left to the real controller. The identity
// service and the agents run as processes with real service-account tokens (TokenRequest), bound to Pod objects
// the lab makes for them, and only the permissions manifests/rbac grants.
import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { connectInNetns } from '../../agent/native/index.js';
import { LabError } from '../errors.js';
import { ControlPlane, writeKubeconfigFile, type ControlPlaneRecord } from '../controlplane/controlplane.js';
import type { ApiObject, KubeClient } from '../controlplane/client.js';
import { installTrellis, type GatewayChannel } from '../controlplane/install.js';
import { CONTROL_PLANE_IP, LAB_ENV, fabricNetns, netnsPath } from './names.js';
import type { LabNode, LabPlan, PlannedPod } from './plan.js';
import { isAlive, sleep, spawnDetached, terminate, type ProcRecord } from './procs.js';
import { createPod, ensure, LEASE_RENEW_MS, registerNode, renewLease, reportPodStatus } from './kubelet.js';
import { inApplyOrder } from './realized.js';
import { loadKubeProxy } from './topology.js';
import { writeFileAtomic } from './state.js';
import { SERVICE_NAME_LABEL, type KubeObject } from '../../agent/model/objects.js';

/** `trellis identity`'s port (its --listen default, agent/cli/identity.ts). */
export const IDENTITY_PORT = 15012;
export const TRELLIS_SYSTEM = 'trellis-system';
/** What the DaemonSet's agents and the Deployment's identity service run as (manifests/rbac). */
export const AGENT_SERVICE_ACCOUNT = 'trellis-agent';
export const IDENTITY_SERVICE_ACCOUNT = 'trellis-identity';
/** The audience of the agents' second projected token, the one the identity service reviews. */
export const IDENTITY_AUDIENCE = 'trellis-identity';
/** The lab's tokens outlive any lab run; a kubelet would rotate them at 80 % of this. */
const TOKEN_SECONDS = 24 * 3600;
const ENDPOINTS_TIMEOUT_MS = 30_000;
const IDENTITY_READY_TIMEOUT_MS = 20_000;
/** The image the DaemonSet and Deployment name; nothing pulls it here. */
const TRELLIS_IMAGE = 'ghcr.io/trellis-mesh/trellis:0.1.0';

export interface ClusterOptions {
  /** Record the API requests of everyone but the control plane itself (ControlPlane.auditLogFile). */
  audit?: boolean;
  /** The controller manager's client rate (the bench raises it for 10 000 Services). */
  controllerQps?: number;
  /** How often the nodes' Leases are renewed (default 10 s, as a kubelet does). */
  leaseRenewMs?: number;
  /**
   * Gateway API CRDs: the standard channel (default, as docs/install.md installs), or the experimental one, which
   * routes with rules' `name` or `retry` need in v1.2 (the demo's do).
   */
  gatewayChannel?: GatewayChannel;
  /** Extra arguments for `trellis identity` (e.g. a short --cert-ttl or --ca-poll). */
  identityArgs?: string[];
  /**
   * How often the `trellis-ca-root` ConfigMap is copied to the agents' bundle file, as the kubelet refreshes a mounted
   * ConfigMap (it takes up to about a minute there); default 10 s. Runs in the process that brought the lab up.
   */
  bundleSyncMs?: number;
}

/** What the lab's kubelet does by default: a mounted ConfigMap follows its object within this long. */
const BUNDLE_SYNC_MS = 10_000;

/** What the lab's state keeps of its cluster mode. */
export interface ClusterRecord {
  controlPlane: ControlPlaneRecord;
  /** Kubeconfigs, tokens and the trust bundle the agents read. */
  dir: string;
  identity: ProcRecord | null;
}

interface StartInputs {
  lab: string;
  stateDir: string;
  logsDir: string;
  plan: LabPlan;
  /** The lab's CA (ca.key.pem, ca.cert.pem): becomes the trellis-ca Secret the identity service signs with. */
  caDir: string;
  /** Run the identity service and make the agents' tokens. */
  agents: boolean;
  /** node main.js: the identity service's command line. */
  trellis: string[];
  options: ClusterOptions;
  progress: (step: string) => void;
}

export class LabCluster {
  readonly record: ClusterRecord;
  /** Only in the process that started it: the control plane itself (outages, etcd, memory). */
  readonly controlPlane: ControlPlane | undefined;
  private client: KubeClient | undefined;
  private leaseTimer: NodeJS.Timeout | undefined;
  private bundleTimer: NodeJS.Timeout | undefined;

  private constructor(record: ClusterRecord, controlPlane?: ControlPlane) {
    this.record = record;
    this.controlPlane = controlPlane;
  }

  /** A handle on a lab's cluster started by another process (or this one, from its record). */
  static attach(record: ClusterRecord): LabCluster {
    return new LabCluster(record);
  }

  /**
   * Starts the control plane in the lab's fabric and realizes the plan through the API. Updates the plan's
   * Services and VIPs with the ClusterIPs the API server gave and reloads the nodes' ClusterIP rules with them.
   */
  static async start(inputs: StartInputs): Promise<LabCluster> {
    const { plan } = inputs;
    const fabric = fabricNetns(inputs.lab);
    const dir = path.join(inputs.stateDir, 'kube');
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    inputs.progress('control plane: etcd, kube-apiserver, kube-controller-manager');
    const cp = await ControlPlane.start({
      lab: inputs.lab,
      dir: path.join(inputs.stateDir, 'controlplane'),
      netns: fabric,
      ip: CONTROL_PLANE_IP,
      ...(inputs.options.audit !== undefined && { audit: inputs.options.audit }),
      ...(inputs.options.controllerQps !== undefined && { controllerQps: inputs.options.controllerQps }),
      log: inputs.progress,
    });
    const cluster = new LabCluster({ controlPlane: cp.record(), dir, identity: null }, cp);
    try {
      inputs.progress('control plane: installing Trellis (kubectl apply --server-side -k manifests/)');
      await installTrellis(cp, { gatewayChannel: inputs.options.gatewayChannel ?? 'standard' });
      await cluster.realize(inputs);
      if (inputs.agents) await cluster.startIdentity(inputs);
    } catch (err) {
      await cluster.stop().catch(() => {});
      throw err;
    }
    cluster.leaseTimer = setInterval(() => {
      for (const n of plan.nodes) void renewLease(cluster.api, n.name).catch(() => {});
    }, inputs.options.leaseRenewMs ?? LEASE_RENEW_MS);
    cluster.leaseTimer.unref();
    if (inputs.agents) {
      let syncing = false;
      cluster.bundleTimer = setInterval(() => {
        if (syncing) return;
        syncing = true;
        void cluster.syncBundle().catch(() => {}).finally(() => (syncing = false));
      }, inputs.options.bundleSyncMs ?? BUNDLE_SYNC_MS);
      cluster.bundleTimer.unref();
    }
    return cluster;
  }

  /** The agents' trust bundle file, as the kubelet keeps a mounted ConfigMap: rewritten (atomically) when the object changed. */
  async syncBundle(): Promise<void> {
    const cm = await this.api.get({ apiVersion: 'v1', kind: 'ConfigMap', namespace: TRELLIS_SYSTEM, name: 'trellis-ca-root' });
    const root = (cm?.['data'] as Record<string, string> | undefined)?.['root-cert.pem'];
    if (!root) return;
    const file = path.join(this.record.dir, 'root-cert.pem');
    if ((await fsp.readFile(file, 'utf8').catch(() => '')) !== root) await writeFileAtomic(file, root);
  }

  /** The admin's client (a keep-alive pool of connections made inside the fabric netns). */
  get api(): KubeClient {
    this.client ??= this.controlPlane?.admin ?? ControlPlane.adminClient(this.record.controlPlane);
    return this.client;
  }

  /** The admin kubeconfig (server https://172.30.0.2:6443, reachable from every node netns and the fabric). */
  get adminKubeconfig(): string {
    return path.join(this.record.controlPlane.dir, 'admin.kubeconfig');
  }

  /**
   * Makes the node's agent Pod object (as the DaemonSet's pod would be) and its two projected tokens, bound to
   * that pod: one for the API server (in the agent's kubeconfig), one with the identity service's audience.
   * Returns the agent's extra flags.
   */
  async agentArgs(node: LabNode): Promise<string[]> {
    const kubeconfig = path.join(this.record.dir, `agent-${node.name}.kubeconfig`);
    const tokenFile = path.join(this.record.dir, `identity-token-${node.name}`);
    if (!existsSync(kubeconfig) || !existsSync(tokenFile)) {
      const pod = await this.agentPod(node);
      const bound = { boundPod: { name: String(pod.metadata.name), uid: String(pod.metadata.uid) }, expirationSeconds: TOKEN_SECONDS };
      const api = await this.api.createToken(TRELLIS_SYSTEM, AGENT_SERVICE_ACCOUNT, bound);
      const identity = await this.api.createToken(TRELLIS_SYSTEM, AGENT_SERVICE_ACCOUNT, { ...bound, audiences: [IDENTITY_AUDIENCE] });
      const caPem = await fsp.readFile(path.join(this.record.controlPlane.dir, 'ca.crt'), 'utf8');
      writeKubeconfigFile(kubeconfig, { server: `https://${this.record.controlPlane.ip}:6443`, caPem, user: { token: api.token } });
      await writeFileAtomic(tokenFile, identity.token, 0o600);
    }
    return [
      '--source', 'kube',
      '--kubeconfig', kubeconfig,
      '--identity-service', `${this.record.controlPlane.ip}:${IDENTITY_PORT}`,
      '--identity-token-file', tokenFile,
      '--identity-ca-file', path.join(this.record.dir, 'root-cert.pem'),
    ];
  }

  /** Creates or updates a route or policy (server-side apply, as `kubectl apply --server-side`). */
  async apply(o: KubeObject): Promise<void> {
    await applyObject(this.api, o);
  }

  async delete(o: KubeObject): Promise<boolean> {
    return this.api.delete({ apiVersion: o.apiVersion, kind: o.kind, namespace: o.metadata.namespace, name: o.metadata.name });
  }

  /** Sets (null: removes) an annotation of a Namespace or Pod. */
  async annotate(kind: 'Namespace' | 'Pod', namespace: string | undefined, name: string, key: string, value: string | null): Promise<void> {
    await this.api.patch({ apiVersion: 'v1', kind, namespace, name }, { metadata: { annotations: { [key]: value } } }, 'merge');
  }

  /** Reports the pod ready or not, as the kubelet does when a readiness probe passes or fails. */
  async setPodReady(pod: PlannedPodLike, ready: boolean): Promise<void> {
    const object = await this.api.get({ apiVersion: 'v1', kind: 'Pod', namespace: pod.namespace, name: pod.name });
    if (!object) throw new LabError('ENOTFOUND', `pod ${pod.namespace}/${pod.name} is not in the API server`);
    await reportPodStatus(this.api, { object: object as unknown as PlannedPod['object'], ip: pod.ip, hostIp: pod.hostIp, ready });
  }

  /** Stops the identity service and the control plane (reverse order), and forgets this process's client. */
  async stop(): Promise<void> {
    if (this.leaseTimer) clearInterval(this.leaseTimer);
    this.leaseTimer = undefined;
    if (this.bundleTimer) clearInterval(this.bundleTimer);
    this.bundleTimer = undefined;
    this.client?.close();
    this.client = undefined;
    if (this.record.identity) await terminate([{ ...this.record.identity, group: true }]);
    this.record.identity = null;
    if (this.controlPlane) await this.controlPlane.stop();
    else await ControlPlane.stopRecorded(this.record.controlPlane);
  }

  // ---- realizing the plan ----

  private async realize(inputs: StartInputs): Promise<void> {
    const { plan } = inputs;
    const api = this.api;
    inputs.progress(`kubelet: ${plan.nodes.length} nodes, ${plan.pods.length} pods, ${plan.services.length} services through the API`);
    // The CA Secret, as docs/install.md has the operator create it (`trellis ca create`, then kubectl).
    const ca = async (f: string) => Buffer.from(await fsp.readFile(path.join(inputs.caDir, f))).toString('base64');
    await api.create({
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'trellis-ca', namespace: TRELLIS_SYSTEM },
      type: 'Opaque',
      data: { 'ca.key.pem': await ca('ca.key.pem'), 'ca.cert.pem': await ca('ca.cert.pem') },
    });
    for (const n of plan.nodes) await registerNode(api, n);
    for (const ns of plan.namespaces) {
      if (ns.metadata.name === 'default') await api.apply(forApi(ns));
      else await api.create(forApi(ns));
    }
    // The ServiceAccount admission plugin refuses a pod whose service account does not exist; an app's manifests
    // would carry them, the lab's may not.
    const accounts = new Set(plan.pods.map((p) => `${p.namespace}/${p.serviceAccount}`));
    for (const a of accounts) {
      const [namespace, name] = a.split('/') as [string, string];
      await ensure(api, { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name, namespace } });
    }
    for (const s of plan.services) {
      const created = await api.create(forApi(s.source as unknown as KubeObject));
      const spec = created['spec'] as { clusterIP?: string; clusterIPs?: string[] };
      const ip = spec.clusterIP ?? 'None';
      for (const v of plan.vips) if (v.service === `${s.namespace}/${s.name}`) v.clusterIP = ip;
      s.clusterIP = ip;
      s.object = { ...s.object, spec: { ...s.object.spec, clusterIP: ip, clusterIPs: spec.clusterIPs ?? [ip] } };
    }
    for (const n of plan.nodes) await loadKubeProxy(plan, n);
    for (const o of inApplyOrder(plan.extensions)) await applyObject(api, o);
    for (const p of plan.pods) {
      const node = plan.nodes.find((n) => n.name === p.node)!;
      await createPod(api, { object: p.object, ip: p.ip, hostIp: node.fabricIp, ready: true });
    }
    await this.waitForEndpoints(plan);
  }

  /** Waits until the EndpointSlice controller lists every planned endpoint as ready. */
  private async waitForEndpoints(plan: LabPlan): Promise<void> {
    const want = new Map<string, Set<string>>();
    for (const s of plan.endpointSlices) {
      const key = `${s.metadata.namespace}/${s.metadata.labels![SERVICE_NAME_LABEL]}`;
      const ips = want.get(key) ?? new Set<string>();
      for (const e of s.endpoints) for (const a of e.addresses) ips.add(a);
      want.set(key, ips);
    }
    const deadline = Date.now() + ENDPOINTS_TIMEOUT_MS;
    for (const [key, ips] of want) {
      const [namespace, service] = key.split('/') as [string, string];
      let seen: string[] = [];
      for (;;) {
        const list = await this.api.list<ApiObject & { endpoints?: { addresses: string[]; conditions?: { ready?: boolean } }[] }>(
          { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', namespace },
          { labelSelector: `${SERVICE_NAME_LABEL}=${service}` },
        );
        seen = list.items.flatMap((s) => (s.endpoints ?? []).filter((e) => e.conditions?.ready !== false).flatMap((e) => e.addresses)).sort();
        if (seen.length === ips.size && seen.every((ip) => ips.has(ip))) break;
        if (Date.now() > deadline) {
          throw new LabError(
            'ECONTROLPLANE',
            `the EndpointSlice controller did not list the ready endpoints of Service ${key} within ${ENDPOINTS_TIMEOUT_MS / 1000} s ` +
              `(want ${[...ips].sort().join(', ') || 'none'}, have ${seen.join(', ') || 'none'}); kube-controller-manager log:\n${this.controlPlane?.logTail('kube-controller-manager', 15) ?? ''}`,
          );
        }
        await sleep(100);
      }
    }
  }

  private async agentPod(node: LabNode): Promise<ApiObject> {
    const name = `trellis-agent-${node.name}`;
    const existing = await this.api.get({ apiVersion: 'v1', kind: 'Pod', namespace: TRELLIS_SYSTEM, name });
    if (existing) return existing;
    const object = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace: TRELLIS_SYSTEM, labels: { 'app.kubernetes.io/name': 'trellis-agent', 'app.kubernetes.io/part-of': 'trellis' } },
      spec: { nodeName: node.name, serviceAccountName: AGENT_SERVICE_ACCOUNT, hostNetwork: true, containers: [{ name: 'agent', image: TRELLIS_IMAGE }] },
    } as unknown as PlannedPod['object'];
    await createPod(this.api, { object, ip: node.fabricIp, hostIp: node.fabricIp, ready: true });
    return (await this.api.get({ apiVersion: 'v1', kind: 'Pod', namespace: TRELLIS_SYSTEM, name }))!;
  }

  /** Runs `trellis identity` in the fabric with the trellis-identity service account's token, and waits for the trust bundle. */
  private async startIdentity(inputs: StartInputs): Promise<void> {
    inputs.progress('identity service');
    const cp = this.record.controlPlane;
    const token = await this.api.createToken(TRELLIS_SYSTEM, IDENTITY_SERVICE_ACCOUNT, { expirationSeconds: TOKEN_SECONDS });
    const caPem = await fsp.readFile(path.join(cp.dir, 'ca.crt'), 'utf8');
    const kubeconfig = path.join(this.record.dir, 'identity.kubeconfig');
    writeKubeconfigFile(kubeconfig, { server: `https://${cp.ip}:6443`, caPem, user: { token: token.token } });
    const logFile = path.join(inputs.logsDir, 'identity.log');
    const { record } = spawnDetached(
      [
        'nsenter', `--net=${netnsPath(cp.netns)}`, '--', ...inputs.trellis, 'identity',
        '--listen', `${cp.ip}:${IDENTITY_PORT}`, '--dns-name', cp.ip, '--kubeconfig', kubeconfig, '--log-level', 'warn',
        ...(inputs.options.identityArgs ?? []),
      ],
      { env: { ...process.env, [LAB_ENV]: inputs.lab }, logFile },
    );
    const rec = await record;
    this.record.identity = rec;
    const deadline = Date.now() + IDENTITY_READY_TIMEOUT_MS;
    const tail = async () => ((await fsp.readFile(logFile, 'utf8').catch(() => '')).trimEnd().split('\n').slice(-15).join('\n') || '(the log is empty)');
    for (;;) {
      if (!isAlive(rec)) throw new LabError('ECONTROLPLANE', `the identity service exited at start (log ${logFile}):\n${await tail()}`);
      const cm = await this.api.get({ apiVersion: 'v1', kind: 'ConfigMap', namespace: TRELLIS_SYSTEM, name: 'trellis-ca-root' });
      const root = (cm?.['data'] as Record<string, string> | undefined)?.['root-cert.pem'];
      if (root && (await listening(netnsPath(cp.netns), cp.ip, IDENTITY_PORT))) {
        // The agents read it from a file, as from the mounted trellis-ca-root ConfigMap.
        await writeFileAtomic(path.join(this.record.dir, 'root-cert.pem'), root);
        return;
      }
      if (Date.now() > deadline) {
        throw new LabError('ECONTROLPLANE', `the identity service did not publish the trust bundle and listen within ${IDENTITY_READY_TIMEOUT_MS / 1000} s (log ${logFile}):\n${await tail()}`);
      }
      await sleep(100);
    }
  }
}

export interface PlannedPodLike {
  namespace: string;
  name: string;
  ip: string;
  hostIp: string;
}

/** Server-side apply; a route using experimental-channel fields on standard CRDs is refused with what to do. */
async function applyObject(api: KubeClient, o: KubeObject): Promise<void> {
  try {
    await api.apply(forApi(o));
  } catch (err) {
    const m = /\.spec\.rules\[\d+\]\.(name|retry|sessionPersistence): field not declared in schema/.exec((err as Error).message);
    if (!m || !o.apiVersion.startsWith('gateway.networking.k8s.io/')) throw err;
    throw new LabError(
      'EKUBE',
      `${o.kind} ${o.metadata.namespace}/${o.metadata.name}: spec.rules[].${m[1]} is in Gateway API's experimental channel only (v1.2), and this lab's ` +
        'API server has the standard channel: bring the lab up with gatewayChannel experimental (`trellis lab up --cluster --gateway-channel experimental`)',
      { cause: err },
    );
  }
}

/** An object as the API server takes it: no uid (the server assigns its own), no status (a subresource). */
function forApi(o: KubeObject): ApiObject {
  const { status: _status, ...rest } = o as KubeObject & { status?: unknown };
  const { uid: _uid, resourceVersion: _rv, ...metadata } = o.metadata as KubeObject['metadata'] & { resourceVersion?: string };
  return { ...rest, metadata } as ApiObject;
}

function listening(netns: string, host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connectInNetns(netns, { host, port, timeoutMs: 1000 });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

