// The harness's errors: the agent's codes (agent/errors.ts) plus those only the lab, the bench and the workload
// tools raise. Same shape as the agent's: a stable code and a message that says what to do.
import { TrellisError, type ErrorCode } from '../agent/errors.js';

export type LabErrorCode =
  | ErrorCode
  /** The lab: its netns cluster, its state, its processes. */
  | 'ELAB'
  | 'EMANIFEST'
  | 'ENOTBUILT'
  | 'ENOTUP'
  | 'EPROC'
  | 'ESTATE'
  | 'EHTTP'
  /** The control plane (etcd, kube-apiserver, kube-controller-manager) and the lab's calls to it. */
  | 'ECONTROLPLANE'
  | 'EKUBE'
  /** The lab's kubelet: a CNI ADD the trellis-cni plugin failed. */
  | 'ECNI'
  /** The bench and its helpers (HAProxy, taskset, the TLS probe, the scale objects). */
  | 'EHAPROXY'
  | 'ESCALE'
  | 'ETASKSET'
  | 'ETICKER'
  | 'ETLSPROBE'
  /** A workload tool. */
  | 'ETOOL';

export class LabError extends TrellisError<LabErrorCode> {}

const SYSTEM: ReadonlySet<string> = new Set<LabErrorCode>(['EADDRINUSE', 'ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOENT', 'EPIPE', 'ETIMEDOUT']);

/** A system error's code (errno name) when it is one the harness's callers look at, else `fallback`. */
export function systemCode(code: unknown, fallback: LabErrorCode): LabErrorCode {
  return typeof code === 'string' && SYSTEM.has(code) ? (code as LabErrorCode) : fallback;
}
