// Source edge: turns untrusted YAML documents into typed objects, or into errors naming the object and field.
import { z } from 'zod';
import { EXTENSION_KINDS, type KubeObject } from './objects.js';

const name = z.string().min(1).max(253).regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'must be a DNS-1123 name');
const stringMap = z.record(z.string(), z.string());
const meta = z.object({
  name,
  namespace: name.optional(),
  uid: z.string().optional(),
  labels: stringMap.optional(),
  annotations: stringMap.optional(),
  ownerReferences: z.array(z.object({ kind: z.string(), name: z.string() }).loose()).optional(),
}).loose();
const ipv4or6 = z.union([z.ipv4(), z.ipv6()]);
const port = z.number().int().min(1).max(65535);

const namespaceSchema = z.object({ apiVersion: z.literal('v1'), kind: z.literal('Namespace'), metadata: meta }).loose();

const podSchema = z.object({
  apiVersion: z.literal('v1'),
  kind: z.literal('Pod'),
  metadata: meta,
  spec: z.object({
    nodeName: z.string().min(1).optional(),
    serviceAccountName: name.optional(),
    containers: z.array(z.object({
      name: z.string().min(1),
      image: z.string().optional(),
      command: z.array(z.string()).optional(),
      args: z.array(z.string()).optional(),
      ports: z.array(z.object({ name: z.string().optional(), containerPort: port, protocol: z.string().optional() }).loose()).optional(),
    }).loose()).min(1),
  }).loose(),
  status: z.object({
    podIP: ipv4or6.optional(),
    podIPs: z.array(z.object({ ip: ipv4or6 })).optional(),
    phase: z.string().optional(),
  }).loose().optional(),
}).loose();

const serviceSchema = z.object({
  apiVersion: z.literal('v1'),
  kind: z.literal('Service'),
  metadata: meta,
  spec: z.object({
    clusterIP: z.union([ipv4or6, z.literal('None')]).optional(),
    clusterIPs: z.array(z.union([ipv4or6, z.literal('None')])).optional(),
    selector: stringMap.optional(),
    ports: z.array(z.object({
      name: z.string().optional(),
      protocol: z.enum(['TCP', 'UDP', 'SCTP']).optional(),
      appProtocol: z.string().optional(),
      port,
      targetPort: z.union([port, z.string().min(1)]).optional(),
    }).loose()).min(1),
  }).loose(),
}).loose();

const endpointSliceSchema = z.object({
  apiVersion: z.literal('discovery.k8s.io/v1'),
  kind: z.literal('EndpointSlice'),
  metadata: meta,
  addressType: z.enum(['IPv4', 'IPv6', 'FQDN']),
  endpoints: z.array(z.object({
    addresses: z.array(z.string()).min(1),
    conditions: z.object({ ready: z.boolean().optional() }).loose().optional(),
    nodeName: z.string().optional(),
    targetRef: z.object({ kind: z.string(), name: z.string(), namespace: z.string().optional() }).loose().optional(),
  }).loose()).nullable().transform((e) => e ?? []),
  ports: z.array(z.object({
    name: z.string().optional(),
    port: port.optional(),
    protocol: z.string().optional(),
    appProtocol: z.string().optional(),
  }).loose()).optional(),
}).loose();

// A security policy with no spec is meaningful (Istio's allow-nothing: an ALLOW policy with no rules); refusing it
// here would drop it and so fail open. Its spec is read as {}.
const SPEC_OPTIONAL = new Set(['AuthorizationPolicy', 'PeerAuthentication']);
const extensionSchema = (apiVersion: string, kind: string) =>
  z.object({
    apiVersion: z.literal(apiVersion),
    kind: z.literal(kind),
    metadata: meta,
    spec: SPEC_OPTIONAL.has(kind) ? z.record(z.string(), z.unknown()).nullish().transform((s) => s ?? {}) : z.record(z.string(), z.unknown()),
  }).loose();

const schemas: Record<string, z.ZodType> = {
  Namespace: namespaceSchema,
  Pod: podSchema,
  Service: serviceSchema,
  EndpointSlice: endpointSliceSchema,
  ...Object.fromEntries(Object.entries(EXTENSION_KINDS).map(([kind, apiVersion]) => [kind, extensionSchema(apiVersion, kind)])),
};

/** The apiVersion each kind is read at; another version of a known kind is ignored, not guessed at. */
const API_VERSIONS: Record<string, string> = {
  Namespace: 'v1',
  Pod: 'v1',
  Service: 'v1',
  EndpointSlice: 'discovery.k8s.io/v1',
  ...EXTENSION_KINDS,
};

export type Validated = { ok: true; object: KubeObject } | { ok: false; reason: string };

/** Kinds a source accepts; anything else is reported, not guessed at. */
export const KNOWN_KINDS = Object.freeze(Object.keys(schemas));

export function validateObject(doc: unknown): Validated {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    return { ok: false, reason: 'not a Kubernetes object (expected a mapping with apiVersion, kind, metadata)' };
  }
  const kind = (doc as { kind?: unknown }).kind;
  if (typeof kind !== 'string') return { ok: false, reason: 'missing field "kind"' };
  const schema = schemas[kind];
  if (!schema) return { ok: false, reason: `unsupported kind "${kind}" (supported: ${KNOWN_KINDS.join(', ')})` };
  const apiVersion = (doc as { apiVersion?: unknown }).apiVersion;
  if (apiVersion !== API_VERSIONS[kind]) {
    return {
      ok: false,
      reason: `apiVersion ${String(apiVersion)} of ${kind} is not understood by this agent (it reads ${API_VERSIONS[kind]}); the object is ignored`,
    };
  }
  const parsed = schema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.length ? issue.path.join('.') : '(object)';
    return { ok: false, reason: `field ${field}: ${issue.message}` };
  }
  const object = parsed.data as KubeObject;
  if (object.kind !== 'Namespace' && !object.metadata.namespace) {
    object.metadata.namespace = 'default';
  }
  return { ok: true, object };
}
