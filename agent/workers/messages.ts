// What the main thread and the agent's worker threads tell each other. The main thread owns the state, the
// certificates, capture and the audit trail's destination; each worker runs a data plane of its own.
import type { AgentConfig } from '../config.js';
import type { Svid } from '../identity/certs.js';
import type { KubeObject } from '../model/objects.js';
import type { Workload } from '../state/workload.js';
import type { TapSpec } from '../tap/hub.js';
import type { TapBatch } from '../tap/service.js';

export type ToWorker =
  | { t: 'init'; config: AgentConfig; worker: number; trustBundle: string }
  /** The source's objects, as the main thread's store applied them: the worker compiles its own MeshState. */
  | { t: 'snapshot'; objects: readonly KubeObject[] }
  | { t: 'open'; id: number; pod: Workload }
  | { t: 'close'; key: string }
  | { t: 'svid'; id: number; svid?: Svid; error?: string }
  | { t: 'rotate'; svid: Svid }
  | { t: 'metrics'; id: number }
  /** The taps open now (all of them, at every change): the worker's hub matches its records against them. */
  | { t: 'taps'; specs: readonly TapSpec[] }
  /** Stop accepting, drain for at most drainMs, then exit. */
  | { t: 'stop'; drainMs: number };

export type FromWorker =
  | { t: 'ready' }
  | { t: 'opened'; id: number; error?: string }
  | { t: 'cert'; id: number; identity: string }
  | { t: 'metrics'; id: number; json: unknown[] }
  /** Access lines, whole, for the main thread's audit destination. */
  | { t: 'audit'; lines: string[] }
  /** Observations the worker's tap hub admitted and the drops it counted, for the main thread's tap streams. */
  | { t: 'tap'; batch: TapBatch }
  | { t: 'stopped'; drained: number; cut: number };
