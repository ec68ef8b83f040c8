// Root-only helpers for the capture tests: pod network namespaces on one bridge, and the agent's capture side
// (Enrolment with real PodProxy listeners, Outbound, nft) built in-process the way agent/app.ts builds it.
import { execFileSync, spawn } from 'node:child_process';
import type net from 'node:net';
import { systemClock } from '../../agent/clock.js';
import { Enrolment } from '../../agent/capture/enrolment.js';
import { InboundSteering } from '../../agent/capture/sk-lookup.js';
import { nftApply } from '../../agent/capture/nft.js';
import { AGENT_MARK } from '../../agent/constants.js';
import { LocalCa } from '../../agent/identity/ca.js';
import { WorkloadCerts } from '../../agent/identity/certs.js';
import { connectInNetns } from '../../agent/native/index.js';
import { Drain } from '../../agent/proxy/drain.js';
import { HbonePool } from '../../agent/proxy/hbone-pool.js';
import { Outbound } from '../../agent/proxy/outbound.js';
import { Connector } from '../../agent/proxy/connector.js';
import { PodProxy } from '../../agent/proxy/pod-proxy.js';
import type { KubeObject, Namespace, Pod } from '../../agent/model/objects.js';
import { Store } from '../../agent/state/store.js';
import type { Workload } from '../../agent/state/workload.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { captureLogger } from '../support/logger.js';

export const TD = 'cluster.local';
export const NODE = 'node-a';

export function run(cmd: string, ...args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A command that may fail; its stdout, or undefined. */
export function tryRun(cmd: string, ...args: string[]): string | undefined {
  try {
    return run(cmd, ...args);
  } catch {
    return undefined;
  }
}

export interface TestPod {
  name: string;
  ns: string;
  path: string;
  ip: string;
}

/** One "node network": a netns with a bridge at .254, pods as netns with a veth on it. */
export class PodNet {
  readonly hub: string;
  readonly hubIp: string;
  private readonly pods: string[] = [];

  constructor(
    readonly prefix: string,
    readonly subnet: string, // e.g. "10.253.7"
  ) {
    this.hub = `${prefix}-hub`;
    this.hubIp = `${subnet}.254`;
  }

  create(): void {
    run('ip', 'netns', 'add', this.hub);
    run('ip', '-n', this.hub, 'link', 'set', 'lo', 'up');
    run('ip', '-n', this.hub, 'link', 'add', 'br0', 'type', 'bridge');
    run('ip', '-n', this.hub, 'addr', 'add', `${this.hubIp}/24`, 'dev', 'br0');
    run('ip', '-n', this.hub, 'link', 'set', 'br0', 'up');
  }

  addPod(name: string, host: number): TestPod {
    const ns = `${this.prefix}-${name}`;
    const ip = `${this.subnet}.${host}`;
    run('ip', 'netns', 'add', ns);
    this.pods.push(ns);
    run('ip', '-n', ns, 'link', 'set', 'lo', 'up');
    run('ip', '-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', `v${host}`, 'netns', this.hub);
    run('ip', '-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0');
    run('ip', '-n', ns, 'link', 'set', 'eth0', 'up');
    run('ip', '-n', this.hub, 'link', 'set', `v${host}`, 'master', 'br0');
    run('ip', '-n', this.hub, 'link', 'set', `v${host}`, 'up');
    return { name, ns, path: `/run/netns/${ns}`, ip };
  }

  removePod(pod: TestPod): void {
    tryRun('ip', 'netns', 'del', pod.ns);
  }

  destroy(): void {
    for (const ns of [...this.pods, this.hub]) tryRun('ip', 'netns', 'del', ns);
  }
}

export function nftTables(ns: string): string {
  return run('ip', 'netns', 'exec', ns, 'nft', 'list', 'tables');
}

/** Listening TCP ports in a netns, as "addr:port". */
export function listening(ns: string): string[] {
  return run('ip', 'netns', 'exec', ns, 'ss', '-ltnH')
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[3])
    .filter((x): x is string => !!x)
    .sort();
}

export const AGENT_LISTENERS = ['0.0.0.0:15006', '0.0.0.0:15008', '127.0.0.1:15001'];

export function namespace(name: string, meshed: boolean): Namespace {
  return {
    apiVersion: 'v1',
    kind: 'Namespace',
    metadata: { name, annotations: meshed ? { 'trellis.dev/mesh': 'enabled' } : {} },
  };
}

export function pod(namespace: string, name: string, opts: { ip?: string; netns?: string; mesh?: 'enabled' | 'disabled'; node?: string } = {}): Pod {
  const annotations: Record<string, string> = {};
  if (opts.mesh) annotations['trellis.dev/mesh'] = opts.mesh;
  if (opts.netns) annotations['trellis.dev/netns'] = opts.netns;
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, uid: `uid-${namespace}-${name}`, labels: { app: name }, annotations },
    spec: { nodeName: opts.node ?? NODE, serviceAccountName: name, containers: [{ name: 'app', image: 'none' }] },
    ...(opts.ip ? { status: { podIP: opts.ip } } : {}),
  } as Pod;
}

/** The agent's capture side, wired as agent/app.ts wires it; the store drives the enrolment. */
export class CaptureAgent {
  readonly metrics = new Metrics({ defaultMetrics: false });
  readonly log = captureLogger();
  readonly store: Store;
  readonly enrolment: Enrolment;
  /** With `inbound: 'sk_lookup'`: the real pods' programs, as eBPF mode links them. */
  readonly steering: InboundSteering | undefined;
  private readonly certs: WorkloadCerts;
  private readonly pool: HbonePool;

  constructor(
    opts: {
      findNetns?: (ip: string) => Promise<string | undefined>;
      probeSources?: string[];
      /** Makes installing capture rules this much slower, so a test can tell "waited for capture" from "was fast". */
      rulesDelayMs?: number;
      /** eBPF mode: inbound by each pod's sk_lookup program (loaded and linked for real). */
      inbound?: 'nft' | 'sk_lookup';
    } = {},
  ) {
    const { logger } = this.log;
    const ca = LocalCa.generate({ trustDomain: TD });
    this.certs = new WorkloadCerts({ signer: ca, trustBundle: ca.rootCertPem, ttlMs: 3_600_000, clock: systemClock, logger });
    this.store = new Store({ trustDomain: TD, logger });
    const dial = (p: Workload, host: string, port: number): net.Socket =>
      connectInNetns(p.netnsPath!, { host, port, mark: AGENT_MARK, timeoutMs: 3000 });
    this.pool = new HbonePool({ certs: this.certs, dial, metrics: this.metrics, logger, clock: systemClock, connectTimeoutMs: 3000, idleMs: 60_000 });
    const state = () => this.store.current();
    const drain = new Drain();
    const outbound = new Outbound({
      state,
      connector: new Connector({ pool: this.pool, dial }),
      metrics: this.metrics,
      logger,
      accessLog: logger.child({ log: 'access' }),
      drain,
      random: Math.random,
      detect: { detectTimeoutMs: 100, opaquePorts: new Set() },
    });
    this.steering = opts.inbound === 'sk_lookup' ? new InboundSteering({ probeSources: opts.probeSources ?? [], logger }) : undefined;
    const steering = this.steering;
    this.enrolment = new Enrolment({
      node: NODE,
      probeSources: opts.probeSources ?? [],
      ...(steering && { steerInbound: (p: Workload, fd: number) => steering.attach(p, fd) }),
      openListeners: (p) =>
        PodProxy.open(p, {
          trustDomain: TD,
          certs: this.certs,
          outbound,
          state,
          dialApp: dial,
          metrics: this.metrics,
          logger,
          accessLog: logger.child({ log: 'access' }),
          drain,
        }),
      applyRules: async (path, ruleset) => {
        if (opts.rulesDelayMs && ruleset.includes('redirect')) await new Promise((r) => setTimeout(r, opts.rulesDelayMs));
        return nftApply(path, ruleset);
      },
      findNetns: opts.findNetns,
      metrics: this.metrics,
      logger,
    });
    this.store.subscribe((next) => void this.enrolment.reconcile(next));
  }

  /** Replaces the state and waits until the enrolment has applied it. */
  async apply(objects: KubeObject[]): Promise<void> {
    await this.enrolment.reconcile(this.store.replace(objects));
  }

  accessLines(): Record<string, unknown>[] {
    return this.log.lines().filter((l) => l.log === 'access');
  }

  close(): void {
    this.enrolment.close();
    this.steering?.close();
    this.pool.close();
    this.certs.close();
  }
}

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command without blocking the event loop (the agent under test lives in this process). */
export function runAsync(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string | Buffer; timeoutMs?: number } = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: performance.now() - started });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}
