// The identity service's admission check: who is calling (TokenReview), which node they run on (the
// token's bound pod), and whether the identity they ask for belongs to a pod scheduled on that node.

import { TrellisError } from '../errors.js';
import { API_UNAVAILABLE, type IdentityCluster, type TokenReview } from './cluster.js';
import type { RefusalCode } from '../identity/proto.js';
import { parseSpiffeId } from '../identity/spiffe.js';

/** An expected refusal; the service answers it with REFUSAL_STATUS[code] and its message. */
export class Refusal extends TrellisError {
  declare readonly code: RefusalCode;
  constructor(code: RefusalCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'Refusal';
  }
}

export interface AuthorizerInputs {
  cluster: IdentityCluster;
  trustDomain: string;
  /** The audience agent tokens must carry. */
  audience: string;
  /** The only username allowed to ask, e.g. system:serviceaccount:trellis-system:trellis-agent. */
  agentServiceAccount: string;
  clock: { now(): number };
}

/** Who asked and from where; logged with every decision. */
export interface Caller {
  username?: string;
  node?: string;
}

export interface Authorized {
  username: string;
  node: string;
  namespace: string;
  serviceAccount: string;
}

const NODE_NAME = 'authentication.kubernetes.io/node-name';
const POD_NAME = 'authentication.kubernetes.io/pod-name';
const POD_UID = 'authentication.kubernetes.io/pod-uid';
const SA_PREFIX = 'system:serviceaccount:';
// Finished pods keep their spec.nodeName but run nothing: they must not vouch for an identity.
const FINISHED_PHASES = new Set(['Succeeded', 'Failed']);

/** Turns a failed Kubernetes call into the refusal the agent sees; unreachable means "try again". */
function apiRefusal(err: unknown): Refusal {
  const e = err as { code?: unknown; message?: unknown };
  const msg = typeof e?.message === 'string' ? e.message : String(err);
  if (e?.code === API_UNAVAILABLE) return new Refusal('EUNAVAILABLE', msg, { cause: err });
  return new Refusal('EINTERNAL', `the identity service cannot check this request: ${msg}`, { cause: err });
}

async function api<T>(call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (err) {
    throw apiRefusal(err);
  }
}

/**
 * What an unverified JWT says about itself. Used only to explain a refusal the API server already
 * made; never to decide anything.
 */
function jwtClaims(token: string): { aud?: string[]; exp?: number } {
  const parts = token.split('.');
  if (parts.length !== 3) return {};
  try {
    const claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as { aud?: unknown; exp?: unknown };
    const aud = typeof claims.aud === 'string' ? [claims.aud] : Array.isArray(claims.aud) ? claims.aud.filter((a) => typeof a === 'string') : undefined;
    return { aud, exp: typeof claims.exp === 'number' ? claims.exp : undefined };
  } catch {
    return {};
  }
}

function first(values: string[] | undefined): string | undefined {
  return values?.find((v) => v.length > 0);
}

export class Authorizer {
  private readonly inputs: AuthorizerInputs;

  constructor(inputs: AuthorizerInputs) {
    this.inputs = inputs;
  }

  /**
   * Checks the bearer token and that `identity` runs on the caller's node; `caller` is filled in as
   * facts are learnt, so a refusal can be logged with what was known. Throws a Refusal.
   */
  async authorize(token: string | undefined, identity: string, caller: Caller): Promise<Authorized> {
    const { audience, agentServiceAccount, trustDomain } = this.inputs;
    if (!token) {
      throw new Refusal(
        'EUNAUTHENTICATED',
        `no service-account token: send the agent's projected token (audience ${audience}) as "authorization: Bearer <token>" metadata`,
      );
    }
    const review = await api(this.inputs.cluster.review(token, audience));
    this.checkAuthenticated(token, review);
    const username = review.username ?? '';
    caller.username = username;
    if (username !== agentServiceAccount) {
      throw new Refusal(
        'EPERMISSION',
        `caller ${username || '(no username)'} is not the agent service account ${agentServiceAccount}; only Trellis agents may request workload certificates`,
      );
    }

    const id = parseSpiffeId(identity);
    if (!id) {
      throw new Refusal('EINVALID', `"${identity}" is not a workload SPIFFE ID (spiffe://<trust domain>/ns/<namespace>/sa/<service account>)`);
    }
    if (id.trustDomain !== trustDomain) {
      throw new Refusal('EINVALID', `${identity} is in trust domain ${id.trustDomain}, but this service signs only for ${trustDomain}; check the agent's --trust-domain`);
    }

    const node = await this.callerNode(username, review);
    caller.node = node;
    const pods = (await api(this.inputs.cluster.podsOnNode(id.namespace, node))).filter((p) => p.serviceAccount === id.serviceAccount);
    const running = pods.filter((p) => !FINISHED_PHASES.has(p.phase ?? ''));
    if (running.length === 0) {
      const finished = pods.length > 0 ? ` (${pods.map((p) => p.name).join(', ')} finished)` : '';
      throw new Refusal(
        'EPERMISSION',
        `no pod with service account ${id.namespace}/${id.serviceAccount} is scheduled on node ${node}${finished}; an agent may only ask for identities of pods on its own node`,
      );
    }
    return { username, node, namespace: id.namespace, serviceAccount: id.serviceAccount };
  }

  private checkAuthenticated(token: string, review: TokenReview): void {
    const { audience } = this.inputs;
    const claims = jwtClaims(token);
    const apiSays = review.error ? ` (API server: ${review.error})` : '';
    const expected = `expected ${audience}: mount a projected service-account token with audience ${audience}`;
    const audienceRefusal = (aud: string[] | undefined) =>
      new Refusal('EUNAUTHENTICATED', `token audience ${aud ? JSON.stringify(aud) : 'not accepted'}, ${expected}${apiSays}`);

    if (review.authenticated) {
      // The API server returns the audiences it accepted the token for; one without ours is a bug there.
      if (review.audiences && !review.audiences.includes(audience)) throw audienceRefusal(review.audiences);
      return;
    }
    const nowSec = this.inputs.clock.now() / 1000;
    if ((claims.exp !== undefined && claims.exp <= nowSec) || /expired/i.test(review.error ?? '')) {
      const at = claims.exp !== undefined ? ` at ${new Date(claims.exp * 1000).toISOString()}` : '';
      throw new Refusal(
        'EUNAUTHENTICATED',
        `token expired${at}${apiSays}; the kubelet rotates projected tokens, so the agent must read its token file again for every request`,
      );
    }
    if ((claims.aud && !claims.aud.includes(audience)) || /audience/i.test(review.error ?? '')) {
      throw audienceRefusal(claims.aud);
    }
    throw new Refusal(
      'EUNAUTHENTICATED',
      `invalid service-account token${apiSays || ' (not authenticated)'}; send the agent's projected token with audience ${audience}`,
    );
  }

  /**
   * The node the token was issued on. Recent API servers put it in the token; otherwise it is the node
   * of the pod the token is bound to, provided that pod is still the same one (same uid).
   */
  private async callerNode(username: string, review: TokenReview): Promise<string> {
    const node = first(review.extra[NODE_NAME]);
    if (node) return node;
    const podName = first(review.extra[POD_NAME]);
    const podUid = first(review.extra[POD_UID]);
    if (!podName || !podUid) {
      throw new Refusal(
        'EPERMISSION',
        `the token of ${username} is not bound to a pod, so its node is unknown; the agent must use a projected service-account token (a serviceAccountToken volume), not a long-lived Secret token`,
      );
    }
    const namespace = username.startsWith(SA_PREFIX) ? username.slice(SA_PREFIX.length).split(':')[0]! : '';
    const pod = await api(this.inputs.cluster.getPod(namespace, podName));
    if (!pod) {
      throw new Refusal('EPERMISSION', `the token is bound to pod ${namespace}/${podName}, which no longer exists; a new agent pod gets a new token`);
    }
    if (pod.uid !== podUid) {
      throw new Refusal(
        'EPERMISSION',
        `the token is bound to pod ${namespace}/${podName} with uid ${podUid}, but that pod now has uid ${pod.uid}; the token belongs to a deleted pod`,
      );
    }
    if (!pod.nodeName) throw new Refusal('EPERMISSION', `the token's pod ${namespace}/${podName} is not scheduled on any node`);
    return pod.nodeName;
  }
}
