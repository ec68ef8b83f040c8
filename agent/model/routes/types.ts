// Route compilation: the compiled, frozen shapes the L7 router reads on the request path.
// Everything here is built once per state snapshot by compile.ts; nothing is computed per request.

export type RouteKind = 'HTTPRoute' | 'GRPCRoute';

/** A header to set or add; the name is lowercased at compile time. */
export interface HeaderValue {
  readonly name: string;
  readonly value: string;
}

/** RequestHeaderModifier / ResponseHeaderModifier: at most one action per header name (checked). */
export interface HeaderModifier {
  readonly set: readonly HeaderValue[];
  readonly add: readonly HeaderValue[];
  /** Lowercased names. */
  readonly remove: readonly string[];
}

export type PathModifier =
  | { readonly type: 'ReplaceFullPath'; readonly replaceFullPath: string }
  | { readonly type: 'ReplacePrefixMatch'; readonly replacePrefixMatch: string };

export interface UrlRewrite {
  /** Replaces the Host (:authority) sent upstream. */
  readonly hostname?: string;
  readonly path?: PathModifier;
}

export type RedirectStatus = 301 | 302 | 303 | 307 | 308;

export interface RequestRedirect {
  readonly scheme?: 'http' | 'https';
  readonly hostname?: string;
  readonly path?: PathModifier;
  readonly port?: number;
  readonly statusCode: RedirectStatus;
}

export interface RequestMirror {
  /** Only resolved Services are mirrored to; an unresolved mirror is dropped (ResolvedRefs=False). */
  readonly backend: ServiceBackend;
  /** Share of requests mirrored, 0..100 (from `percent` or `fraction`; 100 when neither is set). */
  readonly percent: number;
}

export type FaultAbort =
  | { readonly httpStatus: number; readonly grpcStatus?: undefined; readonly grpcStatusName?: undefined }
  | { readonly httpStatus?: undefined; readonly grpcStatus: number; readonly grpcStatusName: string };

/** A resolved FaultInjection (traffic.trellis.dev/v1alpha1), Istio HTTPFaultInjection semantics. */
export interface FaultSpec {
  /** namespace/name of the FaultInjection object. */
  readonly source: string;
  readonly delayMs?: number;
  /** 0..100; 100 when the delay has no percentage. */
  readonly delayPercent: number;
  readonly abort?: FaultAbort;
  readonly abortPercent: number;
}

export type CompiledFilter =
  | { readonly type: 'RequestHeaderModifier'; readonly modifier: HeaderModifier }
  | { readonly type: 'ResponseHeaderModifier'; readonly modifier: HeaderModifier }
  | { readonly type: 'URLRewrite'; readonly rewrite: UrlRewrite }
  | { readonly type: 'RequestRedirect'; readonly redirect: RequestRedirect }
  | { readonly type: 'RequestMirror'; readonly mirror: RequestMirror }
  | { readonly type: 'FaultInjection'; readonly fault: FaultSpec };

/** A backendRef that resolved to a Service port. Endpoints are looked up in the same MeshState by `service`. */
export interface ServiceBackend {
  readonly kind: 'Service';
  readonly weight: number;
  /** namespace/name: the MeshState.services key. */
  readonly service: string;
  readonly namespace: string;
  readonly name: string;
  /** The Service port (not the target port). */
  readonly port: number;
  /** FQDN, the destination_service label. */
  readonly host: string;
  /** Backend-level filters, applied only when this backend is picked. */
  readonly filters: readonly CompiledFilter[];
  readonly requestHeaders?: HeaderModifier;
  readonly responseHeaders?: HeaderModifier;
}

/**
 * A backendRef that could not be resolved (missing Service or port, other kind, cross-namespace without
 * permission): it keeps its weight so its share of the traffic is answered with 500 (gRPC: UNAVAILABLE).
 */
export interface ErrorBackend {
  readonly kind: 'Error';
  readonly weight: number;
  readonly status: 500;
  /** UNAVAILABLE, what GRPCRoute prescribes for an invalid backend. */
  readonly grpcStatus: 14;
  readonly reason: string;
}

export type CompiledBackend = ServiceBackend | ErrorBackend;

export interface RetryPolicy {
  /** HTTP status codes that are retried (400..599); empty: only failures to connect are retried. */
  readonly codes: readonly number[];
  /** Retries after the first try; 0 disables retries. */
  readonly attempts: number;
  /** Base backoff interval; absent: the retry layer's default. */
  readonly backoffMs?: number;
}

export interface RouteTimeouts {
  /** Whole request, retries included; 0 disables the timeout; absent: the agent's default. */
  readonly requestMs?: number;
  /** One try against a backend; 0 disables it; never more than requestMs (checked). */
  readonly backendRequestMs?: number;
}

export interface CompiledRule {
  readonly routeKind: RouteKind;
  /** namespace/name of the route. */
  readonly route: string;
  /** rule.name, or the rule's index as a string: a bounded label for metrics. */
  readonly name: string;
  readonly index: number;
  readonly timeouts: RouteTimeouts;
  readonly retry?: RetryPolicy;
  /** Rule-level filters in the order written. */
  readonly filters: readonly CompiledFilter[];
  // The same filters picked out, so layers need not scan `filters` per request.
  readonly requestHeaders?: HeaderModifier;
  readonly responseHeaders?: HeaderModifier;
  readonly rewrite?: UrlRewrite;
  /** When set the rule answers with a redirect and never reaches a backend. */
  readonly redirect?: RequestRedirect;
  readonly mirrors: readonly RequestMirror[];
  readonly fault?: FaultSpec;
  /** An ExtensionRef filter that did not resolve: every request of the rule gets this answer. */
  readonly error?: { readonly status: 500; readonly reason: string };
  readonly backends: readonly CompiledBackend[];
  readonly totalWeight: number;
  /** Running sums of `backends[i].weight`, for the weighted pick. */
  readonly cumulativeWeights: readonly number[];
}

/** What matchRequest/matchGrpc return: the rule and the match that selected it (shared, never allocated). */
export interface MatchedRule {
  readonly rule: CompiledRule;
  /** The PathPrefix value of the selecting match (for ReplacePrefixMatch); undefined for other path types. */
  readonly pathPrefix: string | undefined;
  /** Human-readable form of the selecting match, for the routes view and debugging. */
  readonly match: string;
}

export interface HttpRequestInfo {
  readonly method: string;
  /** Normalized path without the query string. */
  readonly path: string;
  readonly query: URLSearchParams | Readonly<Record<string, readonly string[]>>;
  /** Lowercase name -> combined value (repeated headers joined with ","), undefined when absent. */
  readonly headers: (name: string) => string | undefined;
}

export interface GrpcRequestInfo {
  readonly service: string;
  readonly method: string;
  readonly headers: (name: string) => string | undefined;
}

export interface MatchEntry<Req> {
  readonly test: (req: Req) => boolean;
  readonly matched: MatchedRule;
}

/** The rules that apply to calls to one Service port from one set of callers, in precedence order. */
export interface CompiledRoutes {
  readonly kind: RouteKind;
  /** namespace/name of the parent Service. */
  readonly service: string;
  readonly port: number;
  /** producer: routes in the Service's namespace, for every caller; consumer: routes of the callers' namespace. */
  readonly scope: 'producer' | 'consumer';
  /** Namespace the routes live in (the Service's for producer routes, the callers' for consumer routes). */
  readonly namespace: string;
  /** namespace/name of the routes merged here, in precedence order of their first rule. */
  readonly routes: readonly string[];
  /** Filled when kind is HTTPRoute. */
  readonly http: readonly MatchEntry<HttpRequestInfo>[];
  /** Filled when kind is GRPCRoute. */
  readonly grpc: readonly MatchEntry<GrpcRequestInfo>[];
}

export interface PortRoutes {
  readonly producer?: CompiledRoutes;
  /** Caller namespace -> that namespace's consumer routes. */
  readonly consumers: ReadonlyMap<string, CompiledRoutes>;
}

export interface RouteTable {
  /** Service key (namespace/name) -> Service port -> routes. */
  readonly services: ReadonlyMap<string, ReadonlyMap<number, PortRoutes>>;
}

export type ConditionStatus = 'True' | 'False' | 'Unknown';

/** A metav1.Condition without lastTransitionTime (the status writer stamps it). */
export interface RouteCondition {
  readonly type: 'Accepted' | 'ResolvedRefs';
  readonly status: ConditionStatus;
  readonly reason: string;
  readonly message: string;
  readonly observedGeneration?: number;
}

export interface ParentReference {
  readonly group: string;
  readonly kind: string;
  readonly namespace?: string;
  readonly name: string;
  readonly sectionName?: string;
  readonly port?: number;
}

/** Gateway API RouteParentStatus, as status.parents[] holds it. */
export interface RouteParentStatus {
  readonly parentRef: ParentReference;
  readonly controllerName: string;
  readonly conditions: readonly RouteCondition[];
}

export interface RouteStatus {
  readonly kind: RouteKind;
  readonly namespace: string;
  readonly name: string;
  readonly generation?: number;
  /** One entry per Service parentRef: what a source writes to status.parents[]. */
  readonly parents: readonly RouteParentStatus[];
  /** parentRefs that are not Services (Gateways...): another controller owns their status; not written. */
  readonly ignoredParents: readonly { readonly parentRef: ParentReference; readonly reason: string }[];
  /** Validation errors, each naming the object and field; empty when the route is valid. */
  readonly errors: readonly string[];
  /** Problems resolving references (backends, mirrors, FaultInjection), each naming the object and field. */
  readonly unresolved: readonly string[];
  /** True when the route is invalid and its last valid version is still in force. */
  readonly fellBack: boolean;
}

export interface FaultInjectionStatus {
  readonly namespace: string;
  readonly name: string;
  readonly generation?: number;
  readonly condition: RouteCondition & { readonly type: 'Accepted' };
}
