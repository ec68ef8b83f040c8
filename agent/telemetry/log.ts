// Structured logs (pino): one logger per agent, child loggers per component; the access log is one line per connection.
import pino, { type Logger } from 'pino';

export function createLogger(inputs: { level: string; node?: string }): Logger {
  return pino({
    level: inputs.level,
    base: inputs.node ? { node: inputs.node } : {},
    timestamp: pino.stdTimeFunctions.isoTime,
  });
}
