// Expected failures as values: every error a user can meet has a stable `code` and says what to do. The codes
// form one closed union, so a caller's `switch` on err.code is checked by the compiler.

const CODES = [
  // A flag, file or object is wrong; the message names it.
  'ECONFIG', 'EINVAL', 'EPROTO',
  // Identity: the CA, workload certificates, the trust bundle, peers, the identity service.
  'EBADCSR', 'EBADSVID', 'EBUNDLE', 'ECABAD', 'ECAEXPIRED', 'ECAMISMATCH', 'ECANOTFOUND', 'ECATRUSTDOMAIN', 'ECAWRITE',
  'ECERTEXPIRED', 'EIDENTITY', 'EINTERNAL', 'EINVALID', 'EPERMISSION', 'EUNAUTHENTICATED', 'EUNAVAILABLE',
  // The Kubernetes API, as the identity service and the sources meet it.
  'EAPI', 'EAPIFORBIDDEN', 'EAPIUNAVAILABLE',
  // The data path: capture, listeners, HBONE, the addon.
  'EAGENT', 'ECAPTURE', 'ECLOSED', 'EHBONE', 'ELISTEN', 'ENATIVE', 'ENOFD', 'ENOTREADY', 'EREFUSED',
  // System errors (Node's and the kernel's names), kept by wrapError.
  'EADDRINUSE', 'ECONNREFUSED', 'ECONNRESET', 'EEXIST', 'EHOSTUNREACH', 'EIO', 'ENETUNREACH', 'ENOENT', 'ENOTDIR',
  'ENOTFOUND', 'EPERM', 'EPIPE', 'ETIMEDOUT',
  // wrapError of an error whose code is none of these (the original stays on `cause`).
  'EUNKNOWN',
] as const;

/** Codes of the agent's own errors, and the system's (errno names) that wrapError keeps. */
export type ErrorCode = (typeof CODES)[number];

const KNOWN: ReadonlySet<string> = new Set(CODES);

/**
 * An expected failure. `C` is the code union; subclasses narrow or widen it (an addon error carries any errno
 * name, an identity refusal one of its refusal codes). The code is never inferred from the argument, so a code
 * missing from the union is a compile error, not a new free string.
 */
export class TrellisError<C extends string = ErrorCode> extends Error {
  readonly code: C;
  constructor(code: NoInfer<C>, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'TrellisError';
  }
}

/** Wraps an error with where it happened ("outbound ns/pod -> 10.0.0.1:80: ..."), keeping its code when it is a known one. */
export function wrapError(where: string, err: unknown): TrellisError {
  const e = err as { code?: unknown; message?: unknown };
  const code: ErrorCode = typeof e?.code === 'string' && KNOWN.has(e.code) ? (e.code as ErrorCode) : 'EUNKNOWN';
  const msg = typeof e?.message === 'string' ? e.message : String(err);
  return new TrellisError(code, `${where}: ${msg}`, { cause: err });
}

/** An error's message with those of its causes, outermost first (at most four): what a client library wrapped. */
export function causeChain(err: unknown): string {
  const parts: string[] = [];
  for (let e = err as { message?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 4; e = e.cause as typeof e, depth++) {
    if (typeof e.message === 'string' && e.message) parts.push(e.message);
  }
  return parts.join(': ') || String(err);
}
