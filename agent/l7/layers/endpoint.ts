// Layer: the endpoint of each try. Power of two choices over a peak-EWMA of latency, with ejection after
// consecutive failures (policy/balancer.ts); one balancer per backend Service port, refreshed when the state moves.
import type { ServiceBackend } from '../../model/routes/index.js';
import type { MeshState } from '../../state/store.js';
import { Balancer, type PickedEndpoint } from '../policy/balancer.js';
import { local } from '../relay.js';
import type { UpstreamEndpoint } from '../upstream.js';
import { ANSWERED, DONE, GRPC, type Layer, type LayerInputs } from './call.js';

interface Entry {
  version: number;
  balancer: Balancer<UpstreamEndpoint>;
  /** Ejections already counted in trellis_endpoint_ejections_total. */
  counted: number;
}

/** The balancers of every backend this agent has sent to, shared by the endpoint and mirror layers. */
export class Balancers {
  private readonly byBackend = new Map<string, Entry>();

  constructor(private readonly inputs: Pick<LayerInputs, 'clock' | 'random' | 'metrics'>) {}

  pick(state: MeshState, backend: ServiceBackend): PickedEndpoint<UpstreamEndpoint> | undefined {
    const key = `${backend.service}:${backend.port}`;
    let entry = this.byBackend.get(key);
    if (!entry || entry.version !== state.version) {
      const endpoints = readyEndpoints(state, backend);
      if (entry) {
        entry.balancer.setEndpoints(endpoints);
        entry.version = state.version;
      } else {
        entry = {
          version: state.version,
          balancer: new Balancer<UpstreamEndpoint>(endpoints, { clock: this.inputs.clock, random: this.inputs.random, key: (e) => `${e.ip}:${e.port}` }),
          counted: 0,
        };
        this.byBackend.set(key, entry);
      }
    }
    // Ejections happen when a try completes; they are counted at the next pick.
    const ejections = entry.balancer.ejections;
    if (ejections !== entry.counted) {
      this.inputs.metrics.endpointEjections.inc({ destination_service: backend.host }, ejections - entry.counted);
      entry.counted = ejections;
    }
    return entry.balancer.pick();
  }
}

export function endpoint(balancers: Balancers): Layer {
  return (next) => (call) => {
    const backend = call.backend!;
    // Egress to where the client was going has its one endpoint; a route's backendRefs to Services are balanced.
    const egress = call.ctx.egress && backend.service === call.ctx.service.key ? call.ctx.egress.balancer : undefined;
    const picked = egress ? egress.pick() : balancers.pick(call.state, backend);
    if (!picked) {
      local(call.res, call.req, call.rec, 503, GRPC.UNAVAILABLE, `no ready endpoint for ${backend.service}:${backend.port}`);
      call.attempt = ANSWERED;
      return DONE;
    }
    call.picked = picked;
    call.rec.setEndpoint(picked.endpoint);
    return next(call);
  };
}

function readyEndpoints(state: MeshState, backend: ServiceBackend): UpstreamEndpoint[] {
  const service = state.services.get(backend.service);
  const port = service?.ports.find((p) => p.port === backend.port);
  if (!service || !port) return [];
  const out: UpstreamEndpoint[] = [];
  for (const e of port.endpoints) {
    if (!e.ready) continue;
    const workload = state.workloadByIp(e.ip);
    out.push(workload ? { ip: e.ip, port: e.port, workload, service: service.host } : { ip: e.ip, port: e.port, service: service.host });
  }
  return out;
}
