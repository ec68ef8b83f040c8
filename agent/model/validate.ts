// Source edge: turns untrusted YAML documents into typed objects, or into errors naming the object and field.
import { z } from 'zod';
import { regexes as zodRegexes } from 'zod/v4/core';
import { EXTENSION_KINDS, type KubeObject } from './objects.js';

const DNS_1123 = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;
const name = z.string().min(1).max(253).regex(DNS_1123, 'must be a DNS-1123 name');
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
  // The EndpointSlice controller writes `ports: null` for a Service with no endpoints (as `endpoints: null`).
  ports: z.array(z.object({
    name: z.string().optional(),
    port: port.optional(),
    protocol: z.string().optional(),
    appProtocol: z.string().optional(),
  }).loose()).nullish().transform((p) => p ?? undefined),
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
  return validate(doc, true);
}

/** The schemas alone, without the fast checks: the reference the fast checks are tested against. */
export function validateBySchema(doc: unknown): Validated {
  return validate(doc, false);
}

function validate(doc: unknown, fast: boolean): Validated {
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
  if (fast && FAST_CHECKS[kind]!(doc as Plain)) return { ok: true, object: withNamespace(doc as KubeObject) };
  return bySchema(schema, doc);
}

function bySchema(schema: z.ZodType, doc: unknown): Validated {
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

// Fast checks. The schemas copy every object they check (tens of thousands of Services and EndpointSlices
// copied is a good part of applying a large directory, and twice the garbage). For the common kinds, a
// hand-written check of the same rules answers first: when it says valid, the schema would accept the object
// and return an equal copy of it, so the object itself is taken. It only ever says valid for plain data as
// YAML and JSON parsers make it (plain objects, arrays, primitives); anything else, and every invalid object,
// goes through the schema, which words the error. test/model/validate.test.ts holds the two to each other.

type Plain = Record<string, unknown>;

/** The namespace the schema path sets on its copy; here the object is copied where it changes, never mutated. */
function withNamespace(object: KubeObject): KubeObject {
  if (object.kind === 'Namespace' || object.metadata.namespace) return object;
  return { ...object, metadata: { ...object.metadata, namespace: 'default' } } as KubeObject;
}

/**
 * An object the schemas rebuild key by key: a plain object with no own "__proto__" key (the schemas leave
 * that key out of their copy).
 */
function isPlain(v: unknown): v is Plain {
  return typeof v === 'object' && v !== null && Object.getPrototypeOf(v) === Object.prototype && !Object.hasOwn(v, '__proto__');
}

function isName(v: unknown): boolean {
  return typeof v === 'string' && v.length >= 1 && v.length <= 253 && DNS_1123.test(v);
}

function isOptString(v: unknown): boolean {
  return v === undefined || typeof v === 'string';
}

function isPort(v: unknown): boolean {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535;
}

function isStringMap(v: unknown): boolean {
  if (!isPlain(v)) return false;
  for (const k in v) if (typeof v[k] !== 'string') return false;
  return true;
}

function isStringArray(v: unknown): boolean {
  return isArrayOfValues(v, isString);
}

function isString(v: unknown): boolean {
  return typeof v === 'string';
}

/** Every item (holes read as undefined, as the schema reads them) passing `check`. */
function isArrayOfValues(v: unknown, check: (item: unknown) => boolean): boolean {
  if (!Array.isArray(v)) return false;
  for (const item of v) if (!check(item)) return false;
  return true;
}

/** Each item a plain object passing `check`. */
function isArrayOf(v: unknown, check: (item: Plain) => boolean): boolean {
  if (!Array.isArray(v)) return false;
  for (const item of v) if (!isPlain(item) || !check(item)) return false;
  return true;
}

const IPV4 = zodRegexes.ipv4;
const ipv6Schema = z.ipv6();

function isIp(v: unknown): boolean {
  return typeof v === 'string' && (IPV4.test(v) || ipv6Schema.safeParse(v).success);
}

function isMeta(m: unknown): boolean {
  return (
    isPlain(m) &&
    isName(m.name) &&
    (m.namespace === undefined || isName(m.namespace)) &&
    isOptString(m.uid) &&
    (m.labels === undefined || isStringMap(m.labels)) &&
    (m.annotations === undefined || isStringMap(m.annotations)) &&
    (m.ownerReferences === undefined || isArrayOf(m.ownerReferences, (r) => typeof r.kind === 'string' && typeof r.name === 'string'))
  );
}

function isContainer(c: Plain): boolean {
  return (
    typeof c.name === 'string' &&
    c.name.length >= 1 &&
    isOptString(c.image) &&
    (c.command === undefined || isStringArray(c.command)) &&
    (c.args === undefined || isStringArray(c.args)) &&
    (c.ports === undefined || isArrayOf(c.ports, (p) => isOptString(p.name) && isPort(p.containerPort) && isOptString(p.protocol)))
  );
}

/** status.podIPs items are not loose: the schema keeps only "ip", so an item with more is left to it. */
function isPodIp(item: Plain): boolean {
  for (const k in item) if (k !== 'ip') return false;
  return isIp(item.ip);
}

function isPodStatus(s: unknown): boolean {
  return (
    s === undefined ||
    (isPlain(s) && (s.podIP === undefined || isIp(s.podIP)) && (s.podIPs === undefined || isArrayOf(s.podIPs, isPodIp)) && isOptString(s.phase))
  );
}

function isClusterIp(v: unknown): boolean {
  return v === 'None' || isIp(v);
}

function isServicePort(p: Plain): boolean {
  const protocol = p.protocol;
  const target = p.targetPort;
  return (
    isOptString(p.name) &&
    (protocol === undefined || protocol === 'TCP' || protocol === 'UDP' || protocol === 'SCTP') &&
    isOptString(p.appProtocol) &&
    isPort(p.port) &&
    (target === undefined || isPort(target) || (typeof target === 'string' && target.length >= 1))
  );
}

function isEndpoint(e: Plain): boolean {
  const addresses = e.addresses;
  const conditions = e.conditions;
  const ref = e.targetRef;
  return (
    isStringArray(addresses) &&
    (addresses as string[]).length >= 1 &&
    (conditions === undefined || (isPlain(conditions) && (conditions.ready === undefined || typeof conditions.ready === 'boolean'))) &&
    isOptString(e.nodeName) &&
    (ref === undefined || (isPlain(ref) && typeof ref.kind === 'string' && typeof ref.name === 'string' && isOptString(ref.namespace)))
  );
}

function isSlicePort(p: Plain): boolean {
  return isOptString(p.name) && (p.port === undefined || isPort(p.port)) && isOptString(p.protocol) && isOptString(p.appProtocol);
}

/** The spec of a route or policy kind: a record; a missing or null spec is the schema's to default. */
function isExtension(o: Plain): boolean {
  return isMeta(o.metadata) && isPlain(o.spec);
}

/** Per kind: true only when the kind's schema accepts the object (apiVersion and kind already checked). */
const FAST_CHECKS: Record<string, (o: Plain) => boolean> = {
  Namespace: (o) => isPlain(o) && isMeta(o.metadata),
  Pod: (o) => {
    const spec = o.spec;
    return (
      isPlain(o) &&
      isMeta(o.metadata) &&
      isPlain(spec) &&
      (spec.nodeName === undefined || (typeof spec.nodeName === 'string' && spec.nodeName.length >= 1)) &&
      (spec.serviceAccountName === undefined || isName(spec.serviceAccountName)) &&
      isArrayOf(spec.containers, isContainer) &&
      (spec.containers as unknown[]).length >= 1 &&
      isPodStatus(o.status)
    );
  },
  Service: (o) => {
    const spec = o.spec;
    return (
      isPlain(o) &&
      isMeta(o.metadata) &&
      isPlain(spec) &&
      (spec.clusterIP === undefined || isClusterIp(spec.clusterIP)) &&
      (spec.clusterIPs === undefined || isArrayOfValues(spec.clusterIPs, isClusterIp)) &&
      (spec.selector === undefined || isStringMap(spec.selector)) &&
      isArrayOf(spec.ports, isServicePort) &&
      (spec.ports as unknown[]).length >= 1
    );
  },
  EndpointSlice: (o) => {
    const type = o.addressType;
    return (
      isPlain(o) &&
      isMeta(o.metadata) &&
      (type === 'IPv4' || type === 'IPv6' || type === 'FQDN') &&
      isArrayOf(o.endpoints, isEndpoint) &&
      (o.ports === undefined || isArrayOf(o.ports, isSlicePort))
    );
  },
  ...Object.fromEntries(Object.keys(EXTENSION_KINDS).map((kind) => [kind, (o: Plain) => isPlain(o) && isExtension(o)])),
};
