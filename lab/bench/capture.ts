// Bench: the two capture modes side by side, and the same-node pair. One lab per mode (agents with --capture nft and
// --capture ebpf), each with the bench's client on node A, its server on node B and a second server on node A, so
// the same runs measure a cross-node call (through HBONE) and a same-node one (client and server behind one agent),
// modes alternated within each repeat. The nft lab's plain namespace gives the same-node pair without a mesh (direct).
import type { KubeObject } from '../../agent/model/objects.js';
import { Lab } from '../cluster/lab.js';
import { LabError } from '../errors.js';
import { parsePrometheus, sumOf } from '../load/promtext.js';
import type { ProcReader } from './procfs.js';
import { APP_PORT, BODY_BYTES, NODE_A, SERVICE_PORT, benchManifests, pinned } from './topology.js';
import { MESH_CLIENT, PLAIN_CLIENT, rotation } from './paths.js';

export type CaptureModeName = 'nft' | 'ebpf';
export const CAPTURE_PATHS: Record<CaptureModeName, string> = { nft: 'trellis-l4-nft', ebpf: 'trellis-l4-ebpf' };

export const CAPTURE_METRICS = [
  { name: 'p99_ms_1k_same_node', unit: 'ms', better: 'lower' },
  { name: 'cpu_us_per_req_1k_same_node', unit: 'us', better: 'lower' },
  { name: 'gbps_1_same_node', unit: 'Gbit/s', better: 'higher' },
  // A new connection per request on pooled HBONE sessions: what capturing, steering and accepting a connection
  // costs in each mode, without the TLS handshake that conn_per_s adds to every path.
  { name: 'conn_per_s_pooled', unit: 'conn/s', better: 'higher' },
  { name: 'cpu_us_per_conn_pooled', unit: 'us', better: 'lower' },
] as const;

export type CaptureMetric = (typeof CAPTURE_METRICS)[number]['name'] | 'p99_ms_1k' | 'cpu_us_per_req_1k' | 'gbps_1';

/** The second server, on the client's node, in both namespaces. */
const LOCAL_SERVER = 'server-local';

export function captureManifests(opts: { serverCpu?: number }): KubeObject[] {
  const objects = benchManifests(opts).filter((o) => o.kind !== 'Service' || o.metadata.name === 'server');
  for (const ns of ['bench-mesh', 'bench-plain']) {
    objects.push({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: LOCAL_SERVER, namespace: ns, labels: { app: LOCAL_SERVER } },
      spec: {
        nodeName: NODE_A,
        serviceAccountName: LOCAL_SERVER,
        containers: [
          {
            name: 'server',
            image: 'trellis',
            command: pinned(opts.serverCpu, ['trellis', 'tool', 'http-echo', '--port', String(APP_PORT), '--body-bytes', String(BODY_BYTES)]),
            ports: [{ name: 'tcp', containerPort: APP_PORT }],
          },
        ],
      },
    } as KubeObject);
    objects.push({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: LOCAL_SERVER, namespace: ns },
      spec: { selector: { app: LOCAL_SERVER }, ports: [{ name: 'tcp', port: SERVICE_PORT, targetPort: APP_PORT, appProtocol: 'tcp' }] },
    } as KubeObject);
  }
  return objects;
}

export interface CaptureInputs {
  /** Base of the two labs' names (each gets a letter of its own). */
  name: string;
  /** The main lab's name, which neither may take. */
  avoid: string;
  repeats: number;
  agentArgs: string[];
  logLevel: string;
  loadCpu: number | undefined;
  proxyCpu: number | undefined;
  plan: { warmupS: number; primeS: number; latencyS: number; bulkS: number; connS: number; connections: number };
  procs: ProcReader;
  pin: (pid: number, cpu: number, what: string) => Promise<void>;
  onLab: (lab: Lab) => void;
  /** Results of path `path` (CAPTURE_PATHS, or 'direct' for the same-node pair without a mesh). */
  add: (path: string, metric: CaptureMetric, value: number) => void;
  /** A mode this node cannot run: the path is reported unavailable with the reason. */
  unavailable: (path: string, reason: string) => void;
  warn: (line: string) => void;
  log: (line: string) => void;
}

interface ModeLab {
  mode: CaptureModeName;
  path: string;
  lab: Lab;
  agentPids: number[];
  cross: string;
  local: string;
}

export async function measureCapture(inputs: CaptureInputs): Promise<void> {
  const labs: ModeLab[] = [];
  let plainLocal: { lab: Lab; url: string } | undefined;
  for (const mode of ['nft', 'ebpf'] as const) {
    const [first, second] = mode === 'nft' ? ['c', 'd'] : ['f', 'g'];
    const name = `${inputs.name}${inputs.name + first === inputs.avoid ? second : first}`;
    inputs.log(`capture modes: lab '${name}', agents --capture ${mode} ...`);
    let lab: Lab;
    try {
      lab = await Lab.up(captureManifests({ serverCpu: inputs.loadCpu }), { name, logLevel: inputs.logLevel, agentArgs: [...inputs.agentArgs, '--capture', mode] });
    } catch (err) {
      // `--capture ebpf` refuses to start on a node that lacks what it needs, and says what.
      inputs.unavailable(CAPTURE_PATHS[mode], (err as Error).message.split('\n')[0]!.slice(0, 300));
      continue;
    }
    inputs.onLab(lab);
    const running = sumOf(parsePrometheus(await lab.metrics(NODE_A)), 'trellis_capture_mode', { mode });
    if (running !== 1) {
      inputs.unavailable(CAPTURE_PATHS[mode], `the agents did not run --capture ${mode} (trellis_capture_mode)`);
      continue;
    }
    const agentPids: number[] = [];
    for (const n of (await lab.status()).nodes) {
      if (!n.agent?.alive) throw new LabError('EAGENT', `the agent of ${n.name} in lab '${name}' is not running (log: ${lab.stateDir}/logs/agent-${n.name}.log)`);
      agentPids.push(n.agent.pid);
      if (inputs.proxyCpu !== undefined) await inputs.pin(n.agent.pid, inputs.proxyCpu, `the agent of ${n.name} in lab '${name}'`);
    }
    const url = (ns: string, svc: string): string => {
      const vip = lab.services.find((s) => s.namespace === ns && s.name === svc)?.clusterIP;
      if (!vip) throw new LabError('ENOTFOUND', `lab '${name}' has no Service ${ns}/${svc}`);
      return `http://${vip}:${SERVICE_PORT}/`;
    };
    const m: ModeLab = { mode, path: CAPTURE_PATHS[mode], lab, agentPids, cross: url('bench-mesh', 'server'), local: url('bench-mesh', LOCAL_SERVER) };
    for (const u of [m.cross, m.local]) await waitHttp(lab, MESH_CLIENT, u);
    labs.push(m);
    if (!plainLocal) {
      plainLocal = { lab, url: url('bench-plain', LOCAL_SERVER) };
      await waitHttp(lab, PLAIN_CLIENT, plainLocal.url);
    }
  }
  const { plan } = inputs;
  const tool = async (lab: Lab, client: string, argv: string[], seconds: number): Promise<Record<string, unknown>> => {
    const r = await lab.exec(client, pinned(inputs.loadCpu, ['trellis', 'tool', ...argv]), { timeoutMs: (seconds + 60) * 1000 });
    const last = r.stdout.trim().split('\n').at(-1) ?? '';
    try {
      return JSON.parse(last) as Record<string, unknown>;
    } catch {
      throw new LabError('ETOOL', `trellis tool ${argv[0]} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(-500)}`);
    }
  };
  const latency = async (lab: Lab, client: string, url: string, pids: number[], where: string) => {
    const cpu0 = inputs.procs.cpuSeconds(pids);
    const args = ['http-bench', '--url', url, '--rate', '1000', '--duration-s', String(plan.latencyS), '--warmup-s', String(plan.warmupS), '--connections', String(plan.connections)];
    const r = await tool(lab, client, args, plan.latencyS + plan.warmupS);
    const cpu = inputs.procs.cpuSeconds(pids) - cpu0;
    if (Number(r.errors) > 0) inputs.warn(`${where} at 1000 req/s: ${r.errors} of ${r.sent} requests failed ${JSON.stringify(r.error_counts)}`);
    const done = Number(r.completed_total);
    return { p99: Number(r.p99_ms), cpuPerReq: pids.length && done > 0 ? (cpu * 1e6) / done : undefined };
  };
  const bulk = async (lab: Lab, client: string, url: string, where: string) => {
    const r = await tool(lab, client, ['bulk-send', '--url', url, '--streams', '1', '--duration-s', String(plan.bulkS)], plan.bulkS);
    if (Number(r.ok_streams) !== 1) {
      inputs.warn(`${where} bulk: the stream did not complete ${JSON.stringify(r.error_counts)}`);
      return undefined;
    }
    return Number(r.gbps);
  };

  for (const m of labs) {
    for (const u of [m.cross, m.local]) {
      await tool(m.lab, MESH_CLIENT, ['http-bench', '--url', u, '--rate', '0', '--duration-s', String(plan.primeS), '--warmup-s', '0', '--connections', String(plan.connections)], plan.primeS);
    }
  }
  for (let r = 0; r < inputs.repeats; r++) {
    if (plainLocal) {
      const l = await latency(plainLocal.lab, PLAIN_CLIENT, plainLocal.url, [], 'direct same-node');
      inputs.add('direct', 'p99_ms_1k_same_node', l.p99);
      const g = await bulk(plainLocal.lab, PLAIN_CLIENT, plainLocal.url, 'direct same-node');
      if (g !== undefined) inputs.add('direct', 'gbps_1_same_node', g);
      inputs.log(`  direct same-node: p99 ${l.p99} ms at 1000 req/s, bulk ${g ?? '-'} Gbit/s`);
    }
    for (const m of rotation(labs, r)) {
      const cross = await latency(m.lab, MESH_CLIENT, m.cross, m.agentPids, `${m.path} cross-node`);
      inputs.add(m.path, 'p99_ms_1k', cross.p99);
      if (cross.cpuPerReq !== undefined) inputs.add(m.path, 'cpu_us_per_req_1k', cross.cpuPerReq);
      const local = await latency(m.lab, MESH_CLIENT, m.local, m.agentPids, `${m.path} same-node`);
      inputs.add(m.path, 'p99_ms_1k_same_node', local.p99);
      if (local.cpuPerReq !== undefined) inputs.add(m.path, 'cpu_us_per_req_1k_same_node', local.cpuPerReq);
      const g = await bulk(m.lab, MESH_CLIENT, m.cross, `${m.path} cross-node`);
      if (g !== undefined) inputs.add(m.path, 'gbps_1', g);
      const gl = await bulk(m.lab, MESH_CLIENT, m.local, `${m.path} same-node`);
      if (gl !== undefined) inputs.add(m.path, 'gbps_1_same_node', gl);
      const cpu0 = inputs.procs.cpuSeconds(m.agentPids);
      const c = await tool(m.lab, MESH_CLIENT, ['conn-rate', '--url', m.cross, '--duration-s', String(plan.connS), '--concurrency', String(plan.connections)], plan.connS);
      const cpu = inputs.procs.cpuSeconds(m.agentPids) - cpu0;
      if (Number(c.ok) > 0) {
        inputs.add(m.path, 'conn_per_s_pooled', Number(c.conn_per_s));
        inputs.add(m.path, 'cpu_us_per_conn_pooled', (cpu * 1e6) / Number(c.ok));
      }
      if (Number(c.errors) > 0) inputs.warn(`${m.path} connection rate: ${c.errors} of ${c.connections} connections failed ${JSON.stringify(c.error_counts)}`);
      inputs.log(
        `  ${m.path}: cross-node p99 ${cross.p99} ms, ${fmt(cross.cpuPerReq)} us/req, ${g ?? '-'} Gbit/s, ${c.conn_per_s} conn/s (${fmt((cpu * 1e6) / Number(c.ok))} us each); ` +
          `same-node p99 ${local.p99} ms, ${fmt(local.cpuPerReq)} us/req, ${gl ?? '-'} Gbit/s`,
      );
    }
  }
}

async function waitHttp(lab: Lab, client: string, url: string): Promise<void> {
  const r = await lab.exec(client, ['trellis', 'tool', 'wait-http', '--url', url, '--timeout-s', '30', '--interval-ms', '100'], { timeoutMs: 40_000 });
  if (r.code !== 0) throw new LabError('ENOTREADY', `lab '${lab.name}': ${url} does not answer from ${client}: ${r.stdout.trim()} ${r.stderr.trim()}`);
}

function fmt(v: number | undefined): string {
  return v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(0);
}
