// Test support: PATCH bodies for the fake API server: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).
// Strategic merge and server-side apply are served as merge patches (lists are replaced, not merged by key).

export class PatchError extends Error {
  constructor(message: string, readonly code = 422) {
    super(message);
  }
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return structuredClone(patch);
  const out: Record<string, unknown> = isObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

function pointer(path: string): string[] {
  if (path === '') return [];
  if (!path.startsWith('/')) throw new PatchError(`invalid JSON pointer "${path}"`);
  return path.slice(1).split('/').map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function parentOf(doc: Json, parts: string[], op: string): { parent: Json; key: string } {
  let cur: Json = doc;
  for (const p of parts.slice(0, -1)) {
    const next: Json | undefined = Array.isArray(cur) ? cur[Number(p)] : isObject(cur) ? cur[p] : undefined;
    if (next === undefined) throw new PatchError(`${op}: path /${parts.join('/')} does not exist`);
    cur = next;
  }
  return { parent: cur, key: parts.at(-1)! };
}

function getAt(doc: Json, path: string, op: string): Json {
  let cur: Json = doc;
  for (const p of pointer(path)) {
    const next: Json | undefined = Array.isArray(cur) ? cur[Number(p)] : isObject(cur) ? cur[p] : undefined;
    if (next === undefined) throw new PatchError(`${op}: path ${path} does not exist`);
    cur = next;
  }
  return cur;
}

function removeAt(doc: Json, path: string, op: string): Json {
  const { parent, key } = parentOf(doc, pointer(path), op);
  if (Array.isArray(parent)) {
    const i = Number(key);
    if (!(i >= 0 && i < parent.length)) throw new PatchError(`${op}: index ${key} out of range`);
    return parent.splice(i, 1)[0]!;
  }
  if (!isObject(parent) || !(key in parent)) throw new PatchError(`${op}: path ${path} does not exist`);
  const v = parent[key]!;
  delete parent[key];
  return v;
}

function addAt(doc: Json, path: string, value: Json, op: string): Json {
  const parts = pointer(path);
  if (parts.length === 0) return value;
  const { parent, key } = parentOf(doc, parts, op);
  if (Array.isArray(parent)) {
    const i = key === '-' ? parent.length : Number(key);
    if (!(i >= 0 && i <= parent.length)) throw new PatchError(`${op}: index ${key} out of range`);
    parent.splice(i, 0, value);
  } else if (isObject(parent)) {
    parent[key] = value;
  } else {
    throw new PatchError(`${op}: parent of ${path} is not a container`);
  }
  return doc;
}

export function jsonPatch(target: unknown, ops: unknown): unknown {
  if (!Array.isArray(ops)) throw new PatchError('a JSON patch must be an array of operations', 400);
  let doc = structuredClone(target) as Json;
  for (const raw of ops as { op?: string; path?: string; from?: string; value?: Json }[]) {
    const { op, path, from, value } = raw;
    if (typeof path !== 'string') throw new PatchError(`${op}: missing path`);
    switch (op) {
      case 'add':
        doc = addAt(doc, path, structuredClone(value ?? null), op);
        break;
      case 'remove':
        removeAt(doc, path, op);
        break;
      case 'replace':
        removeAt(doc, path, op);
        doc = addAt(doc, path, structuredClone(value ?? null), op);
        break;
      case 'move': {
        const v = removeAt(doc, from ?? '', op);
        doc = addAt(doc, path, v, op);
        break;
      }
      case 'copy':
        doc = addAt(doc, path, structuredClone(getAt(doc, from ?? '', op)), op);
        break;
      case 'test':
        if (JSON.stringify(getAt(doc, path, op)) !== JSON.stringify(value)) throw new PatchError(`test failed at ${path}`);
        break;
      default:
        throw new PatchError(`unknown JSON patch operation "${String(op)}"`, 400);
    }
  }
  return doc;
}
