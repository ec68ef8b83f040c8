// Istio's string matching for authorization fields, compiled once per policy: "abc" exact, "abc*" prefix,
// "*abc" suffix, "*" presence (any non-empty value); for paths also Istio's path templates ("{*}", "{**}").
// A list of patterns becomes one StringSet, checked per request with no allocation.

export interface StringSet {
  readonly exact: ReadonlySet<string>;
  readonly prefixes: readonly string[];
  readonly suffixes: readonly string[];
  /** "*" was listed: any non-empty value matches. */
  readonly presence: boolean;
  readonly templates: readonly RegExp[];
  /** The patterns as written, for descriptions. */
  readonly patterns: readonly string[];
}

export interface PatternOptions {
  /** Compare lowercased (hosts). */
  readonly caseInsensitive?: boolean;
  /** Accept Istio path templates ("/api/{*}/items", "/files/{**}"). */
  readonly pathTemplates?: boolean;
  /** Rewrites each pattern before it is compiled (trust domain alias of principals). */
  readonly rewrite?: (pattern: string) => string;
}

/** Compiles patterns; returns a message naming the first bad pattern instead. */
export function compileStringSet(patterns: readonly string[], opts: PatternOptions = {}): StringSet | string {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  const suffixes: string[] = [];
  const templates: RegExp[] = [];
  let presence = false;
  for (const raw of patterns) {
    if (raw.length === 0) return 'an empty string never matches; remove it';
    let p = opts.rewrite ? opts.rewrite(raw) : raw;
    if (opts.caseInsensitive) p = p.toLowerCase();
    if (opts.pathTemplates && (p.includes('{') || p.includes('}'))) {
      const t = compilePathTemplate(p);
      if (typeof t === 'string') return `"${raw}": ${t}`;
      templates.push(t);
      continue;
    }
    if (p === '*') {
      presence = true;
    } else if (p.startsWith('*')) {
      const rest = p.slice(1);
      if (rest.includes('*')) return `"${raw}": "*" is allowed only as the first or the last character`;
      suffixes.push(rest);
    } else if (p.endsWith('*')) {
      const rest = p.slice(0, -1);
      if (rest.includes('*')) return `"${raw}": "*" is allowed only as the first or the last character`;
      prefixes.push(rest);
    } else if (p.includes('*')) {
      return `"${raw}": "*" is allowed only as the first or the last character${opts.pathTemplates ? ' (for one path segment, use the template "{*}")' : ''}`;
    } else {
      exact.add(p);
    }
  }
  return Object.freeze({ exact, prefixes, suffixes, presence, templates, patterns: Object.freeze([...patterns]) });
}

/** True if any pattern matches `v` (already lowercased by the caller for case-insensitive sets). */
export function stringSetMatches(s: StringSet, v: string): boolean {
  if (s.presence && v.length > 0) return true;
  if (s.exact.has(v)) return true;
  const pre = s.prefixes;
  for (let i = 0; i < pre.length; i++) if (v.startsWith(pre[i]!)) return true;
  const suf = s.suffixes;
  for (let i = 0; i < suf.length; i++) if (v.endsWith(suf[i]!)) return true;
  const t = s.templates;
  for (let i = 0; i < t.length; i++) if (t[i]!.test(v)) return true;
  return false;
}

/**
 * Istio path templates (Envoy URI templates): "{*}" is exactly one non-empty segment, "{**}" is zero or more
 * characters including "/" and must be the last operator; an operator must be a whole segment; "*", "{", "}"
 * may not appear elsewhere.
 */
function compilePathTemplate(p: string): RegExp | string {
  if (!p.startsWith('/')) return 'a path template must start with "/"';
  const segments = p.slice(1).split('/');
  let re = '^';
  let sawDoubleStar = false;
  for (const seg of segments) {
    re += '/';
    if (seg === '{*}' || seg === '{**}') {
      if (sawDoubleStar) return '"{**}" must be the last operator of a path template';
      if (seg === '{**}') {
        sawDoubleStar = true;
        re += '.*';
      } else {
        re += '[^/]+';
      }
      continue;
    }
    if (/[*{}]/.test(seg)) return 'in a path template, "{*}" and "{**}" must be whole segments, and "*", "{", "}" cannot appear elsewhere';
    re += seg.replace(/[.+?^$()[\]\\|]/g, '\\$&');
  }
  return new RegExp(re + '$');
}
