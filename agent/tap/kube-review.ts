// The API server's side of tap authorization (authorize.ts): TokenReview and SubjectAccessReview through client-node,
// as the agent's service account (manifests/rbac/agent.yaml grants create on both). Loaded in cluster mode only.
import {
  ApiException,
  AuthenticationV1Api,
  AuthorizationV1Api,
  KubeConfig,
  Observable,
  type ConfigurationOptions,
  type ObservableMiddleware,
} from '@kubernetes/client-node';
import { causeChain } from '../errors.js';
import { TAP_GROUP, TAP_RESOURCE, TAP_VERB, TapApiError, type AccessVerdict, type TapReviewer, type TapUser, type TokenVerdict } from './authorize.js';

const DEFAULT_TIMEOUT_MS = 5_000;

/** A failed review as the caller and the operator can act on it. */
function apiFailure(what: string, rbac: string, err: unknown): TapApiError {
  if (err instanceof ApiException) {
    const body = typeof err.body === 'string' ? err.body : JSON.stringify(err.body ?? '');
    const detail = (/"message":\s*"([^"]*)"/.exec(body)?.[1] ?? body).slice(0, 200) || `HTTP ${err.code}`;
    if (err.code === 401 || err.code === 403) {
      return new TapApiError('EINTERNAL', `${what}: the API server answered ${err.code} (${detail}); the agent's ClusterRole (trellis-agent) must allow ${rbac}`, { cause: err });
    }
    return new TapApiError(err.code === 429 || err.code >= 500 ? 'EUNAVAILABLE' : 'EINTERNAL', `${what}: the API server answered ${err.code} (${detail})`, { cause: err });
  }
  return new TapApiError('EUNAVAILABLE', `${what}: the API server is unreachable (${causeChain(err)})`, { cause: err });
}

export class KubeTapReviewer implements TapReviewer {
  private readonly authn: AuthenticationV1Api;
  private readonly authz: AuthorizationV1Api;

  /** `kubeconfig`: the agent's (--kubeconfig); absent: in-cluster, as the kube source. */
  constructor(kubeconfig: string | undefined, private readonly timeoutMs = DEFAULT_TIMEOUT_MS) {
    const kc = new KubeConfig();
    if (kubeconfig) kc.loadFromFile(kubeconfig);
    else kc.loadFromCluster();
    this.authn = kc.makeApiClient(AuthenticationV1Api);
    this.authz = kc.makeApiClient(AuthorizationV1Api);
  }

  async authenticate(token: string): Promise<TokenVerdict> {
    try {
      // No audiences: the token must be one the API server itself accepts, as a kubeconfig's is.
      const res = await this.authn.createTokenReview({ body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token } } }, this.options());
      const status = res.status ?? {};
      if (status.authenticated !== true || !status.user?.username) return { authenticated: false, error: status.error || undefined };
      const u = status.user;
      return { authenticated: true, user: { username: u.username!, uid: u.uid, groups: u.groups ?? [], extra: u.extra ?? {} } };
    } catch (err) {
      throw apiFailure('reviewing the caller\'s token', 'create tokenreviews.authentication.k8s.io', err);
    }
  }

  async mayWatch(user: TapUser, namespace: string | undefined): Promise<AccessVerdict> {
    try {
      const res = await this.authz.createSubjectAccessReview(
        {
          body: {
            apiVersion: 'authorization.k8s.io/v1',
            kind: 'SubjectAccessReview',
            spec: {
              user: user.username,
              ...(user.uid && { uid: user.uid }),
              groups: [...user.groups],
              extra: Object.fromEntries(Object.entries(user.extra).map(([k, v]) => [k, [...v]])),
              resourceAttributes: { group: TAP_GROUP, resource: TAP_RESOURCE, verb: TAP_VERB, ...(namespace !== undefined && { namespace }) },
            },
          },
        },
        this.options(),
      );
      const status = res.status;
      return { allowed: status?.allowed === true && status.denied !== true, reason: status?.reason || status?.evaluationError || undefined };
    } catch (err) {
      throw apiFailure('asking whether the caller may tap', 'create subjectaccessreviews.authorization.k8s.io', err);
    }
  }

  /** Per-call options: abort after timeoutMs, so a hung API server cannot hold a tap's opening. */
  private options(): ConfigurationOptions<ObservableMiddleware> {
    const timeout: ObservableMiddleware = {
      pre: (ctx) => {
        ctx.setSignal(AbortSignal.timeout(this.timeoutMs));
        return new Observable(Promise.resolve(ctx));
      },
      post: (ctx) => new Observable(Promise.resolve(ctx)),
    };
    return { middleware: [timeout], middlewareMergeStrategy: 'append' };
  }
}
