// Workload tools: polls a URL until it answers (or, with until=fail, until it stops answering), each try
// on a fresh connection; says when, in wall-clock ms, so another process can time a config change.
import { LabError } from '../errors.js';
import { httpOnce } from './http-once.js';
import { parseHttpUrl, requestBytes } from './http-url.js';

export interface WaitHttpOptions {
  url: string;
  timeoutS: number;
  /** Pause between tries; default 20 ms. */
  intervalMs?: number;
  /** 'ok' (default): wait for a status below 400; 'fail': wait until a try fails. */
  until?: 'ok' | 'fail';
  /** Per try; default 1 s. */
  tryTimeoutMs?: number;
}

export interface WaitHttpReport {
  met: boolean;
  tries: number;
  /** Date.now() when the try that met the condition ended; null when it was not met. */
  at_ms: number | null;
  elapsed_ms: number;
  /** What the last try got: "200", "ECONNRESET"... */
  last: string;
}

/** `polling` is called once, after the first try, so a caller knows the old state was seen before it changes it. */
export async function waitHttp(opts: WaitHttpOptions, polling: (first: string) => void = () => {}): Promise<WaitHttpReport> {
  if (!(opts.timeoutS > 0 && opts.timeoutS <= 3600)) throw new LabError('EINVAL', 'timeout must be above 0 and at most 3600 s');
  const target = parseHttpUrl(opts.url);
  const request = requestBytes(target, { close: true });
  const until = opts.until ?? 'ok';
  const started = performance.now();
  const deadline = started + opts.timeoutS * 1000;
  let tries = 0;
  let last = '';
  for (;;) {
    tries++;
    const r = await httpOnce(target, request, opts.tryTimeoutMs ?? 1000);
    const ok = r.ok && r.status < 400;
    last = r.ok ? String(r.status) : r.code;
    if (tries === 1) polling(last);
    if (ok === (until === 'ok')) {
      return { met: true, tries, at_ms: Date.now(), elapsed_ms: Math.round(performance.now() - started), last };
    }
    if (performance.now() >= deadline) {
      return { met: false, tries, at_ms: null, elapsed_ms: Math.round(performance.now() - started), last };
    }
    await new Promise((res) => setTimeout(res, opts.intervalMs ?? 20));
  }
}
