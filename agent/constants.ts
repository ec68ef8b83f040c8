// Well-known ports, marks and names shared by capture, proxy and the lab.

/** Outbound capture listener inside each meshed pod's netns. */
export const OUTBOUND_PORT = 15001;
/** Inbound plaintext listener (permissive mode) inside each meshed pod's netns. */
export const INBOUND_PLAINTEXT_PORT = 15006;
/** Inbound HBONE (HTTP/2 CONNECT over mTLS) listener inside each meshed pod's netns. */
export const HBONE_PORT = 15008;
/** Prometheus metrics, in the node's netns. */
export const METRICS_PORT = 15020;
/** Readiness (`/healthz/ready`), in the node's netns. */
export const HEALTH_PORT = 15021;
/** Cluster mode: the tap API over TLS, callers authorized by Kubernetes RBAC, in the node's netns. */
export const TAP_PORT = 15022;

/** SO_MARK carried by every socket the agent opens inside a pod; capture rules skip it. */
export const AGENT_MARK = 0x539;
/**
 * SO_MARK of the agent's connections to an app that leave from the caller's address (IP_TRANSPARENT); capture skips
 * them too, and the pod's rules remember them on their conntrack entry (capture/rules.ts).
 */
export const TRANSPARENT_MARK = 0x53a;
/** Packet mark of the app's replies on such a connection: policy routing hands them to the agent's socket. */
export const TRANSPARENT_REPLY_MARK = 0x53b;
/** Routing table (and rule priority) in each pod netns that delivers TRANSPARENT_REPLY_MARK packets locally. */
export const TRANSPARENT_ROUTE_TABLE = 15053;
/**
 * eBPF capture mode: routing table (and rule priority) in each pod netns where the pod's own address is local through
 * lo, for the agent's connections to the app bound to lo (capture/routing.ts).
 */
export const LOOPBACK_ROUTE_TABLE = 15054;

/** Pod or Namespace annotation that opts into the mesh (`enabled`) or, on a Pod, out (`disabled`). */
export const MESH_ANNOTATION = 'trellis.dev/mesh';
/** Pod annotation, local mode only: path of the pod's network namespace. */
export const NETNS_ANNOTATION = 'trellis.dev/netns';

export const DEFAULT_TRUST_DOMAIN = 'cluster.local';

/**
 * Where the agents run in a cluster (manifests/): their namespace and service account. The tap port serves the SVID of
 * this identity, and `trellis tap` accepts no other.
 */
export const AGENT_NAMESPACE = 'trellis-system';
export const AGENT_SERVICE_ACCOUNT = 'trellis-agent';
