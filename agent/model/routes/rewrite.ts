// Route filters as pure functions: path rewrites, redirect locations and header changes, exactly as the
// Gateway API specifies them, for the L7 filter layers to call with a matched rule.
import { trimTrailingSlash } from './match.js';
import type { HeaderModifier, MatchedRule, PathModifier, RedirectStatus } from './types.js';

/**
 * Applies a path modifier. ReplacePrefixMatch replaces whole segments of the matched prefix: with prefix
 * "/foo", "/bar" turns "/foo/x" into "/bar/x" and "/foo" into "/bar"; "/" or "" as replacement strips the
 * prefix ("/foo/x" -> "/x", "/foo" -> "/"), never producing "//".
 */
export function replacePath(modifier: PathModifier, matchedPrefix: string | undefined, path: string): string {
  if (modifier.type === 'ReplaceFullPath') return modifier.replaceFullPath;
  if (matchedPrefix === undefined) return path;
  const prefix = trimTrailingSlash(matchedPrefix);
  // The match guaranteed path === prefix or path starts with prefix + "/".
  const rest = path.slice(prefix.length);
  const out = trimTrailingSlash(modifier.replacePrefixMatch) + rest;
  return out === '' ? '/' : out.startsWith('/') ? out : `/${out}`;
}

/** The path to send upstream under the rule's URLRewrite (unchanged without one). */
export function applyRewrite(matched: MatchedRule, path: string): string {
  const modifier = matched.rule.rewrite?.path;
  return modifier ? replacePath(modifier, matched.pathPrefix, path) : path;
}

export interface RedirectRequestInfo {
  readonly scheme: 'http' | 'https';
  /** Host header or :authority as the client sent it, possibly with a port. */
  readonly host: string;
  /** Normalized path without the query. */
  readonly path: string;
  /** Query string without "?"; kept in the Location. */
  readonly query?: string;
  /** The Service port the client called: in a mesh it plays the Gateway listener's part. */
  readonly port: number;
}

/** The redirect answer of a rule with a RequestRedirect filter, or undefined for other rules. */
export function redirectLocation(matched: MatchedRule, req: RedirectRequestInfo): { statusCode: RedirectStatus; location: string } | undefined {
  const redirect = matched.rule.redirect;
  if (!redirect) return undefined;
  const scheme = redirect.scheme ?? req.scheme;
  const hostname = redirect.hostname ?? hostWithoutPort(req.host);
  // Port: the one given; else the scheme's well-known port when the scheme changes; else the port called.
  const port = redirect.port ?? (redirect.scheme ? (redirect.scheme === 'https' ? 443 : 80) : req.port);
  const defaultPort = (scheme === 'http' && port === 80) || (scheme === 'https' && port === 443);
  const host = hostname.includes(':') && !hostname.startsWith('[') ? `[${hostname}]` : hostname;
  const path = redirect.path ? replacePath(redirect.path, matched.pathPrefix, req.path) : req.path;
  const query = req.query ? `?${req.query}` : '';
  return { statusCode: redirect.statusCode, location: `${scheme}://${host}${defaultPort ? '' : `:${port}`}${path}${query}` };
}

function hostWithoutPort(host: string): string {
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    return end === -1 ? host : host.slice(0, end + 1);
  }
  const colon = host.lastIndexOf(':');
  if (colon === -1 || host.indexOf(':') !== colon) return host; // no port, or a bare IPv6 address
  return /^[0-9]*$/.test(host.slice(colon + 1)) ? host.slice(0, colon) : host;
}

/**
 * Applies a RequestHeaderModifier/ResponseHeaderModifier to headers keyed by lowercase name (Node's
 * IncomingHttpHeaders / OutgoingHttpHeaders shape). `add` appends to an existing value with ",".
 */
export function applyHeaderModifier(modifier: HeaderModifier, headers: Record<string, string | string[] | number | undefined>): void {
  for (const h of modifier.set) headers[h.name] = h.value;
  for (const h of modifier.add) {
    const prev = headers[h.name];
    if (prev === undefined) headers[h.name] = h.value;
    else if (Array.isArray(prev)) headers[h.name] = [...prev, h.value];
    else headers[h.name] = `${String(prev)},${h.value}`;
  }
  for (const name of modifier.remove) delete headers[name];
}
