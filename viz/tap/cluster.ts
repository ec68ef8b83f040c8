// Which agents `trellis tap --kubeconfig` reaches in a cluster, and how: every node's agent (a workload's callers can
// run on any node, and the caller's agent is the one that reports the route), found as the trellis-agent pods, dialled
// on their tap port at the pod's address (hostNetwork: the node's), over TLS checked against the mesh's trust bundle
// (the trellis-ca-root ConfigMap) and the agents' own SPIFFE ID, with the kubeconfig user's bearer token. The
// trellis-tap-discovery Role (manifests/rbac/tap.yaml) lets any authenticated user read both; the agents decide who
// may tap.
import { CoreV1Api, KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN, TAP_PORT } from '../../agent/constants.js';
import { spiffeId } from '../../agent/identity/spiffe.js';
import { VizError } from '../errors.js';
import type { TapAgent } from './locate.js';

/** The ConfigMap the identity service publishes the trust bundle in, and its key. */
export const BUNDLE_CONFIGMAP = 'trellis-ca-root';
const BUNDLE_KEY = 'root-cert.pem';
const AGENT_SELECTOR = 'app.kubernetes.io/name=trellis-agent';

/** The agent's --tap-addr port, as its container's arguments say (default TAP_PORT); undefined when it is off. */
function tapPort(pod: V1Pod): number | undefined {
  const args = pod.spec?.containers.find((c) => c.name === 'agent')?.args ?? [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const value = a.startsWith('--tap-addr=') ? a.slice('--tap-addr='.length) : a === '--tap-addr' ? args[i + 1] : undefined;
    if (value === undefined) continue;
    if (value === 'off') return undefined;
    const port = Number(/:(\d+)$/.exec(value)?.[1]);
    return port > 0 && port < 65536 ? port : TAP_PORT;
  }
  return TAP_PORT;
}

/** --trust-domain of the agent's container (default cluster.local): part of the SPIFFE ID its certificate carries. */
function trustDomain(pod: V1Pod): string {
  const args = pod.spec?.containers.find((c) => c.name === 'agent')?.args ?? [];
  const i = args.findIndex((a) => a === '--trust-domain' || a.startsWith('--trust-domain='));
  if (i < 0) return DEFAULT_TRUST_DOMAIN;
  return args[i]!.includes('=') ? args[i]!.split('=')[1]! : (args[i + 1] ?? DEFAULT_TRUST_DOMAIN);
}

function apiMessage(err: unknown): string {
  const e = err as { code?: number; body?: unknown; message?: string };
  const body = typeof e.body === 'string' ? e.body : JSON.stringify(e.body ?? '');
  return /"message":\s*"([^"]*)"/.exec(body)?.[1] ?? e.message ?? String(err);
}

/** The kubeconfig's user's bearer token (a token, or what its exec plugin or auth provider hands out). */
async function bearerToken(kc: KubeConfig, where: string): Promise<string> {
  const opts: { headers?: Record<string, string> } = { headers: {} };
  try {
    await kc.applyToHTTPSOptions(opts);
  } catch (err) {
    throw new VizError('ECONFIG', `${where}: cannot get the user's credentials: ${(err as Error).message}`);
  }
  const token = /^Bearer\s+(\S+)$/i.exec(opts.headers?.['Authorization'] ?? opts.headers?.['authorization'] ?? '')?.[1];
  if (!token) {
    throw new VizError(
      'ECONFIG',
      `${where}: user ${kc.getCurrentUser()?.name ?? '(none)'} has no bearer token (a client certificate cannot be shown to an agent): use a kubeconfig user with a token, e.g. one from \`kubectl create token\``,
    );
  }
  return token;
}

export interface ClusterAgents {
  agents: TapAgent[];
  /** The API server, for messages. */
  server: string;
}

/** The agents of every node, with the bundle and the token to reach them. Throws VizError saying what to fix. */
export async function clusterAgents(kubeconfig: string | undefined): Promise<ClusterAgents> {
  const kc = new KubeConfig();
  const where = kubeconfig ? `--kubeconfig ${kubeconfig}` : 'the kubeconfig ($KUBECONFIG or ~/.kube/config)';
  try {
    if (kubeconfig) kc.loadFromFile(kubeconfig);
    else kc.loadFromDefault();
  } catch (err) {
    throw new VizError('ECONFIG', `${where}: cannot load: ${(err as Error).message}`);
  }
  const server = kc.getCurrentCluster()?.server ?? '(no cluster)';
  const token = await bearerToken(kc, where);
  const core = kc.makeApiClient(CoreV1Api);
  let caPem: string | undefined;
  let pods: V1Pod[];
  try {
    const cm = await core.readNamespacedConfigMap({ namespace: AGENT_NAMESPACE, name: BUNDLE_CONFIGMAP });
    caPem = cm.data?.[BUNDLE_KEY];
    pods = (await core.listNamespacedPod({ namespace: AGENT_NAMESPACE, labelSelector: AGENT_SELECTOR })).items;
  } catch (err) {
    const code = (err as { code?: number }).code;
    const fix =
      code === 401 || code === 403
        ? ` (the Role trellis-tap-discovery in ${AGENT_NAMESPACE} lets users read the trust bundle and find the agents: is it installed and bound to you?)`
        : code === undefined
          ? ' (is the API server reachable?)'
          : '';
    throw new VizError('EUNAVAILABLE', `${server}: cannot find the agents in ${AGENT_NAMESPACE}: ${apiMessage(err)}${fix}`);
  }
  if (!caPem) throw new VizError('EUNAVAILABLE', `${server}: ConfigMap ${AGENT_NAMESPACE}/${BUNDLE_CONFIGMAP} has no ${BUNDLE_KEY}: is the identity service running?`);
  const agents: TapAgent[] = [];
  for (const pod of pods.filter((p) => p.status?.phase === 'Running' && p.status.podIP)) {
    const port = tapPort(pod);
    if (port === undefined) continue;
    const ip = pod.status!.podIP!;
    const address = `${ip.includes(':') ? `[${ip}]` : ip}:${port}`;
    const identity = spiffeId(trustDomain(pod), AGENT_NAMESPACE, pod.spec?.serviceAccountName ?? AGENT_SERVICE_ACCOUNT);
    agents.push({ node: pod.spec?.nodeName ?? pod.metadata?.name ?? ip, socket: address, remote: { address, caPem, identity, token } });
  }
  if (agents.length === 0) throw new VizError('EUNAVAILABLE', `${server}: no running trellis-agent pod serves a tap port in ${AGENT_NAMESPACE} (label ${AGENT_SELECTOR}; --tap-addr off?)`);
  return { agents: agents.sort((a, b) => a.node.localeCompare(b.node)), server };
}
