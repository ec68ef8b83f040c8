// Bench: config scale. 10 000 Services with 50 000 endpoints (fake pod IPs, not meshed) land in the agents'
// `dir` source in one step; measured until a meshed request to a Service of the same batch succeeds.
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { TrellisError } from '../../agent/errors.js';
import { LabError } from '../errors.js';
import type { Lab } from '../cluster/lab.js';
import { intToIp, ipToInt } from '../cluster/names.js';
import { objectFileName } from '../cluster/realized.js';
import { SERVICE_NAME_LABEL, type KubeObject } from '../../agent/model/objects.js';
import { ChildLines } from './child-lines.js';
import { MESH_CLIENT } from './paths.js';
import { APP_PORT, MESH_SERVER, SERVICE_PORT, pinned } from './topology.js';

export const SCALE_NAMESPACE = 'bench-scale';
/** The batch's VIPs: inside the lab's Service range, far above what the lab hands out. */
const FIRST_SCALE_VIP = ipToInt('10.96.100.0');
/** The probe Services' VIPs, one per repeat. */
const FIRST_PROBE_VIP = ipToInt('10.96.99.10');
/** Fake endpoints: outside the lab's pod range, so nothing answers there and nothing is meshed. */
const FIRST_FAKE_ENDPOINT = ipToInt('10.250.0.1');
const MAX_SERVICES = 20_000;

export interface ScaleSize {
  services: number;
  endpointsPerService: number;
}

/** The batch: its Namespace, then per Service the Service and one EndpointSlice. */
export function scaleObjects(size: ScaleSize): KubeObject[] {
  if (!(size.services >= 1 && size.services <= MAX_SERVICES)) throw new RangeError(`services must be 1 to ${MAX_SERVICES}`);
  const objects: KubeObject[] = [{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: SCALE_NAMESPACE } }];
  let endpoint = FIRST_FAKE_ENDPOINT;
  for (let i = 0; i < size.services; i++) {
    const name = `svc-${String(i).padStart(5, '0')}`;
    const addresses: string[] = [];
    for (let k = 0; k < size.endpointsPerService; k++) addresses.push(intToIp(endpoint++));
    objects.push(...serviceWithSlice(SCALE_NAMESPACE, name, intToIp(FIRST_SCALE_VIP + i), addresses));
  }
  return objects;
}

/** A Service of the mesh namespace, in the same batch, whose one endpoint is the meshed server pod. */
export function probeObjects(repeat: number, serverIp: string): { vip: string; objects: KubeObject[] } {
  const vip = intToIp(FIRST_PROBE_VIP + repeat);
  return { vip, objects: serviceWithSlice('bench-mesh', `scale-probe-${repeat}`, vip, [serverIp]) };
}

function serviceWithSlice(namespace: string, name: string, vip: string, addresses: string[]): KubeObject[] {
  return [
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name, namespace },
      // Opaque TCP like trellis-l4, whose server port the probe shares.
      spec: { type: 'ClusterIP', clusterIP: vip, clusterIPs: [vip], ports: [{ name: 'tcp', appProtocol: 'tcp', port: SERVICE_PORT, targetPort: APP_PORT, protocol: 'TCP' }] },
    } as KubeObject,
    {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name: `${name}-1`, namespace, labels: { [SERVICE_NAME_LABEL]: name } },
      addressType: 'IPv4',
      endpoints: addresses.map((ip) => ({ addresses: [ip], conditions: { ready: true } })),
      ports: [{ name: 'tcp', appProtocol: 'tcp', port: APP_PORT, protocol: 'TCP' }],
    } as KubeObject,
  ];
}

export interface ScaleRun {
  applyMs: number;
  /** CPU time (user + system) node A's agent spent from the landing to the answer: wall time less the waits
   * for a CPU that others held, the part of applyMs that is the agent's own work. */
  applyCpuMs: number;
  /** Share of the wall time the proxy CPU spent on other processes than the agents (0 when not pinned). */
  foreignCpuShare: number;
  /** RSS of each node's agent a second after the first request succeeded, in MB. */
  rssMb: Record<string, number>;
}

export interface ScaleInputs {
  lab: Lab;
  size: ScaleSize;
  /** Where the batch is prepared (outside the cluster dir, same filesystem, so it lands by one rename). */
  stagingDir: string;
  /** CPU for the probing client, when pinning. */
  clientCpu?: number;
  rssMb: () => Record<string, number>;
  /** CPU seconds node A's agent has used so far. */
  agentCpuSeconds: () => number;
  /** Seconds the proxy CPU has spent on other processes than the agents so far (0 when not pinned). */
  foreignCpuSeconds: () => number;
  /** False once an agent has exited: the wait for the answer stops there. */
  agentsAlive: () => boolean;
  log: (line: string) => void;
}

/**
 * Prepares the batch once as one YAML file per object (the layout the lab itself writes), then per
 * repeat: adds that repeat's probe Service, moves the directory into the cluster dir in one rename, and
 * times it until the probe answers through the mesh; then moves it out and waits until the agents let
 * the probe go, so the next repeat starts from the same state.
 */
export class ScaleBench {
  private readonly landed: string;
  private prepared = false;

  constructor(private readonly inputs: ScaleInputs) {
    this.landed = path.join(inputs.lab.clusterDir, SCALE_NAMESPACE);
  }

  /** Files the batch has (the probe's two included). */
  get fileCount(): number {
    return 1 + 2 * this.inputs.size.services + 2;
  }

  async prepare(): Promise<void> {
    const started = Date.now();
    await fsp.mkdir(this.inputs.stagingDir, { recursive: true });
    const objects = scaleObjects(this.inputs.size);
    // Bounded parallelism: 20 000 writes at once would only queue in libuv's pool.
    for (let i = 0; i < objects.length; i += 256) {
      await Promise.all(objects.slice(i, i + 256).map((o) => this.writeObject(o)));
    }
    this.prepared = true;
    this.inputs.log(`  scale batch prepared: ${objects.length} objects in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }

  async measure(repeat: number): Promise<ScaleRun> {
    if (!this.prepared) await this.prepare();
    const { lab } = this.inputs;
    const probe = probeObjects(repeat, lab.pod(MESH_SERVER).ip);
    const probeFiles = await Promise.all(probe.objects.map((o) => this.writeObject(o)));
    const url = `http://${probe.vip}:${SERVICE_PORT}/`;
    const waiter = new ChildLines(
      lab.spawn(MESH_CLIENT, pinned(this.inputs.clientCpu, ['trellis', 'tool', 'wait-http', '--url', url, '--timeout-s', '300', '--interval-ms', '10'])),
      `wait-http ${url} in ${MESH_CLIENT}`,
    );
    try {
      const first = await waiter.next((l) => l.event === 'polling', 30_000, 'first try');
      if (first.first === '200') throw new LabError('ESCALE', `${url} already answers before the batch landed: a leftover of an earlier repeat?`);
      const cpu0 = this.inputs.agentCpuSeconds();
      const foreign0 = this.inputs.foreignCpuSeconds();
      const t0 = Date.now();
      await fsp.rename(this.inputs.stagingDir, this.landed);
      const done = await this.answer(waiter, 310_000);
      if (done.met !== true) throw new LabError('ESCALE', `${url} never answered within 300 s of the batch landing (last try: ${String(done.last)})`);
      const applyMs = Number(done.at_ms) - t0;
      // Read at once: the agent's CPU time goes on (the periodic reload) and /proc counts in 10 ms ticks.
      const applyCpuMs = (this.inputs.agentCpuSeconds() - cpu0) * 1000;
      const foreignCpuShare = (this.inputs.foreignCpuSeconds() - foreign0) / Math.max(0.001, (Date.now() - t0) / 1000);
      this.inputs.log(`  ${this.appliedAt(t0)}`);
      await new Promise((r) => setTimeout(r, 1000));
      const rssMb = this.inputs.rssMb();
      return { applyMs, applyCpuMs, foreignCpuShare, rssMb };
    } finally {
      await waiter.finish(2000);
      await this.takeBack(probeFiles, url);
    }
  }

  /**
   * When each agent applied the batch, from its log ("dir source: snapshot applied", logged once the state
   * is swapped): where the time to the answer went, node by node.
   */
  private appliedAt(t0: number): string {
    const parts: string[] = [];
    for (const node of this.inputs.lab.nodes.map((n) => n.name)) {
      const line = this.inputs.lab
        .agentLog(node)
        .split('\n')
        .filter((l) => l.includes('"dir source: snapshot applied"'))
        .map((l) => JSON.parse(l) as { time: string; loadMs: number; applyMs: number; parsed: number })
        .find((l) => Date.parse(l.time) >= t0 && l.parsed > 0);
      parts.push(line ? `${node} applied at +${Date.parse(line.time) - t0} ms (read ${line.loadMs} ms, compile ${line.applyMs} ms)` : `${node}: no snapshot logged`);
    }
    return parts.join('; ');
  }

  /** The waiter's result line, checking every second that the agents still run. */
  private async answer(waiter: ChildLines, timeoutMs: number): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return await waiter.next((l) => 'met' in l, Math.min(1000, Math.max(1, deadline - Date.now())), 'answer through the mesh');
      } catch (err) {
        if ((err as TrellisError).code !== 'ETIMEDOUT' || Date.now() >= deadline) throw err;
        if (!this.inputs.agentsAlive()) throw new LabError('EAGENT', 'an agent exited while the batch was being applied');
      }
    }
  }

  /** Moves the batch out of the cluster dir (without this repeat's probe) and waits until the agents drop it. */
  private async takeBack(probeFiles: string[], url: string): Promise<void> {
    const { lab } = this.inputs;
    try {
      await fsp.rename(this.landed, this.inputs.stagingDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    await Promise.all(probeFiles.map((f) => fsp.rm(f, { force: true })));
    const r = await lab.exec(MESH_CLIENT, ['trellis', 'tool', 'wait-http', '--url', url, '--until', 'fail', '--timeout-s', '300', '--interval-ms', '50'], {
      timeoutMs: 320_000,
    });
    if (r.code !== 0) throw new LabError('ESCALE', `the agents still route ${url} 300 s after the batch was taken back: ${r.stdout.trim()} ${r.stderr.trim()}`);
  }

  private async writeObject(o: KubeObject): Promise<string> {
    const file = path.join(this.inputs.stagingDir, objectFileName(o.kind, o.metadata.name, o.metadata.namespace));
    await fsp.writeFile(file, stringify(o));
    return file;
  }
}
