// The realized cluster the agents' `dir` source watches: one YAML file per object, replaced atomically,
// so an agent reload never reads a half-written object.
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { parse, stringify } from 'yaml';
import { LabError } from '../errors.js';
import type { KubeObject } from '../../agent/model/objects.js';
import type { LabPlan } from './plan.js';
import { writeFileAtomic } from './state.js';

const PREFIX: Record<KubeObject['kind'], string> = {
  Namespace: 'ns',
  Pod: 'pod',
  Service: 'svc',
  EndpointSlice: 'eps',
  HTTPRoute: 'httproute',
  GRPCRoute: 'grpcroute',
  FaultInjection: 'fault',
  RetryBudget: 'retrybudget',
  EgressNetwork: 'egressnetwork',
  AuthorizationPolicy: 'authz',
  PeerAuthentication: 'peerauthn',
};

/** `pod-<ns>.<name>.yaml`: namespaces hold no dots, so the name is unambiguous. */
export function objectFileName(kind: KubeObject['kind'], name: string, namespace?: string): string {
  return kind === 'Namespace' ? `${PREFIX[kind]}-${name}.yaml` : `${PREFIX[kind]}-${namespace}.${name}.yaml`;
}

/** Every object of the realized cluster, namespaces first; policies before the routes that name them. */
export function clusterObjects(plan: LabPlan): KubeObject[] {
  return [
    ...plan.namespaces,
    ...plan.services.map((s) => s.object),
    ...plan.endpointSlices,
    ...inApplyOrder(plan.extensions),
    ...plan.pods.map((p) => p.object),
  ];
}

const ROUTE_KINDS: ReadonlySet<string> = new Set(['HTTPRoute', 'GRPCRoute']);

/**
 * Policies (FaultInjection, RetryBudget...) first, routes last, each group in the given order: a route that
 * names a filter object then never reaches an agent before the object does.
 */
export function inApplyOrder<T extends { kind: string }>(objects: readonly T[]): T[] {
  return [...objects.filter((o) => !ROUTE_KINDS.has(o.kind)), ...objects.filter((o) => ROUTE_KINDS.has(o.kind))];
}

/** Writes every object of the plan (`endpointSlices: false`: all but the EndpointSlices, which a controller makes). */
export async function writeClusterObjects(dir: string, plan: LabPlan, opts: { endpointSlices?: boolean } = {}): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  const objects = clusterObjects(plan).filter((o) => opts.endpointSlices !== false || o.kind !== 'EndpointSlice');
  await Promise.all(
    objects.map((o) =>
      writeFileAtomic(path.join(dir, objectFileName(o.kind, o.metadata.name, o.metadata.namespace)), stringify(o)),
    ),
  );
}

/** Sets (or with null removes) one annotation in a realized object file. */
export async function setAnnotation(file: string, key: string, value: string | null): Promise<void> {
  const object = await readObject(file);
  const annotations = { ...object.metadata.annotations };
  if (value === null) delete annotations[key];
  else annotations[key] = value;
  object.metadata.annotations = annotations;
  await writeFileAtomic(file, stringify(object));
}

export async function readObject(file: string): Promise<KubeObject> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new LabError('ENOTFOUND', `${file} is missing: is the lab up? (\`trellis lab status\`)`);
    }
    throw err;
  }
  return parse(text) as KubeObject;
}
