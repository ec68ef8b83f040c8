// What the kube source keeps of an object (agent/sources/kube-slim.ts): everything validation and the state read,
// nothing of the bulk a real API server sends with every Pod.
import { describe, expect, it } from 'vitest';
import { slimObject } from '../../agent/sources/kube-slim.js';
import { validateObject } from '../../agent/model/validate.js';
import { toWorkload } from '../../agent/state/workload.js';
import type { Namespace, Pod } from '../../agent/model/objects.js';

/** A Pod as kube-apiserver sends it for a Deployment's replica. */
function apiPod(): Record<string, unknown> {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: 'web-7d9c6b5f4-x2x9k',
      namespace: 'shop',
      uid: '5f0c2f8e-1d5a-4a8e-9f7e-0d6b2b1c9a11',
      resourceVersion: '18273',
      labels: { app: 'web', 'pod-template-hash': '7d9c6b5f4' },
      annotations: { 'trellis.dev/mesh': 'enabled', 'kubectl.kubernetes.io/last-applied-configuration': '{"big":"copy"}' },
      ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'web-7d9c6b5f4', uid: 'r1', controller: true }],
      managedFields: [{ manager: 'kube-controller-manager', operation: 'Update', fieldsV1: { 'f:metadata': {} } }],
    },
    spec: {
      nodeName: 'node-a',
      serviceAccountName: 'web',
      hostNetwork: false,
      volumes: [{ name: 'kube-api-access', projected: { sources: [{ serviceAccountToken: { path: 'token' } }] } }],
      tolerations: [{ key: 'node.kubernetes.io/not-ready', operator: 'Exists', effect: 'NoExecute' }],
      containers: [
        {
          name: 'web',
          image: 'nginx:1.27',
          ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }],
          env: [{ name: 'A', value: 'b' }],
          resources: { requests: { cpu: '100m' } },
          volumeMounts: [{ name: 'kube-api-access', mountPath: '/var/run/secrets' }],
        },
      ],
    },
    status: {
      phase: 'Running',
      podIP: '10.244.1.7',
      podIPs: [{ ip: '10.244.1.7' }],
      hostIP: '172.30.0.1',
      conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: '2026-12-07T05:00:00Z' }],
      containerStatuses: [{ name: 'web', ready: true, restartCount: 0, image: 'nginx:1.27', imageID: 'sha256:…' }],
    },
  };
}

const ns: Namespace = { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop' } };

describe('kube source: slimming objects as they arrive', () => {
  it('keeps what validation and the workload read, and drops the rest of a Pod', () => {
    const full = apiPod();
    const slim = apiPod();
    slimObject('Pod', slim);
    const before = validateObject(full);
    const after = validateObject(slim);
    expect(before.ok && after.ok).toBe(true);
    expect(toWorkload(after.ok ? (after.object as Pod) : (undefined as never), ns, 'cluster.local')).toEqual(
      toWorkload(before.ok ? (before.object as Pod) : (undefined as never), ns, 'cluster.local'),
    );
    expect(slim).toEqual({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: 'web-7d9c6b5f4-x2x9k',
        namespace: 'shop',
        uid: '5f0c2f8e-1d5a-4a8e-9f7e-0d6b2b1c9a11',
        resourceVersion: '18273',
        labels: { app: 'web', 'pod-template-hash': '7d9c6b5f4' },
        annotations: { 'trellis.dev/mesh': 'enabled' },
        ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'web-7d9c6b5f4', uid: 'r1', controller: true }],
      },
      spec: { nodeName: 'node-a', serviceAccountName: 'web', hostNetwork: false, containers: [{ name: 'web', ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }] }] },
      status: { phase: 'Running', podIP: '10.244.1.7', podIPs: [{ ip: '10.244.1.7' }], hostIP: '172.30.0.1' },
    });
    expect(JSON.stringify(slim).length).toBeLessThan(JSON.stringify(full).length / 2);
  });

  it('drops managedFields and the last-applied copy from every kind, and leaves a spec alone elsewhere', () => {
    const svc = {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'web', namespace: 'shop', managedFields: [{ manager: 'kubectl' }], annotations: { 'kubectl.kubernetes.io/last-applied-configuration': '{}', keep: 'me' } },
      spec: { selector: { app: 'web' }, ports: [{ port: 80 }], sessionAffinity: 'None' },
    };
    slimObject('Service', svc);
    expect(svc).toEqual({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'shop', annotations: { keep: 'me' } }, spec: { selector: { app: 'web' }, ports: [{ port: 80 }], sessionAffinity: 'None' } });
  });

  it('leaves what is not an object as it is (validation reports it)', () => {
    for (const odd of [null, 3, 'x', [1]]) expect(() => slimObject('Pod', odd)).not.toThrow();
    const noSpec = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p' } };
    slimObject('Pod', noSpec);
    expect(noSpec).toEqual({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p' } });
  });
});
