// Bench: the lab it builds. Two namespaces with the same client (node A) and server (node B): bench-mesh
// is meshed and carries the trellis paths; bench-plain is not and carries the direct and HAProxy paths.
import { MESH_ANNOTATION } from '../../agent/constants.js';
import { LabError } from '../errors.js';
import type { Lab } from '../cluster/lab.js';
import type { ExtensionObject, KubeObject } from '../../agent/model/objects.js';
import type { Targets } from './paths.js';

export const APP_PORT = 8080;
/**
 * The meshed server's second port, behind trellis-l7's HTTP Services only. Behind one pod port, Services
 * declaring different protocols would leave the agents to pick one of them, and trellis-l4 must stay opaque TCP.
 */
export const HTTP_APP_PORT = 8081;
/** The h2c (HTTP/2 prior knowledge) server of both server pods: the h2 paths. */
export const H2_APP_PORT = 8082;
export const SERVICE_PORT = 80;
/** Response size of every request/response measurement. */
export const BODY_BYTES = 1024;
export const NODE_A = 'node-a';
export const NODE_B = 'node-b';
export const MESH_SERVER = 'bench-mesh/server';
export const PLAIN_SERVER = 'bench-plain/server';

/** Where the HAProxy pair of each layer listens: plaintext on loopback in the client pod, TLS on the server pod's IP. */
export const HAPROXY_PORTS = Object.freeze({
  l4: { listen: 18080, tls: 15443 },
  l7: { listen: 18081, tls: 15444 },
  h2: { listen: 18082, tls: 15445 },
});

/** `taskset -c N` before a command when pinning, nothing otherwise. */
export function pinned(cpu: number | undefined, argv: string[]): string[] {
  return cpu === undefined ? argv : ['taskset', '-c', String(cpu), ...argv];
}

/** The lab's manifests; servers run pinned to `serverCpu` when given. */
export function benchManifests(opts: { serverCpu?: number }): KubeObject[] {
  const objects: KubeObject[] = [];
  for (const [ns, meshed] of [['bench-mesh', true], ['bench-plain', false]] as const) {
    objects.push({
      apiVersion: 'v1',
      kind: 'Namespace',
      metadata: { name: ns, ...(meshed && { annotations: { [MESH_ANNOTATION]: 'enabled' } }) },
    });
    objects.push(pod(ns, 'client', NODE_A, [{ name: 'client', command: ['sleep', 'infinity'] }]));
    const echo = (port: number, h2c = false) =>
      pinned(opts.serverCpu, ['trellis', 'tool', 'http-echo', '--port', String(port), '--body-bytes', String(BODY_BYTES), ...(h2c ? ['--h2c'] : [])]);
    objects.push(
      pod(ns, 'server', NODE_B, [
        { name: 'server', command: echo(APP_PORT), port: { name: 'tcp', containerPort: APP_PORT } },
        ...(meshed ? [{ name: 'server-http', command: echo(HTTP_APP_PORT), port: { name: 'http', containerPort: HTTP_APP_PORT } }] : []),
        { name: 'server-h2', command: echo(H2_APP_PORT, true), port: { name: 'h2c', containerPort: H2_APP_PORT } },
      ]),
    );
    // Declared opaque TCP, so the L4 paths stay L4 whatever protocol detection the mesh grows.
    objects.push(service(ns, 'server', { name: 'tcp', appProtocol: 'tcp' }, APP_PORT));
  }
  // trellis-l7: an HTTP Service whose HTTPRoute splits 90/10 between two Services of the same server pod.
  objects.push(service('bench-mesh', 'server-l7', { name: 'http', appProtocol: 'http' }, HTTP_APP_PORT));
  objects.push(service('bench-mesh', 'server-v1', { name: 'http', appProtocol: 'http' }, HTTP_APP_PORT));
  objects.push(service('bench-mesh', 'server-v2', { name: 'http', appProtocol: 'http' }, HTTP_APP_PORT));
  // trellis-l7-h2: h2c (prior knowledge) parsed by both agents, HTTP/2 between them inside HBONE.
  objects.push(service('bench-mesh', 'server-h2', { name: 'h2c', appProtocol: 'kubernetes.io/h2c' }, H2_APP_PORT));
  return objects;
}

/**
 * The mesh half of the lab alone (client on node A, server on node B, the opaque TCP Service): the second
 * lab whose agents open a session, and so do a TLS handshake, per connection.
 */
export function handshakeManifests(opts: { serverCpu?: number }): KubeObject[] {
  return benchManifests(opts).filter(
    (o) => (o.metadata.namespace ?? o.metadata.name) === 'bench-mesh' && !(o.kind === 'Service' && o.metadata.name !== 'server'),
  );
}

/** Objects the lab's manifests cannot carry (it reads Namespaces, Pods and Services); written to its cluster dir. */
export function extraObjects(): ExtensionObject[] {
  return [
    {
      apiVersion: 'gateway.networking.k8s.io/v1',
      kind: 'HTTPRoute',
      metadata: { name: 'server-l7-split', namespace: 'bench-mesh' },
      spec: {
        parentRefs: [{ group: '', kind: 'Service', name: 'server-l7', port: SERVICE_PORT }],
        rules: [
          {
            backendRefs: [
              { name: 'server-v1', port: SERVICE_PORT, weight: 90 },
              { name: 'server-v2', port: SERVICE_PORT, weight: 10 },
            ],
          },
        ],
      },
    },
  ];
}

export function resolveTargets(lab: Lab): Targets {
  const vip = (ns: string, name: string): string => {
    const s = lab.services.find((x) => x.namespace === ns && x.name === name);
    if (!s) throw new LabError('ENOTFOUND', `the bench lab has no Service ${ns}/${name}: was it built from benchManifests()?`);
    return s.clusterIP;
  };
  return {
    plainVip: vip('bench-plain', 'server'),
    meshVip: vip('bench-mesh', 'server'),
    meshL7Vip: vip('bench-mesh', 'server-l7'),
    meshH2Vip: vip('bench-mesh', 'server-h2'),
    haproxyL4Listen: `127.0.0.1:${HAPROXY_PORTS.l4.listen}`,
    haproxyL7Listen: `127.0.0.1:${HAPROXY_PORTS.l7.listen}`,
    haproxyH2Listen: `127.0.0.1:${HAPROXY_PORTS.h2.listen}`,
  };
}

interface Container {
  name: string;
  command: string[];
  port?: { name: string; containerPort: number };
}

function pod(namespace: string, name: string, node: string, containers: Container[]): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, labels: { app: name } },
    spec: {
      nodeName: node,
      serviceAccountName: name,
      containers: containers.map((c) => ({ name: c.name, image: 'trellis', command: c.command, ...(c.port && { ports: [c.port] }) })),
    },
  } as KubeObject;
}

function service(namespace: string, name: string, port: { name: string; appProtocol: string }, targetPort: number): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name, namespace },
    spec: { selector: { app: 'server' }, ports: [{ ...port, port: SERVICE_PORT, targetPort }] },
  } as KubeObject;
}
