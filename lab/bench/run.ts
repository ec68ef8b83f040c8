// Bench: `npm run bench` end to end. Builds its own lab (client pod on node A, server pod on node B, meshed
// and plain), starts HAProxy beside it, pins load and proxies to separate CPUs, runs every measurement on
// every path (interleaved, repeated), prints the table and writes the JSON. Always tears the lab down.
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { HBONE_PORT } from '../../agent/constants.js';
import { LabError } from '../errors.js';
import { Lab } from '../cluster/lab.js';
import { procStat } from '../cluster/procs.js';
import { objectFileName } from '../cluster/realized.js';
import { run } from '../cluster/run.js';
import { connectInNetns } from '../../agent/native/index.js';
import { observe as observeTap, type TapStream } from '../../viz/tap/client.js';
import { ChildLines } from './child-lines.js';
import { plainPodCreds, startHaproxies, type Layer } from './haproxy.js';
import { MESH_CLIENT, selectPaths, rotation, type PathDef, type ProxyKind, type Targets } from './paths.js';
import { h2loadArgs, parseH2load } from './h2load.js';
import { installCommand, installPrereqs, missingPrereqs } from './prereqs.js';
import { measurePods } from './pods.js';
import { RESTART_METRICS, measureRestarts } from './restart.js';
import { CAPTURE_METRICS, measureCapture } from './capture.js';
import { ProcReader } from './procfs.js';
import { parsePrometheus, sumOf } from '../load/promtext.js';
import { benchJson, formatReport } from './report.js';
import { latencyMetricNames, metricCatalogue, Results } from './results.js';
import { OTLP_SINK_PORT, OtlpSink } from './otlp-sink.js';
import { ScaleBench, SCALE_NAMESPACE } from './scale.js';
import { KUBE_SCALE_METRICS, measureKubeScale } from './scale-kube.js';
import { describeTls, probeNodeDefaults, probeTls, type TlsCreds, type TlsParams } from './tls-probe.js';
import { BODY_BYTES, HAPROXY_PORTS, MESH_SERVER, NODE_A, NODE_B, PLAIN_SERVER, benchManifests, extraObjects, handshakeManifests, pinned, resolveTargets } from './topology.js';

export const MEASUREMENTS = ['memory', 'latency', 'max-rps', 'tap', 'bulk', 'conn-rate', 'scale', 'scale-kube', 'scale-out', 'pods', 'restart', 'capture'] as const;
/** Left out of --quick unless named in --only: config scale through a real API server takes many minutes. */
export const SLOW_MEASUREMENTS: readonly MeasurementId[] = ['scale-kube'];
export type MeasurementId = (typeof MEASUREMENTS)[number];

export interface BenchOptions {
  quick: boolean;
  /** Runs of each measurement on each path; default 3 (1 with quick). */
  repeats?: number;
  json?: string;
  install: boolean;
  /** Lab name (netns prefix trl-<name>-). */
  name: string;
  paths?: string[];
  skip: MeasurementId[];
  /** Leave the agents' key exchange at Node's default instead of the group HAProxy can do too. */
  agentTlsDefault: boolean;
  logLevel: string;
  /** Extra flags for every agent (e.g. `--drift-interval 0`), stated in the report. */
  agentArgs?: string[];
  /** Services in the config-scale batches (each with 5 endpoints); default 10 000. */
  scaleServices?: number;
  /** The main lab's agents trace at this sample ratio, exporting OTLP/gRPC to an in-bench sink (otlp-sink.ts). */
  tracing?: number;
  /** The report (stdout). */
  out: (text: string) => void;
  /** Progress and errors (stderr). */
  log: (line: string) => void;
}

interface Plan {
  rates: number[];
  connections: number;
  warmupS: number;
  /** Closed-loop load on each path before its first latency run (JIT tiering, pools, caches), not measured. */
  primeS: number;
  latencyS: number;
  maxRpsS: number;
  bulkS: number;
  connS: number;
  idleConns: number;
  scale: { services: number; endpointsPerService: number };
  repeats: number;
  scaleRepeats: number;
}

function plan(opts: BenchOptions): Plan {
  const repeats = opts.repeats ?? (opts.quick ? 1 : 3);
  const common = { rates: [1000, 4000], connections: 16, idleConns: 1000, scale: { services: opts.scaleServices ?? 10_000, endpointsPerService: 5 }, repeats };
  return opts.quick
    ? { ...common, warmupS: 1, primeS: 3, latencyS: 3, maxRpsS: 2, bulkS: 2, connS: 2, scaleRepeats: 1 }
    : { ...common, warmupS: 2, primeS: 5, latencyS: 10, maxRpsS: 5, bulkS: 5, connS: 5, scaleRepeats: repeats };
}

/** What each TLS path negotiated, from handshakes of our own (reported, and in the JSON's machine.tls). */
interface TlsSeen {
  agents: TlsParams;
  /** Two Node endpoints with Node's defaults, for comparison. */
  node_default: TlsParams;
  'haproxy-l4'?: TlsParams;
  'haproxy-l7'?: TlsParams;
  'haproxy-h2'?: TlsParams;
}

/** Quiet time before an idle memory sample, on every path: longer than the agents' memory-trim period. */
const IDLE_SETTLE_MS = 12_000;

/** The key exchange group HAProxy (OpenSSL 3.0) and the agents can both do. */
const COMMON_GROUP = 'X25519';

/**
 * The pinned runs compare one thread against one: HAProxy runs nbthread 1, so the agents run --workers 1 (their
 * default is a thread per CPU). scale-out compares both on every CPU, unpinned: --workers N and nbthread N.
 */
const PINNED_AGENT_ARGS = ['--workers', '1'];

/** conn_per_s through the mesh: agents that give each connection a session (and TLS handshake) of its own. */
const HANDSHAKE_AGENT_ARGS = ['--hbone-max-streams-per-session', '1'];

/** Exit code: 0 when it ran, 1 when a proxy died during the run (the report says which), 2 when something it needs is missing. */
export async function runBench(opts: BenchOptions): Promise<number> {
  if (process.getuid?.() !== 0) {
    opts.log('trellis bench: needs root (it builds network namespaces): run it with sudo');
    return 2;
  }
  const missing = missingPrereqs();
  if (missing.length > 0) {
    const list = missing.map((m) => `${m.command} (Debian package ${m.pkg}: ${m.why})`).join('; ');
    if (!opts.install) {
      opts.log(`trellis bench: missing ${list}. Install with:\n${installCommand(missing)}\nor rerun with --install`);
      return 2;
    }
    opts.log(`trellis bench: installing ${list}`);
    const code = await installPrereqs(missing, opts.log);
    const still = missingPrereqs();
    if (code !== 0 || still.length > 0) {
      opts.log(`trellis bench: installation failed (apt-get exit ${code}); install by hand:\n${installCommand(still.length ? still : missing)}`);
      return 2;
    }
  }
  const bench = new Bench(opts, plan(opts));
  const onSignal = (signal: NodeJS.Signals): void => {
    opts.log(`trellis bench: ${signal}: tearing the lab down`);
    void bench.teardown().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    await bench.run();
    return bench.proxiesDied ? 1 : 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await bench.teardown();
  }
}

class Bench {
  private lab: Lab | undefined;
  /** With --tracing: where the main lab's agents export their spans. */
  private sink: OtlpSink | undefined;
  /** The second lab, for conn_per_s on the mesh path (HANDSHAKE_AGENT_ARGS); up from its first use. */
  private handshake: Promise<{ lab: Lab; agentPids: number[]; target: string }> | undefined;
  private torn: Promise<void> | undefined;
  /** Labs of single measurements (scale-out), taken down with the others. */
  private readonly extraLabs: Lab[] = [];
  private readonly results = new Results();
  private readonly warnings: string[] = [];
  private readonly procs = new ProcReader();
  private readonly cpus = os.availableParallelism();
  /** CPU of load generators and servers, and of the proxies; undefined on a 1-CPU machine (unpinned). */
  private readonly loadCpu: number | undefined;
  private readonly proxyCpu: number | undefined;
  /** The selected paths; a capture path the node cannot run is swapped for a copy that says why. */
  private paths: PathDef[];
  private proxyPids: Record<ProxyKind, number[]> = { none: [], 'haproxy-l4': [], 'haproxy-l7': [], 'haproxy-h2': [], agents: [] };
  private agentPids: Record<string, number> = {};
  private targets: Targets | undefined;
  private readonly machine: Record<string, unknown> = {};
  /** Proxies that exited during the run, and what they left in their logs. */
  private readonly dead = new Map<ProxyKind, string>();

  constructor(
    private readonly opts: BenchOptions,
    private readonly plan: Plan,
  ) {
    this.paths = selectPaths(opts.paths);
    if (this.cpus >= 2) {
      this.loadCpu = 0;
      this.proxyCpu = 1;
    }
  }

  async run(): Promise<void> {
    const started = Date.now();
    this.machine.started_at = new Date(started).toISOString();
    const { log } = this.opts;
    log(`trellis bench${this.opts.quick ? ' --quick' : ''}: ${this.cpus} CPUs; building lab '${this.opts.name}' ...`);
    const lab = await this.upLab();
    this.targets = resolveTargets(lab);
    await this.pinAgents(lab);
    // The bench's own process (sampling /proc, spawning the tools) keeps off the proxy CPU; what it spawns from
    // here on starts there too, and every proxy among them is pinned on its own.
    if (this.loadCpu !== undefined) await pin(process.pid, this.loadCpu, 'the bench itself');

    const creds = await plainPodCreds(lab);
    const tls: TlsSeen = await this.probeAgents(lab, creds.client);
    const runnable = this.paths.filter((p) => !p.unavailable && !p.only);
    if (runnable.some((p) => p.proxy.startsWith('haproxy-'))) {
      // HAProxy's OpenSSL 3.0 has no post-quantum hybrid groups; with --agent-tls-default the agents may use one.
      const group = /MLKEM/i.test(tls.agents.group) ? COMMON_GROUP : tls.agents.group;
      const pids = await startHaproxies(lab, {
        dir: path.join(lab.stateDir, 'bench-haproxy'),
        cpu: this.proxyCpu,
        ciphersuite: tls.agents.cipher,
        group,
        creds,
      });
      this.proxyPids['haproxy-l4'] = pids.l4;
      this.proxyPids['haproxy-l7'] = pids.l7;
      this.proxyPids['haproxy-h2'] = pids.h2;
      for (const layer of ['l4', 'l7', 'h2'] as const) tls[`haproxy-${layer}`] = await this.probeHaproxy(lab, layer, creds.client);
    }
    await this.waitPathsReady(lab, runnable);
    this.describeMachine(tls);

    for (let r = 0; r < this.plan.repeats; r++) {
      log(`repeat ${r + 1}/${this.plan.repeats}`);
      await this.repeat(lab, rotation(runnable, r), r === 0);
    }
    if (!this.opts.skip.includes('scale') && runnable.some((p) => p.proxy === 'agents')) await this.scale(lab);
    if (!this.opts.skip.includes('scale-kube') && runnable.some((p) => p.proxy === 'agents')) {
      const mesh = runnable.find((p) => p.proxy === 'agents')!;
      const kube = { name: `${this.opts.name.slice(0, 7)}${this.opts.name.endsWith('k') ? 'y' : 'k'}`, size: this.plan.scale, probes: this.plan.scaleRepeats, loadCpu: this.loadCpu, proxyCpu: this.proxyCpu, agentArgs: this.agentArgs(), logLevel: this.opts.logLevel };
      await this.guard(mesh, 'config scale (kube)', () => measureKubeScale({ ...kube, procs: this.procs, onLab: (l) => this.extraLabs.push(l), add: (m, v) => this.results.add(mesh.name, m, v), machine: this.machine, log: this.opts.log }));
    }
    if (!this.opts.skip.includes('scale-out') && this.cpus >= 2) await this.scaleOut(runnable.filter((p) => p.protocol !== 'h2' && p.proxy !== 'none'));
    const mesh4 = runnable.find((p) => p.name === 'trellis-l4') ?? runnable.find((p) => p.proxy === 'agents');
    if (!this.opts.skip.includes('pods') && mesh4) await this.guard(mesh4, 'pods per node', () => this.pods(mesh4));
    const mesh7 = runnable.find((p) => p.name === 'trellis-l7') ?? mesh4;
    if (!this.opts.skip.includes('restart') && mesh7) await this.guard(mesh7, 'restarts under load', () => this.restarts(mesh7));
    const capture = this.paths.filter((p) => p.only === 'capture' && !p.unavailable);
    if (!this.opts.skip.includes('capture') && capture.length > 0) await this.guard(capture[0]!, 'capture modes', () => this.captureModes());

    this.machine.finished_at = new Date().toISOString();
    this.machine.duration_s = Math.round((Date.now() - started) / 1000);
    const catalogue = [...metricCatalogue(this.plan.rates), ...KUBE_SCALE_METRICS, ...RESTART_METRICS, ...CAPTURE_METRICS];
    const input = { paths: this.paths, catalogue, results: this.results, header: this.header(), warnings: this.warnings };
    this.opts.out(formatReport(input));
    if (this.opts.json) {
      await fsp.writeFile(this.opts.json, `${JSON.stringify(benchJson(input, this.machine), null, 2)}\n`);
      log(`JSON written to ${this.opts.json}`);
    }
  }

  get proxiesDied(): boolean {
    return this.dead.size > 0;
  }

  /** Idempotent: the labs (with every process they or we started in them) go. */
  teardown(): Promise<void> {
    this.torn ??= (async () => {
      await this.sink?.close();
      const second = await this.handshake?.then((h) => h.lab, () => undefined);
      for (const lab of [this.lab, second, ...this.extraLabs]) {
        if (!lab) continue;
        this.opts.log(`tearing down lab '${lab.name}' ...`);
        await lab.down().catch((err: Error) => this.opts.log(`trellis bench: ${err.message}`));
      }
    })();
    return this.torn;
  }

  /** Flags every agent of the run gets: the key exchange HAProxy can do too, unless --agent-tls-default, then --agent-args. */
  private agentArgs(workers: string[] = PINNED_AGENT_ARGS): string[] {
    return [...(this.opts.agentTlsDefault ? [] : ['--tls-groups', COMMON_GROUP]), ...workers, ...(this.opts.agentArgs ?? [])];
  }

  private async upLab(): Promise<Lab> {
    const tracing = this.opts.tracing === undefined ? [] : ['--tracing-endpoint', `http://127.0.0.1:${OTLP_SINK_PORT}`, '--tracing-sample-ratio', String(this.opts.tracing)];
    this.lab = await Lab.up(benchManifests({ serverCpu: this.loadCpu }), {
      name: this.opts.name,
      logLevel: this.opts.logLevel,
      agentArgs: [...this.agentArgs(), ...tracing],
      progress: (step) => this.opts.log(`  lab: ${step}`),
    });
    const lab = this.lab;
    if (this.opts.tracing !== undefined) {
      this.sink = new OtlpSink();
      for (const node of [NODE_A, NODE_B]) await this.sink.listen(lab.node(node).netnsPath);
    }
    for (const o of extraObjects()) {
      await fsp.writeFile(path.join(lab.clusterDir, objectFileName(o.kind, o.metadata.name, o.metadata.namespace)), stringify(o));
    }
    return lab;
  }

  private async pinAgents(lab: Lab): Promise<void> {
    const status = await lab.status();
    for (const n of status.nodes) {
      if (!n.agent?.alive) throw new LabError('EAGENT', `the agent of ${n.name} is not running (log: ${lab.stateDir}/logs/agent-${n.name}.log)`);
      this.agentPids[n.name] = n.agent.pid;
      if (this.proxyCpu !== undefined) await pin(n.agent.pid, this.proxyCpu, `the agent of ${n.name}`);
    }
    this.proxyPids.agents = [this.agentPids[NODE_A]!, this.agentPids[NODE_B]!];
  }

  /**
   * What the agents negotiate with each other: a handshake with agent B's HBONE port from node A, offering
   * the groups agent A offers; and what Node does by default.
   */
  private async probeAgents(lab: Lab, creds: TlsCreds): Promise<TlsSeen> {
    const server = lab.pod(MESH_SERVER);
    const socket = connectInNetns(lab.node(NODE_A).netnsPath, { host: server.ip, port: HBONE_PORT, timeoutMs: 5000 });
    const groups = this.opts.agentTlsDefault ? {} : { groups: COMMON_GROUP };
    const agents = await probeTls(socket, creds, `the agent's HBONE port ${server.ip}:${HBONE_PORT}`, groups);
    const nodeDefault = await probeNodeDefaults(creds);
    return { agents, node_default: nodeDefault };
  }

  private async probeHaproxy(lab: Lab, layer: Layer, creds: TlsCreds): Promise<TlsParams> {
    const server = lab.pod(PLAIN_SERVER);
    const port = HAPROXY_PORTS[layer].tls;
    const socket = connectInNetns(lab.node(NODE_A).netnsPath, { host: server.ip, port, timeoutMs: 5000 });
    return probeTls(socket, creds, `haproxy-${layer} on ${server.ip}:${port}`);
  }

  /** Each path answers once before anything is measured (agents enrolled, HAProxy pairs connected). */
  private async waitPathsReady(lab: Lab, paths: PathDef[]): Promise<void> {
    for (const p of paths) {
      if (p.protocol === 'h2') {
        await this.waitH2(lab, p);
        continue;
      }
      const r = await lab.exec(p.client, ['trellis', 'tool', 'wait-http', '--url', this.url(p), '--timeout-s', '30', '--interval-ms', '100'], {
        timeoutMs: 40_000,
      });
      if (r.code !== 0) throw new LabError('ENOTREADY', `${p.name}: ${this.url(p)} does not answer from ${p.client}: ${r.stdout.trim()} ${r.stderr.trim()}`);
    }
  }

  private url(p: PathDef): string {
    return `http://${p.target(this.targets!)}/`;
  }

  private async repeat(lab: Lab, all: PathDef[], first: boolean): Promise<void> {
    const skip = new Set(this.opts.skip);
    // The h2c paths have their own generator (h2load) and one measurement: max req/s.
    const order = all.filter((p) => p.protocol !== 'h2');
    const h2 = all.filter((p) => p.protocol === 'h2');
    if (!skip.has('max-rps')) {
      if (first) for (const p of h2) await this.guard(p, 'priming', () => this.maxRpsH2(p, true));
      for (const p of h2) await this.guard(p, 'max req/s', () => this.maxRpsH2(p, false));
    }
    if (!skip.has('memory')) for (const p of order) if (p.proxy !== 'none') await this.guard(p, 'memory', () => this.memory(lab, p));
    if (first && !(skip.has('latency') && skip.has('max-rps') && skip.has('tap'))) for (const p of order) await this.guard(p, 'priming', () => this.prime(p));
    if (!skip.has('latency')) {
      for (const rate of this.plan.rates) for (const p of order) await this.guard(p, `latency at ${rate} req/s`, () => this.latency(p, rate));
    }
    if (!skip.has('max-rps')) for (const p of order) await this.guard(p, 'max req/s', () => this.maxRps(p));
    const l7 = order.find((p) => p.name === 'trellis-l7');
    if (!skip.has('tap') && l7) await this.guard(l7, 'tap off/on', () => this.tapCost(l7));
    if (!skip.has('bulk')) for (const streams of [1, 4]) for (const p of order) await this.guard(p, `bulk ${streams}`, () => this.bulk(p, streams));
    if (!skip.has('conn-rate')) for (const p of order) await this.guard(p, 'connection rate', () => this.connRate(p));
  }

  /** A measurement that fails is reported and skipped; the others still run. A path whose proxy died is skipped. */
  private async guard(p: PathDef, what: string, fn: () => Promise<void>): Promise<void> {
    if (this.proxyDied(p)) return;
    try {
      await fn();
    } catch (err) {
      if (this.proxyDied(p)) return;
      const msg = `${p.name} ${what}: failed: ${(err as Error).message}`;
      this.warnings.push(msg);
      this.opts.log(`  ${msg}`);
    }
  }

  /** Whether the path's proxy processes are gone; the first time, says so with the tail of their logs. */
  private proxyDied(p: PathDef): boolean {
    if (p.proxy === 'none') return false;
    if (this.dead.has(p.proxy)) return true;
    const gone = this.proxyPids[p.proxy].filter((pid) => !running(pid));
    if (gone.length === 0) return false;
    let why: string;
    if (p.proxy === 'agents') {
      const nodes = Object.entries(this.agentPids).filter(([, pid]) => gone.includes(pid)).map(([node]) => node);
      why = nodes.map((node) => `the agent of ${node} exited; the end of its log:\n${logTail(this.lab!.agentLog(node))}`).join('\n');
    } else {
      why = `${p.proxy} process(es) ${gone.join(', ')} exited`;
    }
    this.dead.set(p.proxy, why);
    const msg = `${p.name}: ${why}\n    (every later measurement of a path through it was skipped)`;
    this.warnings.push(msg);
    this.opts.log(`  ${msg}`);
    return true;
  }

  /** Runs a tool in the path's client pod (pinned with the load, unless `pin` is false) and returns its last JSON line. */
  private async tool(p: PathDef, argv: string[], seconds: number, lab: Lab = this.lab!, pin = true): Promise<Record<string, unknown>> {
    const r = await lab.exec(p.client, pinned(pin ? this.loadCpu : undefined, ['trellis', 'tool', ...argv]), { timeoutMs: (seconds + 60) * 1000 });
    const last = r.stdout.trim().split('\n').at(-1) ?? '';
    try {
      return JSON.parse(last) as Record<string, unknown>;
    } catch {
      throw new LabError('ETOOL', `trellis tool ${argv[0]} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(-500)}`);
    }
  }

  private async memory(lab: Lab, p: PathDef): Promise<void> {
    const pids = this.proxyPids[p.proxy];
    // Idle means idle for a while: the agents hand freed C-heap memory back every 10 s (app.ts).
    await sleep(IDLE_SETTLE_MS);
    const idleKb = this.procs.rssKb(pids);
    this.results.add(p.name, 'rss_mb_idle', idleKb / 1024);
    this.results.add(p.name, 'anon_mb_idle', this.procs.anonKb(pids) / 1024);
    const count = this.plan.idleConns;
    const lines = new ChildLines(
      lab.spawn(p.client, pinned(this.loadCpu, ['trellis', 'tool', 'conn-hold', '--url', this.url(p), '--count', String(count), '--hold-s', '300'])),
      `conn-hold in ${p.client}`,
    );
    try {
      const ready = await lines.next((l) => l.event === 'ready', 120_000, 'ready line');
      const open = Number(ready.open);
      if (open < count) this.warnings.push(`${p.name}: only ${open} of ${count} idle connections opened (${JSON.stringify(ready.error_counts)})`);
      // Let allocations of the opening burst settle.
      await sleep(2000);
      const withKb = this.procs.rssKb(pids);
      if (open > 0) this.results.add(p.name, 'kb_per_idle_conn', (withKb - idleKb) / open);
      this.opts.log(`  ${p.name}: rss idle ${(idleKb / 1024).toFixed(1)} MB, with ${open} idle connections ${(withKb / 1024).toFixed(1)} MB`);
    } finally {
      await lines.finish(10_000);
    }
  }

  /**
   * Starts watching the proxy CPU; the returned function says, for the path's proxies, how much of the
   * run that CPU spent on other processes (other engineers' tests, say) — when much, a warning.
   */
  private watchProxyCpu(p: PathDef, where: string): () => void {
    const pids = this.proxyPids[p.proxy];
    const cpu = this.proxyCpu;
    if (cpu === undefined || pids.length === 0) return () => {};
    const t0 = performance.now();
    const busy0 = this.procs.cpuBusySeconds(cpu);
    const own0 = this.procs.cpuSeconds(pids);
    return () => {
      const wall = (performance.now() - t0) / 1000;
      const other = this.procs.cpuBusySeconds(cpu) - busy0 - (this.procs.cpuSeconds(pids) - own0);
      const share = other / wall;
      if (share > 0.1) {
        this.warnings.push(`${where}: CPU ${cpu} spent ${Math.round(share * 100)}% of the run on other processes than the proxies (a noisy machine)`);
      }
    };
  }

  /** Every path gets the same unmeasured closed-loop run first: Node's JIT, like any warm server, is measured warm. */
  private async prime(p: PathDef): Promise<void> {
    const args = ['http-bench', '--url', this.url(p), '--rate', '0', '--duration-s', String(this.plan.primeS), '--warmup-s', '0', '--connections', String(this.plan.connections)];
    const r = await this.tool(p, args, this.plan.primeS);
    if (Number(r.errors) > 0) this.warnings.push(`${p.name} priming: ${r.errors} requests failed ${JSON.stringify(r.error_counts)}`);
  }

  private async latency(p: PathDef, rate: number): Promise<void> {
    const pids = this.proxyPids[p.proxy];
    const names = latencyMetricNames(rate);
    const noise = this.watchProxyCpu(p, `${p.name} at ${rate} req/s`);
    const cpuBefore = pids.length ? this.procs.cpuSeconds(pids) : 0;
    const auditBefore = p.proxy === 'agents' ? await this.auditDropped() : 0;
    const rss: number[] = [];
    const anon: number[] = [];
    const sampler = pids.length
      ? setInterval(() => {
          rss.push(this.procs.rssKb(pids));
          anon.push(this.procs.anonKb(pids));
        }, 500)
      : undefined;
    let r: Record<string, unknown>;
    try {
      r = await this.tool(
        p,
        ['http-bench', '--url', this.url(p), '--rate', String(rate), '--duration-s', String(this.plan.latencyS), '--warmup-s', String(this.plan.warmupS), '--connections', String(this.plan.connections)],
        this.plan.latencyS + this.plan.warmupS,
      );
    } finally {
      clearInterval(sampler);
    }
    const cpu = pids.length ? this.procs.cpuSeconds(pids) - cpuBefore : 0;
    noise();
    const num = (k: string): number => Number(r[k]);
    for (const [metric, key] of [[names.p50, 'p50_ms'], [names.p90, 'p90_ms'], [names.p99, 'p99_ms'], [names.p999, 'p999_ms'], [names.max, 'max_ms'], [names.achieved, 'achieved_rps']] as const) {
      if (r[key] !== null && r[key] !== undefined) this.results.add(p.name, metric, num(key));
    }
    if (pids.length && num('completed_total') > 0) this.results.add(p.name, names.cpu, (cpu * 1e6) / num('completed_total'));
    if (pids.length && rate === Math.max(...this.plan.rates) && rss.length) {
      this.results.add(p.name, 'rss_mb_load', Math.max(...rss) / 1024);
      this.results.add(p.name, 'anon_mb_load', Math.max(...anon) / 1024);
    }
    // The audit trail (one line per connection and per request on each agent) must lose nothing at this rate.
    if (p.proxy === 'agents' && rate === Math.max(...this.plan.rates)) this.results.add(p.name, 'audit_dropped', (await this.auditDropped()) - auditBefore);
    const where = `${p.name} at ${rate} req/s`;
    if (num('errors') > 0) this.warnings.push(`${where}: ${num('errors')} of ${num('sent')} requests failed ${JSON.stringify(r.error_counts)}`);
    if (num('achieved_rps') < rate * 0.97) this.warnings.push(`${where}: achieved ${num('achieved_rps')} req/s, below the target (the path or the generator did not keep up)`);
    if (num('send_lag_p99_ms') > 1) this.warnings.push(`${where}: the generator woke up to ${num('send_lag_p99_ms')} ms late (p99): CPU ${this.loadCpu ?? ''} was busy; latencies include that`);
    this.opts.log(`  ${where}: p50 ${r.p50_ms} ms, p99 ${r.p99_ms} ms, p99.9 ${r.p999_ms} ms, achieved ${r.achieved_rps} req/s${pids.length ? `, proxy CPU ${((cpu * 1e6) / num('completed_total')).toFixed(1)} us/req` : ''}`);
  }

  /** trellis_audit_dropped_total summed over both agents. */
  private async auditDropped(): Promise<number> {
    let n = 0;
    for (const node of [NODE_A, NODE_B]) n += sumOf(parsePrometheus(await this.lab!.metrics(node)), 'trellis_audit_dropped_total');
    return n;
  }

  private async maxRps(p: PathDef): Promise<void> {
    const pids = this.proxyPids[p.proxy];
    const noise = this.watchProxyCpu(p, `${p.name} max req/s`);
    const cpuBefore = pids.length ? this.procs.cpuSeconds(pids) : 0;
    const warmupS = 1;
    const r = await this.tool(
      p,
      ['http-bench', '--url', this.url(p), '--rate', '0', '--duration-s', String(this.plan.maxRpsS), '--warmup-s', String(warmupS), '--connections', String(this.plan.connections)],
      this.plan.maxRpsS + warmupS,
    );
    noise();
    if (Number(r.ok) > 0) this.results.add(p.name, 'max_rps', Number(r.achieved_rps));
    if (pids.length) {
      const pct = (100 * (this.procs.cpuSeconds(pids) - cpuBefore)) / (this.plan.maxRpsS + warmupS);
      this.results.add(p.name, 'proxy_cpu_pct_max_rps', pct);
    }
    if (Number(r.errors) > 0) this.warnings.push(`${p.name} max req/s: ${r.errors} requests failed ${JSON.stringify(r.error_counts)}`);
    this.opts.log(`  ${p.name}: max ${r.achieved_rps} req/s (closed loop, ${this.plan.connections} connections)`);
  }

  /**
   * What a live tap costs the data path: the trellis-l7 path's CPU per request at the lowest latency rate (below any
   * machine's max, so every request is answered and counted) and its max req/s, with no tap and with one tap on each agent matching every request of the bench (both sides), at the
   * agents' rate bound (--tap-max-rps: the rest dropped and counted, as a tap at full request rate is), alternated
   * off, on, off, on so both see the same machine.
   */
  private async tapCost(p: PathDef): Promise<void> {
    const pids = this.proxyPids[p.proxy];
    const rate = Math.min(...this.plan.rates);
    for (const tapped of [false, true, false, true]) {
      const taps = tapped ? await this.openTaps() : undefined;
      const suffix = tapped ? 'tap_on' : 'tap_off';
      const noise = this.watchProxyCpu(p, `${p.name} ${suffix}`);
      try {
        const cpuBefore = this.procs.cpuSeconds(pids);
        const r = await this.tool(
          p,
          ['http-bench', '--url', this.url(p), '--rate', String(rate), '--duration-s', String(this.plan.latencyS), '--warmup-s', String(this.plan.warmupS), '--connections', String(this.plan.connections)],
          this.plan.latencyS + this.plan.warmupS,
        );
        const cpu = this.procs.cpuSeconds(pids) - cpuBefore;
        if (Number(r.completed_total) > 0) this.results.add(p.name, `cpu_us_per_req_${suffix}`, (cpu * 1e6) / Number(r.completed_total));
        if (Number(r.errors) > 0) this.warnings.push(`${p.name} ${suffix} at ${rate} req/s: ${r.errors} of ${r.sent} requests failed ${JSON.stringify(r.error_counts)}`);
        const warmupS = 1;
        const m = await this.tool(
          p,
          ['http-bench', '--url', this.url(p), '--rate', '0', '--duration-s', String(this.plan.maxRpsS), '--warmup-s', String(warmupS), '--connections', String(this.plan.connections)],
          this.plan.maxRpsS + warmupS,
        );
        if (Number(m.ok) > 0) this.results.add(p.name, `max_rps_${suffix}`, Number(m.achieved_rps));
        if (Number(m.errors) > 0) this.warnings.push(`${p.name} ${suffix} max req/s: ${m.errors} requests failed ${JSON.stringify(m.error_counts)}`);
        const seen = taps ? `, tap: ${taps.delivered()} observations sent, ${taps.dropped()} dropped` : '';
        noise();
        this.opts.log(`  ${p.name} ${suffix}: proxy CPU ${((cpu * 1e6) / Number(r.completed_total)).toFixed(1)} us/req at ${rate} req/s, max ${m.achieved_rps} req/s${seen}`);
      } finally {
        await taps?.close();
      }
    }
  }

  /** A tap on each agent's socket matching every request from the bench's mesh namespace, at the agent's bound. */
  private async openTaps(): Promise<{ delivered: () => number; dropped: () => number; close: () => Promise<void> }> {
    let delivered = 0;
    let dropped = 0;
    const streams: TapStream[] = [];
    const ended: Promise<Error | undefined>[] = [];
    // Each resolves when its agent accepted the tap (undefined), or refused it, or could not be reached.
    const accepted: Promise<Error | undefined>[] = [];
    for (const node of [NODE_A, NODE_B]) {
      let answer!: (err: Error | undefined) => void;
      accepted.push(new Promise((r) => (answer = r)));
      ended.push(
        new Promise((resolve) => {
          streams.push(
            observeTap(this.lab!.tapSocket(node), { maxRps: 0, match: { source: { namespace: MESH_CLIENT.split('/')[0]! } } }, {
              accepted: () => answer(undefined),
              event: (e) => {
                dropped += e.dropped ?? 0;
                if (e.responseEnd) delivered++;
              },
              end: (err) => {
                answer(err ?? new Error(`the agent of ${node} ended the tap at once`));
                resolve(err);
              },
            }),
          );
        }),
      );
    }
    const failed = (await Promise.all(accepted)).find((e) => e !== undefined);
    if (failed) {
      for (const s of streams) s.cancel();
      throw new LabError('EAGENT', `cannot tap the agents: ${failed.message}`);
    }
    return {
      delivered: () => delivered,
      dropped: () => dropped,
      close: async () => {
        for (const s of streams) s.cancel();
        await Promise.all(ended);
      },
    };
  }

  /** h2c closed loop with h2load: one stream on each of the connections, as many at once as the HTTP/1.1 runs. */
  private async maxRpsH2(p: PathDef, priming: boolean): Promise<void> {
    const pids = this.proxyPids[p.proxy];
    const seconds = priming ? this.plan.primeS : this.plan.maxRpsS;
    const warmupS = priming ? 0 : 1;
    const noise = priming ? () => undefined : this.watchProxyCpu(p, `${p.name} max req/s`);
    const cpuBefore = pids.length ? this.procs.cpuSeconds(pids) : 0;
    const r = await this.lab!.exec(p.client, pinned(this.loadCpu, h2loadArgs(this.url(p), this.plan.connections, seconds, warmupS)), {
      timeoutMs: (seconds + warmupS + 60) * 1000,
    });
    const cpu = pids.length ? this.procs.cpuSeconds(pids) - cpuBefore : 0;
    const res = parseH2load(r.stdout);
    if (priming) return;
    noise();
    const bad = res.failed + res.errored + res.timeout + (res.statuses['5xx'] ?? 0) + (res.statuses['4xx'] ?? 0);
    if (res.succeeded > 0) this.results.add(p.name, 'max_rps', res.rps);
    if (pids.length) this.results.add(p.name, 'proxy_cpu_pct_max_rps', (100 * cpu) / (seconds + warmupS));
    if (bad > 0) this.warnings.push(`${p.name} max req/s: ${bad} of ${res.succeeded + bad} requests failed ${JSON.stringify(res.statuses)}`);
    this.opts.log(`  ${p.name}: max ${res.rps} req/s (h2load closed loop, ${this.plan.connections} connections x 1 stream)`);
  }

  private async waitH2(lab: Lab, p: PathDef): Promise<void> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const r = await lab.exec(p.client, ['h2load', '-n', '1', '-c', '1', this.url(p)], { timeoutMs: 10_000 });
      const ok = /1 succeeded/.test(r.stdout) && /1 2xx/.test(r.stdout);
      if (ok) return;
      if (Date.now() > deadline) throw new LabError('ENOTREADY', `${p.name}: ${this.url(p)} does not answer h2c from ${p.client}: ${r.stdout.trim().slice(-300)}`);
      await sleep(200);
    }
  }

  private async bulk(p: PathDef, streams: number): Promise<void> {
    const r = await this.tool(p, ['bulk-send', '--url', this.url(p), '--streams', String(streams), '--duration-s', String(this.plan.bulkS)], this.plan.bulkS);
    if (Number(r.ok_streams) !== streams) this.warnings.push(`${p.name} bulk ${streams}: ${r.ok_streams} of ${streams} streams completed ${JSON.stringify(r.error_counts)}`);
    if (Number(r.ok_streams) > 0) this.results.add(p.name, `gbps_${streams}`, Number(r.gbps));
    this.opts.log(`  ${p.name}: bulk ${streams} stream(s) ${r.gbps} Gbit/s`);
  }

  private async connRate(p: PathDef): Promise<void> {
    // Through the mesh, a new connection would otherwise be a stream on a pooled session: no handshake.
    const h = p.proxy === 'agents' ? await this.handshakeLab() : undefined;
    if (h && !h.agentPids.every(running)) throw new LabError('EAGENT', `an agent of lab '${h.lab.name}' exited (logs in ${h.lab.stateDir}/logs)`);
    const url = h ? `http://${h.target}/` : this.url(p);
    const argv = ['conn-rate', '--url', url, '--duration-s', String(this.plan.connS), '--concurrency', String(this.plan.connections)];
    const pids = h ? h.agentPids : this.proxyPids[p.proxy];
    const cpuBefore = pids.length ? this.procs.cpuSeconds(pids) : 0;
    const t0 = performance.now();
    const r = await this.tool(p, argv, this.plan.connS, h?.lab);
    const cpuPct = pids.length ? (100 * (this.procs.cpuSeconds(pids) - cpuBefore)) / ((performance.now() - t0) / 1000) : undefined;
    if (Number(r.ok) > 0) this.results.add(p.name, 'conn_per_s', Number(r.conn_per_s));
    if (cpuPct !== undefined) this.results.add(p.name, 'proxy_cpu_pct_conn', cpuPct);
    if (Number(r.errors) > 0) this.warnings.push(`${p.name} connection rate: ${r.errors} of ${r.connections} connections failed ${JSON.stringify(r.error_counts)}`);
    this.opts.log(`  ${p.name}: ${r.conn_per_s} new connections/s, each ${r.p50_ms} ms (p50) / ${r.p99_ms} ms (p99) from connect to response${cpuPct !== undefined ? `, proxies at ${cpuPct.toFixed(0)}% of a CPU` : ''}`);
  }

  /**
   * max_rps_2cpu: the HTTP/1.1 paths again with nothing pinned, the agents with a thread per CPU (--workers N) and
   * HAProxy with as many (nbthread N), in a lab of its own whose servers and load run unpinned too. The question:
   * does the mesh keep its ratio to HAProxy when both may use every CPU?
   */
  private async scaleOut(paths: PathDef[]): Promise<void> {
    if (paths.length === 0) return;
    const { log } = this.opts;
    const cpus = this.cpus;
    const base = this.opts.name.slice(0, 7);
    const name = `${base}${this.opts.name === `${base}w` ? 'v' : 'w'}`;
    log(`scale-out: lab '${name}', nothing pinned, agents --workers ${cpus}, HAProxy nbthread ${cpus} ...`);
    const lab = await Lab.up(benchManifests({}), { name, logLevel: this.opts.logLevel, agentArgs: this.agentArgs(['--workers', String(cpus)]) });
    this.extraLabs.push(lab);
    for (const o of extraObjects()) {
      await fsp.writeFile(path.join(lab.clusterDir, objectFileName(o.kind, o.metadata.name, o.metadata.namespace)), stringify(o));
    }
    const creds = await plainPodCreds(lab);
    const tls = this.machine.tls as TlsSeen | undefined;
    await startHaproxies(lab, { dir: path.join(lab.stateDir, 'bench-haproxy'), threads: cpus, ciphersuite: tls?.agents.cipher ?? 'TLS_AES_256_GCM_SHA384', group: COMMON_GROUP, creds });
    const targets = resolveTargets(lab);
    const url = (p: PathDef): string => `http://${p.target(targets)}/`;
    for (const p of paths) {
      const r = await lab.exec(p.client, ['trellis', 'tool', 'wait-http', '--url', url(p), '--timeout-s', '30', '--interval-ms', '100'], { timeoutMs: 40_000 });
      if (r.code !== 0) throw new LabError('ENOTREADY', `${p.name}: ${url(p)} does not answer from ${p.client} in lab '${lab.name}': ${r.stdout.trim()} ${r.stderr.trim()}`);
    }
    for (let r = 0; r < this.plan.repeats; r++) {
      for (const p of rotation(paths, r)) {
        await this.guard(p, 'max req/s on every CPU', async () => {
          const args = ['http-bench', '--url', url(p), '--rate', '0', '--duration-s', String(this.plan.maxRpsS), '--warmup-s', '1', '--connections', String(this.plan.connections * cpus)];
          const out = await this.tool(p, args, this.plan.maxRpsS + 1, lab, false);
          if (Number(out.ok) > 0) this.results.add(p.name, 'max_rps_2cpu', Number(out.achieved_rps));
          if (Number(out.errors) > 0) this.warnings.push(`${p.name} max req/s on every CPU: ${out.errors} requests failed ${JSON.stringify(out.error_counts)}`);
          log(`  ${p.name}: max ${out.achieved_rps} req/s on ${cpus} CPUs, unpinned`);
        });
      }
    }
  }

  /** enrol_ms_100 and kb_per_pod, in a one-node lab of 100 idle pods (pods.ts), the agent pinned like the others. */
  private async pods(mesh: PathDef): Promise<void> {
    const count = 100;
    const base = this.opts.name.slice(0, 7);
    for (let r = 0; r < this.plan.scaleRepeats; r++) {
      const name = `${base}${this.opts.name === `${base}p` ? 'q' : 'p'}`;
      this.opts.log(`pods per node: ${count} idle pods on one node, their namespace opting in (run ${r + 1}/${this.plan.scaleRepeats}) ...`);
      try {
        const res = await measurePods({
          name,
          count,
          agentArgs: this.agentArgs(),
          logLevel: this.opts.logLevel,
          pin: async (pid) => (this.proxyCpu === undefined ? undefined : pin(pid, this.proxyCpu, `the agent of lab '${name}'`)),
          procs: this.procs,
          onLab: (lab) => this.extraLabs.push(lab),
          log: this.opts.log,
        });
        this.results.add(mesh.name, 'enrol_ms_100', res.enrolMs);
        this.results.add(mesh.name, 'kb_per_pod', res.kbPerPod);
        this.opts.log(`  ${count} pods enrolled in ${Math.round(res.enrolMs)} ms; agent anon ${res.anonMbBefore.toFixed(1)} -> ${res.anonMbAfter.toFixed(1)} MB (${res.kbPerPod.toFixed(1)} KB per pod)`);
      } finally {
        const lab = this.extraLabs.pop();
        await lab?.down().catch((err: Error) => this.opts.log(`trellis bench: ${err.message}`));
      }
    }
  }

  /** restart_*: each agent replaced in turn under load, in a two-node lab of its own (restart.ts); 2 rounds with --quick, else 5. */
  private async restarts(mesh: PathDef): Promise<void> {
    const base = this.opts.name.slice(0, 7);
    const name = `${base}${this.opts.name === `${base}r` ? 's' : 'r'}`;
    const rounds = this.opts.quick ? 2 : 5;
    this.opts.log(`restarts under load: each agent replaced ${rounds} times in turn ...`);
    try {
      await measureRestarts({
        name,
        rounds,
        agentArgs: this.agentArgs(),
        logLevel: this.opts.logLevel,
        onLab: (lab) => this.extraLabs.push(lab),
        add: (metric, value) => this.results.add(mesh.name, metric, value),
        log: this.opts.log,
      });
    } finally {
      const lab = this.extraLabs.pop();
      await lab?.down().catch((err: Error) => this.opts.log(`trellis bench: ${err.message}`));
    }
  }

  /** trellis-l4-nft and trellis-l4-ebpf (and direct's same-node rows), in labs of their own (capture.ts). */
  private async captureModes(): Promise<void> {
    const base = this.opts.name.slice(0, 7);
    try {
      await measureCapture({
        name: base,
        avoid: this.opts.name,
        repeats: this.plan.repeats,
        agentArgs: this.agentArgs(),
        logLevel: this.opts.logLevel,
        loadCpu: this.loadCpu,
        proxyCpu: this.proxyCpu,
        plan: this.plan,
        procs: this.procs,
        pin,
        onLab: (lab) => this.extraLabs.push(lab),
        add: (p, metric, value) => this.results.add(p, metric, value),
        unavailable: (name, reason) => {
          this.paths = this.paths.map((p) => (p.name === name ? { ...p, unavailable: reason } : p));
        },
        warn: (line) => this.warnings.push(line),
        log: this.opts.log,
      });
    } finally {
      for (const lab of this.extraLabs.splice(0)) await lab.down().catch((err: Error) => this.opts.log(`trellis bench: ${err.message}`));
    }
  }

  /** The second lab, built on first use: the mesh half of the topology, agents with HANDSHAKE_AGENT_ARGS, pinned like the first. */
  private handshakeLab(): Promise<{ lab: Lab; agentPids: number[]; target: string }> {
    this.handshake ??= (async () => {
      const base = this.opts.name.slice(0, 7);
      const name = `${base}${this.opts.name === `${base}h` ? 'x' : 'h'}`;
      this.opts.log(`  lab '${name}' for conn_per_s through the mesh (agents with ${HANDSHAKE_AGENT_ARGS.join(' ')}) ...`);
      const lab = await Lab.up(handshakeManifests({ serverCpu: this.loadCpu }), {
        name,
        logLevel: this.opts.logLevel,
        agentArgs: [...this.agentArgs(), ...HANDSHAKE_AGENT_ARGS],
      });
      const agentPids: number[] = [];
      for (const n of (await lab.status()).nodes) {
        if (!n.agent?.alive) throw new LabError('EAGENT', `the agent of ${n.name} in lab '${name}' is not running (log: ${lab.stateDir}/logs/agent-${n.name}.log)`);
        agentPids.push(n.agent.pid);
        if (this.proxyCpu !== undefined) await pin(n.agent.pid, this.proxyCpu, `the agent of ${n.name} in lab '${name}'`);
      }
      const vip = lab.services.find((s) => s.namespace === 'bench-mesh' && s.name === 'server')?.clusterIP;
      if (!vip) throw new LabError('ENOTFOUND', `lab '${name}' has no Service bench-mesh/server`);
      const target = `${vip}:80`;
      const r = await lab.exec(MESH_CLIENT, ['trellis', 'tool', 'wait-http', '--url', `http://${target}/`, '--timeout-s', '30', '--interval-ms', '100'], { timeoutMs: 40_000 });
      if (r.code !== 0) throw new LabError('ENOTREADY', `lab '${name}': http://${target}/ does not answer from ${MESH_CLIENT}: ${r.stdout.trim()} ${r.stderr.trim()}`);
      return { lab, agentPids, target };
    })();
    return this.handshake;
  }

  private async scale(lab: Lab): Promise<void> {
    const { services, endpointsPerService } = this.plan.scale;
    this.opts.log(`config scale: ${services} Services, ${services * endpointsPerService} endpoints`);
    const scale = new ScaleBench({
      lab,
      size: this.plan.scale,
      stagingDir: path.join(lab.stateDir, `${SCALE_NAMESPACE}-staging`),
      clientCpu: this.loadCpu,
      rssMb: () => Object.fromEntries(Object.entries(this.agentPids).map(([node, pid]) => [node, this.procs.rssKb([pid]) / 1024])),
      agentCpuSeconds: () => this.procs.cpuSeconds([this.agentPids[NODE_A]!]),
      foreignCpuSeconds: () => (this.proxyCpu === undefined ? 0 : this.procs.cpuBusySeconds(this.proxyCpu) - this.procs.cpuSeconds([this.agentPids[NODE_A]!])),
      agentsAlive: () => Object.values(this.agentPids).every(running),
      log: this.opts.log,
    });
    const mesh = this.paths.find((p) => p.proxy === 'agents' && !p.unavailable && !p.only)!;
    await this.guard(mesh, 'config scale', async () => {
      // Both agents parse the batch; on one shared CPU each would take twice as long. Node B's agent moves to
      // the load CPU (idle now), so node A's agent, whose apply is timed, has the proxy CPU to itself.
      const other = this.agentPids[NODE_B]!;
      if (this.loadCpu !== undefined) await pin(other, this.loadCpu, `the agent of ${NODE_B}`);
      try {
        await scale.prepare();
        this.machine.scale = {
          services,
          endpoints: services * endpointsPerService,
          files: scale.fileCount,
          layout: 'one YAML file per object, moved into the dir source by one rename',
        };
        for (let r = 0; r < this.plan.scaleRepeats && !this.proxyDied(mesh); r++) {
          const run = await scale.measure(r);
          this.results.add(mesh.name, 'apply_ms_10k', run.applyMs);
          this.results.add(mesh.name, 'apply_cpu_ms_10k', run.applyCpuMs);
          this.results.add(mesh.name, 'rss_mb_10k', run.rssMb[NODE_A]!);
          if (run.foreignCpuShare > 0.1) {
            this.warnings.push(`config scale: CPU ${this.proxyCpu} spent ${Math.round(run.foreignCpuShare * 100)}% of the apply on other processes than the agents (a noisy machine; apply_cpu_ms_10k is the agent's own work)`);
          }
          this.opts.log(
            `  apply ${run.applyMs} ms (agent CPU ${Math.round(run.applyCpuMs)} ms); agent RSS ${Object.entries(run.rssMb).map(([n, mb]) => `${n} ${mb.toFixed(1)} MB`).join(', ')}`,
          );
        }
      } finally {
        if (this.proxyCpu !== undefined && !this.proxyDied(mesh)) await pin(other, this.proxyCpu, `the agent of ${NODE_B}`);
      }
    });
  }

  private describeMachine(tls: TlsSeen): void {
    const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
    Object.assign(this.machine, {
      cpus: this.cpus,
      cpu_model: cpu,
      kernel: os.release(),
      node: process.version,
      load_average_at_start: os.loadavg().map((l) => Number(l.toFixed(2))),
      pinning:
        this.loadCpu === undefined
          ? 'none: 1 CPU, everything unpinned'
          : { load_generator_and_servers: this.loadCpu, proxies: this.proxyCpu, proxies_are: 'both trellis agents, all four haproxy processes' },
      tls,
      quick: this.opts.quick,
      repeats: this.plan.repeats,
      rates_rps: this.plan.rates,
      connections: this.plan.connections,
      response_bytes: BODY_BYTES,
      warmup_s: this.plan.warmupS,
      prime_s: this.plan.primeS,
      latency_s: this.plan.latencyS,
      max_rps_s: this.plan.maxRpsS,
      bulk_s: this.plan.bulkS,
      conn_rate_s: this.plan.connS,
      idle_connections: this.plan.idleConns,
      agent_log_level: this.opts.logLevel,
      agent_args: this.opts.agentArgs ?? [],
      ...(this.opts.tracing !== undefined && { tracing_sample_ratio: this.opts.tracing }),
      agents_tls_group: this.opts.agentTlsDefault ? 'Node default' : `${COMMON_GROUP} (--tls-groups ${COMMON_GROUP}, as HAProxy)`,
      conn_rate_mesh: `a second lab, agents with ${HANDSHAKE_AGENT_ARGS.join(' ')}: a TLS handshake per connection`,
    });
  }

  private header(): string[] {
    const m = this.machine;
    const tls = m.tls as TlsSeen;
    const lines = [
      `trellis bench${this.opts.quick ? ' --quick' : ''}: ${m.cpus} CPUs (${m.cpu_model}), Linux ${m.kernel}, Node ${m.node}; load average at start ${(m.load_average_at_start as number[]).join(' ')}`,
      this.loadCpu === undefined
        ? 'pinning: none (1 CPU): load generator, servers and proxies share it'
        : `pinning: load generator, servers and the bench itself on CPU ${this.loadCpu}; proxies (both trellis agents, every haproxy process) on CPU ${this.proxyCpu}`,
      `threads: one per proxy (agents ${PINNED_AGENT_ARGS.join(' ')}, HAProxy nbthread 1); max_rps_2cpu: nothing pinned, agents --workers ${this.cpus}, HAProxy nbthread ${this.cpus}, ${this.plan.connections * this.cpus} connections`,
    ];
    const agents = tls.agents;
    lines.push(`TLS: trellis agents ${describeTls(agents)}`);
    for (const k of ['haproxy-l4', 'haproxy-l7', 'haproxy-h2'] as const) {
      const h = tls[k];
      if (h) lines.push(`     ${k} ${describeTls(h)}${sameTls(agents, h) ? ' (same)' : ' (DIFFERS from the agents)'}`);
    }
    if (tls.node_default.group !== agents.group) {
      lines.push(`     (Node's own default key exchange is ${tls.node_default.group}; HAProxy's OpenSSL 3.0 lacks it, so the agents run with ${agents.group} here; --agent-tls-default keeps Node's)`);
    }
    if (this.opts.agentArgs?.length) lines.push(`agents run with extra flags: ${this.opts.agentArgs.join(' ')}`);
    if (this.opts.tracing !== undefined) {
      lines.push(
        `tracing: the main lab's agents sample ${this.opts.tracing * 100}% of new traces (the load sends no context) and export OTLP/gRPC to a sink in the bench ` +
          `that answers without decoding (${this.sink?.exports ?? 0} exports, ${this.sink?.bytes ?? 0} bytes received by the end); the other labs (max_rps_2cpu, conn_per_s) do not trace`,
      );
    }
    lines.push(
      `load: HTTP/1.1 GET (h2 paths: h2load, h2c, max req/s only), ${BODY_BYTES}-byte responses, ${this.plan.connections} keep-alive connections, open loop (latency from each request's due time), ` +
        `${this.plan.warmupS} s warm-up + ${this.plan.latencyS} s per latency run; before its first run each path gets ${this.plan.primeS} s of closed-loop load, not measured`,
      `runs: ${this.plan.repeats} per measurement and path, paths interleaved (order rotated each repeat); cells: median [min–max]`,
      'cpu_us_per_req: utime+stime (/proc/PID/stat) of both proxy processes (source and destination side) per response; ' +
        `rss_*, anon_* and kb_per_idle_conn: both together; *_idle after ${IDLE_SETTLE_MS / 1000} s without traffic (memory runs first in each repeat, after the previous repeat's load); ` +
        'anon_*: RssAnon, their own memory without the executable and library pages every process running the same binary shares (node maps ~50 MB of its own)',
      'max_rps: closed loop; proxy_cpu_pct_max_rps: their CPU meanwhile (100% = the proxy CPU saturated; below, CPU 0 — load + server — is the limit)',
      'proxy_cpu_pct_conn: the proxies\' CPU during conn_per_s (the tool\'s start included), the same way',
      'gbps_N: N parallel HTTP POSTs streaming chunked bodies; conn_per_s: connect, one request, close — with a full TLS handshake each:',
      `  haproxy with no-ssl-reuse, trellis in a second lab whose agents run with ${HANDSHAKE_AGENT_ARGS.join(' ')} (pooled, they would carry it as a stream)`,
    );
    if (this.paths.some((p) => p.only === 'capture')) {
      lines.push(
        'trellis-l4-nft, trellis-l4-ebpf: a lab per capture mode (agents --capture nft|ebpf, pinned as above), client on node A, one server on node B (cross-node: ' +
          'p99_ms_1k, cpu_us_per_req_1k, gbps_1) and one on node A (*_same_node); conn_per_s_pooled: new connections on pooled HBONE sessions (no handshake), ' +
          "cpu_us_per_conn_pooled both agents' CPU per connection; direct's *_same_node: the same pair on node A without a mesh",
      );
    }
    const scale = m.scale as { services: number; endpoints: number; files: number } | undefined;
    if (scale) {
      lines.push(
        `apply_ms_10k: ${scale.services} Services + ${scale.endpoints} endpoints (${scale.files} YAML files) moved into the agents' dir source at once, until a meshed ` +
          "request to a Service of the batch succeeds (node-a's agent alone on the proxy CPU, node-b's moved aside); " +
          "apply_cpu_ms_10k: node-a's agent's CPU time meanwhile; rss_mb_10k: node-a's agent a second later",
      );
    }
    return lines;
  }
}

/** The last lines of an agent log worth reading: no access lines, no stack frames outside our code, each line cut short. */
function logTail(log: string, lines = 10): string {
  return log
    .split('\n')
    .filter((l) => l.trim() && !l.includes('"log":"access"') && (!/^\s+at /.test(l) || l.includes('/agent/')))
    .slice(-lines)
    .map((l) => `      ${l.length > 300 ? `${l.slice(0, 300)}...` : l}`)
    .join('\n');
}

function running(pid: number): boolean {
  const st = procStat(pid);
  return st !== undefined && st.state !== 'Z';
}

/** Pins every thread of a running process to one CPU. */
async function pin(pid: number, cpu: number, what: string): Promise<void> {
  const r = await run('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new LabError('ETASKSET', `taskset on ${what} (pid ${pid}): ${r.stderr.trim()}`);
}

function sameTls(a: TlsParams, b: TlsParams): boolean {
  return a.protocol === b.protocol && a.cipher === b.cipher && a.group === b.group && a.serverKey === b.serverKey;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
