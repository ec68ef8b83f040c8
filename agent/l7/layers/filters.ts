// Layer: the request as it goes upstream. URLRewrite (path and hostname) and the header modifiers of the rule,
// then of the backendRef; the request's own headers are copied only when a modifier changes them.
import { applyHeaderModifier, applyRewrite } from '../../model/routes/index.js';
import type { Layer } from './call.js';

export const filters: Layer = (next) => (call) => {
  const { req, matched } = call;
  const rule = matched?.rule;
  const backend = call.backend!;
  const path = matched ? applyRewrite(matched, req.path) : req.path;
  let headers = req.headers;
  if (rule?.requestHeaders || backend.requestHeaders) {
    headers = { ...headers };
    if (rule?.requestHeaders) applyHeaderModifier(rule.requestHeaders, headers);
    if (backend.requestHeaders) applyHeaderModifier(backend.requestHeaders, headers);
  }
  call.upstream = {
    method: req.method,
    path: req.query ? `${path}?${req.query}` : path,
    authority: rule?.rewrite?.hostname ?? req.authority,
    headers,
    body: call.buffered ?? req.body,
  };
  return next(call);
};
