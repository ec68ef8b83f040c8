// Layer: RequestMirror. Copies of the request (path rewritten, headers as the client sent them, the buffered body)
// go to the mirror backend's endpoints, at the configured percentage; their answers are dropped and never delay or
// change the caller's. A body too large to buffer is not mirrored (counted as skipped).
import type { RequestMirror } from '../../model/routes/index.js';
import { applyRewrite } from '../../model/routes/index.js';
import type { UpstreamRequest } from '../upstream.js';
import type { Call, Layer, LayerInputs } from './call.js';
import type { Balancers } from './endpoint.js';
import { raceDeadline, upstreamProtocol, withAppProtocol } from './forward.js';

const DRAIN = { data: () => true, end: () => undefined, error: () => undefined };

export function mirror(inputs: Pick<LayerInputs, 'upstreams' | 'metrics' | 'clock' | 'random' | 'mirrorTimeoutMs'>, balancers: Balancers): Layer {
  const send = (call: Call, m: RequestMirror): void => {
    const host = m.backend.host;
    if (m.percent < 100 && !(inputs.random() * 100 < m.percent)) return;
    if (!call.buffered) {
      inputs.metrics.mirrorRequests.inc({ destination_service: host, outcome: 'skipped' });
      return;
    }
    const picked = balancers.pick(call.state, m.backend);
    if (!picked) {
      inputs.metrics.mirrorRequests.inc({ destination_service: host, outcome: 'failed' });
      return;
    }
    const { req } = call;
    const path = applyRewrite(call.matched!, req.path);
    const copy: UpstreamRequest = {
      method: req.method,
      path: req.query ? `${path}?${req.query}` : path,
      authority: req.authority,
      headers: { ...req.headers },
      body: call.buffered,
    };
    const started = performance.now();
    const ep = picked.endpoint;
    const sent = inputs.upstreams.send(upstreamProtocol(call.ctx.protocol, ep), call.ctx.src, ep, withAppProtocol(call.ctx.protocol, ep, copy));
    void raceDeadline(sent, started + inputs.mirrorTimeoutMs, inputs.clock).then((o) => {
      const latencyMs = performance.now() - started;
      if (o.kind === 'response') {
        // Read to its end, so the connection can carry the next request.
        o.response.body.read(DRAIN);
        picked.done({ latencyMs, outcome: o.response.status >= 500 ? '5xx' : 'ok' });
        inputs.metrics.mirrorRequests.inc({ destination_service: host, outcome: 'sent' });
      } else {
        picked.done({ latencyMs, outcome: '5xx' });
        inputs.metrics.mirrorRequests.inc({ destination_service: host, outcome: 'failed' });
      }
    });
  };
  return (next) => (call) => {
    const mirrors = call.matched?.rule.mirrors;
    if (mirrors) for (let i = 0; i < mirrors.length; i++) send(call, mirrors[i]!);
    return next(call);
  };
}
