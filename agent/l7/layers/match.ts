// Layer: the route. Consumer routes of the caller's namespace win over the Service's own (GAMMA); when a Service
// port has routes and no rule matches, 404 (gRPC: UNIMPLEMENTED); a rule that failed to compile answers 500.
import { matchGrpc, matchRequest, type CompiledRoutes, type MatchedRule } from '../../model/routes/index.js';
import type { L7Request } from '../exchange.js';
import { headerValue } from '../headers.js';
import { local } from '../relay.js';
import { DONE, GRPC, type Layer } from './call.js';

export const match: Layer = (next) => (call) => {
  const { ctx } = call;
  const routes = call.state.routesFor(ctx.service.key, ctx.port, ctx.src.namespace);
  if (!routes) return next(call);
  const matched = matchRoutes(routes, call.req);
  if (!matched) {
    local(call.res, call.req, call.rec, 404, GRPC.UNIMPLEMENTED, `no rule of the routes for ${ctx.service.key}:${ctx.port} matches`);
    return DONE;
  }
  call.matched = matched;
  call.rec.route = matched.rule;
  if (matched.rule.error) {
    local(call.res, call.req, call.rec, 500, GRPC.INTERNAL, matched.rule.error.reason);
    return DONE;
  }
  return next(call);
};

const NO_QUERY = new URLSearchParams();

export function matchRoutes(routes: CompiledRoutes, req: L7Request): MatchedRule | undefined {
  const headers = (name: string) => headerValue(req.headers, name);
  if (routes.kind === 'GRPCRoute') {
    if (!req.grpc) return undefined;
    const parts = req.path.split('/');
    if (parts.length !== 3 || parts[0] !== '') return undefined;
    return matchGrpc(routes, { service: parts[1]!, method: parts[2]!, headers });
  }
  return matchRequest(routes, { method: req.method, path: req.path, query: req.query ? new URLSearchParams(req.query) : NO_QUERY, headers });
}
