// Outbound decision: from the original destination to a target — a meshed endpoint over HBONE, or plain TCP.
// Pure: reads one MeshState snapshot, takes randomness as an input.
import type { ServiceInfo } from '../model/services.js';
import type { MeshState } from '../state/store.js';
import type { Workload } from '../state/workload.js';

export type OutboundTarget =
  | { kind: 'hbone'; ip: string; port: number; workload: Workload; service?: ServiceInfo }
  | { kind: 'passthrough'; ip: string; port: number; workload?: Workload; service?: ServiceInfo }
  | { kind: 'fail'; reason: 'no_service_port' | 'no_endpoints'; message: string; service: ServiceInfo };

export function resolveOutbound(
  state: MeshState,
  dst: { address: string; port: number },
  random: () => number,
): OutboundTarget {
  const service = state.serviceByVip(dst.address);
  if (!service) {
    const workload = state.workloadByIp(dst.address);
    if (workload?.meshed) return { kind: 'hbone', ip: dst.address, port: dst.port, workload };
    return { kind: 'passthrough', ip: dst.address, port: dst.port, workload };
  }
  const sp = service.ports.find((p) => p.port === dst.port);
  if (!sp) {
    return { kind: 'fail', reason: 'no_service_port', service, message: `service ${service.key} has no TCP port ${dst.port}` };
  }
  const ready = sp.endpoints.filter((e) => e.ready);
  if (ready.length === 0) {
    return {
      kind: 'fail',
      reason: 'no_endpoints',
      service,
      message: `service ${service.key} port ${dst.port} has no ready endpoints (check the Service selector and pod readiness)`,
    };
  }
  const ep = ready[Math.min(ready.length - 1, Math.floor(random() * ready.length))]!;
  const workload = state.workloadByIp(ep.ip);
  if (workload?.meshed) return { kind: 'hbone', ip: ep.ip, port: ep.port, workload, service };
  return { kind: 'passthrough', ip: ep.ip, port: ep.port, workload, service };
}
