// A real Kubernetes control plane for the lab: etcd, kube-apiserver and kube-controller-manager, built from source
// (binaries.ts), run inside one network namespace (the lab's fabric, or one of its own), with certificates made
// in-process (certs.ts). Started step by step with bounded waits; a failed step names itself and shows the last
// lines of that component's log; stopped in reverse order (controllers, API server, etcd), always.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { stringify } from 'yaml';
import { connectInNetns } from '../../agent/native/index.js';
import { LabError } from '../errors.js';
import { CONTROL_PLANE_IP, LAB_ENV, SERVICE_NET, checkLabName, labPrefix, netnsPath as netnsPathOf } from '../cluster/names.js';
import { isAlive, procStat, sleep, spawnDetached, terminate, type ProcRecord } from '../cluster/procs.js';
import { must, run, type RunOptions, type RunResult } from '../cluster/run.js';
import { deleteNetns } from '../cluster/topology.js';
import { k8sBinaries, type K8sBinaries } from './binaries.js';
import { makePki, type ControlPlanePki } from './certs.js';
import { KubeClient } from './client.js';

export const API_PORT = 6443;
const ETCD_PORT = 2379;
const KCM_PORT = 10257;
/** The first address of the Service range: the `kubernetes` Service. */
export const KUBERNETES_SERVICE_IP = '10.96.0.1';
/** The issuer (and default audience) of service-account tokens, as on a kubeadm cluster. */
export const SERVICE_ACCOUNT_ISSUER = 'https://kubernetes.default.svc.cluster.local';

/** The controllers the lab needs; no scheduler, node lifecycle, DaemonSet or ReplicaSet controller (nothing would run their pods). */
export const CONTROLLERS = [
  'endpointslice-controller',
  'serviceaccount-controller',
  'serviceaccount-token-controller',
  'namespace-controller',
  'garbage-collector-controller',
  'root-ca-certificate-publisher-controller',
] as const;

export type Component = 'etcd' | 'kube-apiserver' | 'kube-controller-manager';
const COMPONENTS: readonly Component[] = ['etcd', 'kube-apiserver', 'kube-controller-manager'];

/** Bounded waits, per step; measured starts are 0.1–1 s, 2–3 s and 0.2–0.3 s on 2 idle cores. */
const READY_TIMEOUT_MS: Record<Component, number> = { etcd: 20_000, 'kube-apiserver': 90_000, 'kube-controller-manager': 30_000 };
/** Longer than the API server's own shutdown (1.1 s measured) with room for a loaded machine. */
const STOP_GRACE_MS = 10_000;
const LOG_TAIL_LINES = 25;

export interface ControlPlaneOptions {
  /** The lab it belongs to: its daemons carry the lab's marker, so `trellis lab sweep` finds leftovers. */
  lab: string;
  /** Work directory: certificates, kubeconfigs, etcd's data, logs. Created if missing. */
  dir: string;
  /**
   * The netns to run in, holding `ip` on one of its interfaces (the lab's fabric). Absent: a netns of its own,
   * `trl-<lab>-cp`, with `ip` on its loopback, deleted again by stop().
   */
  netns?: string;
  /** The address the API server advertises and serves on (default CONTROL_PLANE_IP, 172.30.0.2). */
  ip?: string;
  /** Record every request of users other than the control plane's own (JSON lines in auditLogFile). */
  audit?: boolean;
  /** The controller manager's client rate (default: its own, 20/s with bursts of 30). */
  controllerQps?: number;
  /** Told about long steps (a build) and each component as it comes up. */
  log?: (line: string) => void;
}

/** What a lab's state records, so that another process can stop the control plane. */
export interface ControlPlaneRecord {
  dir: string;
  netns: string;
  ownNetns: boolean;
  ip: string;
  processes: Partial<Record<Component, ProcRecord>>;
}

export class ControlPlane {
  readonly dir: string;
  readonly netns: string;
  readonly netnsPath: string;
  readonly ip: string;
  readonly lab: string;
  /** Admin kubeconfig (client certificate, O=system:masters); its server, https://<ip>:6443, is reachable from the control plane's netns and, in a lab, from every node. */
  readonly adminKubeconfig: string;
  readonly auditLogFile: string | undefined;
  readonly bins: K8sBinaries;
  readonly pki: ControlPlanePki;
  /** Milliseconds each start step took. */
  readonly timings: Record<string, number> = {};
  private readonly opts: ControlPlaneOptions;
  private readonly ownNetns: boolean;
  private readonly procs: Partial<Record<Component, ProcRecord>> = {};
  private adminClient: KubeClient | undefined;

  private constructor(opts: ControlPlaneOptions, bins: K8sBinaries, pki: ControlPlanePki, ownNetns: boolean) {
    this.opts = opts;
    this.lab = opts.lab;
    this.dir = path.resolve(opts.dir);
    this.ownNetns = ownNetns;
    this.netns = opts.netns ?? ownNetnsName(opts.lab);
    this.netnsPath = netnsPathOf(this.netns);
    this.ip = opts.ip ?? CONTROL_PLANE_IP;
    this.bins = bins;
    this.pki = pki;
    this.adminKubeconfig = path.join(this.dir, 'admin.kubeconfig');
    this.auditLogFile = opts.audit ? path.join(this.dir, 'audit.log') : undefined;
  }

  /** Starts etcd, kube-apiserver and kube-controller-manager and waits until each is ready. On failure it stops what it started. */
  static async start(opts: ControlPlaneOptions): Promise<ControlPlane> {
    checkLabName(opts.lab);
    const t0 = Date.now();
    const log = opts.log ?? (() => {});
    const bins = await k8sBinaries(log);
    const tBins = Date.now();
    mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
    const ip = opts.ip ?? CONTROL_PLANE_IP;
    const pki = await makePki({ advertiseIp: ip, kubernetesServiceIp: KUBERNETES_SERVICE_IP });
    const cp = new ControlPlane(opts, bins, pki, opts.netns === undefined);
    cp.timings.binaries = tBins - t0;
    cp.timings.pki = Date.now() - tBins;
    try {
      if (cp.ownNetns) await cp.step('create its netns', () => cp.makeNetns());
      cp.writeFiles();
      await cp.startComponent('etcd');
      await cp.startComponent('kube-apiserver');
      await cp.startComponent('kube-controller-manager');
    } catch (err) {
      await cp.stop().catch(() => {});
      throw err;
    }
    cp.timings.total = Date.now() - t0;
    log(
      `control plane: up in ${(cp.timings.total / 1000).toFixed(1)} s (etcd ${cp.timings.etcd} ms, kube-apiserver ${cp.timings['kube-apiserver']} ms, ` +
        `kube-controller-manager ${cp.timings['kube-controller-manager']} ms) in netns ${cp.netns}, API https://${ip}:${API_PORT}`,
    );
    return cp;
  }

  /** Stops a control plane another process started, from its record (`lab down` of a lab brought up elsewhere). */
  static async stopRecorded(rec: ControlPlaneRecord): Promise<void> {
    await stopProcesses(rec.processes);
    if (rec.ownNetns) await deleteNetns([rec.netns]);
  }

  /** The admin's client of a control plane another process started, from its record and the files in its directory. */
  static adminClient(rec: ControlPlaneRecord): KubeClient {
    const read = (name: string) => readFileSync(path.join(rec.dir, name), 'utf8');
    return new KubeClient({
      netnsPath: netnsPathOf(rec.netns),
      host: '127.0.0.1',
      port: API_PORT,
      credentials: { caPem: read('ca.crt'), certPem: read('admin.crt'), keyPem: read('admin.key') },
    });
  }

  record(): ControlPlaneRecord {
    return { dir: this.dir, netns: this.netns, ownNetns: this.ownNetns, ip: this.ip, processes: { ...this.procs } };
  }

  /** The harness's client, as the admin. */
  get admin(): KubeClient {
    this.adminClient ??= this.client({ caPem: this.pki.ca.certPem, certPem: this.pki.admin.certPem, keyPem: this.pki.admin.keyPem });
    return this.adminClient;
  }

  /** A client with other credentials (a service account's token, say). Close it when done. */
  client(credentials: ConstructorParameters<typeof KubeClient>[0]['credentials'], opts: { maxSockets?: number } = {}): KubeClient {
    return new KubeClient({ netnsPath: this.netnsPath, host: '127.0.0.1', port: API_PORT, credentials, ...opts });
  }

  /**
   * Writes a kubeconfig for a bearer token (default server https://<ip>:6443; a test on the host passes the
   * address of its forwarder). Returns the file.
   */
  writeKubeconfig(file: string, opts: { token: string; server?: string }): string {
    writeKubeconfigFile(file, { server: opts.server ?? this.server, caPem: this.pki.ca.certPem, user: { token: opts.token } });
    return file;
  }

  /** https://<ip>:6443 */
  get server(): string {
    return `https://${this.ip}:${API_PORT}`;
  }

  /** Runs kubectl as the admin inside the control plane's netns. */
  kubectl(args: string[], opts: RunOptions = {}): Promise<RunResult> {
    return this.inNetns(this.bins.path('kubectl'), ['--kubeconfig', this.adminKubeconfig, '--cache-dir', path.join(this.dir, 'kubectl-cache'), ...args], opts);
  }

  /** Runs etcdctl against this etcd. */
  etcdctl(args: string[], opts: RunOptions = {}): Promise<RunResult> {
    return this.inNetns(this.bins.path('etcdctl'), [`--endpoints=http://127.0.0.1:${ETCD_PORT}`, ...args], opts);
  }

  /**
   * Compacts etcd's history up to its current revision and returns that revision: a watch or list continuing
   * from an older resourceVersion is then answered 410 Gone wherever the API server has to ask etcd.
   */
  async compactEtcd(): Promise<number> {
    const status = await this.etcdctl(['endpoint', 'status', '-w', 'json']);
    if (status.code !== 0) throw new LabError('ECONTROLPLANE', `etcdctl endpoint status: ${status.stderr.trim()}`);
    const revision = Number((JSON.parse(status.stdout) as { Status: { header: { revision: number } } }[])[0]!.Status.header.revision);
    const r = await this.etcdctl(['compact', String(revision), '--physical']);
    if (r.code !== 0) throw new LabError('ECONTROLPLANE', `etcdctl compact ${revision}: ${r.stderr.trim()}`);
    return revision;
  }

  /**
   * Stops kube-apiserver alone (an API outage); etcd and the controllers keep running. With the controller
   * manager's watches open, its graceful shutdown waits on them (over 10 s measured), so it gets `graceMs`.
   */
  async stopApiServer(graceMs = 2_000): Promise<void> {
    await stopProcesses({ 'kube-apiserver': this.procs['kube-apiserver'] }, graceMs);
    delete this.procs['kube-apiserver'];
  }

  /** Starts kube-apiserver again after stopApiServer() and waits until it is ready. */
  async startApiServer(): Promise<void> {
    if (this.procs['kube-apiserver'] && isAlive(this.procs['kube-apiserver'])) throw new LabError('EEXIST', 'kube-apiserver is already running');
    await this.startComponent('kube-apiserver');
  }

  /** Stops (SIGSTOP) or resumes (SIGCONT) kube-apiserver: a hung server that accepts connections and answers nothing. */
  freezeApiServer(frozen: boolean): void {
    const rec = this.procs['kube-apiserver'];
    if (!rec || !isAlive(rec)) throw new LabError('ENOTUP', 'kube-apiserver is not running');
    process.kill(rec.pid, frozen ? 'SIGSTOP' : 'SIGCONT');
  }

  /** Resident memory of each running component, in MB. */
  memoryMb(): Partial<Record<Component, number>> {
    const out: Partial<Record<Component, number>> = {};
    for (const c of COMPONENTS) {
      const rec = this.procs[c];
      if (!rec || !isAlive(rec)) continue;
      try {
        const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${rec.pid}/status`, 'utf8'));
        if (m) out[c] = Math.round(Number(m[1]) / 1024);
      } catch {
        // Exited meanwhile.
      }
    }
    return out;
  }

  /** The last lines of a component's log. */
  logTail(component: Component, lines = LOG_TAIL_LINES): string {
    try {
      return readFileSync(this.logFile(component), 'utf8').trimEnd().split('\n').slice(-lines).join('\n') || '(the log is empty)';
    } catch {
      return '(no log)';
    }
  }

  logFile(component: Component): string {
    return path.join(this.dir, `${component}.log`);
  }

  /** Stops everything in reverse order (controllers, API server, etcd), killing each process group; idempotent. */
  async stop(): Promise<void> {
    this.adminClient?.close();
    this.adminClient = undefined;
    await stopProcesses(this.procs);
    for (const c of COMPONENTS) delete this.procs[c];
    if (this.ownNetns) await deleteNetns([this.netns]);
  }

  // ---- start steps ----

  private async step<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof LabError && err.code === 'ECONTROLPLANE') throw err;
      throw new LabError('ECONTROLPLANE', `control plane: step "${what}" failed: ${(err as Error).message}`, { cause: err });
    }
  }

  private async makeNetns(): Promise<void> {
    await must(`create netns ${this.netns}`, 'ip', ['netns', 'add', this.netns]);
    await must(`set lo up in ${this.netns}`, 'ip', ['-n', this.netns, 'link', 'set', 'lo', 'up']);
    // Private to this netns: the API server needs a non-loopback address to advertise (see README, pitfalls).
    await must(`add ${this.ip} to lo in ${this.netns}`, 'ip', ['-n', this.netns, 'addr', 'add', `${this.ip}/32`, 'dev', 'lo']);
  }

  private file(name: string): string {
    return path.join(this.dir, name);
  }

  private writeFiles(): void {
    const p = this.pki;
    const secret = (name: string, text: string) => writeFileSync(this.file(name), text, { mode: 0o600 });
    secret('ca.crt', p.ca.certPem);
    secret('ca.key', p.ca.keyPem);
    secret('apiserver.crt', p.apiserver.certPem);
    secret('apiserver.key', p.apiserver.keyPem);
    secret('admin.crt', p.admin.certPem);
    secret('admin.key', p.admin.keyPem);
    secret('sa.key', p.serviceAccount.keyPem);
    secret('sa.pub', p.serviceAccount.publicPem);
    writeKubeconfigFile(this.adminKubeconfig, { server: this.server, caPem: p.ca.certPem, user: { certPem: p.admin.certPem, keyPem: p.admin.keyPem } });
    writeKubeconfigFile(this.file('kcm.kubeconfig'), {
      server: `https://127.0.0.1:${API_PORT}`,
      caPem: p.ca.certPem,
      user: { certPem: p.controllerManager.certPem, keyPem: p.controllerManager.keyPem },
    });
    if (this.auditLogFile) {
      // The control plane's own traffic (controllers, the API server's loopback client) is left out.
      const policy = {
        apiVersion: 'audit.k8s.io/v1',
        kind: 'Policy',
        omitStages: ['RequestReceived'],
        rules: [
          { level: 'None', users: ['system:apiserver', 'system:kube-controller-manager'] },
          { level: 'None', userGroups: ['system:serviceaccounts:kube-system'] },
          { level: 'Metadata' },
        ],
      };
      writeFileSync(this.file('audit-policy.yaml'), stringify(policy));
    }
  }

  private argv(component: Component): string[] {
    const f = (n: string) => this.file(n);
    switch (component) {
      case 'etcd':
        return [
          '--name=lab',
          `--data-dir=${f('etcd')}`,
          `--listen-client-urls=http://127.0.0.1:${ETCD_PORT}`,
          `--advertise-client-urls=http://127.0.0.1:${ETCD_PORT}`,
          '--listen-peer-urls=http://127.0.0.1:2380',
          '--initial-advertise-peer-urls=http://127.0.0.1:2380',
          '--initial-cluster=lab=http://127.0.0.1:2380',
          '--listen-metrics-urls=',
          '--log-level=warn',
        ];
      case 'kube-apiserver':
        return [
          `--etcd-servers=http://127.0.0.1:${ETCD_PORT}`,
          '--bind-address=0.0.0.0',
          `--secure-port=${API_PORT}`,
          `--advertise-address=${this.ip}`,
          `--tls-cert-file=${f('apiserver.crt')}`,
          `--tls-private-key-file=${f('apiserver.key')}`,
          `--client-ca-file=${f('ca.crt')}`,
          `--service-account-issuer=${SERVICE_ACCOUNT_ISSUER}`,
          `--service-account-key-file=${f('sa.pub')}`,
          `--service-account-signing-key-file=${f('sa.key')}`,
          '--authorization-mode=Node,RBAC',
          `--service-cluster-ip-range=${SERVICE_NET}`,
          '--profiling=false',
          ...(this.auditLogFile
            ? [`--audit-policy-file=${f('audit-policy.yaml')}`, `--audit-log-path=${this.auditLogFile}`, '--audit-log-format=json', '--audit-log-maxsize=0']
            : []),
        ];
      case 'kube-controller-manager':
        return [
          `--kubeconfig=${f('kcm.kubeconfig')}`,
          `--controllers=${CONTROLLERS.join(',')}`,
          '--use-service-account-credentials',
          `--service-account-private-key-file=${f('sa.key')}`,
          `--root-ca-file=${f('ca.crt')}`,
          '--leader-elect=false',
          '--bind-address=127.0.0.1',
          `--secure-port=${KCM_PORT}`,
          `--cert-dir=${f('kcm-certs')}`,
          '--profiling=false',
          ...(this.opts.controllerQps ? [`--kube-api-qps=${this.opts.controllerQps}`, `--kube-api-burst=${this.opts.controllerQps * 2}`] : []),
        ];
    }
  }

  private async startComponent(component: Component): Promise<void> {
    const started = Date.now();
    const bin = this.bins.path(component);
    // nsenter execs the daemon, so the recorded pid is the daemon's own (`ip netns exec` would fork).
    const { record } = spawnDetached(['nsenter', `--net=${this.netnsPath}`, '--', bin, ...this.argv(component)], {
      env: { ...process.env, [LAB_ENV]: this.lab },
      logFile: this.logFile(component),
    });
    let rec: ProcRecord;
    try {
      rec = await record;
    } catch (err) {
      throw new LabError('ECONTROLPLANE', `control plane: step "start ${component}" failed: ${(err as Error).message}`, { cause: err });
    }
    this.procs[component] = rec;
    await this.waitReady(component, rec);
    this.timings[component] = Date.now() - started;
    this.opts.log?.(`control plane: ${component} ready in ${this.timings[component]} ms`);
  }

  private async waitReady(component: Component, rec: ProcRecord): Promise<void> {
    const timeoutMs = READY_TIMEOUT_MS[component];
    const deadline = Date.now() + timeoutMs;
    let last = 'no answer yet';
    for (;;) {
      if (!isAlive(rec)) {
        throw new LabError(
          'ECONTROLPLANE',
          `control plane: step "start ${component}" failed: it exited before it was ready (log ${this.logFile(component)}); last lines:\n${this.logTail(component)}`,
        );
      }
      try {
        const r = await this.probe(component);
        if (r.ok) return;
        last = r.detail;
      } catch (err) {
        last = (err as Error).message;
      }
      if (Date.now() >= deadline) {
        throw new LabError(
          'ECONTROLPLANE',
          `control plane: step "start ${component}" failed: not ready after ${timeoutMs / 1000} s (last check: ${last}); ` +
            `log ${this.logFile(component)}, last lines:\n${this.logTail(component)}`,
        );
      }
      await sleep(100);
    }
  }

  private async probe(component: Component): Promise<{ ok: boolean; detail: string }> {
    if (component === 'etcd') {
      const r = await getInNetns(this.netnsPath, { port: ETCD_PORT, path: '/health' });
      return { ok: r.status === 200 && /"health":\s*"true"/.test(r.body), detail: `GET /health: ${r.status} ${r.body.trim().slice(0, 200)}` };
    }
    if (component === 'kube-apiserver') {
      const r = await getInNetns(this.netnsPath, {
        port: API_PORT,
        path: '/readyz',
        tls: { ca: this.pki.ca.certPem, cert: this.pki.admin.certPem, key: this.pki.admin.keyPem },
      });
      return { ok: r.status === 200, detail: `GET /readyz: ${r.status} ${r.body.trim().split('\n').filter((l) => l.includes('failed')).join('; ').slice(0, 300)}` };
    }
    const r = await getInNetns(this.netnsPath, { port: KCM_PORT, path: '/healthz', tls: 'insecure' });
    return { ok: r.status === 200, detail: `GET /healthz: ${r.status} ${r.body.trim().slice(0, 200)}` };
  }

  private inNetns(file: string, args: string[], opts: RunOptions): Promise<RunResult> {
    return run('nsenter', [`--net=${this.netnsPath}`, '--', file, ...args], { timeoutMs: 120_000, ...opts, env: { ...process.env, [LAB_ENV]: this.lab, ...opts.env } });
  }
}

function ownNetnsName(lab: string): string {
  return `${labPrefix(lab)}cp`;
}

/**
 * One SIGTERM to each process group in reverse start order, waiting for each; SIGKILL after the grace period.
 * One signal only: a second SIGTERM makes kube-apiserver skip its graceful shutdown.
 */
async function stopProcesses(procs: Partial<Record<Component, ProcRecord>>, graceMs = STOP_GRACE_MS): Promise<void> {
  for (const c of [...COMPONENTS].reverse()) {
    const rec = procs[c];
    if (!rec || !isAlive(rec)) continue;
    // A process still leading its own group (as spawnDetached made it) is signalled as a group.
    const target = procStat(rec.pid)?.pgrp === rec.pid ? -rec.pid : rec.pid;
    signal(target, 'SIGCONT');
    signal(target, 'SIGTERM');
    const deadline = Date.now() + graceMs;
    while (isAlive(rec) && Date.now() < deadline) await sleep(25);
    if (isAlive(rec)) await terminate([{ ...rec, group: target < 0 }], 0);
  }
}

function signal(target: number, sig: NodeJS.Signals): void {
  try {
    process.kill(target, sig);
  } catch {
    // Gone already.
  }
}

interface KubeconfigUser {
  token?: string;
  certPem?: string;
  keyPem?: string;
}

/** A kubeconfig with the CA and the credentials embedded (client-node and kubectl both read it). */
export function writeKubeconfigFile(file: string, opts: { server: string; caPem: string; user: KubeconfigUser; namespace?: string }): void {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const user: Record<string, string> = {};
  if (opts.user.token !== undefined) user.token = opts.user.token;
  if (opts.user.certPem !== undefined) user['client-certificate-data'] = b64(opts.user.certPem);
  if (opts.user.keyPem !== undefined) user['client-key-data'] = b64(opts.user.keyPem);
  const config = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'lab', cluster: { server: opts.server, 'certificate-authority-data': b64(opts.caPem) } }],
    users: [{ name: 'lab', user }],
    contexts: [{ name: 'lab', context: { cluster: 'lab', user: 'lab', ...(opts.namespace && { namespace: opts.namespace }) } }],
    'current-context': 'lab',
  };
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, stringify(config), { mode: 0o600 });
}

/** GET on 127.0.0.1:port inside a netns, plain or over TLS (verified against `ca`, or not at all). */
function getInNetns(
  netnsPath: string,
  opts: { port: number; path: string; tls?: { ca: string; cert?: string; key?: string } | 'insecure'; timeoutMs?: number },
): Promise<{ status: number; body: string }> {
  const timeoutMs = opts.timeoutMs ?? 3_000;
  return new Promise((resolve, reject) => {
    const raw = () => connectInNetns(netnsPath, { host: '127.0.0.1', port: opts.port, timeoutMs });
    const onResponse = (res: http.IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    };
    const t = opts.tls;
    const req =
      t === undefined
        ? http.get({ host: '127.0.0.1', port: opts.port, path: opts.path, createConnection: raw }, onResponse)
        : https.get(
            {
              host: '127.0.0.1',
              port: opts.port,
              path: opts.path,
              createConnection: () =>
                tls.connect({
                  socket: raw(),
                  ...(t === 'insecure' ? { rejectUnauthorized: false } : { ca: t.ca, cert: t.cert, key: t.key, servername: 'localhost' }),
                }),
            },
            onResponse,
          );
    // A timer of its own: the socket's idle timeout is reset by connectInNetns once connected.
    const timer = setTimeout(() => req.destroy(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs);
    req.on('close', () => clearTimeout(timer));
    req.on('error', reject);
  });
}
