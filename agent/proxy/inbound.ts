// Inbound, what both listeners of a pod share (inbound-hbone.ts: 15008, mTLS, the caller's identity verified;
// inbound-plaintext.ts: 15006, permissive mode): their inputs, the connection's authorization check, and the
// re-check of open opaque connections when policies change.
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { resetSide } from '../io/splice.js';
import type { InboundHttp } from '../l7/inbound-http.js';
import { countDecision, decisionFields, evaluateConnection, type ConnectionAuthz, type ConnectionInput } from '../security/index.js';
import type { MeshState } from '../state/store.js';
import type { Workload } from '../state/workload.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { ConnectionRecord } from './connection.js';
import type { Drain } from './drain.js';
import type { PolicyRecheck } from './recheck.js';
import type { SourceLimit } from './source-limit.js';
import type { AccessLog } from '../telemetry/audit.js';
import type { TapHub } from '../tap/hub.js';
import type { TcpHealthReader } from './tcp-health.js';

/**
 * Connects to the app inside the pod's netns (with the agent's mark, so capture skips it), from `caller`'s address
 * when the agent keeps callers' addresses (--preserve-source-ip).
 */
export type AppDialer = (pod: Workload, ip: string, port: number, caller?: string) => net.Socket;

export interface InboundInputs {
  pod: Workload;
  trustDomain: string;
  state: () => MeshState;
  dialApp: AppDialer;
  metrics: Metrics;
  logger: Logger;
  accessLog: AccessLog;
  drain: Drain;
  /**
   * The pods' inbound HBONE sessions (HTTP/2 connections from peer agents, each of which may carry many of `drain`'s
   * connections): shutdown waits on them too, bounded, so that every peer has had its GOAWAY and let go of the
   * session before the process goes (a peer that learnt of it from the FIN alone may have sent a stream meanwhile).
   */
  sessions?: Drain;
  /** HTTP handling for app ports that speak it (per-request metrics, identity headers, authorization). */
  http?: InboundHttpOptions;
  /** Opaque connections are re-authorized here when policies change. */
  recheck?: PolicyRecheck;
  /** TLS key-exchange groups (--tls-groups); Node's default when absent. */
  tlsGroups?: string;
  /** Open plaintext connections per source address (--max-connections-per-source); no limit when absent. */
  sourceLimit?: SourceLimit;
  /** This thread's tap hub (agent/tap/): denied connections are tapped here, the others by their record. */
  tap?: TapHub | undefined;
  /** The sockops program's map (TCP health per edge); absent where it does not run. */
  tcpHealth?: TcpHealthReader | undefined;
}

export interface InboundHttpOptions {
  server: InboundHttp;
  /** Plaintext from outside the mesh to an undeclared port is sniffed this long; 0: never. */
  detectTimeoutMs: number;
  opaquePorts: ReadonlySet<number>;
}

export interface ConnectionFacts {
  principal: string | undefined;
  sourceIp: string | undefined;
  sourcePort: number | undefined;
  ip: string;
  port: number;
  l7: boolean;
}

/**
 * The connection's authorization check (AuthorizationPolicy L4 fields, PeerAuthentication), counted; a denied
 * connection gets its one access-log line here, since it never reaches a ConnectionRecord.
 */
export function authorizeConnection(inputs: InboundInputs, state: MeshState, f: ConnectionFacts): ConnectionAuthz {
  const pod = state.workloads.get(inputs.pod.key) ?? inputs.pod;
  const input: ConnectionInput = {
    workload: pod,
    sourceIdentity: f.principal,
    sourceIp: f.sourceIp,
    destinationIp: f.ip,
    destinationPort: f.port,
    protocol: f.l7 ? 'http' : 'tcp',
  };
  const verdict = evaluateConnection(state.policies, input);
  countDecision(inputs.metrics, verdict.decision, 'connection');
  // An HTTP connection denied at L4 is still served: each request is answered 403 (checked again per request).
  if (!verdict.decision.allowed && (!f.l7 || verdict.decision.code === 'denied_plaintext')) {
    if (inputs.tap?.active) {
      inputs.tap.deniedConnection({
        direction: 'inbound',
        src: { ip: f.sourceIp, port: f.sourcePort, principal: f.principal, workload: f.sourceIp === undefined ? undefined : state.workloadByIp(f.sourceIp) },
        dst: { ip: f.ip, port: f.port, workload: pod, principal: pod.identity },
        security: f.principal ? 'mutual_tls' : 'none',
        authz: decisionFields(verdict.decision),
      });
    }
    inputs.accessLog.info(
      {
        direction: 'inbound',
        src: { ip: f.sourceIp, port: f.sourcePort, principal: f.principal },
        dst: { ip: f.ip, port: f.port, workload: pod.key, principal: pod.identity },
        security: f.principal ? 'mutual_tls' : 'none',
        bytes_received: 0,
        bytes_sent: 0,
        ...decisionFields(verdict.decision),
      },
      'connection',
    );
  }
  return { verdict, input, policies: state.policies };
}

/** Tracks an opaque connection for re-authorization; a later denial resets both sides and is logged. */
export function trackConnection(inputs: InboundInputs, f: ConnectionFacts, sides: Duplex[], record: ConnectionRecord): () => void {
  if (!inputs.recheck) return () => undefined;
  return inputs.recheck.track(
    (state) => {
      const pod = state.workloads.get(inputs.pod.key) ?? inputs.pod;
      return evaluateConnection(state.policies, { workload: pod, sourceIdentity: f.principal, sourceIp: f.sourceIp, destinationIp: f.ip, destinationPort: f.port, protocol: 'tcp' }).decision;
    },
    (decision) => {
      countDecision(inputs.metrics, decision, 'connection');
      inputs.logger.warn({ pod: inputs.pod.key, peer: f.sourceIp, principal: f.principal, port: f.port, reason: decision.reason }, 'open connection cut: the policies now deny it');
      // The connection's one audit line carries the decision that ended it.
      record.setAuthz(decisionFields(decision));
      for (const s of sides) resetSide(s);
    },
  );
}
