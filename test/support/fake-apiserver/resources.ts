// Test support: the resource types the fake API server serves, as one table, and how their URLs parse.
// Adding a resource is one line in RESOURCES.

export interface ResourceType {
  group: string; // '' for the core group
  version: string;
  resource: string; // plural, as in the URL
  singular: string;
  kind: string;
  namespaced: boolean;
  /** Built-in types: list items come back without kind/apiVersion, like the real server's typed lists. */
  builtin: boolean;
  /** Has a status subresource: PUT/PATCH of the object keep status, PUT/PATCH of /status change only status. */
  status: boolean;
  /** Field labels usable in fieldSelector besides metadata.name and metadata.namespace. */
  fields?: readonly string[];
  /** Virtual resources (reviews) accept create only and store nothing. */
  createOnly?: boolean;
  shortNames?: readonly string[];
}

const POD_FIELDS = [
  'spec.nodeName',
  'spec.restartPolicy',
  'spec.schedulerName',
  'spec.serviceAccountName',
  'spec.hostNetwork',
  'status.phase',
  'status.podIP',
  'status.nominatedNodeName',
];
const EVENT_FIELDS = [
  'involvedObject.kind',
  'involvedObject.namespace',
  'involvedObject.name',
  'involvedObject.uid',
  'involvedObject.apiVersion',
  'involvedObject.resourceVersion',
  'involvedObject.fieldPath',
  'reason',
  'reportingComponent',
  'source',
  'type',
];

const core = (resource: string, singular: string, kind: string, namespaced: boolean, more: Partial<ResourceType> = {}): ResourceType => ({
  group: '', version: 'v1', resource, singular, kind, namespaced, builtin: true, status: false, ...more,
});
const crd = (group: string, version: string, resource: string, singular: string, kind: string): ResourceType => ({
  group, version, resource, singular, kind, namespaced: true, builtin: false, status: true,
});

export const RESOURCES: readonly ResourceType[] = [
  core('namespaces', 'namespace', 'Namespace', false, { status: true, fields: ['status.phase'], shortNames: ['ns'] }),
  core('nodes', 'node', 'Node', false, { status: true, fields: ['spec.unschedulable'], shortNames: ['no'] }),
  core('pods', 'pod', 'Pod', true, { status: true, fields: POD_FIELDS, shortNames: ['po'] }),
  core('services', 'service', 'Service', true, { status: true, shortNames: ['svc'] }),
  core('configmaps', 'configmap', 'ConfigMap', true, { shortNames: ['cm'] }),
  core('secrets', 'secret', 'Secret', true, { fields: ['type'] }),
  core('events', 'event', 'Event', true, { fields: EVENT_FIELDS, shortNames: ['ev'] }),
  core('serviceaccounts', 'serviceaccount', 'ServiceAccount', true, { shortNames: ['sa'] }),
  { group: 'discovery.k8s.io', version: 'v1', resource: 'endpointslices', singular: 'endpointslice', kind: 'EndpointSlice', namespaced: true, builtin: true, status: false },
  { group: 'coordination.k8s.io', version: 'v1', resource: 'leases', singular: 'lease', kind: 'Lease', namespaced: true, builtin: true, status: false },
  { group: 'authentication.k8s.io', version: 'v1', resource: 'tokenreviews', singular: 'tokenreview', kind: 'TokenReview', namespaced: false, builtin: true, status: false, createOnly: true },
  crd('gateway.networking.k8s.io', 'v1', 'httproutes', 'httproute', 'HTTPRoute'),
  crd('gateway.networking.k8s.io', 'v1', 'grpcroutes', 'grpcroute', 'GRPCRoute'),
  crd('traffic.trellis.dev', 'v1alpha1', 'faultinjections', 'faultinjection', 'FaultInjection'),
  crd('traffic.trellis.dev', 'v1alpha1', 'retrybudgets', 'retrybudget', 'RetryBudget'),
  crd('security.trellis.dev', 'v1alpha1', 'authorizationpolicies', 'authorizationpolicy', 'AuthorizationPolicy'),
  crd('security.trellis.dev', 'v1alpha1', 'peerauthentications', 'peerauthentication', 'PeerAuthentication'),
];

export function groupVersion(rt: ResourceType): string {
  return rt.group ? `${rt.group}/${rt.version}` : rt.version;
}

/** `pods`, or `httproutes.gateway.networking.k8s.io`, as the real server names resources in messages. */
export function qualifiedResource(rt: ResourceType): string {
  return rt.group ? `${rt.resource}.${rt.group}` : rt.resource;
}

export function byKind(apiVersion: string, kind: string): ResourceType | undefined {
  return RESOURCES.find((r) => groupVersion(r) === apiVersion && r.kind === kind);
}

export interface ParsedPath {
  rt: ResourceType;
  namespace?: string;
  name?: string;
  subresource?: string;
}

/**
 * Parses /api/v1/... and /apis/GROUP/VERSION/... resource paths. Returns undefined for anything else
 * (discovery, unknown resources), which the server answers itself.
 */
export function parseResourcePath(pathname: string): ParsedPath | undefined {
  const parts = pathname.split('/').filter(Boolean).map(decodeURIComponent);
  let group: string;
  let version: string;
  let rest: string[];
  if (parts[0] === 'api' && parts.length >= 3) {
    group = '';
    version = parts[1]!;
    rest = parts.slice(2);
  } else if (parts[0] === 'apis' && parts.length >= 4) {
    group = parts[1]!;
    version = parts[2]!;
    rest = parts.slice(3);
  } else {
    return undefined;
  }
  const find = (resource: string) => RESOURCES.find((r) => r.group === group && r.version === version && r.resource === resource);
  // namespaces/NS/RESOURCE[/NAME[/SUB]] for namespaced resources; namespaces/NAME[/SUB] is the Namespace itself.
  if (rest[0] === 'namespaces' && rest.length >= 3) {
    const rt = find(rest[2]!);
    if (rt?.namespaced) {
      if (rest.length > 5) return undefined;
      return { rt, namespace: rest[1], ...(rest[3] ? { name: rest[3] } : {}), ...(rest[4] ? { subresource: rest[4] } : {}) };
    }
  }
  const rt = find(rest[0]!);
  if (!rt || rest.length > 3) return undefined;
  if (rt.namespaced && rest.length > 1) return undefined; // namespaced items need namespaces/NS/...
  return { rt, ...(rest[1] ? { name: rest[1] } : {}), ...(rest[2] ? { subresource: rest[2] } : {}) };
}
