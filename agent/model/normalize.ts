// Request path normalization: the one canonical form of a request target that both the L7 router and the
// authorization policy see (and that is forwarded to the app), so that a path cannot mean one thing to the
// policy and another to the backend. Pure, no allocation on the common already-canonical path.
//
// What it does, in order:
//  1. Splits the target at the first "?": the query is kept as it came (not decoded, not normalized); only the
//     path is normalized. A "#" anywhere is refused (400): a fragment is not part of a request target (RFC 9112
//     3.2, RFC 9113 8.3.1) and Envoy refuses it too; stripping it would silently change what was asked.
//  2. Percent-decodes the unreserved characters only (ALPHA DIGIT "-" "." "_" "~", RFC 3986 2.3), once (no
//     double decoding: "%2561" stays "%2561"); every other escape is kept with uppercase hex ("%3a" -> "%3A").
//     A malformed escape ("%4", "%zz") is refused. %00 is always refused. Encoded slashes %2F and %5C are refused
//     by default (encodedSlash: 'reject'); 'keep' leaves them encoded, as data inside a segment.
//  3. Turns "\" into "/" (backslash: 'slash', the default, as Envoy's normalize_path does) or refuses it.
//  4. Merges runs of "/" into one (mergeSlashes, default on).
//  5. Removes dot segments (RFC 3986 5.2.4): "/a/./b" -> "/a/b", "/a/../b" -> "/b", "/.." -> "/".
//  6. Refuses a dot segment carrying parameters ("..;x", ".;x"): RFC 3986 reads it as an ordinary segment,
//     but servlet containers (Tomcat) read "/api/..;/admin" as "/admin", a known way around path policies.
//
// What it does not do, and why:
//  - ";" parameters stay part of their segment ("/admin;x" is its own path, not "/admin"), as in Envoy and Istio,
//    which do not strip them by default. pathParameters: 'reject' refuses any ";" in the path for backends that
//    strip them (Java servlet containers); otherwise a DENY on "/admin" should be written "/admin*".
//  - Case is kept: paths are case-sensitive (RFC 3986 6.2.2.1), "/ADMIN" is not "/admin". A backend that folds
//    case needs policies written for every case, or a prefix that covers it.
//  - A trailing "/" is kept: "/admin/" is not "/admin" (a DENY should list both, or "/admin/*" and "/admin").
//  - Characters outside printable ASCII (controls, space, DEL, bytes above 0x7E) are refused: they must be
//    percent-encoded in a request target, and HTTP/2 does not check :path for them.
//
// Compared with Istio's meshConfig.pathNormalization (Envoy normalize_path + merge_slashes + path_with_escaped_slashes_action):
//  - BASE (Istio's default) decodes unreserved escapes, turns "\" into "/", removes dot segments, but does not merge
//    slashes: "//admin" stays "//admin" and slips past a DENY on "/admin". Trellis merges by default (MERGE_SLASHES).
//  - MERGE_SLASHES: Envoy removes dot segments first, then merges; Trellis merges first, so "/a//../b" is "/b" here
//    and "/a/b" in Envoy. Both are safe because the normalized form is what the backend receives.
//  - DECODE_AND_MERGE_SLASHES decodes %2F/%5C into "/" and "\" before normalizing. Trellis never turns an encoded
//    slash into a separator; it refuses it (default) or keeps it encoded ('keep', like Envoy's KEEP_UNCHANGED),
//    which leaves a backend that decodes %2F itself free to see "/admin/x" where the policy saw "/admin%2Fx" —
//    choose 'keep' only for backends that do not decode it.
//  - Envoy strips or refuses "#" depending on a runtime flag; Trellis always refuses it.
//  - Envoy has no equivalent of the "..;" refusal or of pathParameters: 'reject'.

export interface NormalizeOptions {
  /** %2F and %5C in the path: refused with 400 (default), or kept encoded as data inside their segment. */
  readonly encodedSlash?: 'reject' | 'keep';
  /** A literal "\" in the path: read as "/" (default, as Envoy) or refused with 400. */
  readonly backslash?: 'slash' | 'reject';
  /** Merge runs of "/" into one (default true). */
  readonly mergeSlashes?: boolean;
  /** ";" in the path: kept as part of the segment (default, as Istio) or refused with 400. */
  readonly pathParameters?: 'keep' | 'reject';
}

export type NormalizedTarget =
  | { readonly ok: true; readonly path: string; readonly query: string | undefined }
  | { readonly ok: false; readonly status: 400; readonly reason: string };

const DEFAULTS: Required<NormalizeOptions> = Object.freeze({
  encodedSlash: 'reject',
  backslash: 'slash',
  mergeSlashes: true,
  pathParameters: 'keep',
});

// Characters that never need work: unreserved, sub-delims, ":" "@" "/". "." is here: dot segments are found by
// looking for "/." (every segment starts after a "/").
const PLAIN = /^[A-Za-z0-9\-._~!$&'()*+,;=:@/]*$/;
const HEX = '0123456789ABCDEF';
// ".;x", "..;x", and the same with ";" encoded (a server may decode before it splits parameters).
const DOT_WITH_PARAMS = /^\.\.?(;|%3B)/;

/**
 * Normalizes a request target ("/path?query", origin-form, as in HTTP/1 request lines and HTTP/2 :path).
 * Absolute-form ("http://host/path") and "*" are refused: the caller converts absolute-form first if it accepts it.
 */
export function normalizeTarget(target: string, options?: NormalizeOptions): NormalizedTarget {
  const mergeSlashes = options?.mergeSlashes ?? DEFAULTS.mergeSlashes;
  const keepParameters = (options?.pathParameters ?? DEFAULTS.pathParameters) === 'keep';
  if (target.length === 0) return bad('empty request target');
  const first = target.charCodeAt(0);
  if (first !== 0x2f /* / */ && !(first === 0x5c /* \ */ && (options?.backslash ?? DEFAULTS.backslash) === 'slash')) {
    return bad('request target must be a path starting with "/" (origin-form)');
  }
  if (target.indexOf('#') !== -1) return bad('"#" is not allowed in a request target (a fragment is never sent to a server)');
  const q = target.indexOf('?');
  const rawPath = q === -1 ? target : target.slice(0, q);
  let query: string | undefined;
  if (q !== -1) {
    query = target.slice(q + 1);
    const badChar = firstInvalidChar(query);
    if (badChar !== -1) return bad(`character ${describeChar(query.charCodeAt(badChar))} in the query must be percent-encoded`);
  }
  // Fast path (no allocation beyond the result): nothing to decode, no backslash, no empty or dot segment.
  if (
    PLAIN.test(rawPath) &&
    rawPath.indexOf('/.') === -1 &&
    (!mergeSlashes || rawPath.indexOf('//') === -1) &&
    (keepParameters || rawPath.indexOf(';') === -1)
  ) {
    return { ok: true, path: rawPath, query };
  }
  const opts = options ? { ...DEFAULTS, ...options } : DEFAULTS;
  const decoded = decode(rawPath, opts);
  if (typeof decoded !== 'string') return decoded;
  const path = removeDotSegments(decoded, opts.mergeSlashes);
  if (typeof path !== 'string') return path;
  return { ok: true, path, query };
}

/** The path alone (no query allowed): for checking, at configuration time, that a policy path is canonical. */
export function normalizePath(path: string, options?: NormalizeOptions): NormalizedTarget {
  if (path.indexOf('?') !== -1) return bad('a path cannot contain "?"');
  return normalizeTarget(path, options);
}

function bad(reason: string): NormalizedTarget {
  return { ok: false, status: 400, reason };
}

function isUnreserved(c: number): boolean {
  return (
    (c >= 0x41 && c <= 0x5a) || // A-Z
    (c >= 0x61 && c <= 0x7a) || // a-z
    (c >= 0x30 && c <= 0x39) || // 0-9
    c === 0x2d || c === 0x2e || c === 0x5f || c === 0x7e // - . _ ~
  );
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  return -1;
}

/** Index of the first character that must be percent-encoded in a target (controls, space, DEL, non-ASCII), or -1. */
function firstInvalidChar(s: string): number {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f) return i;
  }
  return -1;
}

function describeChar(c: number): string {
  return c > 0x20 && c < 0x7f ? `"${String.fromCharCode(c)}"` : `0x${c.toString(16).toUpperCase().padStart(2, '0')}`;
}

/** Step 2, 3 and the character check: percent-decoding of unreserved characters, backslashes, ";". */
function decode(raw: string, opts: Required<NormalizeOptions>): string | NormalizedTarget {
  let out = '';
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c === 0x25 /* % */) {
      const hi = i + 2 < raw.length ? hexValue(raw.charCodeAt(i + 1)) : -1;
      const lo = i + 2 < raw.length ? hexValue(raw.charCodeAt(i + 2)) : -1;
      if (hi < 0 || lo < 0) return bad(`malformed percent-encoding "${raw.slice(i, i + 3)}" in the path`);
      const v = hi * 16 + lo;
      i += 2;
      if (v === 0) return bad('%00 (NUL) is not allowed in a path');
      if (isUnreserved(v)) {
        out += String.fromCharCode(v);
      } else if (v === 0x2f || v === 0x5c) {
        if (opts.encodedSlash === 'reject') {
          return bad(`encoded ${v === 0x2f ? 'slash %2F' : 'backslash %5C'} is not allowed in a path (it would let a backend that decodes it see another path than the policy)`);
        }
        out += v === 0x2f ? '%2F' : '%5C';
      } else {
        // An encoded ";" is data, not a parameter delimiter: kept even with pathParameters: 'reject'.
        out += '%' + HEX[v >> 4] + HEX[v & 15];
      }
    } else if (c === 0x5c /* \ */) {
      if (opts.backslash === 'reject') return bad('"\\" is not allowed in a path');
      out += '/';
    } else if (c <= 0x20 || c >= 0x7f) {
      return bad(`character ${describeChar(c)} in the path must be percent-encoded`);
    } else if (c === 0x3b /* ; */ && opts.pathParameters === 'reject') {
      return bad('";" path parameters are not allowed (pathParameters: reject)');
    } else {
      out += raw[i];
    }
  }
  return out;
}

/** Steps 4 to 6 on a decoded path that starts with "/". */
function removeDotSegments(path: string, mergeSlashes: boolean): string | NormalizedTarget {
  // path[0] is "/", so split gives a leading "" that stands for the root.
  const input = path.split('/');
  const out: string[] = [];
  const last = input.length - 1;
  for (let i = 1; i <= last; i++) {
    const seg = input[i]!;
    if (seg === '' && mergeSlashes && i !== last) continue;
    if (seg === '.' || seg === '..') {
      if (seg === '..') out.pop();
      // A dot segment at the end leaves a directory: "/a/b/.." is "/a/".
      if (i === last) out.push('');
      continue;
    }
    if (seg.charCodeAt(0) === 0x2e /* . */ && DOT_WITH_PARAMS.test(seg)) {
      return bad(`path segment "${seg}" is a dot segment with parameters, which some servers resolve as ".."; refused`);
    }
    out.push(seg);
  }
  return '/' + out.join('/');
}
