// The viewer's errors: the agent's codes plus those only reading Prometheus raises. Each message is one line that
// says what to do; main.ts prints it without a stack and exits non-zero.
import { TrellisError, type ErrorCode } from '../agent/errors.js';

export type VizErrorCode =
  | ErrorCode
  /** Prometheus could not be reached, or answered with an error. */
  | 'EPROMETHEUS'
  /** No lab (or no single lab) to find a Prometheus in. */
  | 'ENOLAB'
  /** Prometheus answered, but nothing matches what was asked. */
  | 'ENODATA'
  /** `trellis check` found a failure (each is printed with its fix). */
  | 'ECHECK';

export class VizError extends TrellisError<VizErrorCode> {}
