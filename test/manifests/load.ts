// Test support for the cluster install in manifests/: reads its YAML, the kustomizations and the CRD schemas, and
// turns Kubernetes' schema dialect into JSON Schema that ajv can compile.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv, type ValidateFunction } from 'ajv';
import { parseAllDocuments } from 'yaml';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const MANIFESTS = path.join(ROOT, 'manifests');
export const EXAMPLES = path.join(MANIFESTS, 'examples');

export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

/** Every file under `dir`, relative to it, sorted. */
export function filesUnder(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const entry of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const child = path.join(rel, entry.name);
      if (entry.isDirectory()) walk(child);
      else out.push(child);
    }
  };
  walk('');
  return out.sort();
}

/** The documents of a (multi-document) YAML text; throws with the position of the first error. */
export function parseYamlDocs(text: string, where: string): unknown[] {
  return parseAllDocuments(text).flatMap((doc, i) => {
    if (doc.errors.length) throw new Error(`${where}, document ${i + 1}: ${doc.errors[0]!.message}`);
    const value: unknown = doc.toJS();
    return value === null || value === undefined ? [] : [value];
  });
}

export function loadYaml(file: string): unknown[] {
  return parseYamlDocs(fs.readFileSync(file, 'utf8'), path.relative(ROOT, file));
}

export function loadObjects(file: string): KubeObject[] {
  return loadYaml(file) as KubeObject[];
}

/** YAML files of the install (not the examples, not the kustomizations), relative to manifests/. */
export function installYamlFiles(): string[] {
  return filesUnder(MANIFESTS).filter(
    (f) => /\.ya?ml$/.test(f) && !f.startsWith(`examples${path.sep}`) && path.basename(f) !== 'kustomization.yaml',
  );
}

/** Every object of the install, with the file it came from. */
export function installObjects(): { file: string; obj: KubeObject }[] {
  return installYamlFiles().flatMap((file) => loadObjects(path.join(MANIFESTS, file)).map((obj) => ({ file, obj })));
}

export function exampleObjects(): { file: string; obj: KubeObject }[] {
  return filesUnder(EXAMPLES)
    .filter((f) => /\.ya?ml$/.test(f))
    .flatMap((file) => loadObjects(path.join(EXAMPLES, file)).map((obj) => ({ file: `examples/${file}`, obj })));
}

export function findObject(kind: string, name: string): KubeObject {
  const found = installObjects().find(({ obj }) => obj.kind === kind && obj.metadata.name === name);
  if (!found) throw new Error(`manifests/: no ${kind} ${name}`);
  return found.obj;
}

/** The YAML code blocks of a Markdown file. */
export function markdownYamlBlocks(file: string): { line: number; text: string }[] {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const blocks: { line: number; text: string }[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)```ya?ml\s*$/.exec(lines[i]!);
    if (!open) continue;
    // A block inside a list item is indented like the fence.
    const indent = open[1]!.length;
    const start = i + 1;
    let end = start;
    while (end < lines.length && !/^\s*```\s*$/.test(lines[end]!)) end++;
    blocks.push({ line: start + 1, text: lines.slice(start, end).map((l) => l.slice(Math.min(indent, l.length - l.trimStart().length))).join('\n') });
    i = end;
  }
  return blocks;
}

// --- CRD schemas -------------------------------------------------------------------------------------------------

export type Schema = Record<string, unknown>;

export interface CrdVersion {
  crd: KubeObject;
  group: string;
  kind: string;
  version: string;
  apiVersion: string;
  schema: Schema;
}

export function crdVersions(): CrdVersion[] {
  return installObjects()
    .filter(({ obj }) => obj.kind === 'CustomResourceDefinition')
    .flatMap(({ obj }) => {
      const spec = obj['spec'] as { group: string; names: { kind: string }; versions: { name: string; schema: { openAPIV3Schema: Schema } }[] };
      return spec.versions.map((v) => ({
        crd: obj,
        group: spec.group,
        kind: spec.names.kind,
        version: v.name,
        apiVersion: `${spec.group}/${v.name}`,
        schema: v.schema.openAPIV3Schema,
      }));
    });
}

// The fields apiextensions.k8s.io/v1 JSONSchemaProps knows; anything else is a typo the API server rejects.
const KNOWN_KEYWORDS = new Set([
  'description', 'type', 'format', 'title', 'default', 'maximum', 'exclusiveMaximum', 'minimum', 'exclusiveMinimum',
  'maxLength', 'minLength', 'pattern', 'maxItems', 'minItems', 'uniqueItems', 'multipleOf', 'enum', 'maxProperties',
  'minProperties', 'required', 'items', 'allOf', 'oneOf', 'anyOf', 'not', 'properties', 'additionalProperties',
  'nullable', 'example', 'externalDocs', 'x-kubernetes-preserve-unknown-fields', 'x-kubernetes-embedded-resource',
  'x-kubernetes-int-or-string', 'x-kubernetes-list-map-keys', 'x-kubernetes-list-type', 'x-kubernetes-map-type',
  'x-kubernetes-validations',
]);
// Known to JSONSchemaProps but refused in v1 CRDs.
const FORBIDDEN_KEYWORDS = ['$ref', '$schema', 'id', 'definitions', 'dependencies', 'patternProperties', 'additionalItems'];
const JUNCTORS = ['allOf', 'anyOf', 'oneOf', 'not'] as const;
// Inside allOf/anyOf/oneOf/not a structural schema may only validate values, never declare their shape.
const NOT_IN_JUNCTORS = ['type', 'additionalProperties', 'default', 'description', 'nullable', 'x-kubernetes-preserve-unknown-fields', 'x-kubernetes-int-or-string', 'x-kubernetes-embedded-resource'];

/**
 * The rules of a structural schema (Kubernetes docs, "Specifying a structural schema") that can be checked
 * without an API server. Returns the problems, each with its path in the schema.
 */
export function structuralProblems(schema: Schema): string[] {
  const problems: string[] = [];
  const visit = (node: Schema, at: string, inJunctor: boolean, shape: Schema | undefined) => {
    for (const key of Object.keys(node)) {
      if (!KNOWN_KEYWORDS.has(key)) problems.push(`${at}: unknown keyword ${key}`);
    }
    for (const key of FORBIDDEN_KEYWORDS) if (key in node) problems.push(`${at}: ${key} is not allowed in CRD schemas`);
    if (node['uniqueItems'] === true) problems.push(`${at}: uniqueItems: true is not allowed in CRD schemas`);
    if (inJunctor) {
      for (const key of NOT_IN_JUNCTORS) if (key in node) problems.push(`${at}: ${key} is not allowed inside allOf/anyOf/oneOf/not`);
      const props = (node['properties'] ?? {}) as Record<string, Schema>;
      const known = (shape?.['properties'] ?? {}) as Record<string, Schema>;
      for (const p of Object.keys(props)) if (!(p in known)) problems.push(`${at}.properties.${p}: not declared in the enclosing schema`);
    } else {
      const typeless = node['x-kubernetes-int-or-string'] === true || node['x-kubernetes-preserve-unknown-fields'] === true;
      if (!('type' in node) && !typeless) problems.push(`${at}: type is required`);
      if ('properties' in node && 'additionalProperties' in node) problems.push(`${at}: properties and additionalProperties are mutually exclusive`);
      if (node['type'] === 'array' && (typeof node['items'] !== 'object' || Array.isArray(node['items']))) {
        problems.push(`${at}: an array needs one items schema`);
      }
      if (node['type'] === 'object' && !('properties' in node) && !('additionalProperties' in node) && node['x-kubernetes-preserve-unknown-fields'] !== true && at !== '.properties.metadata') {
        problems.push(`${at}: an object without properties or additionalProperties keeps nothing (add x-kubernetes-preserve-unknown-fields if that is meant)`);
      }
    }
    for (const [name, child] of Object.entries((node['properties'] ?? {}) as Record<string, Schema>)) visit(child, `${at}.properties.${name}`, inJunctor, undefined);
    if (typeof node['additionalProperties'] === 'object') visit(node['additionalProperties'] as Schema, `${at}.additionalProperties`, inJunctor, undefined);
    if (typeof node['items'] === 'object' && !Array.isArray(node['items'])) visit(node['items'] as Schema, `${at}.items`, inJunctor, undefined);
    for (const j of JUNCTORS) {
      const sub = node[j];
      if (sub === undefined) continue;
      const list = Array.isArray(sub) ? (sub as Schema[]) : [sub as Schema];
      list.forEach((s, i) => visit(s, `${at}.${j}[${i}]`, true, inJunctor ? shape : node));
    }
  };
  visit(schema, '', false, undefined);
  if (schema['type'] !== 'object') problems.push('the root must be type: object');
  const meta = ((schema['properties'] ?? {}) as Record<string, Schema>)['metadata'];
  if (meta && Object.keys(meta).some((k) => k !== 'type' && k !== 'description')) {
    problems.push('.properties.metadata: only name and generateName may be restricted, and only in limited ways; leave it as type: object');
  }
  return problems;
}

/**
 * Kubernetes' schema dialect as JSON Schema: x-kubernetes-* keywords dropped (int-or-string becomes an anyOf),
 * nullable folded into type, and every object with declared properties closed (additionalProperties: false), as
 * `kubectl apply` (strict field validation) refuses unknown fields.
 */
export function toJsonSchema(node: Schema, inJunctor = false): Schema {
  const out: Schema = {};
  for (const [key, value] of Object.entries(node)) {
    if (key.startsWith('x-kubernetes-') || key === 'nullable' || key === 'example' || key === 'externalDocs') continue;
    if (key === 'properties') {
      out[key] = Object.fromEntries(Object.entries(value as Record<string, Schema>).map(([k, v]) => [k, toJsonSchema(v)]));
    } else if (key === 'additionalProperties' && typeof value === 'object') {
      out[key] = toJsonSchema(value as Schema);
    } else if (key === 'items') {
      out[key] = toJsonSchema(value as Schema);
    } else if (key === 'allOf' || key === 'anyOf' || key === 'oneOf') {
      out[key] = (value as Schema[]).map((s) => toJsonSchema(s, true));
    } else if (key === 'not') {
      out[key] = toJsonSchema(value as Schema, true);
    } else {
      out[key] = value;
    }
  }
  if (node['x-kubernetes-int-or-string'] === true) {
    delete out['type'];
    out['anyOf'] = [{ type: 'integer' }, { type: 'string' }, ...((out['anyOf'] as Schema[] | undefined) ?? [])];
  }
  if (node['nullable'] === true && typeof out['type'] === 'string') out['type'] = [out['type'], 'null'];
  const open = node['x-kubernetes-preserve-unknown-fields'] === true;
  if (!inJunctor && !open && 'properties' in node && !('additionalProperties' in node)) out['additionalProperties'] = false;
  return out;
}

const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

export function makeAjv(): Ajv {
  const ajv = new Ajv({ allErrors: true, strict: true, strictRequired: false, strictTypes: false });
  ajv.addFormat('int32', { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31 });
  ajv.addFormat('int64', { type: 'number', validate: (n: number) => Number.isSafeInteger(n) });
  ajv.addFormat('double', { type: 'number', validate: () => true });
  ajv.addFormat('float', { type: 'number', validate: () => true });
  ajv.addFormat('date-time', RFC3339);
  return ajv;
}

/** A validator per apiVersion/kind of the CRDs in manifests/crds. */
export function crdValidators(): Map<string, ValidateFunction> {
  const ajv = makeAjv();
  return new Map(crdVersions().map((v) => [`${v.apiVersion}/${v.kind}`, ajv.compile(toJsonSchema(v.schema))]));
}

/** The schema nodes of a CRD that carry a default, with their paths. */
export function defaults(schema: Schema, at = ''): { at: string; node: Schema }[] {
  const out: { at: string; node: Schema }[] = [];
  if ('default' in schema) out.push({ at, node: schema });
  for (const [k, v] of Object.entries((schema['properties'] ?? {}) as Record<string, Schema>)) out.push(...defaults(v, `${at}.${k}`));
  if (typeof schema['items'] === 'object') out.push(...defaults(schema['items'] as Schema, `${at}[]`));
  if (typeof schema['additionalProperties'] === 'object') out.push(...defaults(schema['additionalProperties'] as Schema, `${at}.*`));
  return out;
}
