// Who may tap over the agent's TCP port (cluster mode): the caller's Kubernetes bearer token, reviewed by the API
// server (TokenReview), then a SubjectAccessReview for `watch` on `tap` in group tap.trellis.dev in every namespace
// the tap is confined to (match.ts tapNamespaces), so RBAC governs tap as Linkerd's. Decisions are cached briefly and
// in bounded number: a reader reconnecting, or `trellis tap` opening one stream per agent, costs the API server one
// review, and a flood of garbage tokens can neither grow the agent's memory nor load the API server (reviews are
// bounded per second). Refusals say why and what to do.
import { createHash } from 'node:crypto';
import type { Clock } from '../clock.js';
import { TrellisError } from '../errors.js';
import { RateBound } from './limiter.js';
import { tapNamespaces, type Match } from './match.js';

/** The resource RBAC governs tap by: `watch` on tap.tap.trellis.dev (manifests/rbac/tap.yaml). */
export const TAP_GROUP = 'tap.trellis.dev';
export const TAP_RESOURCE = 'tap';
export const TAP_VERB = 'watch';
/** The ClusterRole users are bound to. */
export const TAP_CLUSTER_ROLE = 'trellis-tap';

/** A user as the API server authenticated them (TokenReview status.user): what a SubjectAccessReview asks about. */
export interface TapUser {
  readonly username: string;
  readonly uid?: string | undefined;
  readonly groups: readonly string[];
  readonly extra: Readonly<Record<string, readonly string[]>>;
}

export type TokenVerdict = { readonly authenticated: true; readonly user: TapUser } | { readonly authenticated: false; readonly error?: string | undefined };

export interface AccessVerdict {
  readonly allowed: boolean;
  /** status.reason / status.evaluationError: what the authorizer said. */
  readonly reason?: string | undefined;
}

/**
 * What the authorizer asks of the API server; kube-review.ts implements it with client-node. Both throw TapApiError
 * when the API server cannot answer.
 */
export interface TapReviewer {
  authenticate(token: string): Promise<TokenVerdict>;
  /** May `user` watch tap in `namespace` (undefined: in every namespace, a cluster-wide grant)? */
  mayWatch(user: TapUser, namespace: string | undefined): Promise<AccessVerdict>;
}

/** A failed call to the API server: EUNAVAILABLE (retry), or EINTERNAL (the agent's own RBAC or config is wrong). */
export class TapApiError extends TrellisError<'EUNAVAILABLE' | 'EINTERNAL'> {
  constructor(code: 'EUNAVAILABLE' | 'EINTERNAL', message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'TapApiError';
  }
}

/** Why a caller may not tap; server.ts answers UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE or INTERNAL. */
export interface TapRefusal {
  readonly code: 'EUNAUTHENTICATED' | 'EPERMISSION' | 'EUNAVAILABLE' | 'EINTERNAL';
  readonly message: string;
}

export interface TapAuthorizerInputs {
  reviewer: TapReviewer;
  clock: Pick<Clock, 'now'>;
  /** How long a review's answer is reused (default 10 s). */
  ttlMs?: number;
  /** Answers kept at most, per kind (default 512); the oldest go first. */
  maxEntries?: number;
  /**
   * Reviews asked of the API server per second at most (default 20, as much burst): anyone who reaches the port can
   * make the agent ask one per token it has not seen, so a flood of made-up tokens is refused here, not there.
   */
  reviewsPerSecond?: number;
}

export const DEFAULT_DECISION_TTL_MS = 10_000;
export const DEFAULT_MAX_DECISIONS = 512;
export const DEFAULT_REVIEWS_PER_SECOND = 20;

/** A bounded map whose entries expire: insertion order is age order, so the oldest is the first key. */
class DecisionCache<T> {
  private readonly entries = new Map<string, { value: T; expires: number }>();

  constructor(
    private readonly ttlMs: number,
    private readonly max: number,
    private readonly now: () => number,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  get(key: string): T | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    if (e.expires <= this.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return e.value;
  }

  set(key: string, value: T): void {
    this.entries.delete(key);
    while (this.entries.size >= this.max) this.entries.delete(this.entries.keys().next().value!);
    this.entries.set(key, { value, expires: this.now() + this.ttlMs });
  }
}

const BEARER = /^Bearer\s+(\S+)\s*$/i;

const SA_PREFIX = 'system:serviceaccount:';

/** How `kubectl create rolebinding` names the subject: a service account as ns:name, anyone else as a user. */
function subjectFlag(username: string): string {
  return username.startsWith(SA_PREFIX) ? `--serviceaccount=${username.slice(SA_PREFIX.length)}` : `--user=${username}`;
}

function where(namespace: string | undefined): string {
  return namespace === undefined ? 'all namespaces' : `namespace ${namespace}`;
}

export class TapAuthorizer {
  private readonly tokens: DecisionCache<TokenVerdict>;
  private readonly access: DecisionCache<AccessVerdict>;
  private readonly reviews: RateBound;

  constructor(private readonly inputs: TapAuthorizerInputs) {
    const ttl = inputs.ttlMs ?? DEFAULT_DECISION_TTL_MS;
    const max = inputs.maxEntries ?? DEFAULT_MAX_DECISIONS;
    const now = () => inputs.clock.now();
    this.tokens = new DecisionCache(ttl, max, now);
    this.access = new DecisionCache(ttl, max, now);
    this.reviews = new RateBound(inputs.reviewsPerSecond ?? DEFAULT_REVIEWS_PER_SECOND, now);
  }

  /** Answers held now (tokens, access decisions): what the bound caps. */
  get cached(): { tokens: number; access: number } {
    return { tokens: this.tokens.size, access: this.access.size };
  }

  /**
   * Undefined when the caller (the `authorization` metadata's bearer token) may open a tap with this match tree; a
   * refusal saying why otherwise. The tree is checked (compileMatch) before this is asked.
   */
  async authorize(authorization: string | undefined, match: Match | undefined): Promise<TapRefusal | undefined> {
    if (!authorization) {
      return { code: 'EUNAUTHENTICATED', message: 'no bearer token: tap over the network needs the caller\'s Kubernetes token in "authorization: Bearer <token>" metadata (`trellis tap --kubeconfig` sends the kubeconfig user\'s)' };
    }
    const token = BEARER.exec(authorization)?.[1];
    if (!token) return { code: 'EUNAUTHENTICATED', message: 'the authorization metadata is not "Bearer <token>"' };
    let verdict: TokenVerdict;
    let namespaces: string[] | undefined;
    try {
      verdict = await this.review(token);
      if (!verdict.authenticated) {
        const apiSays = verdict.error ? ` (API server: ${verdict.error})` : '';
        return { code: 'EUNAUTHENTICATED', message: `the token is not valid${apiSays}: log in again, or check the kubeconfig's user` };
      }
      namespaces = tapNamespaces(match);
      for (const ns of namespaces ?? [undefined]) {
        const decision = await this.mayWatch(verdict.user, ns);
        if (!decision.allowed) return this.denied(verdict.user.username, ns, decision.reason);
      }
    } catch (err) {
      if (!(err instanceof TapApiError)) throw err;
      return { code: err.code, message: err.code === 'EUNAVAILABLE' ? `cannot check the caller: ${err.message}; retry` : `cannot check the caller: ${err.message}` };
    }
    return undefined;
  }

  private async review(token: string): Promise<TokenVerdict> {
    // Only a digest of the token is held.
    const key = createHash('sha256').update(token).digest('base64url');
    const held = this.tokens.get(key);
    if (held) return held;
    this.spend();
    const verdict = await this.inputs.reviewer.authenticate(token);
    this.tokens.set(key, verdict);
    return verdict;
  }

  private async mayWatch(user: TapUser, namespace: string | undefined): Promise<AccessVerdict> {
    const key = JSON.stringify([user.username, user.uid ?? '', [...user.groups].sort(), user.extra, namespace ?? null]);
    const held = this.access.get(key);
    if (held) return held;
    this.spend();
    const verdict = await this.inputs.reviewer.mayWatch(user, namespace);
    this.access.set(key, verdict);
    return verdict;
  }

  /** One review's worth of the API server's time, or a refusal to retry later. */
  private spend(): void {
    if (!this.reviews.take()) throw new TapApiError('EUNAVAILABLE', `this agent asks the API server at most ${this.inputs.reviewsPerSecond ?? DEFAULT_REVIEWS_PER_SECOND} reviews a second, and more callers are waiting`);
  }

  private denied(username: string, namespace: string | undefined, reason: string | undefined): TapRefusal {
    const apiSays = reason ? ` (API server: ${reason})` : '';
    const fix =
      namespace === undefined
        ? `a tap that names no namespace needs the ClusterRole ${TAP_CLUSTER_ROLE} bound cluster-wide (kubectl create clusterrolebinding NAME --clusterrole=${TAP_CLUSTER_ROLE} ${subjectFlag(username)}); or tap one workload (NS/NAME)`
        : `bind the ClusterRole ${TAP_CLUSTER_ROLE} to them there: kubectl create rolebinding NAME -n ${namespace} --clusterrole=${TAP_CLUSTER_ROLE} ${subjectFlag(username)}`;
    return { code: 'EPERMISSION', message: `user ${username} may not ${TAP_VERB} ${TAP_RESOURCE}.${TAP_GROUP} in ${where(namespace)}${apiSays}: ${fix}` };
  }
}
