// The last step of a try: the request goes to the picked endpoint over a pooled connection, under the per-try
// timeout (timeouts.backendRequest) and the request deadline; the balancer learns how it went.
import type { Clock } from '../../clock.js';
import type { Responder } from '../exchange.js';
import { UpstreamError, type UpstreamEndpoint, type UpstreamRequest, type UpstreamResponse } from '../upstream.js';
import type { Handler, LayerInputs } from './call.js';

export function forward(inputs: Pick<LayerInputs, 'upstreams' | 'clock'>): Handler {
  return async (call) => {
    const picked = call.picked!;
    const ep = picked.endpoint;
    const started = performance.now();
    const perTry = call.matched?.rule.timeouts.backendRequestMs || undefined;
    const limit = Math.min(call.deadline ?? Infinity, perTry ? started + perTry : Infinity);
    const send = inputs.upstreams.send(upstreamProtocol(call.ctx.protocol, ep), call.ctx.src, ep, withAppProtocol(call.ctx.protocol, ep, call.upstream!));
    const outcome = await raceDeadline(send, limit, inputs.clock, call.res);
    const latencyMs = performance.now() - started;
    if (outcome.kind === 'response') {
      const r = outcome.response;
      picked.done({ latencyMs, outcome: r.status >= 500 ? '5xx' : 'ok' });
      call.attempt = { response: r };
      return;
    }
    if (outcome.kind === 'timeout') {
      picked.done({ latencyMs, outcome: '5xx' });
      call.attempt = { error: 'timeout', message: `no response from ${ep.ip}:${ep.port} within the timeout` };
      return;
    }
    const err = outcome.error;
    const isUpstream = err instanceof UpstreamError;
    const connect = isUpstream && err.kind === 'connect';
    picked.done({ latencyMs, outcome: connect ? 'connect-failure' : '5xx' });
    call.attempt = { error: connect ? 'connect' : 'reset', message: `${ep.ip}:${ep.port}: ${err.message}`, reusedClosed: isUpstream && err.reused };
  };
}

/**
 * The protocol to an endpoint: HTTP/1.1 to a meshed one whatever the client spoke (the lean path between agents;
 * the destination agent speaks HTTP/2 to the app when the client did), the client's own otherwise.
 */
export function upstreamProtocol(client: 'http1' | 'h2', ep: UpstreamEndpoint): 'http1' | 'h2' {
  return ep.workload?.meshed ? 'http1' : client;
}

/** The request as sent to `ep`: marked for the destination agent when an HTTP/2 client's request crosses as HTTP/1.1. */
export function withAppProtocol(client: 'http1' | 'h2', ep: UpstreamEndpoint, req: UpstreamRequest): UpstreamRequest {
  return client === 'h2' && ep.workload?.meshed ? { ...req, appProtocol: 'h2' } : req;
}

export type RaceOutcome = { kind: 'response'; response: UpstreamResponse } | { kind: 'timeout' } | { kind: 'error'; error: Error };

/** Waits for the response head until `deadline` (performance.now() time) or the client leaving; a late response is aborted. */
export function raceDeadline(send: Promise<UpstreamResponse>, deadline: number, clock: Clock, res?: Responder): Promise<RaceOutcome> {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (o: RaceOutcome) => {
      if (settled) {
        if (o.kind === 'response') o.response.abort();
        return;
      }
      settled = true;
      timer?.cancel();
      resolve(o);
    };
    const timer = Number.isFinite(deadline) ? clock.after(Math.max(0, deadline - performance.now()), () => settle({ kind: 'timeout' })) : undefined;
    res?.onClose(() => settle({ kind: 'error', error: new Error('client went away') }));
    send.then(
      (response) => settle({ kind: 'response', response }),
      (error: Error) => settle({ kind: 'error', error }),
    );
  });
}
