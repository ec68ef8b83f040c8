// Expected failures as values: every error a user can meet has a stable `code` and says what to do.

export class TrellisError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'TrellisError';
  }
}

/** Wraps an error with where it happened ("outbound ns/pod -> 10.0.0.1:80: ..."), keeping its code. */
export function wrapError(where: string, err: unknown): TrellisError {
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e?.code === 'string' ? e.code : 'EUNKNOWN';
  const msg = typeof e?.message === 'string' ? e.message : String(err);
  return new TrellisError(code, `${where}: ${msg}`, { cause: err });
}
