// The harness's own client of the lab's API server: JSON over HTTPS on connections opened inside the control
// plane's netns (so it needs no address or port on the host), kept alive and bounded in number. The agents
// and the identity service use client-node with a kubeconfig instead; this is for the lab, the bench and tests.
import https from 'node:https';
import type net from 'node:net';
import tls from 'node:tls';
import { connectInNetns } from '../../agent/native/index.js';
import { LabError } from '../errors.js';

/** Where a kind lives in the API. Only the kinds the harness writes or reads are listed. */
interface Resource {
  plural: string;
  namespaced: boolean;
}

const RESOURCES: Record<string, Resource> = {
  'v1/Namespace': { plural: 'namespaces', namespaced: false },
  'v1/Node': { plural: 'nodes', namespaced: false },
  'v1/Pod': { plural: 'pods', namespaced: true },
  'v1/Service': { plural: 'services', namespaced: true },
  'v1/ServiceAccount': { plural: 'serviceaccounts', namespaced: true },
  'v1/Secret': { plural: 'secrets', namespaced: true },
  'v1/ConfigMap': { plural: 'configmaps', namespaced: true },
  'discovery.k8s.io/v1/EndpointSlice': { plural: 'endpointslices', namespaced: true },
  'coordination.k8s.io/v1/Lease': { plural: 'leases', namespaced: true },
  'apiextensions.k8s.io/v1/CustomResourceDefinition': { plural: 'customresourcedefinitions', namespaced: false },
  'rbac.authorization.k8s.io/v1/ClusterRole': { plural: 'clusterroles', namespaced: false },
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': { plural: 'clusterrolebindings', namespaced: false },
  'rbac.authorization.k8s.io/v1/Role': { plural: 'roles', namespaced: true },
  'rbac.authorization.k8s.io/v1/RoleBinding': { plural: 'rolebindings', namespaced: true },
  'gateway.networking.k8s.io/v1/HTTPRoute': { plural: 'httproutes', namespaced: true },
  'gateway.networking.k8s.io/v1/GRPCRoute': { plural: 'grpcroutes', namespaced: true },
  'traffic.trellis.dev/v1alpha1/FaultInjection': { plural: 'faultinjections', namespaced: true },
  'traffic.trellis.dev/v1alpha1/RetryBudget': { plural: 'retrybudgets', namespaced: true },
  'traffic.trellis.dev/v1alpha1/EgressNetwork': { plural: 'egressnetworks', namespaced: true },
  'security.trellis.dev/v1alpha1/AuthorizationPolicy': { plural: 'authorizationpolicies', namespaced: true },
  'security.trellis.dev/v1alpha1/PeerAuthentication': { plural: 'peerauthentications', namespaced: true },
};

export interface ObjectRef {
  apiVersion: string;
  kind: string;
  namespace?: string;
  name?: string;
}

export interface ApiObject {
  apiVersion?: string;
  kind?: string;
  metadata: { name?: string; namespace?: string; uid?: string; resourceVersion?: string; [k: string]: unknown };
  [k: string]: unknown;
}

/** A request the API server answered with an error status: `status` and `reason` as it sent them. */
export class KubeApiError extends LabError {
  readonly status: number;
  readonly reason: string;
  readonly details: unknown;
  constructor(status: number, reason: string, message: string, details?: unknown) {
    super('EKUBE', message);
    this.status = status;
    this.reason = reason;
    this.details = details;
  }
}

export interface Credentials {
  caPem: string;
  /** A client certificate (the admin's), or a bearer token. */
  certPem?: string;
  keyPem?: string;
  token?: string;
}

export interface KubeClientOptions {
  /** The netns the API server listens in, and its address and port there. */
  netnsPath: string;
  host: string;
  port: number;
  credentials: Credentials;
  /** Parallel connections (default 16). */
  maxSockets?: number;
  /** Per request, default 30 s. */
  timeoutMs?: number;
}

export type PatchType = 'merge' | 'strategic' | 'json' | 'apply';

const CONTENT_TYPES: Record<PatchType, string> = {
  merge: 'application/merge-patch+json',
  strategic: 'application/strategic-merge-patch+json',
  json: 'application/json-patch+json',
  apply: 'application/apply-patch+yaml',
};

/** The field manager of everything the lab writes (server-side apply, patches). */
export const LAB_FIELD_MANAGER = 'trellis-lab';

/** https.Agent whose connections are made inside a netns: the lab's API server is not reachable from the host. */
class NetnsAgent extends https.Agent {
  constructor(
    private readonly netnsPath: string,
    opts: https.AgentOptions,
  ) {
    super(opts);
  }

  override createConnection(options: tls.ConnectionOptions & { host?: string; port?: number }): net.Socket {
    const socket = connectInNetns(this.netnsPath, { host: options.host ?? '127.0.0.1', port: options.port ?? 443, timeoutMs: 5_000 });
    return tls.connect({ ...options, socket });
  }
}

export function resourcePath(ref: ObjectRef, subresource?: string): string {
  const r = RESOURCES[`${ref.apiVersion}/${ref.kind}`];
  if (!r) throw new LabError('EINVAL', `the lab's API client does not know ${ref.apiVersion} ${ref.kind} (see RESOURCES in lab/controlplane/client.ts)`);
  const base = ref.apiVersion.includes('/') ? `/apis/${ref.apiVersion}` : `/api/${ref.apiVersion}`;
  const ns = r.namespaced && ref.namespace !== undefined ? `/namespaces/${ref.namespace}` : '';
  const name = ref.name !== undefined ? `/${encodeURIComponent(ref.name)}` : '';
  return `${base}${ns}/${r.plural}${name}${subresource ? `/${subresource}` : ''}`;
}

function refOf(o: ApiObject): ObjectRef {
  return { apiVersion: String(o.apiVersion), kind: String(o.kind), namespace: o.metadata.namespace, name: o.metadata.name };
}

export class KubeClient {
  private readonly agent: NetnsAgent;
  private readonly opts: KubeClientOptions;

  constructor(opts: KubeClientOptions) {
    this.opts = opts;
    const c = opts.credentials;
    this.agent = new NetnsAgent(opts.netnsPath, {
      keepAlive: true,
      maxSockets: opts.maxSockets ?? 16,
      ca: c.caPem,
      ...(c.certPem !== undefined && { cert: c.certPem, key: c.keyPem }),
    });
  }

  /** One API call; the parsed JSON answer, or KubeApiError with the server's status. */
  request<T = ApiObject>(method: string, path: string, opts: { body?: unknown; contentType?: string; query?: Record<string, string | number | boolean | undefined> } = {}): Promise<T> {
    const query = Object.entries(opts.query ?? {})
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
      .join('&');
    const fullPath = query ? `${path}?${query}` : path;
    const body = opts.body === undefined ? undefined : Buffer.from(typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body));
    const what = `${method} ${fullPath}`;
    const timeoutMs = this.opts.timeoutMs ?? 30_000;
    return new Promise<T>((resolve, reject) => {
      const req = https.request(
        {
          agent: this.agent,
          host: this.opts.host,
          port: this.opts.port,
          method,
          path: fullPath,
          headers: {
            accept: 'application/json',
            ...(this.opts.credentials.token !== undefined && { authorization: `Bearer ${this.opts.credentials.token}` }),
            ...(body && { 'content-type': opts.contentType ?? 'application/json', 'content-length': body.length }),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (d: Buffer) => chunks.push(d));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              parsed = undefined;
            }
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) {
              resolve(parsed as T);
              return;
            }
            const s = (parsed ?? {}) as { reason?: string; message?: string; details?: unknown };
            reject(new KubeApiError(status, s.reason ?? '', `${what}: ${status} ${s.reason ?? ''}: ${s.message ?? text.slice(0, 300)}`, s.details));
          });
        },
      );
      // The whole request is bounded (a socket idle timeout would also be reset by connectInNetns once connected).
      const timer = setTimeout(() => req.destroy(new LabError('ETIMEDOUT', `${what}: no answer from the API server in ${timeoutMs} ms`)), timeoutMs);
      req.on('close', () => clearTimeout(timer));
      req.on('error', (err: Error & { code?: string }) => {
        reject(err instanceof LabError ? err : new LabError('EKUBE', `${what}: ${err.message} (is the control plane up?)`, { cause: err }));
      });
      req.end(body);
    });
  }

  /** The object, or undefined when the server says 404. */
  async get<T extends ApiObject = ApiObject>(ref: ObjectRef, subresource?: string): Promise<T | undefined> {
    try {
      return await this.request<T>('GET', resourcePath(ref, subresource));
    } catch (err) {
      if (err instanceof KubeApiError && err.status === 404) return undefined;
      throw err;
    }
  }

  async list<T extends ApiObject = ApiObject>(
    ref: Omit<ObjectRef, 'name'>,
    opts: { labelSelector?: string; fieldSelector?: string; limit?: number } = {},
  ): Promise<{ metadata: { resourceVersion: string }; items: T[] }> {
    return this.request('GET', resourcePath(ref), { query: opts });
  }

  /** Creates the object. Unknown fields are an error (fieldValidation=Strict, as kubectl asks), not silently dropped. */
  create<T extends ApiObject>(o: T, query: Record<string, string> = {}): Promise<T> {
    return this.request<T>('POST', resourcePath({ ...refOf(o), name: undefined }), { body: o, query: { fieldValidation: 'Strict', ...query } });
  }

  /**
   * Server-side apply as the lab's field manager, forcing ownership (the lab is the only writer of what it applies).
   * Unknown fields are an error: left to the server's default, a field a CRD does not have (an experimental-channel
   * field on standard-channel Gateway API CRDs, say) would be dropped with a warning nobody reads.
   */
  apply<T extends ApiObject>(o: T, subresource?: string): Promise<T> {
    return this.request<T>('PATCH', resourcePath(refOf(o), subresource), {
      body: o,
      contentType: CONTENT_TYPES.apply,
      query: { fieldManager: LAB_FIELD_MANAGER, force: true, fieldValidation: 'Strict' },
    });
  }

  patch<T extends ApiObject = ApiObject>(ref: ObjectRef, patch: unknown, type: PatchType = 'merge', subresource?: string): Promise<T> {
    return this.request<T>('PATCH', resourcePath(ref, subresource), {
      body: patch,
      contentType: CONTENT_TYPES[type],
      query: { fieldManager: LAB_FIELD_MANAGER, ...(type === 'apply' && { force: true }) },
    });
  }

  /** Deletes; false when there was nothing to delete. */
  async delete(ref: ObjectRef, opts: { gracePeriodSeconds?: number } = {}): Promise<boolean> {
    try {
      await this.request('DELETE', resourcePath(ref), {
        ...(opts.gracePeriodSeconds !== undefined && { body: { kind: 'DeleteOptions', apiVersion: 'v1', gracePeriodSeconds: opts.gracePeriodSeconds } }),
      });
      return true;
    } catch (err) {
      if (err instanceof KubeApiError && err.status === 404) return false;
      throw err;
    }
  }

  /**
   * A service-account token from the TokenRequest API, as the kubelet asks for a projected token: for the given
   * audiences (default: the API server's own), bound to a pod when given one (the token then names the pod and
   * its node, and dies with the pod).
   */
  async createToken(
    namespace: string,
    serviceAccount: string,
    opts: { audiences?: string[]; expirationSeconds?: number; boundPod?: { name: string; uid: string } } = {},
  ): Promise<{ token: string; expirationTimestamp: string }> {
    const r = await this.request<{ status: { token: string; expirationTimestamp: string } }>(
      'POST',
      resourcePath({ apiVersion: 'v1', kind: 'ServiceAccount', namespace, name: serviceAccount }, 'token'),
      {
        body: {
          apiVersion: 'authentication.k8s.io/v1',
          kind: 'TokenRequest',
          spec: {
            ...(opts.audiences && { audiences: opts.audiences }),
            ...(opts.expirationSeconds !== undefined && { expirationSeconds: opts.expirationSeconds }),
            ...(opts.boundPod && { boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: opts.boundPod.name, uid: opts.boundPod.uid } }),
          },
        },
      },
    );
    return r.status;
  }

  close(): void {
    this.agent.destroy();
  }
}
