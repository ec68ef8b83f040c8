// The Kubernetes-shaped objects that sources produce and the store consumes (only the fields Trellis reads).

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: { kind: string; name: string }[];
}

export interface Namespace {
  apiVersion: 'v1';
  kind: 'Namespace';
  metadata: ObjectMeta;
}

export interface ContainerPort {
  name?: string;
  containerPort: number;
  protocol?: string;
}

export interface Container {
  name: string;
  image?: string;
  command?: string[];
  args?: string[];
  ports?: ContainerPort[];
}

export interface Pod {
  apiVersion: 'v1';
  kind: 'Pod';
  metadata: ObjectMeta;
  spec: {
    nodeName?: string;
    serviceAccountName?: string;
    containers: Container[];
  };
  status?: {
    podIP?: string;
    podIPs?: { ip: string }[];
    phase?: string;
  };
}

export interface ServicePort {
  name?: string;
  protocol?: string;
  appProtocol?: string;
  port: number;
  targetPort?: number | string;
}

export interface Service {
  apiVersion: 'v1';
  kind: 'Service';
  metadata: ObjectMeta;
  spec: {
    clusterIP?: string;
    clusterIPs?: string[];
    selector?: Record<string, string>;
    ports: ServicePort[];
  };
}

export interface Endpoint {
  addresses: string[];
  conditions?: { ready?: boolean };
  nodeName?: string;
  targetRef?: { kind: string; name: string; namespace?: string };
}

export interface EndpointSlice {
  apiVersion: 'discovery.k8s.io/v1';
  kind: 'EndpointSlice';
  metadata: ObjectMeta;
  addressType: 'IPv4' | 'IPv6' | 'FQDN';
  endpoints: Endpoint[];
  ports?: { name?: string; port?: number; protocol?: string; appProtocol?: string }[];
}

/**
 * Gateway API routes and Trellis policy kinds: carried from the sources to the store as they are (their
 * specs are compiled by the features that use them), so both sources already deliver them.
 */
export const EXTENSION_KINDS = {
  HTTPRoute: 'gateway.networking.k8s.io/v1',
  GRPCRoute: 'gateway.networking.k8s.io/v1',
  FaultInjection: 'traffic.trellis.dev/v1alpha1',
  RetryBudget: 'traffic.trellis.dev/v1alpha1',
  EgressNetwork: 'traffic.trellis.dev/v1alpha1',
  AuthorizationPolicy: 'security.trellis.dev/v1alpha1',
  PeerAuthentication: 'security.trellis.dev/v1alpha1',
} as const;

export type ExtensionKind = keyof typeof EXTENSION_KINDS;

export interface ExtensionObject {
  apiVersion: string;
  kind: ExtensionKind;
  metadata: ObjectMeta;
  spec: Record<string, unknown>;
  status?: Record<string, unknown>;
}

export type KubeObject = Namespace | Pod | Service | EndpointSlice | ExtensionObject;
export type Kind = KubeObject['kind'];

/** Stable key of an object: kind/namespace/name. */
export function objectKey(o: { kind: string; metadata: { name: string; namespace?: string } }): string {
  return `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`;
}

/** The label on EndpointSlices that names their Service. */
export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';
