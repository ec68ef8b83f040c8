// L7 resilience, per route rule: decides, request by request, whether a FaultInjection delays and/or aborts it.
// Fields and semantics are Istio's HTTPFaultInjection (istio/api networking/v1alpha3/virtual_service.proto):
//   - delay and abort are decided independently, even when both are set, so a request can be delayed and then
//     aborted (the proto: "Delay and abort faults are independent of one another");
//   - a percentage is a share in [0, 100] with fractions allowed (0.1 = one request in a thousand);
//   - an absent percentage means NO request is affected. Istio's proto once said "all requests", but its
//     implementation always left the percentage at 0 (istio/istio#36303, #39969) and the docs were changed to
//     match rather than change behaviour (istio/api#2522): today's reference reads "If left unspecified, no
//     request will be delayed" / "no request will be aborted". percentFromSpec encodes this.
// Aborts carry an HTTP status, or a gRPC status whose name is mapped to its numeric code here, once.

import { TrellisError } from '../../errors.js';

/** gRPC status codes by name (grpc/grpc doc/statuscodes.md), as the FaultInjection CRD spells them. */
export const GRPC_STATUS = Object.freeze({
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const);
export type GrpcStatusName = keyof typeof GRPC_STATUS;

/** Share of requests affected when a fault's `percentage` is absent: none, as Istio does (see above). */
export const FAULT_PERCENT_WHEN_ABSENT = 0;

/** spec.delay.percentage / spec.abort.percentage -> the share used by FaultDecider. */
export function percentFromSpec(percentage: { value?: number } | undefined): number {
  return percentage?.value ?? FAULT_PERCENT_WHEN_ABSENT;
}

/** Maps a gRPC status name (or number) to its code; throws for anything else. */
export function grpcStatusCode(status: GrpcStatusName | number | string): number {
  if (typeof status === 'number') {
    if (Number.isInteger(status) && status >= 0 && status <= 16) return status;
  } else if (Object.hasOwn(GRPC_STATUS, status)) {
    return GRPC_STATUS[status as GrpcStatusName];
  }
  throw new TrellisError('ECONFIG', `fault: gRPC status ${JSON.stringify(status)} is unknown; use a name such as UNAVAILABLE or a code 0..16`);
}

export interface FaultAbort {
  httpStatus?: number;
  /** Numeric gRPC code. */
  grpcStatus?: number;
}

/** A FaultInjection as compiled for one route rule. */
export interface CompiledFault {
  delayMs?: number;
  /** Share of requests delayed, 0..100. */
  delayPercent: number;
  abort?: { httpStatus?: number; grpcStatus?: GrpcStatusName | number };
  /** Share of requests aborted, 0..100. */
  abortPercent: number;
}

export interface FaultDecision {
  /** 0 when the request is not delayed. */
  readonly delayMs: number;
  /** Present when the request is answered at once (after the delay, if any) instead of being sent upstream. */
  readonly abort?: Readonly<FaultAbort>;
}

export class FaultDecider {
  readonly delayMs: number;
  readonly delayPercent: number;
  readonly abortPercent: number;
  readonly abort: Readonly<FaultAbort> | undefined;
  // The four possible answers, built once: a decision allocates nothing.
  private readonly none: FaultDecision;
  private readonly delayed: FaultDecision;
  private readonly aborted: FaultDecision;
  private readonly both: FaultDecision;

  constructor(fault: CompiledFault) {
    const delayMs = fault.delayMs ?? 0;
    if (!(delayMs >= 0 && Number.isFinite(delayMs))) {
      throw new TrellisError('ECONFIG', `fault: delay ${delayMs} ms must be a duration of 0 or more`);
    }
    checkPercent('delay', fault.delayPercent);
    checkPercent('abort', fault.abortPercent);
    let abort: FaultAbort | undefined;
    if (fault.abort) {
      const { httpStatus, grpcStatus } = fault.abort;
      if ((httpStatus === undefined) === (grpcStatus === undefined)) {
        throw new TrellisError('ECONFIG', 'fault: an abort needs exactly one of httpStatus and grpcStatus');
      }
      if (httpStatus !== undefined && !(Number.isInteger(httpStatus) && httpStatus >= 200 && httpStatus <= 599)) {
        throw new TrellisError('ECONFIG', `fault: abort httpStatus ${httpStatus} must be an HTTP status in 200..599`);
      }
      abort = Object.freeze(httpStatus !== undefined ? { httpStatus } : { grpcStatus: grpcStatusCode(grpcStatus!) });
    }
    this.delayMs = delayMs;
    this.delayPercent = delayMs > 0 ? fault.delayPercent : 0;
    this.abortPercent = abort ? fault.abortPercent : 0;
    this.abort = abort;
    this.none = Object.freeze({ delayMs: 0 });
    this.delayed = Object.freeze({ delayMs });
    this.aborted = Object.freeze(abort ? { delayMs: 0, abort } : { delayMs: 0 });
    this.both = Object.freeze(abort ? { delayMs, abort } : { delayMs });
  }

  /** One draw of `random` for the delay, then one for the abort, each only when that fault is configured. */
  decide(random: () => number): FaultDecision {
    const delay = this.delayPercent > 0 && random() * 100 < this.delayPercent;
    const abort = this.abortPercent > 0 && random() * 100 < this.abortPercent;
    return delay ? (abort ? this.both : this.delayed) : abort ? this.aborted : this.none;
  }
}

function checkPercent(what: string, p: number): void {
  if (!(p >= 0 && p <= 100)) {
    throw new TrellisError('ECONFIG', `fault: ${what} percentage ${p} is outside 0..100`);
  }
}
