// What the identity service asks of the Kubernetes API: token reviews, the pods on a node, the CA Secret
// and the trust-bundle ConfigMap. The service holds this narrow interface; client-node implements it.

import {
  ApiException,
  AuthenticationV1Api,
  CoreV1Api,
  type ConfigurationOptions,
  type KubeConfig,
  Observable,
  type ObservableMiddleware,
  type V1ConfigMap,
  type V1Pod,
} from '@kubernetes/client-node';
import { TrellisError, causeChain } from '../errors.js';

/** The outcome of a TokenReview; `extra` holds status.user.extra (bound pod and node of projected tokens). */
export interface TokenReview {
  authenticated: boolean;
  /** status.error: why the API server did not authenticate the token. */
  error?: string;
  username?: string;
  /** status.audiences: the audiences the token was accepted for. */
  audiences?: string[];
  extra: Record<string, string[]>;
}

export interface TokenReviewer {
  /** Asks the API server whether `token` is valid for `audience`. Throws TrellisError on API failures. */
  review(token: string, audience: string): Promise<TokenReview>;
}

export interface PodSummary {
  namespace: string;
  name: string;
  uid: string;
  nodeName?: string;
  serviceAccount: string;
  phase?: string;
}

export interface PodLookup {
  /** One pod, or undefined if it does not exist. */
  getPod(namespace: string, name: string): Promise<PodSummary | undefined>;
  /** The pods of `namespace` scheduled on `node` (fieldSelector spec.nodeName). */
  podsOnNode(namespace: string, node: string): Promise<PodSummary[]>;
}

export interface CaStore {
  /** A Secret's data, base64-decoded, or undefined if it does not exist. */
  readSecret(namespace: string, name: string): Promise<Record<string, string> | undefined>;
  /** Creates the ConfigMap or sets `data`'s keys in it, leaving other keys alone. */
  publishConfigMap(namespace: string, name: string, data: Record<string, string>): Promise<'created' | 'updated' | 'unchanged'>;
}

export interface IdentityCluster extends TokenReviewer, PodLookup, CaStore {}

/**
 * Codes of the TrellisErrors thrown here: the service turns EAPIUNAVAILABLE into gRPC UNAVAILABLE and
 * the others into INTERNAL, since they mean the service itself is misconfigured.
 */
export const API_UNAVAILABLE = 'EAPIUNAVAILABLE';
export const API_FORBIDDEN = 'EAPIFORBIDDEN';
export const API_ERROR = 'EAPI';

const DEFAULT_TIMEOUT_MS = 5_000;
const PUBLISH_ATTEMPTS = 3;

function bodyMessage(err: ApiException<unknown>): string {
  let body: unknown = err.body;
  if (typeof body === 'string') {
    const text = body;
    try {
      body = JSON.parse(text);
    } catch {
      return text.slice(0, 200);
    }
  }
  const msg = (body as { message?: unknown } | undefined)?.message;
  return typeof msg === 'string' ? msg : `HTTP ${err.code}`;
}

/** Turns a client-node failure into a TrellisError saying what was asked and what to check. */
function apiFailure(what: string, rbac: string, err: unknown): TrellisError {
  if (err instanceof ApiException) {
    const status = err.code;
    const detail = bodyMessage(err);
    if (status === 401 || status === 403) {
      return new TrellisError(API_FORBIDDEN, `${what}: the API server answered ${status} (${detail}); the identity service's ClusterRole must allow ${rbac}`, { cause: err });
    }
    if (status === 429 || status >= 500) {
      return new TrellisError(API_UNAVAILABLE, `${what}: the API server answered ${status} (${detail}); retry later`, { cause: err });
    }
    return new TrellisError(API_ERROR, `${what}: the API server answered ${status} (${detail})`, { cause: err });
  }
  return new TrellisError(API_UNAVAILABLE, `${what}: the API server is unreachable (${causeChain(err)}); retry later`, { cause: err });
}

function notFound(err: unknown): boolean {
  return err instanceof ApiException && err.code === 404;
}

function conflict(err: unknown): boolean {
  return err instanceof ApiException && err.code === 409;
}

function podSummary(pod: V1Pod): PodSummary {
  return {
    namespace: pod.metadata?.namespace ?? '',
    name: pod.metadata?.name ?? '',
    uid: pod.metadata?.uid ?? '',
    nodeName: pod.spec?.nodeName || undefined,
    // An unset service account is the namespace's "default", as admission would have set it.
    serviceAccount: pod.spec?.serviceAccountName || pod.spec?.serviceAccount || 'default',
    phase: pod.status?.phase,
  };
}

/** The client-node implementation; every call is bounded by `timeoutMs` (default 5 s). */
export class KubeIdentityCluster implements IdentityCluster {
  private readonly auth: AuthenticationV1Api;
  private readonly core: CoreV1Api;
  private readonly timeoutMs: number;

  constructor(kubeConfig: KubeConfig, opts: { timeoutMs?: number } = {}) {
    this.auth = kubeConfig.makeApiClient(AuthenticationV1Api);
    this.core = kubeConfig.makeApiClient(CoreV1Api);
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  async review(token: string, audience: string): Promise<TokenReview> {
    try {
      const res = await this.auth.createTokenReview(
        { body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: [audience] } } },
        this.options(),
      );
      const status = res.status ?? {};
      return {
        authenticated: status.authenticated === true,
        error: status.error || undefined,
        username: status.user?.username,
        audiences: status.audiences,
        extra: status.user?.extra ?? {},
      };
    } catch (err) {
      throw apiFailure('reviewing the caller token', 'create tokenreviews.authentication.k8s.io', err);
    }
  }

  async getPod(namespace: string, name: string): Promise<PodSummary | undefined> {
    try {
      return podSummary(await this.core.readNamespacedPod({ namespace, name }, this.options()));
    } catch (err) {
      if (notFound(err)) return undefined;
      throw apiFailure(`reading pod ${namespace}/${name}`, 'get pods', err);
    }
  }

  async podsOnNode(namespace: string, node: string): Promise<PodSummary[]> {
    try {
      const list = await this.core.listNamespacedPod({ namespace, fieldSelector: `spec.nodeName=${node}` }, this.options());
      return list.items.map(podSummary);
    } catch (err) {
      throw apiFailure(`listing the pods of namespace ${namespace} on node ${node}`, 'list pods', err);
    }
  }

  async readSecret(namespace: string, name: string): Promise<Record<string, string> | undefined> {
    let data: Record<string, string>;
    try {
      data = (await this.core.readNamespacedSecret({ namespace, name }, this.options())).data ?? {};
    } catch (err) {
      if (notFound(err)) return undefined;
      throw apiFailure(`reading Secret ${namespace}/${name}`, `get secrets in ${namespace}`, err);
    }
    return Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));
  }

  async publishConfigMap(namespace: string, name: string, data: Record<string, string>): Promise<'created' | 'updated' | 'unchanged'> {
    const what = `publishing ConfigMap ${namespace}/${name}`;
    const rbac = `get, create and update configmaps in ${namespace}`;
    // Another replica may write between our read and write: a 409 means read again.
    for (let attempt = 0; attempt < PUBLISH_ATTEMPTS; attempt++) {
      let existing: V1ConfigMap | undefined;
      try {
        existing = await this.core.readNamespacedConfigMap({ namespace, name }, this.options());
      } catch (err) {
        if (!notFound(err)) throw apiFailure(what, rbac, err);
      }
      try {
        if (!existing) {
          await this.core.createNamespacedConfigMap(
            { namespace, body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace }, data } },
            this.options(),
          );
          return 'created';
        }
        const current = existing.data ?? {};
        if (Object.entries(data).every(([k, v]) => current[k] === v)) return 'unchanged';
        await this.core.replaceNamespacedConfigMap({ namespace, name, body: { ...existing, data: { ...current, ...data } } }, this.options());
        return 'updated';
      } catch (err) {
        if (!conflict(err)) throw apiFailure(what, rbac, err);
      }
    }
    throw new TrellisError(API_ERROR, `${what}: it kept changing under us (${PUBLISH_ATTEMPTS} conflicts in a row); another writer is fighting over it`);
  }

  /** Per-call options: abort the request after timeoutMs, so a hung API server cannot hold a caller. */
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
