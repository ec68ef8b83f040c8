// Layer: RequestRedirect. Answered here with the Location the rule computes; never sent upstream.
import { redirectLocation } from '../../model/routes/index.js';
import { local } from '../relay.js';
import { DONE, GRPC, type Layer } from './call.js';

export const redirect: Layer = (next) => (call) => {
  const m = call.matched;
  if (!m?.rule.redirect) return next(call);
  const { req } = call;
  const where = redirectLocation(m, { scheme: 'http', host: req.authority, path: req.path, query: req.query, port: call.ctx.port });
  if (!where) return next(call);
  local(call.res, req, call.rec, where.statusCode, GRPC.INTERNAL, '', { location: where.location });
  return DONE;
};
