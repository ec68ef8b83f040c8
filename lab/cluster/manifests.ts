// Lab input edge: reads the user's Kubernetes manifests (files, directories or objects) and validates
// the fields the lab acts on; every error names the file, the document and the field.
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { z } from 'zod';
import { LabError } from '../errors.js';
import { EXTENSION_KINDS, type ExtensionObject, type KubeObject, type Namespace, type Pod, type Service } from '../../agent/model/objects.js';

export interface Sourced<T> {
  object: T;
  /** "file.yaml, document 2 (Pod demo/server)": where the object came from, for error messages. */
  where: string;
}

export interface LabManifests {
  namespaces: Sourced<Namespace>[];
  pods: Sourced<Pod>[];
  services: Sourced<Service>[];
  /** HTTPRoute, GRPCRoute and the Trellis policy kinds: carried to the agents as written (they validate the specs). */
  extensions: Sourced<ExtensionObject>[];
}

interface RawDoc {
  raw: unknown;
  where: string;
}

const MANIFEST_FILE = /\.(ya?ml|json)$/i;
const MAX_ISSUES = 4;

const dnsLabel = z
  .string()
  .max(63)
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'must be a DNS label (lowercase letters, digits and "-")');
const dnsSubdomain = z
  .string()
  .max(253)
  .regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'must be a DNS name (lowercase letters, digits, "-" and ".")');
const portName = z
  .string()
  .max(15)
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'must be a port name (up to 15 lowercase letters, digits and "-")');
const port = z.int().min(1).max(65535);
const stringMap = z.record(z.string(), z.string());
const meta = z.looseObject({
  name: dnsSubdomain,
  namespace: dnsLabel.optional(),
  labels: stringMap.optional(),
  annotations: stringMap.optional(),
});

const namespaceSchema = z.looseObject({
  apiVersion: z.literal('v1'),
  kind: z.literal('Namespace'),
  metadata: z.looseObject({ name: dnsLabel, labels: stringMap.optional(), annotations: stringMap.optional() }),
});

const containerSchema = z.looseObject({
  name: dnsLabel,
  command: z.array(z.string()).min(1).optional(),
  args: z.array(z.string()).optional(),
  env: z.array(z.looseObject({ name: z.string().min(1), value: z.string().optional() })).optional(),
  ports: z.array(z.looseObject({ name: portName.optional(), containerPort: port, protocol: z.string().optional() })).optional(),
});

const podSchema = z.looseObject({
  apiVersion: z.literal('v1'),
  kind: z.literal('Pod'),
  metadata: meta,
  spec: z.looseObject({
    // Checked by hand below, for a message that says what the lab does with it.
    nodeName: z.string().optional(),
    serviceAccountName: dnsSubdomain.optional(),
    containers: z.array(containerSchema).min(1, 'a Pod needs at least one container'),
  }),
});

const serviceSchema = z.looseObject({
  apiVersion: z.literal('v1'),
  kind: z.literal('Service'),
  metadata: meta,
  spec: z.looseObject({
    type: z.literal('ClusterIP', 'the lab emulates ClusterIP Services only').optional(),
    clusterIP: z.union([z.ipv4(), z.literal('None')], 'must be an IPv4 address in 10.96.0.0/16, or None').optional(),
    selector: stringMap.optional(),
    ports: z
      .array(
        z.looseObject({
          name: portName.optional(),
          protocol: z.literal('TCP', 'the lab emulates TCP Service ports only').optional(),
          appProtocol: z.string().min(1).optional(),
          port,
          targetPort: z.union([port, portName], 'must be a port number or a named container port').optional(),
        }),
      )
      .min(1, 'a Service needs at least one port'),
  }),
});

// Only the envelope is checked here: the agents compile the specs and report what is wrong in them, which is
// what a route test wants to see (an invalid route must reach the agents to prove it is refused there).
// A security policy without spec means something (allow-nothing), as the agents read it: spec {}.
const SPEC_OPTIONAL = new Set(['AuthorizationPolicy', 'PeerAuthentication']);
const extensionSchema = (apiVersion: string, kind: string) =>
  z.looseObject({
    apiVersion: z.literal(apiVersion, `${kind} is read at ${apiVersion}`),
    kind: z.literal(kind),
    metadata: meta,
    spec: SPEC_OPTIONAL.has(kind)
      ? z.record(z.string(), z.unknown()).nullish().transform((spec) => spec ?? {})
      : z.record(z.string(), z.unknown()),
  });

const schemas: Record<string, z.ZodType> = {
  Namespace: namespaceSchema,
  Pod: podSchema,
  Service: serviceSchema,
  ...Object.fromEntries(Object.entries(EXTENSION_KINDS).map(([kind, apiVersion]) => [kind, extensionSchema(apiVersion, kind)])),
};

/** The kinds the lab carries through without acting on them, and that `Lab.apply` may change while it runs. */
export const LAB_EXTENSION_KINDS: readonly string[] = Object.freeze(Object.keys(EXTENSION_KINDS));

/** Reads files and directories (every *.yaml, *.yml, *.json below them) or takes objects, and validates them. */
export async function loadManifests(input: string | string[] | KubeObject[]): Promise<LabManifests> {
  const list: (string | KubeObject)[] = Array.isArray(input) ? input : [input];
  if (list.length === 0) throw manifestError('no manifests given: pass files or directories (-f) or objects');
  if (list.every((x) => typeof x === 'string')) {
    const docs: RawDoc[] = [];
    for (const file of await expandPaths(list as string[])) {
      docs.push(...parseManifestText(file, await readText(file)));
    }
    return validateManifests(docs);
  }
  if (list.some((x) => typeof x === 'string')) throw manifestError('pass either paths or objects, not both');
  return validateManifests(list.map((raw, i) => ({ raw: structuredClone(raw), where: `object ${i + 1}` })));
}

/** Splits one multi-document YAML (or JSON) text into raw documents; a syntax error names the file and document. */
export function parseManifestText(file: string, text: string): RawDoc[] {
  const docs = parseAllDocuments(text);
  const out: RawDoc[] = [];
  for (const [i, doc] of [...docs].entries()) {
    const where = `${file}, document ${i + 1}`;
    const err = doc.errors[0];
    if (err) throw manifestError(`${where}: invalid YAML: ${err.message.split('\n')[0]}`);
    const raw: unknown = doc.toJS();
    if (raw === null || raw === undefined) continue;
    const kind = (raw as { kind?: unknown }).kind;
    const items = (raw as { items?: unknown }).items;
    if (typeof kind === 'string' && kind.endsWith('List') && Array.isArray(items)) {
      items.forEach((item: unknown, k) => out.push({ raw: item, where: `${where}, item ${k + 1}` }));
    } else {
      out.push({ raw, where });
    }
  }
  return out;
}

/** Validates raw documents into typed objects; throws one TrellisError listing what is wrong where. */
export function validateManifests(docs: RawDoc[]): LabManifests {
  const out: LabManifests = { namespaces: [], pods: [], services: [], extensions: [] };
  const seen = new Map<string, string>();
  for (const doc of docs) {
    const item = validateOne(doc);
    const o = item.object;
    const key = `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`;
    const first = seen.get(key);
    if (first) throw manifestError(`${item.where}: duplicate ${describe(o)}, first defined in ${first}`);
    seen.set(key, item.where);
    if (o.kind === 'Namespace') out.namespaces.push(item as Sourced<Namespace>);
    else if (o.kind === 'Pod') out.pods.push(item as Sourced<Pod>);
    else if (o.kind === 'Service') out.services.push(item as Sourced<Service>);
    else out.extensions.push(item as Sourced<ExtensionObject>);
  }
  return out;
}

function validateOne(doc: RawDoc): Sourced<Namespace | Pod | Service | ExtensionObject> {
  const raw = doc.raw;
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw manifestError(`${doc.where}: not a Kubernetes object (expected a mapping with apiVersion, kind and metadata)`);
  }
  const kind = (raw as { kind?: unknown }).kind;
  if (typeof kind !== 'string') throw manifestError(`${doc.where}: field kind: is required`);
  const schema = schemas[kind];
  if (!schema) {
    throw manifestError(
      `${doc.where}: unsupported kind "${kind}": the lab reads Namespace, Pod, Service and ${LAB_EXTENSION_KINDS.join(', ')} ` +
        '(write Pods with spec.nodeName instead of Deployments)',
    );
  }
  const label = labelOf(raw, kind);
  const where = label ? `${doc.where} (${label})` : doc.where;
  const parsed = schema.safeParse(raw, {
    error: (iss) => (iss.code === 'invalid_type' && iss.input === undefined ? 'is required' : undefined),
  });
  if (!parsed.success) {
    const issues = parsed.error.issues.slice(0, MAX_ISSUES).map((i) => {
      const field = i.path.length ? i.path.map(String).join('.') : '(object)';
      return `field ${field}: ${i.message}`;
    });
    const more = parsed.error.issues.length > MAX_ISSUES ? ` (and ${parsed.error.issues.length - MAX_ISSUES} more)` : '';
    throw manifestError(`${where}: ${issues.join('; ')}${more}`);
  }
  const object = parsed.data as Namespace | Pod | Service | ExtensionObject;
  if (object.kind === 'Namespace') {
    delete object.metadata.namespace;
  } else {
    object.metadata.namespace ??= 'default';
  }
  if (object.kind === 'Pod') checkPod(object, where);
  if (object.kind === 'Service') checkService(object, where);
  return { object, where };
}

function checkPod(pod: Pod, where: string): void {
  if (!pod.spec.nodeName) {
    throw manifestError(
      `${where}: field spec.nodeName: is required: the lab places every Pod on the node it names (e.g. nodeName: node-a)`,
    );
  }
  dnsSubdomainOrThrow(pod.spec.nodeName, `${where}: field spec.nodeName`);
  const names = new Set<string>();
  const portNames = new Set<string>();
  for (const [k, c] of pod.spec.containers.entries()) {
    const field = `${where}: field spec.containers.${k}`;
    if (names.has(c.name)) throw manifestError(`${field}.name: duplicate container name "${c.name}"`);
    names.add(c.name);
    if (c.args && !c.command) {
      throw manifestError(`${field}.command: is required when args are given: the lab ignores images, so give the whole command`);
    }
    const env = (c as { env?: { name: string; value?: string; valueFrom?: unknown }[] }).env ?? [];
    for (const [e, v] of env.entries()) {
      if (v.valueFrom !== undefined) {
        throw manifestError(`${field}.env.${e}.valueFrom: not supported by the lab: give a literal value`);
      }
    }
    for (const [p, cp] of (c.ports ?? []).entries()) {
      if (!cp.name) continue;
      if (portNames.has(cp.name)) throw manifestError(`${field}.ports.${p}.name: duplicate port name "${cp.name}"`);
      portNames.add(cp.name);
    }
  }
}

function checkService(svc: Service, where: string): void {
  const ports = svc.spec.ports;
  const numbers = new Set<number>();
  const names = new Set<string>();
  for (const [k, p] of ports.entries()) {
    const field = `${where}: field spec.ports.${k}`;
    if (ports.length > 1 && !p.name) throw manifestError(`${field}.name: is required when a Service has more than one port`);
    if (numbers.has(p.port)) throw manifestError(`${field}.port: duplicate port ${p.port}`);
    numbers.add(p.port);
    if (p.name !== undefined) {
      if (names.has(p.name)) throw manifestError(`${field}.name: duplicate port name "${p.name}"`);
      names.add(p.name);
    }
  }
}

function dnsSubdomainOrThrow(value: string, field: string): void {
  const r = dnsSubdomain.safeParse(value);
  if (!r.success) throw manifestError(`${field}: ${r.error.issues[0]!.message}`);
}

async function expandPaths(paths: string[]): Promise<string[]> {
  const files: string[] = [];
  for (const p of paths) {
    let st;
    try {
      st = await fsp.stat(p);
    } catch {
      throw manifestError(`${p}: no such file or directory`);
    }
    if (!st.isDirectory()) {
      files.push(p);
      continue;
    }
    const entries = await fsp.readdir(p, { recursive: true, withFileTypes: true });
    const found = entries
      .filter((e) => e.isFile() && MANIFEST_FILE.test(e.name) && !e.name.startsWith('.'))
      .map((e) => path.join(e.parentPath, e.name))
      .sort();
    if (found.length === 0) throw manifestError(`${p}: directory has no *.yaml, *.yml or *.json files`);
    files.push(...found);
  }
  return files;
}

async function readText(file: string): Promise<string> {
  try {
    return await fsp.readFile(file, 'utf8');
  } catch (err) {
    throw manifestError(`${file}: cannot read: ${(err as Error).message}`);
  }
}

function labelOf(raw: object, kind: string): string | undefined {
  const m = (raw as { metadata?: { name?: unknown; namespace?: unknown } }).metadata;
  if (typeof m?.name !== 'string') return undefined;
  if (kind === 'Namespace') return `Namespace ${m.name}`;
  return `${kind} ${typeof m.namespace === 'string' ? m.namespace : 'default'}/${m.name}`;
}

function describe(o: KubeObject): string {
  return o.kind === 'Namespace' ? `Namespace ${o.metadata.name}` : `${o.kind} ${o.metadata.namespace}/${o.metadata.name}`;
}

function manifestError(message: string): LabError {
  return new LabError('EMANIFEST', message);
}
