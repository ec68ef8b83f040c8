// Source edge, dir source: a fast reader for the plain block YAML that tools write (kubectl, the yaml
// library's stringify). Anything beyond that subset is left to the full YAML library, so results never differ.
//
// The subset: block mappings with plain keys, block sequences (also "key:" followed by "- item" at the key's
// column), single-line plain, single- and double-quoted scalars, empty [] and {}, comments, and "---"
// between documents. Plain scalars resolve as in the YAML 1.2 core schema (null, bool, int, float, string),
// exactly as the yaml library resolves them. Anchors, tags, flow collections with content, block scalars,
// multi-line scalars, duplicate keys, tabs and CRLF fall back, as does anything malformed.

/** Why a text was left to the full parser; internal, never surfaces to users. */
class NotPlain extends Error {}

/**
 * The documents of `text` as plain JS values (null for an empty document), indexed as the yaml library's
 * parseAllDocuments() indexes them; undefined when the text is not in the subset.
 */
export function parsePlainYaml(text: string): unknown[] | undefined {
  if (text.includes('\t') || text.includes('\r') || text.charCodeAt(0) === 0xfeff) return undefined;
  try {
    const r = new Reader(text);
    const docs: unknown[] = [];
    // Content before the first "---" is a document of its own; each "---" starts one, empty or not.
    if (r.kind === LINE) docs.push(r.document());
    while (r.kind === MARKER) docs.push(r.nextDocument());
    return docs;
  } catch (err) {
    if (err instanceof NotPlain) return undefined;
    throw err;
  }
}

/** What the reader stands on: a line of content, a "---" line, or the end of the text. */
const LINE = 0;
const MARKER = 1;
const END = 2;

/** Characters of a plain key: a name as Kubernetes writes them (labels, annotations, fields). */
const KEY_CHAR = new Uint8Array(128);
for (const c of 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-') KEY_CHAR[c.charCodeAt(0)] = 1;
/** Keys the core schema would read as null or bool. */
const NOT_STRING_KEY = /^(?:[Nn]ull|NULL|[Tt]rue|TRUE|[Ff]alse|FALSE)$/;
/** The yaml library refuses implicit keys longer than this. */
const MAX_KEY = 1024;

/** Characters of a plain scalar read without the general path: a name, a number, an address, a path. */
const SIMPLE_CHAR = new Uint8Array(128);
for (const c of 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-') SIMPLE_CHAR[c.charCodeAt(0)] = 1;
/** ... and the first of them: no indicator, sign or dot (those may start a number or something else). */
const SIMPLE_START = new Uint8Array(128);
for (const c of 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_/') SIMPLE_START[c.charCodeAt(0)] = 1;

const NULL_OR_BOOL_START = new Uint8Array(128);
for (const c of 'nNtTfF') NULL_OR_BOOL_START[c.charCodeAt(0)] = 1;

/**
 * The same keys and values come back in file after file (apiVersion, kind, namespace, protocol): they are
 * taken from these tables instead of being cut from each text again, so there are fewer strings to allocate
 * and keep, and keys arrive already internalized. A slot (by a hash of the characters) holds the last string
 * that landed there; the tables only ever hold strings equal to what would be cut, so no result depends on
 * what they hold. KEYS holds only keys that passed the checks below.
 */
const SLOTS = 4096;
const KEYS: (string | undefined)[] = new Array<string | undefined>(SLOTS).fill(undefined);
const VALUES: (string | undefined)[] = new Array<string | undefined>(SLOTS).fill(undefined);
/** Values longer than this are rarely repeated: they are cut, not looked up. */
const MAX_SHARED_VALUE = 64;
const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

/**
 * Recursive descent over the text itself, one line at a time: the current line is offsets into the text
 * (nothing is copied but keys and scalars), blank and comment lines are skipped on the way.
 */
class Reader {
  kind: number = END;
  /** Column of the current line's content; start and end delimit it (trailing spaces excluded). */
  indent = 0;
  start = 0;
  end = 0;
  /** Where the line after the current one starts. */
  private next = 0;
  /** The hash (for KEYS) of the key keyLength() measured last. */
  private keyHash = 0;
  /** Items of the sequences being read, innermost last; `top` is where the next one goes. */
  private readonly items: unknown[] = [];
  private top = 0;

  constructor(private readonly text: string) {
    this.advance();
  }

  /** Moves to the next line of content, "---" line or the end. */
  advance(): void {
    const text = this.text;
    while (this.next < text.length) {
      const from = this.next;
      let to = text.indexOf('\n', from);
      if (to === -1) to = text.length;
      this.next = to + 1;
      let start = from;
      while (text.charCodeAt(start) === 0x20) start++;
      let end = to;
      while (end > start && text.charCodeAt(end - 1) === 0x20) end--;
      const first = text.charCodeAt(start);
      if (start === end || first === 0x23 /* # */) continue;
      if (start === from && (first === 0x2d /* - */ || first === 0x2e /* . */ || first === 0x25) /* % */) {
        if (text.startsWith('---', from) || text.startsWith('...', from) || first === 0x25) {
          if (end - from !== 3 || first !== 0x2d) throw new NotPlain();
          this.kind = MARKER;
          return;
        }
      }
      this.kind = LINE;
      this.indent = start - from;
      this.start = start;
      this.end = end;
      return;
    }
    this.kind = END;
  }

  /** On a "---" line: the document it starts, null when empty. */
  nextDocument(): unknown {
    this.advance();
    return this.kind === LINE ? this.document() : null;
  }

  /** One document: a node, then nothing but a "---" line or the end. */
  document(): unknown {
    const value = this.node(this.indent);
    if (this.kind === LINE) throw new NotPlain();
    return value;
  }

  /** The node whose first line is the current one, at column `indent`. */
  private node(indent: number): unknown {
    if (this.isItem(this.start)) return this.sequence(indent);
    if (this.keyLength(this.start) > 0) return this.mapping(indent);
    throw new NotPlain();
  }

  private mapping(indent: number): Record<string, unknown> {
    const text = this.text;
    const map: Record<string, unknown> = {};
    while (this.kind === LINE && this.indent === indent) {
      const n = this.keyLength(this.start);
      if (n === 0) break;
      const key = this.key(this.start, n);
      if (Object.hasOwn(map, key)) throw new NotPlain();
      let at = this.start + n + 1;
      while (text.charCodeAt(at) === 0x20 && at < this.end) at++;
      const end = this.end;
      this.advance();
      map[key] = this.value(at, end, indent, true);
    }
    this.endOfBlock(indent);
    return map;
  }

  private sequence(indent: number): unknown[] {
    const text = this.text;
    // Items gather on the reader's stack (nested sequences above them) and leave it as an array of their
    // exact length: an array grown item by item would keep room for sixteen.
    const base = this.top;
    while (this.kind === LINE && this.indent === indent && this.isItem(this.start)) {
      let at = this.start + 1;
      while (text.charCodeAt(at) === 0x20 && at < this.end) at++;
      let item: unknown;
      if (at === this.end || text.charCodeAt(at) === 0x23 /* # */) {
        this.advance();
        item = this.nested(indent, false);
      } else if (this.isItem(at) || this.keyLength(at) > 0) {
        // "- key: v" or "- - v": the item's node starts on this line, at the column after "- ".
        this.indent += at - this.start;
        this.start = at;
        item = this.node(this.indent);
      } else {
        const end = this.end;
        this.advance();
        item = this.value(at, end, indent, false);
      }
      this.items[this.top++] = item;
    }
    this.endOfBlock(indent);
    const seq = this.items.slice(base, this.top);
    this.top = base;
    return seq;
  }

  /** What follows "key:" or "- " on the line that was current (possibly nothing: then the block below). */
  private value(start: number, end: number, indent: number, inMapping: boolean): unknown {
    if (start === end || this.text.charCodeAt(start) === 0x23 /* # */) return this.nested(indent, inMapping);
    const value = this.scalar(start, end);
    // A scalar that goes on over the next, deeper lines is a multi-line scalar.
    if (this.kind === LINE && this.indent > indent) throw new NotPlain();
    return value;
  }

  /** The block below an empty "key:" or "-": deeper lines, or for a key a sequence at the key's own column. */
  private nested(indent: number, inMapping: boolean): unknown {
    if (this.kind !== LINE) return null;
    if (this.indent > indent) return this.node(this.indent);
    if (inMapping && this.indent === indent && this.isItem(this.start)) return this.sequence(indent);
    return null;
  }

  /** A block ends where a shallower line starts; a deeper one left over is an indentation error. */
  private endOfBlock(indent: number): void {
    if (this.kind === LINE && this.indent > indent) throw new NotPlain();
  }

  /** "-" then a space or the end of the line. */
  private isItem(at: number): boolean {
    return this.text.charCodeAt(at) === 0x2d && (at + 1 === this.end || this.text.charCodeAt(at + 1) === 0x20);
  }

  /** The key of `n` characters at `start` that keyLength() just measured, from KEYS when it was seen before. */
  private key(start: number, n: number): string {
    const text = this.text;
    const slot = this.keyHash & (SLOTS - 1);
    const known = KEYS[slot];
    if (known !== undefined && known.length === n && text.startsWith(known, start)) return known;
    const key = text.slice(start, start + n);
    if (n > MAX_KEY || (n <= 5 && NOT_STRING_KEY.test(key)) || key === '__proto__') throw new NotPlain();
    KEYS[slot] = key;
    return key;
  }

  /**
   * The scalar from `start` to `end`. Most are plain words, numbers and addresses of SIMPLE_CHAR: nothing in
   * them can be a comment, an indicator, a flow collection or a key, so they resolve here in one pass over
   * their characters; everything else goes the general way, scalar().
   */
  private scalar(start: number, end: number): unknown {
    const text = this.text;
    const first = text.charCodeAt(start);
    if (first >= 128 || SIMPLE_START[first] === 0) return scalar(text.slice(start, end));
    let h = FNV_OFFSET;
    let dots = 0;
    let digits = 0;
    for (let i = start; i < end; i++) {
      const c = text.charCodeAt(i);
      if (c >= 128 || SIMPLE_CHAR[c] === 0) return scalar(text.slice(start, end));
      if (c === 0x2e) dots++;
      else if (c >= 0x30 && c <= 0x39) digits++;
      h = Math.imul(h ^ c, FNV_PRIME);
    }
    const n = end - start;
    if (digits === n) return parseInt(text.slice(start, end), 10);
    // What else the core schema may read as not a string starts with a digit (and has one dot at most: no
    // number has two) or with n, t or f (null, true, false).
    if (first >= 0x30 && first <= 0x39 ? dots < 2 : NULL_OR_BOOL_START[first] === 1) {
      if (n === 4 && text.startsWith('true', start)) return true;
      if (n === 5 && text.startsWith('false', start)) return false;
      return resolvePlain(text.slice(start, end));
    }
    // Addresses and versions (a digit first) are seldom shared: cut, not looked up, so they do not push out
    // the values that are.
    if (n > MAX_SHARED_VALUE || first <= 0x39) return text.slice(start, end);
    const slot = h & (SLOTS - 1);
    const known = VALUES[slot];
    if (known !== undefined && known.length === n && text.startsWith(known, start)) return known;
    const value = text.slice(start, end);
    VALUES[slot] = value;
    return value;
  }

  /**
   * The length of the plain key at `at` ("key:" then a space or the end of the line), or 0. Keys starting
   * with a digit, "-" or "." (numbers, sequence entries) are not taken.
   */
  private keyLength(at: number): number {
    const text = this.text;
    const c = text.charCodeAt(at);
    if (!(c === 0x5f || (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a))) return 0;
    let h = Math.imul(FNV_OFFSET ^ c, FNV_PRIME);
    for (let i = at + 1; i < this.end; i++) {
      const k = text.charCodeAt(i);
      if (k === 0x3a /* : */) {
        this.keyHash = h;
        return i + 1 === this.end || text.charCodeAt(i + 1) === 0x20 ? i - at : 0;
      }
      if (k >= 128 || KEY_CHAR[k] === 0) return 0;
      h = Math.imul(h ^ k, FNV_PRIME);
    }
    return 0;
  }
}

/** A scalar written on one line, with an optional trailing comment. */
function scalar(text: string): unknown {
  const c = text[0];
  if (c === '"') return quoted(text, doubleQuoted(text));
  if (c === "'") return quoted(text, singleQuoted(text));
  const hash = text.indexOf(' #');
  const plain = hash === -1 ? text : text.slice(0, hash).trimEnd();
  if (plain === '[]') return [];
  if (plain === '{}') return {};
  // Indicators that start something else (flow, anchor, alias, tag, block scalar, directive, reserved, an
  // entry); ": " or a final ":" would make it a key.
  if (INDICATOR.test(plain) || /[\[\]{}]/.test(plain) || plain.includes(': ') || plain.endsWith(':')) throw new NotPlain();
  return resolvePlain(plain);
}

const INDICATOR = /^(?:[?:,\[\]{}#&*!|>%@`]|-(?: |$))/;

/** After a closing quote only a comment may follow. */
function quoted(text: string, parsed: { value: string; end: number }): string {
  const after = text.slice(parsed.end).trimStart();
  if (after !== '' && !(after.startsWith('#') && text.length > parsed.end && text[parsed.end] === ' ')) throw new NotPlain();
  return parsed.value;
}

function singleQuoted(text: string): { value: string; end: number } {
  let value = '';
  let i = 1;
  for (;;) {
    const q = text.indexOf("'", i);
    if (q === -1) throw new NotPlain();
    value += text.slice(i, q);
    if (text[q + 1] === "'") {
      value += "'";
      i = q + 2;
      continue;
    }
    return { value, end: q + 1 };
  }
}

const ESCAPES: Record<string, string> = { '\\': '\\', '"': '"', '/': '/', n: '\n', t: '\t', r: '\r' };

function doubleQuoted(text: string): { value: string; end: number } {
  let value = '';
  let i = 1;
  for (;;) {
    const q = text.indexOf('"', i);
    const b = text.indexOf('\\', i);
    if (q === -1) throw new NotPlain();
    if (b === -1 || q < b) return { value: value + text.slice(i, q), end: q + 1 };
    value += text.slice(i, b);
    const e = text[b + 1]!;
    if (e === 'u') {
      const hex = text.slice(b + 2, b + 6);
      const code = /^[0-9a-fA-F]{4}$/.test(hex) ? parseInt(hex, 16) : -1;
      // Surrogate halves: how they pair up is the full parser's business.
      if (code < 0 || (code >= 0xd800 && code <= 0xdfff)) throw new NotPlain();
      value += String.fromCharCode(code);
      i = b + 6;
      continue;
    }
    const to = ESCAPES[e];
    if (to === undefined) throw new NotPlain();
    value += to;
    i = b + 2;
  }
}

// The YAML 1.2 core schema, in the order the yaml library tries it.
const NULL = /^(?:~|[Nn]ull|NULL)$/;
const BOOL = /^(?:[Tt]rue|TRUE|[Ff]alse|FALSE)$/;
const INT_OCT = /^0o[0-7]+$/;
const INT = /^[-+]?[0-9]+$/;
const INT_HEX = /^0x[0-9a-fA-F]+$/;
const FLOAT_NAN = /^(?:[-+]?\.(?:inf|Inf|INF)|\.nan|\.NaN|\.NAN)$/;
const FLOAT_EXP = /^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$/;
const FLOAT = /^[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)$/;
/** Starts like none of the above: most strings are known to be strings after one look at their first character. */
const MAYBE_NOT_STRING = /^[-+.0-9~nNtTfF]/;

export function resolvePlain(s: string): unknown {
  if (!MAYBE_NOT_STRING.test(s)) return s;
  if (NULL.test(s)) return null;
  if (BOOL.test(s)) return s[0] === 't' || s[0] === 'T';
  if (INT_OCT.test(s)) return parseInt(s.slice(2), 8);
  if (INT.test(s)) return parseInt(s, 10);
  if (INT_HEX.test(s)) return parseInt(s.slice(2), 16);
  if (FLOAT_NAN.test(s)) return s.slice(-3).toLowerCase() === 'nan' ? NaN : s[0] === '-' ? -Infinity : Infinity;
  if (FLOAT_EXP.test(s) || FLOAT.test(s)) return parseFloat(s);
  return s;
}
