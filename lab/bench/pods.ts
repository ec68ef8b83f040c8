// Bench: pods per node. One node with 100 idle pods, not meshed at first; then their namespace opts in, and the
// agent enrols them all (capture rules and listeners in each pod's netns). enrol_ms_100: from the annotation to
// the agent reporting every pod enrolled (trellis_enrolled_pods); kb_per_pod: the agent's own memory (RssAnon) for
// each enrolled idle pod, measured after the agent has had time to give back what the enrolment burst left.
import { MESH_ANNOTATION } from '../../agent/constants.js';
import type { KubeObject } from '../../agent/model/objects.js';
import { Lab } from '../cluster/lab.js';
import { LabError } from '../errors.js';
import { parsePrometheus, sumOf } from '../load/promtext.js';
import type { ProcReader } from './procfs.js';

export const PODS_NAMESPACE = 'bench-pods';
const NODE = 'node-a';
/** Longer than the agent's memory-trim period (telemetry/memory.ts), as the memory measurement waits. */
const SETTLE_MS = 12_000;
const ENROL_TIMEOUT_MS = 120_000;
const POLL_MS = 25;

export function podsManifests(count: number): KubeObject[] {
  const objects: KubeObject[] = [{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: PODS_NAMESPACE } }];
  for (let i = 0; i < count; i++) {
    objects.push({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: `p${i}`, namespace: PODS_NAMESPACE, labels: { app: 'idle' } },
      spec: { nodeName: NODE, serviceAccountName: 'idle', containers: [{ name: 'c', image: 'trellis', command: ['sleep', 'infinity'] }] },
    } as KubeObject);
  }
  return objects;
}

export interface PodsInputs {
  name: string;
  count: number;
  agentArgs: string[];
  logLevel: string;
  /** Where the agent runs (pinned), when the bench pins. */
  pin: (pid: number) => Promise<void>;
  procs: ProcReader;
  onLab: (lab: Lab) => void;
  log: (line: string) => void;
}

export interface PodsResult {
  enrolMs: number;
  kbPerPod: number;
  anonMbBefore: number;
  anonMbAfter: number;
}

export async function measurePods(inputs: PodsInputs): Promise<PodsResult> {
  const started = Date.now();
  const lab = await Lab.up(podsManifests(inputs.count), { name: inputs.name, logLevel: inputs.logLevel, agentArgs: inputs.agentArgs });
  inputs.onLab(lab);
  const status = await lab.status();
  const agent = status.nodes.find((n) => n.name === NODE)?.agent;
  if (!agent?.alive) throw new LabError('EAGENT', `the agent of ${NODE} in lab '${lab.name}' is not running`);
  await inputs.pin(agent.pid);
  inputs.log(`  lab '${lab.name}' with ${inputs.count} idle pods on ${NODE} up in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const enrolled = async (): Promise<number> => sumOf(parsePrometheus(await lab.metrics(NODE)), 'trellis_enrolled_pods');
  if ((await enrolled()) !== 0) throw new LabError('ELAB', `pods of ${PODS_NAMESPACE} are enrolled before their namespace opts in`);
  await sleep(SETTLE_MS);
  const before = inputs.procs.anonKb([agent.pid]);
  const t0 = performance.now();
  await lab.setNamespaceAnnotation(PODS_NAMESPACE, MESH_ANNOTATION, 'enabled');
  for (;;) {
    if ((await enrolled()) >= inputs.count) break;
    if (performance.now() - t0 > ENROL_TIMEOUT_MS) throw new LabError('ETIMEDOUT', `${inputs.count} pods not enrolled within ${ENROL_TIMEOUT_MS / 1000} s (${await enrolled()} were)`);
    await sleep(POLL_MS);
  }
  const enrolMs = performance.now() - t0;
  await sleep(SETTLE_MS);
  const after = inputs.procs.anonKb([agent.pid]);
  return { enrolMs, kbPerPod: (after - before) / inputs.count, anonMbBefore: before / 1024, anonMbAfter: after / 1024 };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
