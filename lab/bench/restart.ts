// Bench: agent restarts under load, as a DaemonSet rolling update with maxSurge 1 does them. A two-node lab of its
// own (a meshed client and a plaintext caller on node-a; an HTTP/1.1 + h2c server and a TCP sink on node-b) carries
// meshed HTTP/1.1 keep-alive, h2c, plaintext HTTP/1.1 and a new connection per request the whole time, while each
// agent is replaced in turn (`Lab.restartAgent`), 20 paced TCP streams open across every restart.
// restart_failed_requests: requests without a response below 400; restart_refused_connections: new connections
// and streams that failed to connect or were reset; restart_altered_streams: streams whose bytes arrived changed or
// cut; restart_ready_ms: a new agent's start to ready; restart_handover_ms: from then until the old one is gone.
import type { KubeObject } from '../../agent/model/objects.js';
import { Lab } from '../cluster/lab.js';
import { LabError } from '../errors.js';

export const RESTART_METRICS = [
  { name: 'restart_failed_requests', unit: 'requests', better: 'lower' },
  { name: 'restart_refused_connections', unit: 'conns', better: 'lower' },
  { name: 'restart_altered_streams', unit: 'streams', better: 'lower' },
  { name: 'restart_ready_ms', unit: 'ms', better: 'lower' },
  { name: 'restart_handover_ms', unit: 'ms', better: 'lower' },
] as const;

export type RestartMetric = (typeof RESTART_METRICS)[number]['name'];

/** Per restart: the streams' 4 s, the new agent's start, and room. */
const PER_RESTART_S = 7;
const STREAMS = 20;
const STREAM_BYTES = 512 * 1024;

export function restartManifests(): KubeObject[] {
  const pod = (ns: string, name: string, node: string, command: string[], sa?: string): KubeObject =>
    ({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace: ns, labels: { app: name } },
      spec: { nodeName: node, ...(sa && { serviceAccountName: sa }), containers: [{ name: 'c', image: 'trellis', command }] },
    }) as KubeObject;
  return [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'mesh', annotations: { 'trellis.dev/mesh': 'enabled' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'plain' } },
    pod('mesh', 'client', 'node-a', ['sleep', 'infinity'], 'client'),
    pod('plain', 'outsider', 'node-a', ['sleep', 'infinity']),
    pod('mesh', 'web', 'node-b', ['trellis', 'tool', 'l7-echo', '--port', '8080'], 'web'),
    pod('mesh', 'sink', 'node-b', ['trellis', 'tool', 'tcp-sink', '--port', '9000'], 'sink'),
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'web', namespace: 'mesh' },
      spec: {
        selector: { app: 'web' },
        ports: [
          { name: 'http', port: 80, targetPort: 8080, appProtocol: 'http' },
          { name: 'h2c', port: 82, targetPort: 8080, appProtocol: 'kubernetes.io/h2c' },
        ],
      },
    } as KubeObject,
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'sink', namespace: 'mesh' }, spec: { selector: { app: 'sink' }, ports: [{ name: 'tcp', port: 9000, targetPort: 9000, appProtocol: 'tcp' }] } } as KubeObject,
  ];
}

export interface RestartInputs {
  name: string;
  /** Each agent is replaced this many times, the two in turn. */
  rounds: number;
  agentArgs: string[];
  logLevel: string;
  onLab: (lab: Lab) => void;
  add: (metric: RestartMetric, value: number) => void;
  log: (line: string) => void;
}

export async function measureRestarts(inputs: RestartInputs): Promise<void> {
  // A drain longer than the streams: the drain, not a cut, ends each old agent.
  const lab = await Lab.up(restartManifests(), { name: inputs.name, logLevel: inputs.logLevel, agentArgs: [...inputs.agentArgs, '--drain', '15s'] });
  inputs.onLab(lab);
  const vip = (s: string) => lab.services.find((x) => x.name === s)!.clusterIP;
  const web = vip('web');
  const loadS = inputs.rounds * 2 * PER_RESTART_S + 8;
  const tool = async (pod: string, argv: string[]) => {
    const r = await lab.exec(pod, ['trellis', 'tool', ...argv], { timeoutMs: (loadS + 60) * 1000 });
    return { ...r, lines: r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, number>) };
  };
  for (const from of ['mesh/client', 'plain/outsider']) {
    const deadline = Date.now() + 20_000;
    while ((await tool(from, ['http-client', '--url', `http://${web}/warm`, '--count', '1'])).lines[0]?.ok !== 1) {
      if (Date.now() > deadline) throw new LabError('ETIMEDOUT', `${from} cannot reach the web Service through the mesh`);
      await sleep(200);
    }
  }
  inputs.log(`  lab '${lab.name}': loads for ${loadS} s, ${inputs.rounds * 2} restarts`);
  const every = ['--count', '1000000', '--interval-ms', '20', '--duration-s', String(loadS)];
  const loads = Promise.all([
    tool('mesh/client', ['http-client', '--url', `http://${web}/h1`, '--concurrency', '6', ...every]),
    tool('mesh/client', ['http-client', '--http2', '--url', `http://${web}:82/h2`, '--concurrency', '2', ...every]),
    tool('plain/outsider', ['http-client', '--url', `http://${web}/plain`, '--concurrency', '2', ...every]),
    tool('mesh/client', ['conn-rate', '--url', `http://${web}/conn`, '--duration-s', String(loadS), '--concurrency', '1']),
  ]);
  const streams: ReturnType<typeof tool>[] = [];
  for (let i = 0; i < inputs.rounds * 2; i++) {
    const node = i % 2 === 0 ? 'node-b' : 'node-a';
    await sleep(1500);
    streams.push(tool('mesh/client', ['tcp-send', '--to', `${vip('sink')}:9000`, '--bytes', String(STREAM_BYTES), '--bytes-per-s', String(STREAM_BYTES / 4), '--chunk', '16384', '--streams', String(STREAMS)]));
    await sleep(500);
    const t = await lab.restartAgent(node);
    inputs.add('restart_ready_ms', t.readyMs);
    inputs.add('restart_handover_ms', t.stopMs);
    inputs.log(`  ${node}: new agent ready after ${Math.round(t.readyMs)} ms, the old one gone ${Math.round(t.stopMs)} ms later`);
  }
  const [h1, h2, plain, conns] = (await loads).map((r) => r.lines.at(-1) ?? {});
  let refused = Number(conns!.errors ?? 0);
  let altered = 0;
  for (const s of await Promise.all(streams)) {
    const matched = s.lines.filter((l) => (l as unknown as { match: boolean }).match === true).length;
    // No line: the stream failed to connect or was reset (tcp-send's exit code 2); a line without a match: its
    // bytes arrived changed or cut.
    refused += STREAMS - s.lines.length;
    altered += s.lines.length - matched;
  }
  const failed = [h1, h2, plain].reduce((n, x) => n + Number(x!.failed ?? 0), 0);
  const sent = [h1, h2, plain].reduce((n, x) => n + Number(x!.sent ?? 0), 0);
  inputs.add('restart_failed_requests', failed);
  inputs.add('restart_refused_connections', refused);
  inputs.add('restart_altered_streams', altered);
  inputs.log(
    `  ${failed} of ${sent} requests failed; ${refused} of ${Number(conns!.connections ?? 0) + inputs.rounds * 2 * STREAMS} connections refused or reset; ` +
      `${altered} streams altered; h2 streams sent again after a refusal: ${Number(h2!.refused_retried ?? 0)}`,
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
