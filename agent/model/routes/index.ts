// L7 routing tables: Gateway API (GAMMA) HTTPRoute/GRPCRoute compiled per Service port, and the lookups the
// router makes per request. compileRoutes runs when state is applied; everything else runs per request.
export { compileRoutes, routeFor, DEFAULT_CONTROLLER_NAME, type CompileOptions, type CompileResult } from './compile.js';
export { matchRequest, matchGrpc } from './match.js';
export { pickBackend } from './backend.js';
export { applyRewrite, replacePath, redirectLocation, applyHeaderModifier, type RedirectRequestInfo } from './rewrite.js';
export { parseGatewayDuration, parseFaultDuration } from './duration.js';
export { DEFAULT_RETRY_ATTEMPTS, GRPC_STATUS_CODES } from './spec.js';
export type * from './types.js';
