// A silent pino logger that keeps its lines, so tests can assert on what the agent logged.
import pino, { type Logger } from 'pino';
import { Writable } from 'node:stream';

export function captureLogger(): { logger: Logger; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      out.push(...chunk.toString().split('\n').filter(Boolean));
      cb();
    },
  });
  const logger = pino({ level: 'debug' }, sink);
  return { logger, lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>) };
}
