// Test support: label and field selectors of the fake API server, parsed once per request like the real server.
// A parse error is a SelectorError, which the server answers with 400 BadRequest.
import type { ResourceType } from './resources.js';

export class SelectorError extends Error {}

type Obj = { metadata?: { name?: string; namespace?: string; labels?: Record<string, string> } } & Record<string, unknown>;
export type Matcher = (obj: Obj) => boolean;

const LABEL_KEY = /^([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?\/)?[a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?$/;
const LABEL_VALUE = /^([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?)?$/;

/** Splits on commas outside parentheses: `a in (x,y),b` -> [`a in (x,y)`, `b`]. */
function terms(text: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of text) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      out.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  out.push(cur);
  return out.map((t) => t.trim()).filter((t) => t.length > 0);
}

function checkKey(key: string, term: string): void {
  if (!LABEL_KEY.test(key)) throw new SelectorError(`unable to parse requirement: invalid label key "${key}" in "${term}"`);
}
function checkValue(value: string, term: string): void {
  if (!LABEL_VALUE.test(value) || value.length > 63) throw new SelectorError(`unable to parse requirement: invalid label value "${value}" in "${term}"`);
}

/** Equality (`=`, `==`, `!=`) and set-based (`in`, `notin`, `key`, `!key`) label selectors. */
export function parseLabelSelector(text: string | null): Matcher {
  if (!text) return () => true;
  const reqs: ((labels: Record<string, string>) => boolean)[] = [];
  for (const term of terms(text)) {
    let m: RegExpExecArray | null;
    if ((m = /^(\S+)\s+(in|notin)\s*\((.*)\)$/.exec(term))) {
      const [, key, op, list] = m as unknown as [string, string, string, string];
      checkKey(key, term);
      const values = new Set(list.split(',').map((v) => v.trim()));
      for (const v of values) checkValue(v, term);
      reqs.push(op === 'in' ? (l) => key in l && values.has(l[key]!) : (l) => !(key in l) || !values.has(l[key]!));
    } else if ((m = /^([^!=\s]+)\s*(==|=|!=)\s*(\S*)$/.exec(term))) {
      const [, key, op, value] = m as unknown as [string, string, string, string];
      checkKey(key, term);
      checkValue(value, term);
      reqs.push(op === '!=' ? (l) => l[key] !== value : (l) => l[key] === value);
    } else if ((m = /^!\s*(\S+)$/.exec(term))) {
      const key = m[1]!;
      checkKey(key, term);
      reqs.push((l) => !(key in l));
    } else if (/^\S+$/.test(term)) {
      checkKey(term, term);
      reqs.push((l) => term in l);
    } else {
      throw new SelectorError(`unable to parse requirement: "${term}"`);
    }
  }
  return (obj) => {
    const labels = obj.metadata?.labels ?? {};
    return reqs.every((r) => r(labels));
  };
}

/** Field value as the real server's field label conversion renders it: a string, "" when absent. */
function fieldValue(obj: Obj, path: string): string {
  let cur: unknown = obj;
  for (const part of path.split('.')) {
    if (typeof cur !== 'object' || cur === null) return '';
    cur = (cur as Record<string, unknown>)[part];
  }
  if (cur === undefined || cur === null) return '';
  return String(cur);
}

/** `a=b`, `a==b`, `a!=b`, comma-separated (AND), restricted to the field labels the resource supports. */
export function parseFieldSelector(text: string | null, rt: ResourceType): Matcher {
  if (!text) return () => true;
  const allowed = new Set(['metadata.name', 'metadata.namespace', ...(rt.fields ?? [])]);
  const reqs: Matcher[] = [];
  for (const term of terms(text)) {
    const m = /^([^!=]+?)\s*(==|=|!=)\s*(.*)$/.exec(term);
    if (!m) throw new SelectorError(`invalid selector: '${text}'; can't understand '${term}'`);
    const [, field, op, value] = m as unknown as [string, string, string, string];
    if (!allowed.has(field)) throw new SelectorError(`field label not supported: ${field}`);
    reqs.push(op === '!=' ? (o) => fieldValue(o, field) !== value : (o) => fieldValue(o, field) === value);
  }
  return (obj) => reqs.every((r) => r(obj));
}
