// Egress records: what the access line, the metrics and tap say of a connection to a destination outside the
// cluster (neither a pod nor a Service), and the one line of a connection an EgressNetwork refused.
import type net from 'node:net';
import type { DestinationName } from '../l7/destination-name.js';
import type { EgressVerdict } from '../model/egress.js';
import { sourceAddress, type Workload } from '../state/workload.js';
import type { AccessLog } from '../telemetry/audit.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { TapHub } from '../tap/hub.js';
import type { ConnectionFields } from './connection.js';

/** The metrics' destination_workload of every egress connection: bounded, and never a workload's name. */
export const EGRESS_WORKLOAD = 'egress';

/** What a connection record keeps of egress (ConnectionFields.egress). */
export interface EgressFacts {
  /** The name the client gave (SNI or Host), as it gave it: the access line's and tap's, never a metric label. */
  readonly name?: string | undefined;
  readonly by?: 'sni' | 'host' | undefined;
  /** namespace/name of the EgressNetwork that judged it; absent when none covers the address. */
  readonly network?: string | undefined;
  readonly networkNamespace?: string | undefined;
  readonly trafficPolicy?: 'Allow' | 'Deny' | undefined;
  /** The declared host it counts under (a metric label: declared hosts are bounded); absent: `unknown`. */
  readonly declared?: string | undefined;
  /** Why there is no name, when the bytes should have carried one. */
  readonly problem?: string | undefined;
}

export function egressFields(
  down: net.Socket,
  src: Workload,
  dst: { address: string; port: number },
  named: DestinationName,
  verdict: EgressVerdict,
): ConnectionFields {
  const n = verdict.network;
  return {
    direction: 'outbound',
    src: { ip: sourceAddress(src, down.remoteAddress), port: down.remotePort, workload: src, principal: src.identity },
    dst: { ip: dst.address, port: dst.port, ...(named.name !== undefined && { host: named.name }) },
    security: 'none',
    egress: {
      name: named.name,
      by: named.by,
      network: n?.key,
      networkNamespace: n?.namespace,
      trafficPolicy: n?.trafficPolicy,
      declared: verdict.host?.name,
      problem: named.problem,
    },
  };
}

/** The access line's `egress` member. */
export function egressMember(e: EgressFacts): Record<string, unknown> {
  return { network: e.network, policy: e.trafficPolicy, host: e.declared, named_by: e.by, name_problem: e.problem };
}

/**
 * A connection an EgressNetwork refused: counted as an authorization decision (action "egress", the EgressNetwork as
 * the policy), told to taps, and its one access line written here, since it never reaches a ConnectionRecord.
 */
export function refusedEgressLine(inputs: { metrics: Metrics; accessLog: AccessLog; tap?: TapHub | undefined }, fields: ConnectionFields, verdict: EgressVerdict): void {
  const authz = { authz: { decision: 'deny', code: `egress_${verdict.code}`, action: 'egress', policy: verdict.network?.key, reason: verdict.reason } };
  fields.authz = authz;
  inputs.metrics.authzDecisions.inc({ decision: 'deny', action: 'egress', policy: verdict.network?.key ?? '', reason: `egress_${verdict.code}`, level: 'connection' });
  if (inputs.tap?.active) inputs.tap.deniedConnection(fields);
  const f = fields;
  inputs.accessLog.info(
    {
      direction: 'outbound',
      src: { ip: f.src.ip, port: f.src.port, workload: f.src.workload?.key, principal: f.src.principal },
      dst: { ip: f.dst.ip, port: f.dst.port, host: f.dst.host },
      egress: egressMember(f.egress!),
      security: 'none',
      bytes_received: 0,
      bytes_sent: 0,
      ...authz,
    },
    'connection',
  );
}
