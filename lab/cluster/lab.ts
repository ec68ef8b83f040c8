// The lab: a cluster-shaped topology of network namespaces built from ordinary manifests, with pods'
// commands, ClusterIP emulation, realized objects for the agents' `dir` source and one agent per node.
// It never changes the host's own netns and removes everything it made (`down`, or `sweep` after a crash).
import { spawn as spawnChild, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, promises as fsp, readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { DEFAULT_TRUST_DOMAIN, HEALTH_PORT, MESH_ANNOTATION, METRICS_PORT } from '../../agent/constants.js';
import { TrellisError } from '../../agent/errors.js';
import { LabError, systemCode } from '../errors.js';
import type { ExtensionObject, KubeObject, Namespace, Pod } from '../../agent/model/objects.js';
import { LAB_EXTENSION_KINDS, loadManifests } from './manifests.js';
import {
  DEFAULT_LAB_NAME,
  DEFAULT_STATE_ROOT,
  FIRST_POD_HOST,
  INTERNET_NET,
  LAB_ENV,
  MAX_PODS_PER_NODE,
  NETNS_PREFIX,
  checkLabName,
  labMatchesPrefix,
  labOfNetns,
  labPrefix,
  netnsPath,
} from './names.js';
import { planLab, planPod, type LabNode, type LabPod, type LabService, type PlannedPod } from './plan.js';
import {
  describeProc,
  isAlive,
  labEnvPids,
  netnsPids,
  procStat,
  recordOf,
  sleep,
  spawnDetached,
  terminate,
  type ProcRecord,
  type Target,
} from './procs.js';
import { inApplyOrder, objectFileName, readObject, setAnnotation, writeClusterObjects } from './realized.js';
import { run, type RunOptions } from './run.js';
import { labPaths, readState, writeFileAtomic, writeState, STATE_VERSION, type LabPaths, type LabState, type PodState } from './state.js';
import { addInternet, addPodNetwork, createNetwork, deleteNetns, listNetns } from './topology.js';
import { LabCluster, type ClusterOptions } from './cluster.js';
import { agentCgroup, inCgroup, removeCgroups } from './cgroups.js';
import { cniAdd, cniPlugin, nodeCni } from './cni.js';
import { createPodObject, ensure, reportPodStatus } from './kubelet.js';
import { findPrometheus, startPrometheus, writeEndpoints, type PrometheusOptions, type PrometheusRecord } from './prometheus.js';
import type { ControlPlane } from '../controlplane/controlplane.js';
import type { KubeClient } from '../controlplane/client.js';

export type { LabNode, LabPod, LabService, LabServicePort } from './plan.js';

export interface LabOptions {
  /** 1 to 8 of [a-z0-9]; default "trellis". */
  name?: string;
  /** Default /run/trellis/lab. */
  stateRoot?: string;
  /** Start one agent per node (default true); false builds the network and pods only. */
  agents?: boolean;
  /** Extra arguments for every agent; `{node}` in them is replaced by the node's name. */
  agentArgs?: string[];
  logLevel?: string;
  /** The nodes, in order; default: the distinct spec.nodeName values, sorted. */
  nodes?: string[];
  /** Told each step as it starts ("network", "agents"...), for a CLI to show progress. */
  progress?: (step: string) => void;
  /**
   * Cluster mode: a real control plane (etcd, kube-apiserver, kube-controller-manager) in the fabric netns on
   * CONTROL_PLANE_IP, Trellis installed into it, every object created through the API with the lab playing the
   * kubelet, the identity service and the agents (`--source kube`) run with real service-account tokens
   * (see cluster.ts). Off: local mode, the agents read the realized objects from files.
   */
  cluster?: boolean | ClusterOptions;
  /**
   * Run a Prometheus in the lab (prometheus.ts): a netns of its own on the fabric, scraping every agent, with the
   * recording rules of manifests/monitoring/; `lab.prometheus` says where it answers.
   */
  prometheus?: boolean | PrometheusOptions;
  /**
   * An internet for egress (topology.ts addInternet): a netns on the fabric owning 198.18.0.0/15 (a range never
   * routed on the real internet), reached from every pod through its node; `lab.internet` says where, and
   * `spawnInInternet` runs servers there.
   */
  internet?: boolean;
  /**
   * Cluster mode: the agents serve the trellis-cni plugin (`--cni-socket`, `--cni-optin-file`, per node under the
   * lab's state), and `addPod` starts pods as a kubelet does, through a real CNI ADD. The pods of the manifests are
   * started as without it (their netns named in an annotation).
   */
  cni?: boolean;
}

/** What `addPod` did. */
export interface AddedPod {
  pod: LabPod;
  /** The CNI ADD: its duration and the plugin's container id. */
  cni: { ms: number; containerId: string };
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** Default 60 s; then the command's process group is killed and exec rejects with ETIMEDOUT. */
  timeoutMs?: number;
  input?: Buffer | string;
  env?: Record<string, string>;
}

export interface LabStatus {
  name: string;
  stateDir: string;
  createdAt: string;
  nodes: (LabNode & { agent: { pid: number; alive: boolean } | null })[];
  pods: (LabPod & { mesh: string; processes: { container: string; pid: number; alive: boolean }[] })[];
  services: LabService[];
  /** The lab's Prometheus, when it runs one. */
  prometheus?: { url: string; netns: string; pid: number; alive: boolean };
}

const AGENT_READY_TIMEOUT_MS = 30_000;
const AGENT_STOP_TIMEOUT_MS = 20_000;
const HTTP_TIMEOUT_MS = 5_000;
const LOG_TAIL_LINES = 20;
/** How long a lab waits for its pods to listen on their declared ports before it goes on. */
const POD_LISTEN_WAIT_MS = 30_000;

export class Lab {
  readonly name: string;
  readonly stateDir: string;
  readonly clusterDir: string;
  readonly nodes: LabNode[];
  readonly pods: LabPod[];
  readonly services: LabService[];
  private readonly paths: LabPaths;
  private readonly state: LabState;
  /** Processes started by spawn() in this process; down() ends them. */
  private readonly spawned: { child: ChildProcess; record: ProcRecord }[] = [];
  private saving: Promise<void> = Promise.resolve();
  /** Cluster mode: the control plane and the lab's client of it (started here, or attached from the state). */
  private clusterHandle: LabCluster | undefined;

  private constructor(state: LabState, paths: LabPaths) {
    this.state = state;
    this.paths = paths;
    this.name = state.name;
    this.stateDir = paths.stateDir;
    this.clusterDir = paths.clusterDir;
    this.nodes = state.nodes;
    this.pods = state.pods.map(publicPod);
    this.services = state.services;
  }

  /** Builds the lab. On any failure it tears down what it made and rethrows. */
  static async up(manifests: string | string[] | KubeObject[], opts: LabOptions = {}): Promise<Lab> {
    const name = checkLabName(opts.name ?? DEFAULT_LAB_NAME);
    const paths = labPaths(opts.stateRoot ?? DEFAULT_STATE_ROOT, name);
    const progress = opts.progress ?? (() => {});
    // Manifests first: mistakes in them are worth knowing without root too.
    const plan = planLab(name, await loadManifests(manifests), { nodes: opts.nodes });
    requireRootUser();
    const agents = opts.agents ?? true;
    const repoRoot = findRepoRoot();
    if (agents) requireBuilt(repoRoot);
    if (opts.cni && !opts.cluster) throw new LabError('EINVAL', 'the CNI plugin needs cluster mode (the agents read pods from the API server): bring the lab up with cluster');
    if (opts.cni) cniPlugin(repoRoot);
    if (opts.prometheus) findPrometheus();
    await requireAbsent(name, paths);

    const state: LabState = {
      version: STATE_VERSION,
      name,
      createdAt: new Date().toISOString(),
      repoRoot,
      execPath: process.execPath,
      options: {
        agents,
        agentArgs: opts.agentArgs ?? [],
        ...(opts.logLevel !== undefined && { logLevel: opts.logLevel }),
        ...(opts.cni && { cni: true }),
      },
      nodes: plan.nodes,
      pods: plan.pods.map((p) => ({ ...publicPod(p), env: p.env, processes: [] })),
      services: plan.services.map(({ object: _object, source: _source, ...s }) => s),
      agents: Object.fromEntries(plan.nodes.map((n) => [n.name, null])),
    };
    const lab = new Lab(state, paths);
    try {
      for (const dir of [paths.clusterDir, paths.logsDir, paths.binDir]) await fsp.mkdir(dir, { recursive: true });
      // Recorded before anything exists, so `down` from another process finds a half-built lab too.
      await lab.save();
      progress(`network: ${plan.nodes.length} nodes, ${plan.pods.length} pods`);
      await createNetwork(plan);
      if (opts.internet) {
        state.internet = { netns: await addInternet(name, plan.nodes) };
        await lab.save();
      }
      await lab.writeShims();
      const { LocalCa } = await import('../../agent/identity/ca.js');
      if (opts.cluster) {
        // The lab's CA becomes the identity service's (the trellis-ca Secret).
        LocalCa.loadOrCreate(paths.caDir, DEFAULT_TRUST_DOMAIN);
        lab.clusterHandle = await LabCluster.start({
          lab: name,
          stateDir: paths.stateDir,
          logsDir: paths.logsDir,
          plan,
          caDir: paths.caDir,
          agents,
          trellis: [state.execPath, mainScript(repoRoot)],
          options: opts.cluster === true ? {} : opts.cluster,
          progress,
        });
        state.options.cluster = lab.clusterHandle.record;
        // The ClusterIPs are the API server's now.
        state.services.splice(0, state.services.length, ...plan.services.map(({ object: _object, source: _source, ...s }) => s));
        await lab.save();
      }
      // The lab's record of what it realized; in cluster mode the agents read the API server instead, and the
      // EndpointSlices are the controller's, not the lab's.
      await writeClusterObjects(paths.clusterDir, plan, { endpointSlices: !opts.cluster });
      if (agents) {
        progress('agents');
        LocalCa.loadOrCreate(paths.caDir, DEFAULT_TRUST_DOMAIN);
        // Agents first, so the pods' first connections are already meshed.
        const started = await Promise.allSettled(plan.nodes.map((n) => lab.startAgent(n.name)));
        const failed = started.find((r) => r.status === 'rejected');
        if (failed) throw failed.reason;
      }
      if (opts.prometheus) {
        // After the agents (its first scrape finds them), before the pods (it sees their first requests).
        progress('prometheus');
        state.prometheus = await startPrometheus({
          lab: name,
          stateDir: paths.stateDir,
          logsDir: paths.logsDir,
          nodes: plan.nodes,
          repoRoot,
          options: opts.prometheus === true ? {} : opts.prometheus,
        });
        await lab.save();
      }
      await writeEndpoints(paths.stateDir, {
        lab: name,
        objectsDir: paths.clusterDir,
        // Every node's agent serves tap on a socket of its own under the lab's state: what `trellis tap` connects to.
        ...(agents && { tap: plan.nodes.map((n) => ({ node: n.name, socket: tapSocket(paths.stateDir, n.name) })) }),
        ...(state.prometheus && { prometheus: { url: state.prometheus.url, netns: netnsPath(state.prometheus.netns) } }),
      });
      progress('pods');
      await lab.startPods(plan.pods);
      await lab.save();
      return lab;
    } catch (err) {
      await lab.down().catch(() => {});
      throw err;
    }
  }

  /** The lab recorded under stateRoot (by `up` in this or another process). */
  static async attach(name: string = DEFAULT_LAB_NAME, stateRoot: string = DEFAULT_STATE_ROOT): Promise<Lab> {
    checkLabName(name);
    const paths = labPaths(stateRoot, name);
    const state = await readState(paths.stateFile);
    if (!state) throw notUp(name, stateRoot);
    return new Lab(state, paths);
  }

  /** "ns/name", or "name" in namespace default. */
  pod(ref: string): LabPod {
    return publicPod(this.podState(ref));
  }

  node(name: string): LabNode {
    const node = this.nodes.find((n) => n.name === name);
    if (!node) {
      throw new LabError('ENOTFOUND', `no node "${name}" in lab '${this.name}' (nodes: ${this.nodes.map((n) => n.name).join(', ')})`);
    }
    return node;
  }

  /** The command line and environment that run argv in the pod, for callers that want their own stdio. */
  podCommand(ref: string, argv: string[], env: Record<string, string> = {}): { file: string; args: string[]; env: NodeJS.ProcessEnv } {
    const pod = this.podState(ref);
    if (argv.length === 0) throw new LabError('EINVAL', 'no command given');
    return { file: 'ip', args: ['netns', 'exec', pod.netns, ...argv], env: { ...this.podEnv(pod.env), ...env } };
  }

  /** Runs argv to completion in the pod's netns, with the pod's environment and PATH. */
  exec(ref: string, argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const cmd = this.podCommand(ref, argv, opts.env);
    return run(cmd.file, cmd.args, runOptions(cmd.env, opts));
  }

  /** Starts a long-running argv in the pod (stdio piped); down() ends it. */
  spawn(ref: string, argv: string[]): ChildProcess {
    const cmd = this.podCommand(ref, argv);
    const child = spawnChild(cmd.file, cmd.args, { env: cmd.env, detached: true, stdio: 'pipe' });
    const record = child.pid === undefined ? undefined : recordOf(child.pid);
    if (record) this.spawned.push({ child, record });
    return child;
  }

  /** Runs argv to completion in the node's netns (PATH has the lab's `trellis` and `node` first). */
  execInNode(node: string, argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const n = this.node(node);
    if (argv.length === 0) throw new LabError('EINVAL', 'no command given');
    const env = { ...process.env, PATH: `${this.paths.binDir}:${process.env.PATH ?? ''}`, [LAB_ENV]: this.name, ...opts.env };
    return run('ip', ['netns', 'exec', n.netns, ...argv], runOptions(env, opts));
  }

  /** The node's agent's tap socket (`trellis tap --socket`). */
  tapSocket(node: string): string {
    return tapSocket(this.paths.stateDir, this.node(node).name);
  }

  /** GET http://<node fabric IP>:port/path, connecting from inside the node's netns. */
  async httpGetFromNode(node: string, port: number, urlPath: string): Promise<{ status: number; body: string }> {
    const n = this.node(node);
    const { connectInNetns } = await import('../../agent/native/index.js');
    const where = `http://${n.fabricIp}:${port}${urlPath} in ${n.netns}`;
    return new Promise((resolve, reject) => {
      const req = http.get(
        {
          host: n.fabricIp,
          port,
          path: urlPath,
          timeout: HTTP_TIMEOUT_MS,
          // No `agent` option: with one, Node ignores createConnection and would connect from the host's netns.
          createConnection: () => connectInNetns(n.netnsPath, { host: n.fabricIp, port, timeoutMs: HTTP_TIMEOUT_MS }),
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (d: Buffer) => chunks.push(d));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new LabError('ETIMEDOUT', `GET ${where}: no answer in ${HTTP_TIMEOUT_MS} ms`)));
      req.on('error', (err: Error & { code?: string }) => {
        reject(err instanceof TrellisError ? err : new LabError(systemCode(err.code, 'EHTTP'), `GET ${where}: ${err.message}`, { cause: err }));
      });
    });
  }

  /** The node agent's Prometheus text (GET /metrics on 15020). */
  async metrics(node: string): Promise<string> {
    const r = await this.httpGetFromNode(node, METRICS_PORT, '/metrics');
    if (r.status !== 200) {
      throw new LabError('EHTTP', `metrics of node ${node}: HTTP ${r.status}: ${r.body.slice(0, 200)}`);
    }
    return r.body;
  }

  /** Sets (null: removes) an annotation on the realized Pod; the agents see it on their next reload. */
  async setPodAnnotation(ref: string, key: string, value: string | null): Promise<void> {
    const pod = this.podState(ref);
    checkAnnotationKey(key);
    const file = path.join(this.clusterDir, objectFileName('Pod', pod.name, pod.namespace));
    await setAnnotation(file, key, value);
    await this.cluster?.annotate('Pod', pod.namespace, pod.name, key, value);
  }

  /**
   * Creates or replaces routes and policies (HTTPRoute, GRPCRoute, FaultInjection, RetryBudget,
   * AuthorizationPolicy, PeerAuthentication) while the lab runs, as `kubectl apply` would: each file is
   * replaced atomically, a replaced object keeps its uid, policies are written before the routes that name
   * them. Everything is validated before anything is written. Pods, Services and Namespaces are fixed at `up`.
   */
  async apply(objects: KubeObject[]): Promise<void> {
    if (objects.length === 0) return;
    const m = await loadManifests(objects);
    const fixed = [...m.namespaces, ...m.pods, ...m.services][0];
    if (fixed) {
      throw new LabError(
        'EINVAL',
        `${fixed.where}: lab.apply takes ${LAB_EXTENSION_KINDS.join(', ')}; ` +
          `a ${fixed.object.kind} is fixed when the lab comes up (bring the lab up again with it in the manifests)`,
      );
    }
    for (const { object, where } of m.extensions) {
      const ns = object.metadata.namespace!;
      if (!existsSync(path.join(this.clusterDir, objectFileName('Namespace', ns)))) {
        throw new LabError(
          'ENOTFOUND',
          `${where}: namespace "${ns}" does not exist in lab '${this.name}' (namespaces: ${(await this.realizedNamespaces()).join(', ')}); ` +
            'declare it in the manifests given to `lab up`',
        );
      }
    }
    for (const object of inApplyOrder(m.extensions.map((e) => e.object))) {
      const file = path.join(this.clusterDir, objectFileName(object.kind, object.metadata.name, object.metadata.namespace));
      const previous = (await readObject(file).catch(() => undefined)) as ExtensionObject | undefined;
      const uid = previous?.metadata.uid ?? randomUUID();
      const realized: ExtensionObject = { ...object, metadata: { ...object.metadata, uid } };
      await writeFileAtomic(file, stringify(realized));
      await this.cluster?.apply(realized);
    }
  }

  /** Deletes a route or policy applied by `up` or `apply`; false when there was none of that name. */
  async remove(kind: string, namespace: string, name: string): Promise<boolean> {
    if (!LAB_EXTENSION_KINDS.includes(kind)) {
      throw new LabError('EINVAL', `lab.remove takes ${LAB_EXTENSION_KINDS.join(', ')}, not "${kind}"`);
    }
    const file = path.join(this.clusterDir, objectFileName(kind as ExtensionObject['kind'], name, namespace));
    const object = await readObject(file).catch(() => undefined);
    if (!object) return false;
    await fsp.rm(file, { force: true });
    await this.cluster?.delete(object);
    return true;
  }

  /**
   * Starts a pod while the lab runs, as the scheduler and a kubelet would (cluster mode with `cni`): the Pod through
   * the API (spec.nodeName set, no netns annotation: the agent learns the sandbox from the CNI plugin), its sandbox
   * (netns, veth and address on the node's next free host number), CNI ADD through the real trellis-cni chained
   * after it, then its containers, then (`statusDelayMs` later, as a busy kubelet) its status (Running, its IP).
   * Rejects with ECNI when the plugin fails: the containers are not started then. The pod is not added to the nodes'
   * ClusterIP rules (a client, not a backend).
   */
  async addPod(object: Pod, opts: { statusDelayMs?: number } = {}): Promise<AddedPod> {
    const cluster = this.requireCluster('addPod');
    if (!this.state.options.cni) throw new LabError('EINVAL', `lab '${this.name}' was brought up without cni: addPod needs it`);
    const m = await loadManifests([object as KubeObject]);
    const src = m.pods[0]?.object;
    if (!src || m.pods.length !== 1) throw new LabError('EINVAL', 'addPod takes one Pod');
    const node = this.node(src.spec.nodeName ?? '');
    const namespace = src.metadata.namespace ?? 'default';
    if (this.state.pods.some((p) => p.namespace === namespace && p.name === src.metadata.name)) {
      throw new LabError('EEXIST', `pod ${namespace}/${src.metadata.name} already exists in lab '${this.name}'`);
    }
    // The next free host number on the node, taken before anything is awaited: concurrent calls get their own.
    const taken = new Set(this.state.pods.filter((p) => p.node === node.name).map((p) => Number(p.ip.split('.')[3])));
    let j = FIRST_POD_HOST;
    while (taken.has(j)) j++;
    if (j - FIRST_POD_HOST >= MAX_PODS_PER_NODE) throw new LabError('ELAB', `node ${node.name} has no free pod address left`);
    const planned = planPod(this.name, node, j, { ...src, metadata: { ...src.metadata, namespace } }, '', { netnsAnnotation: false });
    const ps: PodState = { ...publicPod(planned), env: planned.env, processes: [] };
    this.state.pods.push(ps);
    (this.pods as LabPod[]).push(publicPod(planned));
    await this.save();
    // The scheduler's part: the Pod, bound to the node. Its uid is what the plugin passes on (K8S_POD_UID).
    const api = cluster.api;
    // Its service account, as an app's manifests would carry it (admission refuses a pod without it).
    await ensure(api, { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: planned.serviceAccount, namespace } });
    const uid = await createPodObject(api, planned.object);
    await writeFileAtomic(path.join(this.clusterDir, objectFileName('Pod', planned.name, namespace)), stringify({ ...planned.object, metadata: { ...planned.object.metadata, uid } }));
    // The kubelet's part: the sandbox, the CNI chain, the containers, the status.
    await addPodNetwork(node, planned);
    const cni = await cniAdd({ plugin: cniPlugin(this.state.repoRoot), cni: nodeCni(this.stateDir, node.name), nodeNetns: node.netns, pod: planned, uid });
    await this.startPods([planned]);
    await this.save();
    // A kubelet reports the status (and with it the pod's IP) some time after the containers start: its status manager
    // syncs in the background, a second or more when it is busy.
    if (opts.statusDelayMs) await sleep(opts.statusDelayMs);
    await reportPodStatus(api, { object: planned.object, ip: planned.ip, hostIp: node.fabricIp, ready: true });
    return { pod: publicPod(planned), cni: { ms: cni.ms, containerId: cni.containerId } };
  }

  /** What the pod's containers wrote (stdout and stderr), '' before they wrote anything. */
  podLog(ref: string): string {
    const pod = this.podState(ref);
    try {
      return readFileSync(this.podLogFile(pod), 'utf8');
    } catch {
      return '';
    }
  }


  /**
   * The lab's Prometheus (`up` with `prometheus`), undefined without one: its URL answers inside `netnsPath` (and in
   * every netns of the lab), never in the host's; `prometheus.ts`'s prometheusGet and the viewer connect from there.
   */
  get prometheus(): (Pick<PrometheusRecord, 'url' | 'netns' | 'scrapeInterval'> & { netnsPath: string }) | undefined {
    const p = this.state.prometheus;
    return p && { url: p.url, netns: p.netns, netnsPath: netnsPath(p.netns), scrapeInterval: p.scrapeInterval };
  }

  /** The lab's internet (`up` with `internet`): its netns and the addresses it owns; undefined without one. */
  get internet(): { netns: string; netnsPath: string; network: string } | undefined {
    const i = this.state.internet;
    return i && { netns: i.netns, netnsPath: netnsPath(i.netns), network: INTERNET_NET };
  }

  /**
   * Starts a long-running argv in the lab's internet (a server on one of its addresses; stdio piped, the lab's
   * `trellis` and `node` first on its PATH); down() ends it, and `sweep` finds it by its netns or the lab marker.
   */
  spawnInInternet(argv: string[]): ChildProcess {
    const internet = this.internet;
    if (!internet) throw new LabError('EINVAL', `lab '${this.name}' has no internet: bring it up with internet (--internet)`);
    if (argv.length === 0) throw new LabError('EINVAL', 'no command given');
    const env = { ...process.env, PATH: `${this.paths.binDir}:${process.env.PATH ?? ''}`, [LAB_ENV]: this.name };
    const child = spawnChild('ip', ['netns', 'exec', internet.netns, ...argv], { env, detached: true, stdio: 'pipe' });
    const record = child.pid === undefined ? undefined : recordOf(child.pid);
    if (record) this.spawned.push({ child, record });
    return child;
  }

  /** Cluster mode's handle (from the state when another process brought the lab up); undefined in local mode. */
  private get cluster(): LabCluster | undefined {
    if (!this.clusterHandle && this.state.options.cluster) this.clusterHandle = LabCluster.attach(this.state.options.cluster);
    return this.clusterHandle;
  }

  /** Whether the lab runs in cluster mode (a real control plane; the agents read the API server). */
  get clusterMode(): boolean {
    return this.state.options.cluster !== undefined;
  }

  /** The admin's client of the lab's API server (cluster mode). */
  get kube(): KubeClient {
    return this.requireCluster('kube').api;
  }

  /** The admin kubeconfig (cluster mode): its server, https://172.30.0.2:6443, answers in the fabric and every node netns. */
  get adminKubeconfig(): string {
    return this.requireCluster('adminKubeconfig').adminKubeconfig;
  }

  /** The control plane, in the process that brought the lab up in cluster mode (stop the API server, compact etcd...). */
  get controlPlane(): ControlPlane {
    const cp = this.requireCluster('controlPlane').controlPlane;
    if (!cp) throw new LabError('EINVAL', `lab '${this.name}': its control plane was started by another process; use its API (lab.kube) instead`);
    return cp;
  }

  /** The command line that runs kubectl as the admin inside the fabric netns (cluster mode), for callers with their own stdio. */
  async kubectlCommand(args: string[]): Promise<{ file: string; args: string[] }> {
    const cluster = this.requireCluster('kubectl');
    const { k8sBinaries } = await import('../controlplane/binaries.js');
    const kubectl = (await k8sBinaries()).path('kubectl');
    const cp = cluster.record.controlPlane;
    return { file: 'nsenter', args: [`--net=${netnsPath(cp.netns)}`, '--', kubectl, '--kubeconfig', cluster.adminKubeconfig, '--cache-dir', path.join(cp.dir, 'kubectl-cache'), ...args] };
  }

  /**
   * Reports the pod ready or not ready through the API, as the kubelet does when a readiness probe passes or
   * fails; the EndpointSlice controller then adds or drops its endpoint (cluster mode).
   */
  async setPodReady(ref: string, ready: boolean): Promise<void> {
    const pod = this.podState(ref);
    const node = this.node(pod.node);
    await this.requireCluster('setPodReady').setPodReady({ namespace: pod.namespace, name: pod.name, ip: pod.ip, hostIp: node.fabricIp }, ready);
  }

  private requireCluster(what: string): LabCluster {
    const c = this.cluster;
    if (!c) throw new LabError('EINVAL', `lab '${this.name}' runs in local mode: ${what} needs a lab brought up in cluster mode`);
    return c;
  }

  private async realizedNamespaces(): Promise<string[]> {
    const files = await fsp.readdir(this.clusterDir).catch(() => [] as string[]);
    return files.filter((f) => f.startsWith('ns-') && f.endsWith('.yaml')).map((f) => f.slice(3, -5)).sort();
  }


  async setNamespaceAnnotation(ns: string, key: string, value: string | null): Promise<void> {
    checkAnnotationKey(key);
    const file = path.join(this.clusterDir, objectFileName('Namespace', ns));
    if (!existsSync(file)) {
      throw new LabError('ENOTFOUND', `no namespace "${ns}" in lab '${this.name}' (namespaces: ${this.namespaces().join(', ')})`);
    }
    await setAnnotation(file, key, value);
    await this.cluster?.annotate('Namespace', undefined, ns, key, value);
  }

  /** Signals the node's agent (default SIGTERM) and waits until it exits; SIGKILL and an error after 20 s. */
  async stopAgent(node: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    this.node(node);
    const rec = this.state.agents[node];
    if (rec && isAlive(rec)) {
      try {
        process.kill(rec.pid, signal);
      } catch {
        // Exited meanwhile.
      }
      const deadline = Date.now() + AGENT_STOP_TIMEOUT_MS;
      while (isAlive(rec) && Date.now() < deadline) await sleep(50);
      if (isAlive(rec)) {
        await terminate([{ ...rec, group: true }], 0);
        this.state.agents[node] = null;
        await this.save();
        throw new LabError(
          'ETIMEDOUT',
          `agent on ${node} did not exit within ${AGENT_STOP_TIMEOUT_MS} ms of ${signal}; killed. Last log lines:\n${this.logTail(node)}`,
        );
      }
    }
    this.state.agents[node] = null;
    await this.save();
  }

  /** Starts the node's agent in the node netns and waits until it is ready. */
  async startAgent(node: string): Promise<void> {
    const n = this.node(node);
    const current = this.state.agents[node];
    if (current && isAlive(current)) {
      throw new LabError('EEXIST', `agent on ${node} is already running (pid ${current.pid}): stopAgent first`);
    }
    const { rec, readyFile } = await this.spawnAgent(n, []);
    this.state.agents[node] = rec;
    await this.save();
    await this.waitAgentReady(n, rec, readyFile);
  }

  /**
   * What a DaemonSet rolling update with maxSurge 1 does on one node: starts a new agent beside the running one
   * (both listen on every pod's ports, SO_REUSEPORT), waits until the new one is ready, then stops the old one,
   * which hands over its queued connections and drains the open ones. `drainMs` is the new agent's --drain (the
   * old one drains for what it was started with). `agentArgs`: flags for the new agent only, after the lab's own (the
   * last value of a flag wins: `--capture nft` hands over to the other capture mode). Resolves with the timings.
   */
  async restartAgent(node: string, opts: { drainMs?: number; agentArgs?: readonly string[] } = {}): Promise<{ readyMs: number; stopMs: number }> {
    const n = this.node(node);
    const old = this.state.agents[node];
    const started = performance.now();
    const extra = [...(opts.drainMs === undefined ? [] : ['--drain', `${Math.round(opts.drainMs)}ms`]), ...(opts.agentArgs ?? [])];
    const { rec, readyFile } = await this.spawnAgent(n, extra);
    try {
      await this.waitAgentReady(n, rec, readyFile);
    } catch (err) {
      await terminate([{ ...rec, group: true }], 2_000);
      throw err;
    }
    const readyMs = performance.now() - started;
    if (old && isAlive(old)) {
      // Stops the old one (its drain included), recorded as the node's agent until it is gone.
      await this.stopAgent(node);
    }
    this.state.agents[node] = rec;
    await this.save();
    return { readyMs, stopMs: performance.now() - started - readyMs };
  }

  private async spawnAgent(n: LabNode, extra: string[]): Promise<{ rec: ProcRecord; readyFile: string }> {
    requireBuilt(this.state.repoRoot);
    // Each process has a ready file of its own: during a restart two agents answer on the node's health port.
    const readyFile = path.join(this.paths.stateDir, 'run', `agent-${n.name}-${Date.now()}-${process.pid}.ready`);
    const argv = [
      'ip', 'netns', 'exec', n.netns,
      this.state.execPath, mainScript(this.state.repoRoot), 'agent',
      '--node', n.name,
      ...(this.cluster ? await this.cluster.agentArgs(n) : ['--dir', this.paths.clusterDir]),
      ...(this.state.options.cni ? ['--cni-socket', nodeCni(this.stateDir, n.name).socket, '--cni-optin-file', nodeCni(this.stateDir, n.name).optinFile] : []),
      '--ca-dir', this.paths.caDir,
      '--probe-source', n.gatewayIp,
      '--ready-file', readyFile,
      '--tap-socket', tapSocket(this.paths.stateDir, n.name),
      ...(this.state.options.logLevel ? ['--log-level', this.state.options.logLevel] : []),
      // `{node}` in an extra argument stands for the node's name (per-node token files and the like).
      ...[...this.state.options.agentArgs, ...extra].map((a) => a.replaceAll('{node}', n.name)),
    ];
    // In a cgroup of its own, where its sockops program sees its sockets only (cgroups.ts).
    const cgroup = await agentCgroup(this.name, n.name);
    const { record } = spawnDetached(cgroup ? inCgroup(cgroup, argv) : argv, { env: { ...process.env, [LAB_ENV]: this.name }, logFile: this.agentLogFile(n.name) });
    return { rec: await record, readyFile };
  }

  agentLog(node: string): string {
    this.node(node);
    try {
      return readFileSync(this.agentLogFile(node), 'utf8');
    } catch {
      return '';
    }
  }

  /** What runs, with the effective mesh annotation of every pod ("enabled (namespace)", "disabled (pod)", "-"). */
  async status(): Promise<LabStatus> {
    const namespaces = new Map<string, Namespace>();
    for (const ns of this.namespaces()) {
      const o = await readObject(path.join(this.clusterDir, objectFileName('Namespace', ns))).catch(() => undefined);
      if (o) namespaces.set(ns, o as Namespace);
    }
    const pods = [];
    for (const p of this.state.pods) {
      const o = (await readObject(path.join(this.clusterDir, objectFileName('Pod', p.name, p.namespace))).catch(() => undefined)) as
        | Pod
        | undefined;
      const podValue = o?.metadata.annotations?.[MESH_ANNOTATION];
      const nsValue = namespaces.get(p.namespace)?.metadata.annotations?.[MESH_ANNOTATION];
      const mesh = podValue !== undefined ? `${podValue} (pod)` : nsValue !== undefined ? `${nsValue} (namespace)` : '-';
      pods.push({
        ...publicPod(p),
        mesh,
        processes: p.processes.map((r) => ({ container: r.container, pid: r.pid, alive: isAlive(r) })),
      });
    }
    return {
      name: this.name,
      stateDir: this.stateDir,
      createdAt: this.state.createdAt,
      nodes: this.nodes.map((n) => {
        const a = this.state.agents[n.name];
        return { ...n, agent: a ? { pid: a.pid, alive: isAlive(a) } : null };
      }),
      pods,
      services: this.services,
      ...(this.state.prometheus && {
        prometheus: { url: this.state.prometheus.url, netns: this.state.prometheus.netns, pid: this.state.prometheus.proc.pid, alive: isAlive(this.state.prometheus.proc) },
      }),
    };
  }

  /** Ends every process of the lab, deletes its namespaces and its state directory. Idempotent. */
  async down(): Promise<void> {
    requireRootUser();
    const prefix = labPrefix(this.name);
    const problems: string[] = [];
    const targets: Target[] = [
      ...this.state.pods.flatMap((p) => p.processes.map((r) => ({ ...r, group: true }))),
      ...Object.values(this.state.agents).flatMap((r) => (r ? [{ ...r, group: true }] : [])),
      ...(this.state.prometheus ? [{ ...this.state.prometheus.proc, group: true }] : []),
      ...this.spawned.map((s) => ({ ...s.record, group: true })),
    ];
    try {
      // Clients first (pods, agents), then the identity service and the control plane in reverse order,
      // then whatever else is left in the lab's namespaces.
      await terminate(targets);
      const cluster = this.cluster;
      if (cluster) {
        try {
          await cluster.stop();
        } catch (err) {
          problems.push(`control plane: ${(err as Error).message}`);
        }
      }
      const namespaces = await listNetns(prefix);
      await terminate(await foundTargets(namespaces, (lab) => lab === this.name));
      await deleteNetns(namespaces);
      await removeCgroups(prefix);
    } catch (err) {
      problems.push((err as Error).message);
    }
    try {
      await fsp.rm(this.stateDir, { recursive: true, force: true });
    } catch (err) {
      problems.push((err as Error).message);
    }
    if (problems.length > 0) {
      throw new LabError('ELAB', `lab '${this.name}' down: ${problems.join('; ')}; run \`trellis lab sweep\` to retry`);
    }
  }

  /** Writes the state file; writes run one at a time and each takes the state as it is when it runs. */
  private save(): Promise<void> {
    this.saving = this.saving.catch(() => {}).then(() => writeState(this.paths.stateFile, this.state));
    return this.saving;
  }

  private podState(ref: string): PodState {
    const [ns, name] = ref.includes('/') ? (ref.split('/', 2) as [string, string]) : ['default', ref];
    const pod = this.state.pods.find((p) => p.namespace === ns && p.name === name);
    if (!pod) {
      const known = this.state.pods.map((p) => `${p.namespace}/${p.name}`).join(', ') || 'none';
      throw new LabError('ENOTFOUND', `no pod "${ns}/${name}" in lab '${this.name}' (pods: ${known})`);
    }
    return pod;
  }

  private namespaces(): string[] {
    return [...new Set(['default', ...this.state.pods.map((p) => p.namespace), ...this.state.services.map((s) => s.namespace)])];
  }

  /** A container's view: a clean environment like a container's, the pod variables, the lab's shims first on PATH. */
  private podEnv(env: Record<string, string>): NodeJS.ProcessEnv {
    return {
      PATH: `${this.paths.binDir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
      HOME: process.env.HOME ?? '/root',
      ...(process.env.LANG !== undefined && { LANG: process.env.LANG }),
      HOSTNAME: env.POD_NAME ?? '',
      ...env,
      [LAB_ENV]: this.name,
    };
  }

  private async startPods(pods: PlannedPod[]): Promise<void> {
    for (const p of pods) {
      const ps = this.state.pods.find((s) => s.namespace === p.namespace && s.name === p.name)!;
      const logFile = this.podLogFile(p);
      for (const c of p.containers) {
        const { record } = spawnDetached(['ip', 'netns', 'exec', p.netns, ...c.argv], { env: this.podEnv(c.env), logFile });
        ps.processes.push({ container: c.name, ...(await record) });
      }
    }
    await this.waitPodsListening(pods);
  }

  /**
   * Waits until every started pod listens on the TCP ports its containers declare, as a kubelet's readiness probe
   * would, so that a caller's first connection does not race the app's start (on a busy machine a Node app takes a
   * second or more). A port still closed after POD_LISTEN_WAIT_MS is said, and the lab goes on: an app may declare a
   * port it opens later, or never.
   */
  private async waitPodsListening(pods: PlannedPod[]): Promise<void> {
    const deadline = Date.now() + POD_LISTEN_WAIT_MS;
    for (const p of pods) {
      const ports = declaredTcpPorts(p);
      const pid = this.state.pods.find((s) => s.namespace === p.namespace && s.name === p.name)?.processes[0]?.pid;
      if (ports.length === 0 || pid === undefined) continue;
      for (;;) {
        const open = listeningPorts(pid);
        const closed = ports.filter((port) => !open.has(port));
        if (closed.length === 0) break;
        if (Date.now() >= deadline || !existsSync(`/proc/${pid}`)) {
          process.stderr.write(`lab '${this.name}': pod ${p.namespace}/${p.name} does not listen on ${closed.join(', ')} yet (log ${this.podLogFile(p)}); going on\n`);
          break;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  private async writeShims(): Promise<void> {
    const trellis = `#!/bin/sh\nexec "${this.state.execPath}" "${mainScript(this.state.repoRoot)}" "$@"\n`;
    await writeFileAtomic(path.join(this.paths.binDir, 'trellis'), trellis, 0o755);
    // Pod commands calling `node` get the pinned Node, not whatever the host's PATH holds.
    await writeFileAtomic(path.join(this.paths.binDir, 'node'), `#!/bin/sh\nexec "${this.state.execPath}" "$@"\n`, 0o755);
  }

  private podLogFile(pod: { namespace: string; name: string }): string {
    return path.join(this.paths.logsDir, `${pod.namespace}_${pod.name}.log`);
  }

  private agentLogFile(node: string): string {
    return path.join(this.paths.logsDir, `agent-${node}.log`);
  }

  private logTail(node: string): string {
    const lines = this.agentLog(node).trimEnd().split('\n');
    return lines.slice(-LOG_TAIL_LINES).join('\n') || '(the log is empty)';
  }

  /** Waits for the process's ready file, then checks the node's health port answers ready. */
  private async waitAgentReady(n: LabNode, rec: ProcRecord, readyFile: string): Promise<void> {
    const deadline = Date.now() + AGENT_READY_TIMEOUT_MS;
    let last = 'no ready file yet';
    for (;;) {
      if (!isAlive(rec)) {
        throw new LabError(
          'EAGENT',
          `agent on ${n.name} exited before it was ready (log ${this.agentLogFile(n.name)}):\n${this.logTail(n.name)}`,
        );
      }
      if (existsSync(readyFile)) {
        try {
          const r = await this.httpGetFromNode(n.name, HEALTH_PORT, '/healthz/ready');
          if (r.status === 200) return;
          last = `ready file written, health port answers HTTP ${r.status} ${r.body.trim().slice(0, 200)}`;
        } catch (err) {
          if ((err as { code?: string }).code === 'ENATIVE') throw err;
          last = `ready file written, health port: ${(err as Error).message}`;
        }
      }
      if (Date.now() >= deadline) {
        throw new LabError(
          'EAGENT',
          `agent on ${n.name} not ready after ${AGENT_READY_TIMEOUT_MS / 1000} s (last: ${last}); ` +
            `log ${this.agentLogFile(n.name)}:\n${this.logTail(n.name)}`,
        );
      }
      await sleep(100);
    }
  }
}

/**
 * Removes every lab leftover on this machine: processes of labs under the prefix (from their state, their
 * netns, or the lab marker in their environment), netns named with the prefix, and state directories.
 * Returns what it removed.
 */
export async function sweep(opts: { prefix?: string; stateRoot?: string } = {}): Promise<string[]> {
  requireRootUser();
  const prefix = opts.prefix ?? NETNS_PREFIX;
  if (!prefix.startsWith(NETNS_PREFIX)) {
    throw new LabError('EINVAL', `sweep prefix "${prefix}" must start with "${NETNS_PREFIX}": only lab namespaces are swept`);
  }
  const stateRoot = path.resolve(opts.stateRoot ?? DEFAULT_STATE_ROOT);
  const accept = (lab: string): boolean => labMatchesPrefix(lab, prefix);
  const removed: string[] = [];
  const problems: string[] = [];

  const stateDirs: string[] = [];
  const targets: Target[] = [];
  for (const entry of await fsp.readdir(stateRoot).catch(() => [] as string[])) {
    if (!/^[a-z0-9]{1,8}$/.test(entry) || !accept(entry)) continue;
    const paths = labPaths(stateRoot, entry);
    stateDirs.push(paths.stateDir);
    const state = await readState(paths.stateFile).catch(() => undefined);
    if (!state) continue;
    targets.push(
      ...state.pods.flatMap((p) => p.processes.map((r) => ({ ...r, group: true }))),
      ...Object.values(state.agents).flatMap((r) => (r ? [{ ...r, group: true }] : [])),
      ...(state.prometheus ? [{ ...state.prometheus.proc, group: true }] : []),
    );
  }
  const namespaces = await listNetns(prefix);
  targets.push(...(await foundTargets(namespaces, accept)));

  const names = new Map(targets.filter(isAlive).map((t) => [t.pid, describeProc(t.pid)]));
  for (const pid of await terminate(targets)) removed.push(`process ${names.get(pid) ?? pid}`);
  try {
    for (const n of await deleteNetns(namespaces)) removed.push(`netns ${n}`);
  } catch (err) {
    problems.push((err as Error).message);
  }
  try {
    for (const c of await removeCgroups(prefix)) removed.push(`cgroup ${c}`);
  } catch (err) {
    problems.push((err as Error).message);
  }
  for (const dir of stateDirs) {
    try {
      await fsp.rm(dir, { recursive: true, force: true });
      removed.push(`state ${dir}`);
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  if (problems.length > 0) throw new LabError('ELAB', `sweep: ${problems.join('; ')}`);
  return removed;
}

/** Processes in the namespaces, and processes carrying the marker of an accepted lab (their netns may be gone). */
async function foundTargets(namespaces: string[], accept: (lab: string) => boolean): Promise<Target[]> {
  const pids = new Set<number>();
  for (const ns of namespaces) {
    if (labOfNetns(ns) === undefined) continue;
    for (const pid of await netnsPids(ns)) pids.add(pid);
  }
  for (const { pid } of labEnvPids(accept)) pids.add(pid);
  return [...pids].flatMap((pid) => {
    const st = procStat(pid);
    return st ? [{ pid, start: st.start, group: false }] : [];
  });
}

function publicPod(p: LabPod): LabPod {
  return {
    namespace: p.namespace,
    name: p.name,
    node: p.node,
    netns: p.netns,
    netnsPath: p.netnsPath,
    ip: p.ip,
    serviceAccount: p.serviceAccount,
    labels: p.labels,
  };
}

function runOptions(env: NodeJS.ProcessEnv, opts: ExecOptions): RunOptions {
  return {
    env,
    ...(opts.timeoutMs !== undefined && { timeoutMs: opts.timeoutMs }),
    ...(opts.input !== undefined && { input: opts.input }),
  };
}

const ANNOTATION_KEY = /^([a-z0-9]([-a-z0-9.]*[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;

function checkAnnotationKey(key: string): void {
  if (!ANNOTATION_KEY.test(key) || key.length > 316) {
    throw new LabError('EINVAL', `invalid annotation key "${key}" (expected [prefix/]name, e.g. trellis.dev/mesh)`);
  }
}

export function requireRootUser(): void {
  if (process.getuid?.() !== 0) {
    throw new LabError('EPERM', 'not root: the lab needs root for network namespaces (run it with sudo)');
  }
}

async function requireAbsent(name: string, paths: LabPaths): Promise<void> {
  if (existsSync(paths.stateFile)) {
    throw new LabError(
      'EEXIST',
      `lab '${name}' is already up (${paths.stateFile}): use it, or run \`trellis lab down --name ${name}\` first`,
    );
  }
  const leftovers = await listNetns(labPrefix(name));
  if (leftovers.length > 0 || existsSync(paths.stateDir)) {
    const what = leftovers.length > 0 ? `network namespaces ${leftovers.slice(0, 3).join(', ')}${leftovers.length > 3 ? '...' : ''}` : paths.stateDir;
    throw new LabError('EEXIST', `leftovers of lab '${name}' found (${what}): run \`trellis lab sweep\` first`);
  }
}

function notUp(name: string, stateRoot: string): LabError {
  const where = path.resolve(stateRoot) === DEFAULT_STATE_ROOT ? '' : ` under ${stateRoot}`;
  const flag = name === DEFAULT_LAB_NAME ? '' : ` --name ${name}`;
  return new LabError('ENOTUP', `lab '${name}' is not up${where}: run \`trellis lab up -f <manifests>${flag}\``);
}

// The same walk works from lab/cluster (sources under vitest) and dist/lab/cluster (compiled).
function findRepoRoot(): string {
  const from = path.dirname(fileURLToPath(import.meta.url));
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) throw new LabError('ELAB', `no package.json above ${from}: cannot find the trellis checkout`);
  }
}

/** A node's agent's tap socket (agent/tap/server.ts), listed in endpoints.json for `trellis tap`. */
function tapSocket(stateDir: string, node: string): string {
  return path.join(stateDir, 'run', `tap-${node}.sock`);
}

function mainScript(repoRoot: string): string {
  return path.join(repoRoot, 'dist', 'agent', 'main.js');
}

function requireBuilt(repoRoot: string): void {
  if (!existsSync(mainScript(repoRoot))) {
    throw new LabError('ENOTBUILT', `${mainScript(repoRoot)} is missing: run \`npm run build\` (or bring the lab up without agents)`);
  }
}

/** The TCP ports the pod's running containers declare (containerPort). */
function declaredTcpPorts(pod: PlannedPod): number[] {
  const running = new Set(pod.containers.map((c) => c.name));
  return (pod.object.spec?.containers ?? [])
    .filter((c) => running.has(c.name))
    .flatMap((c) => c.ports ?? [])
    .filter((p) => (p.protocol ?? 'TCP') === 'TCP' && typeof p.containerPort === 'number')
    .map((p) => p.containerPort);
}

/** The TCP ports listened on in the netns of process `pid` (its /proc/PID/net/tcp and tcp6, state 0A). */
function listeningPorts(pid: number): Set<number> {
  const ports = new Set<number>();
  for (const table of ['tcp', 'tcp6']) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/net/${table}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[3] === '0A' && f[1]) ports.add(parseInt(f[1].slice(f[1].lastIndexOf(':') + 1), 16));
    }
  }
  return ports;
}
