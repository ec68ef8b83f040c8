// Bench: config scale through the kube source. The size of scale.ts's batch (10 000 Services, 50 000 endpoints) in
// a lab in cluster mode: every object created through a real API server, the endpoints being Pods the lab reports
// ready (on a Node of their own, outside the mesh), their EndpointSlices made by the real controller, the agents
// reading it all with `--source kube`. Measured until a meshed request to a Service created after the batch answers.
import { LabError } from '../errors.js';
import { Lab } from '../cluster/lab.js';
import { createPod, ensure, registerNode } from '../cluster/kubelet.js';
import { intToIp, ipToInt } from '../cluster/names.js';
import { procStat } from '../cluster/procs.js';
import { run } from '../cluster/run.js';
import type { ApiObject, KubeClient } from '../controlplane/client.js';
import type { Pod } from '../../agent/model/objects.js';
import { parsePrometheus, sumOf } from '../load/promtext.js';
import { ChildLines } from './child-lines.js';
import { MESH_CLIENT } from './paths.js';
import type { ProcReader } from './procfs.js';
import type { ScaleSize } from './scale.js';
import { APP_PORT, NODE_A, NODE_B, SERVICE_PORT, handshakeManifests, pinned } from './topology.js';

/** The measurements this adds to the report (lab/bench/results.ts lists scale.ts's). */
export const KUBE_SCALE_METRICS = [
  { name: 'apply_ms_10k_kube', unit: 'ms', better: 'lower' },
  { name: 'apply_cpu_ms_10k_kube', unit: 'ms', better: 'lower' },
  { name: 'probe_ms_10k_kube', unit: 'ms', better: 'lower' },
  { name: 'first_sync_ms_10k_kube', unit: 'ms', better: 'lower' },
  { name: 'rss_mb_10k_kube', unit: 'MB', better: 'lower' },
] as const;

const SCALE_NAMESPACE = 'bench-scale';
/**
 * The second memory sample after a restart: long enough for the agent's idle memory trim (a full GC once a whole
 * 10 s tick passed idle, agent/telemetry/memory.ts) to have run after the start's burst.
 */
const SETTLE_MS = 25_000;
/** The batch's endpoints are pods of this node: registered, never built (no netns, no agent). */
const SCALE_NODE = 'scale-node';
const FIRST_FAKE_ENDPOINT = ipToInt('10.250.0.1');
/** The probes ask the allocator for these (in its static band, below .255), so their clients can poll before they exist. */
const FIRST_PROBE_VIP = ipToInt('10.96.0.200');
/** Requests in flight while the batch is created (the lab's client keeps 16 connections). */
const PARALLEL = 32;
/**
 * The controller manager's client rate: its default (20/s) would take 500 s to write 10 000 EndpointSlices. Large
 * clusters raise it the same way (--kube-api-qps).
 */
const CONTROLLER_QPS = 1000;
/** Creating 60 000 objects (110 000 requests) through the API takes minutes here; an answer must come within this. */
const ANSWER_TIMEOUT_S = 3600;

export interface KubeScaleInputs {
  /** Name of the lab it brings up (and down). */
  name: string;
  size: ScaleSize;
  /** Probes of the steady state (a new Service in the loaded cluster). */
  probes: number;
  loadCpu?: number;
  proxyCpu?: number;
  agentArgs: string[];
  logLevel: string;
  procs: ProcReader;
  /** Told the lab as soon as it exists, so an interrupted bench tears it down too. */
  onLab: (lab: Lab) => void;
  add: (metric: (typeof KUBE_SCALE_METRICS)[number]['name'], value: number) => void;
  machine: Record<string, unknown>;
  log: (line: string) => void;
}

/** Brings a cluster-mode lab up, loads the batch through the API, measures, and brings the lab down. */
export async function measureKubeScale(inputs: KubeScaleInputs): Promise<void> {
  const { size, log } = inputs;
  log(`config scale through the kube source: ${size.services} Services, ${size.services * size.endpointsPerService} endpoints (Pods) through a real API server`);
  const upStarted = Date.now();
  const lab = await Lab.up(handshakeManifests({ serverCpu: inputs.loadCpu }), {
    name: inputs.name,
    logLevel: inputs.logLevel,
    agentArgs: inputs.agentArgs,
    cluster: { controllerQps: CONTROLLER_QPS },
    progress: (step) => log(`  lab '${inputs.name}': ${step}`),
  });
  inputs.onLab(lab);
  try {
    const upMs = Date.now() - upStarted;
    const agents = await agentPids(lab);
    if (inputs.proxyCpu !== undefined) for (const pid of Object.values(agents)) await pin(pid, inputs.proxyCpu);
    const api = lab.kube;
    await registerNode(api, { name: SCALE_NODE, index: 250, netns: '', netnsPath: '', fabricIp: '172.30.0.250', gatewayIp: '10.250.0.0', podCidr: '10.250.0.0/16' });
    await api.create({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: SCALE_NAMESPACE } });
    await ensure(api, { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default', namespace: SCALE_NAMESPACE } });

    // As in scale.ts: node B's agent moves to the load CPU while node A's, whose work is timed, has the proxy CPU.
    if (inputs.loadCpu !== undefined) await pin(agents[NODE_B]!, inputs.loadCpu);
    const cpu0 = inputs.procs.cpuSeconds([agents[NODE_A]!]);
    let loadMs = 0;
    const apply = await timeToAnswer(lab, inputs, 0, async () => {
      const t0 = Date.now();
      await createBatch(api, size, log);
      loadMs = Date.now() - t0;
      log(`  batch created through the API in ${(loadMs / 1000).toFixed(1)} s (${Math.round(((1 + 2 * size.endpointsPerService) * size.services * 1000) / loadMs)} requests/s)`);
    });
    const applyCpuMs = (inputs.procs.cpuSeconds([agents[NODE_A]!]) - cpu0) * 1000;
    if (inputs.proxyCpu !== undefined) await pin(agents[NODE_B]!, inputs.proxyCpu);
    inputs.add('apply_ms_10k_kube', apply.ms);
    inputs.add('apply_cpu_ms_10k_kube', applyCpuMs);
    log(`  apply ${apply.ms} ms (agent CPU ${Math.round(applyCpuMs)} ms): the batch's first create to the probe's answer`);

    const probeMs: number[] = [];
    for (let r = 1; r <= inputs.probes; r++) {
      const p = await timeToAnswer(lab, inputs, r, async () => {});
      probeMs.push(p.ms);
      inputs.add('probe_ms_10k_kube', p.ms);
    }
    log(`  a new Service in the loaded cluster answers after ${probeMs.join(', ')} ms`);

    // The first sync of a restarted agent: list and compile the whole cluster (until /healthz/ready).
    await lab.stopAgent(NODE_A);
    const s0 = Date.now();
    await lab.startAgent(NODE_A);
    const firstSyncMs = Date.now() - s0;
    inputs.add('first_sync_ms_10k_kube', firstSyncMs);
    const restarted = await agentPids(lab);
    if (inputs.proxyCpu !== undefined) await pin(restarted[NODE_A]!, inputs.proxyCpu);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const rss = Object.fromEntries(Object.entries(restarted).map(([node, pid]) => [node, inputs.procs.rssKb([pid]) / 1024]));
    inputs.add('rss_mb_10k_kube', rss[NODE_A]!);
    // And once it settled (the agent gives memory back when idle: agent/telemetry/memory.ts), with its JS heap.
    await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
    const settledMb = inputs.procs.rssKb([restarted[NODE_A]!]) / 1024;
    const heapMb = sumOf(parsePrometheus(await lab.metrics(NODE_A)), 'trellis_agent_nodejs_heap_size_used_bytes') / 2 ** 20;
    const controlPlaneMb = lab.controlPlane.memoryMb();
    log(
      `  agent restart to ready ${firstSyncMs} ms; agent RSS ${Object.entries(rss).map(([n, mb]) => `${n} ${mb.toFixed(1)} MB`).join(', ')}; ` +
        `${NODE_A}'s ${SETTLE_MS / 1000} s later ${settledMb.toFixed(1)} MB (JS heap in use ${heapMb.toFixed(1)} MB); ` +
        `control plane RSS ${Object.entries(controlPlaneMb).map(([c, mb]) => `${c} ${mb} MB`).join(', ')}`,
    );
    inputs.machine.scale_kube = {
      services: size.services,
      endpoints: size.services * size.endpointsPerService,
      pods: size.services * size.endpointsPerService,
      layout: 'Services and ready Pods created through the API server (lab cluster mode); EndpointSlices from kube-controller-manager',
      lab_up_ms: upMs,
      control_plane_start_ms: lab.controlPlane.timings.total,
      batch_create_ms: loadMs,
      controller_qps: CONTROLLER_QPS,
      control_plane_rss_mb: controlPlaneMb,
      agent_rss_mb: rss,
      agent_settled: { rss_mb: settledMb, heap_used_mb: heapMb, after_ms: SETTLE_MS },
    };
  } finally {
    log(`  tearing down lab '${lab.name}' ...`);
    await lab.down();
  }
}

/** The batch: per Service, its Pods (created, then reported running and ready), as a deployment's would be. */
async function createBatch(api: KubeClient, size: ScaleSize, log: (line: string) => void): Promise<void> {
  const jobs: (() => Promise<unknown>)[] = [];
  let ip = FIRST_FAKE_ENDPOINT;
  for (let i = 0; i < size.services; i++) {
    const app = `svc-${String(i).padStart(5, '0')}`;
    jobs.push(() =>
      api.create({
        apiVersion: 'v1',
        kind: 'Service',
        metadata: { name: app, namespace: SCALE_NAMESPACE },
        spec: { selector: { app }, ports: [{ name: 'tcp', appProtocol: 'tcp', port: SERVICE_PORT, targetPort: APP_PORT, protocol: 'TCP' }] },
      }),
    );
    for (let k = 0; k < size.endpointsPerService; k++) {
      const object = {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: `${app}-${k}`, namespace: SCALE_NAMESPACE, labels: { app } },
        spec: { nodeName: SCALE_NODE, containers: [{ name: 'app', image: 'app', ports: [{ name: 'tcp', containerPort: APP_PORT }] }] },
      } as unknown as Pod;
      const podIp = intToIp(ip++);
      jobs.push(() => createPod(api, { object, ip: podIp, hostIp: '172.30.0.250', ready: true }));
    }
  }
  let next = 0;
  let done = 0;
  const started = Date.now();
  const tenth = Math.max(1, Math.floor(jobs.length / 10));
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      while (next < jobs.length) {
        await jobs[next++]!();
        if (++done % tenth === 0) log(`  batch: ${Math.round((100 * done) / jobs.length)}% created (${((Date.now() - started) / 1000).toFixed(0)} s)`);
      }
    }),
  );
}

/**
 * Starts a client polling the probe's VIP, runs `before` (the batch, or nothing), creates probe Service `r` (the
 * mesh server as its one endpoint, through the controller) and times until the client gets an answer.
 */
async function timeToAnswer(lab: Lab, inputs: KubeScaleInputs, r: number, before: () => Promise<void>): Promise<{ ms: number }> {
  const vip = intToIp(FIRST_PROBE_VIP + r);
  const url = `http://${vip}:${SERVICE_PORT}/`;
  const waiter = new ChildLines(
    lab.spawn(MESH_CLIENT, pinned(inputs.loadCpu, ['trellis', 'tool', 'wait-http', '--url', url, '--timeout-s', String(ANSWER_TIMEOUT_S), '--interval-ms', '10'])),
    `wait-http ${url} in ${MESH_CLIENT}`,
  );
  try {
    const first = await waiter.next((l) => l.event === 'polling', 30_000, 'first try');
    if (first.first === '200') throw new LabError('ESCALE', `${url} answers before its Service exists`);
    const t0 = Date.now();
    await before();
    await lab.kube.create({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: `scale-probe-${r}`, namespace: 'bench-mesh' },
      spec: { clusterIP: vip, selector: { app: 'server' }, ports: [{ name: 'tcp', appProtocol: 'tcp', port: SERVICE_PORT, targetPort: APP_PORT, protocol: 'TCP' }] },
    } as ApiObject);
    const done = await waiter.next((l) => 'met' in l, (ANSWER_TIMEOUT_S + 10) * 1000, 'answer through the mesh');
    if (done.met !== true) throw new LabError('ESCALE', `${url} never answered within ${ANSWER_TIMEOUT_S} s (last try: ${String(done.last)})`);
    return { ms: Number(done.at_ms) - t0 };
  } finally {
    await waiter.finish(2000);
  }
}

async function agentPids(lab: Lab): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const n of (await lab.status()).nodes) {
    if (!n.agent?.alive) throw new LabError('EAGENT', `the agent of ${n.name} in lab '${lab.name}' is not running (log: ${lab.stateDir}/logs/agent-${n.name}.log)`);
    out[n.name] = n.agent.pid;
  }
  return out;
}

/** Pins every thread of a running process to one CPU. */
async function pin(pid: number, cpu: number): Promise<void> {
  const r = await run('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new LabError('ETASKSET', `taskset on ${procStat(pid)?.comm ?? 'process'} (pid ${pid}): ${r.stderr.trim()}`);
}
