// The cluster install in manifests/: every file parses, the kustomizations list exactly the files present, the
// DaemonSet meets the node-agent checklist, RBAC has no wildcards, and the pieces agree with each other, with the
// CLI's flags and with the Dockerfile.
import fs from 'node:fs';
import path from 'node:path';
import { ObjectSerializer } from '@kubernetes/client-node/dist/gen/models/ObjectSerializer.js';
import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { registerAgentCommand } from '../../agent/cli/agent.js';
import { registerIdentityCommands } from '../../agent/cli/identity.js';
import { parseDuration } from '../../agent/config.js';
import { AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, TAP_PORT } from '../../agent/constants.js';
import { BUNDLE_KEY } from '../../agent/identity-service/service.js';
import { TAP_CLUSTER_ROLE, TAP_GROUP, TAP_RESOURCE, TAP_VERB } from '../../agent/tap/authorize.js';
import { BUNDLE_CONFIGMAP } from '../../viz/tap/cluster.js';
import { MANIFESTS, ROOT, filesUnder, findObject, installObjects, loadYaml, type KubeObject } from './load.js';

const NAMESPACE = 'trellis-system';
const CLUSTER_SCOPED = new Set(['Namespace', 'CustomResourceDefinition', 'ClusterRole', 'ClusterRoleBinding']);

interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: { name: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[];
  ports?: { name?: string; containerPort: number }[];
  readinessProbe?: { httpGet?: { path: string; port: number | string }; tcpSocket?: { port: number | string }; exec?: { command: string[] } };
  livenessProbe?: { httpGet?: { path: string; port: number | string } };
  securityContext?: { privileged?: boolean; capabilities?: { add?: string[]; drop?: string[] }; allowPrivilegeEscalation?: boolean };
  volumeMounts?: { name: string; mountPath: string; mountPropagation?: string; readOnly?: boolean }[];
}
interface PodSpec {
  hostNetwork?: boolean;
  hostPID?: boolean;
  serviceAccountName?: string;
  priorityClassName?: string;
  tolerations?: object[];
  terminationGracePeriodSeconds?: number;
  initContainers?: Container[];
  containers: Container[];
  volumes?: {
    name: string;
    hostPath?: { path: string; type?: string };
    configMap?: { name: string };
    projected?: { sources: { serviceAccountToken?: { audience: string; expirationSeconds: number; path: string } }[] };
    emptyDir?: { medium?: string; sizeLimit?: string };
  }[];
}
interface Workload extends KubeObject {
  spec: { updateStrategy?: { type: string; rollingUpdate?: { maxUnavailable?: number | string; maxSurge?: number | string } }; selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string> }; spec: PodSpec } };
}
interface Rule {
  apiGroups?: string[];
  resources?: string[];
  verbs: string[];
  resourceNames?: string[];
  nonResourceURLs?: string[];
}

const daemonSet = findObject('DaemonSet', 'trellis-agent') as Workload;
const deployment = findObject('Deployment', 'trellis-identity') as Workload;
const agentPod = daemonSet.spec.template.spec;
const agent = agentPod.containers.find((c) => c.name === 'agent')!;
const identity = deployment.spec.template.spec.containers.find((c) => c.name === 'identity')!;

/** `--name=value` or `--name value` from a container's args. */
function flag(c: Container, name: string): string | undefined {
  const args = c.args ?? [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === `--${name}`) return args[i + 1];
    if (args[i]!.startsWith(`--${name}=`)) return args[i]!.slice(name.length + 3);
  }
  return undefined;
}

function allContainers(spec: PodSpec): Container[] {
  return [...(spec.initContainers ?? []), ...spec.containers];
}

function kustomization(dir: string): { resources?: string[]; configMapGenerator?: { name: string; namespace?: string; files: string[]; options?: { labels?: Record<string, string>; disableNameSuffixHash?: boolean } }[] } {
  return loadYaml(path.join(MANIFESTS, dir, 'kustomization.yaml'))[0] as ReturnType<typeof kustomization>;
}

describe('manifests/ files', () => {
  const yamlFiles = filesUnder(MANIFESTS).filter((f) => /\.ya?ml$/.test(f));

  it.each(yamlFiles)('%s parses', (file) => {
    expect(loadYaml(path.join(MANIFESTS, file)).length).toBeGreaterThan(0);
  });

  it('every object has apiVersion, kind, metadata.name, the part-of label, and lives in trellis-system unless cluster-scoped', () => {
    const objects = installObjects();
    expect(objects.length).toBeGreaterThan(15);
    for (const { file, obj } of objects) {
      const where = `${file}: ${obj.kind} ${obj.metadata?.name}`;
      expect(typeof obj.apiVersion, where).toBe('string');
      expect(typeof obj.kind, where).toBe('string');
      expect(obj.metadata?.name, where).toMatch(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/);
      expect(obj.metadata.labels?.['app.kubernetes.io/part-of'], where).toBe('trellis');
      if (CLUSTER_SCOPED.has(obj.kind)) expect(obj.metadata.namespace, where).toBeUndefined();
      else expect(obj.metadata.namespace, where).toBe(NAMESPACE);
    }
    const keys = objects.map(({ obj }) => `${obj.kind}/${obj.metadata.namespace ?? ''}/${obj.metadata.name}`);
    expect(new Set(keys).size).toBe(keys.length);
  });

  it('the kustomizations list exactly the files present (the examples are documentation, not install)', () => {
    const main = kustomization('.');
    const monitoring = kustomization('monitoring');
    const listed = [
      ...(main.resources ?? []),
      ...(main.configMapGenerator ?? []).flatMap((g) => g.files),
      ...(monitoring.resources ?? []).map((r) => `monitoring/${r}`),
    ];
    const present = filesUnder(MANIFESTS).filter(
      (f) => /\.(ya?ml|json)$/.test(f) && !f.startsWith('examples/') && path.basename(f) !== 'kustomization.yaml',
    );
    expect([...listed].sort()).toEqual(present);
    expect(new Set(listed).size).toBe(listed.length);
    for (const f of listed) expect(f, 'paths stay inside manifests/').not.toMatch(/\.\./);
  });

  it('the dashboard ConfigMap is generated from the raw JSON, labelled for the Grafana sidecar, without a name hash', () => {
    const gen = kustomization('.').configMapGenerator ?? [];
    expect(gen).toEqual([
      expect.objectContaining({
        name: 'trellis-dashboard',
        namespace: NAMESPACE,
        files: ['dashboards/trellis.json'],
        options: expect.objectContaining({ disableNameSuffixHash: true, labels: expect.objectContaining({ grafana_dashboard: '1' }) }),
      }),
    ]);
  });

  it('built-in objects use only fields the Kubernetes API defines', () => {
    // client-node's models are generated from the API's OpenAPI: a field they drop is one the API server would refuse
    // (kubectl's strict field validation) or silently drop, e.g. a misspelt mountPropagation.
    const serializer = ObjectSerializer as unknown as {
      deserialize(data: unknown, type: string, format: string): unknown;
      serialize(data: unknown, type: string, format: string): unknown;
    };
    const dropped = (a: unknown, b: unknown, at: string): string[] => {
      if (a === null || typeof a !== 'object') return JSON.stringify(a) === JSON.stringify(b) ? [] : [`${at}: ${JSON.stringify(a)}`];
      return Object.entries(a).flatMap(([k, v]) => dropped(v, (b as Record<string, unknown> | undefined)?.[k], `${at}.${k}`));
    };
    const isBuiltIn = (apiVersion: string) => !apiVersion.includes('.') || /\.k8s\.io\//.test(apiVersion);
    const all = installObjects();
    const builtIn = all.filter(({ obj }) => isBuiltIn(obj.apiVersion));
    // The objects of other APIs are the Prometheus Operator's, each checked in its own test (the PodMonitor below,
    // the PrometheusRule in rules.test.ts).
    expect(all.filter(({ obj }) => !isBuiltIn(obj.apiVersion)).map(({ obj }) => obj.kind)).toEqual(['PodMonitor', 'PrometheusRule']);
    for (const { file, obj } of builtIn) {
      const version = obj.apiVersion.split('/').at(-1)!;
      const model = `${version[0]!.toUpperCase()}${version.slice(1)}${obj.kind}`;
      const typed = serializer.deserialize(obj, model, '');
      expect((typed as object).constructor.name, `${file}: client-node has no model ${model}`).toBe(model);
      expect(dropped(obj, serializer.serialize(typed, model, ''), `${file} ${obj.kind}`)).toEqual([]);
    }
  });

  it('the namespace lets Pod Security Admission run the privileged agent', () => {
    expect(findObject('Namespace', NAMESPACE).metadata.labels?.['pod-security.kubernetes.io/enforce']).toBe('privileged');
  });
});

describe('the agent DaemonSet', () => {
  it('runs in the node: hostNetwork, hostPID, system-node-critical, on every node whatever its taints', () => {
    expect(agentPod.hostNetwork).toBe(true);
    expect(agentPod.hostPID).toBe(true);
    expect(agentPod.priorityClassName).toBe('system-node-critical');
    expect(agentPod.tolerations).toEqual([{ operator: 'Exists' }]);
    expect(agentPod.serviceAccountName).toBe('trellis-agent');
  });

  it('uses capabilities, never privileged', () => {
    for (const c of allContainers(agentPod)) {
      expect(c.securityContext?.privileged ?? false, c.name).toBe(false);
      expect(c.securityContext?.capabilities?.drop, c.name).toEqual(['ALL']);
    }
    expect([...(agent.securityContext?.capabilities?.add ?? [])].sort()).toEqual(['NET_ADMIN', 'SYS_ADMIN', 'SYS_PTRACE']);
    // The API server refuses allowPrivilegeEscalation: false together with SYS_ADMIN.
    expect(agent.securityContext?.allowPrivilegeEscalation).toBeUndefined();
    expect(JSON.stringify(daemonSet)).not.toMatch(/"privileged":true/);
  });

  it('is ready by its own ready file, live on :15021, exports metrics on :15020, and declares no port', () => {
    // Two agents answer on the node's health port during a surge: readiness must be this pod's own.
    const readyFile = flag(agent, 'ready-file');
    expect(readyFile).toMatch(/^\/tmp\//);
    expect(agent.readinessProbe?.exec?.command).toEqual(['test', '-e', readyFile]);
    expect(agentPod.volumes?.find((v) => v.name === 'tmp')?.emptyDir, 'the ready file lives in a volume of the pod’s own').toBeDefined();
    expect(agent.livenessProbe?.httpGet).toEqual({ path: '/healthz/live', port: 15021 });
    expect(flag(agent, 'metrics-addr')).toBe('0.0.0.0:15020');
    expect(flag(agent, 'health-addr')).toBe('0.0.0.0:15021');
    // With hostNetwork a declared port is a hostPort, and the scheduler would keep the surge pod off the node.
    for (const c of allContainers(agentPod)) expect(c.ports, c.name).toBeUndefined();
  });

  it('gives the agent longer to stop than its drain, and rolls one node at a time with the new agent beside the old', () => {
    const drainMs = parseDuration(flag(agent, 'drain') ?? '5s', '--drain');
    // The kubelet's grace period also covers closing listeners and flushing logs after the drain.
    expect((agentPod.terminationGracePeriodSeconds ?? 30) * 1000).toBeGreaterThan(drainMs + 10_000);
    expect(daemonSet.spec.updateStrategy).toEqual({ type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } });
  });

  it('runs the kube source for its own node, with the probe source from the downward API', () => {
    expect(agent.args?.[0]).toBe('agent');
    expect(flag(agent, 'source')).toBe('kube');
    expect(flag(agent, 'kubeconfig')).toBeUndefined();
    expect(flag(agent, 'node')).toBe('$(NODE_NAME)');
    expect(flag(agent, 'probe-source')).toBe('$(HOST_IP)');
    const env = Object.fromEntries((agent.env ?? []).map((e) => [e.name, e.valueFrom?.fieldRef?.fieldPath]));
    expect(env).toMatchObject({ NODE_NAME: 'spec.nodeName', HOST_IP: 'status.hostIP' });
  });

  it('mounts what it needs from the host, and no more', () => {
    const volumes = new Map((agentPod.volumes ?? []).map((v) => [v.name, v]));
    const hostPaths = Object.fromEntries([...volumes.values()].filter((v) => v.hostPath).map((v) => [v.name, v.hostPath]));
    expect(hostPaths).toEqual({
      netns: { path: '/var/run/netns', type: 'DirectoryOrCreate' },
      'trellis-run': { path: '/var/run/trellis', type: 'DirectoryOrCreate' },
      'cni-bin': { path: '/opt/cni/bin', type: 'DirectoryOrCreate' },
      'cni-conf': { path: '/etc/cni/net.d', type: 'DirectoryOrCreate' },
      // The host's cgroup2 hierarchy, whose root the eBPF capture mode's outbound programs attach to (read only).
      'host-cgroup': { path: '/sys/fs/cgroup', type: 'Directory' },
    });
    const mounts = Object.fromEntries((agent.volumeMounts ?? []).map((m) => [m.name, m]));
    expect(mounts['host-cgroup']).toMatchObject({ mountPath: '/host/sys/fs/cgroup', readOnly: true });
    expect(flag(agent, 'cgroup-root')).toBe('/host/sys/fs/cgroup');
    expect(mounts['netns']).toMatchObject({ mountPath: '/var/run/netns', mountPropagation: 'HostToContainer' });
    expect(mounts['trellis-run']).toMatchObject({ mountPath: '/var/run/trellis' });
    // The agent itself never writes the CNI directories; the installer containers do.
    expect(mounts['cni-bin']).toBeUndefined();
    expect(mounts['cni-conf']).toBeUndefined();
  });

  it('authenticates to the identity service with a short-lived projected token of audience trellis-identity', () => {
    const token = (agentPod.volumes ?? []).find((v) => v.name === 'identity-token')?.projected?.sources[0]?.serviceAccountToken;
    expect(token).toEqual({ audience: 'trellis-identity', expirationSeconds: 3600, path: 'token' });
    const mount = agent.volumeMounts!.find((m) => m.name === 'identity-token')!;
    expect(flag(agent, 'identity-token-file')).toBe(`${mount.mountPath}/${token!.path}`);
    expect(flag(identity, 'audience')).toBe(token!.audience);
  });

  it('installs the CNI plugin before the agent starts and keeps it in the chain, with the agent’s socket', () => {
    const install = agentPod.initContainers?.find((c) => c.name === 'install-cni');
    const watch = agentPod.containers.find((c) => c.name === 'cni-watch');
    expect(install?.command).toEqual(['node', '/opt/trellis/cni/install-cni.mjs']);
    expect(watch?.command).toEqual(install?.command);
    expect(watch?.args?.filter((a) => !a.startsWith('--watch-seconds='))).toEqual(install?.args);
    expect(flag(install!, 'socket')).toBe(flag(agent, 'cni-socket'));
    expect(flag(install!, 'optin-file')!.startsWith('/var/run/trellis/')).toBe(true);
    for (const c of [install!, watch!]) {
      const mounts = Object.fromEntries((c.volumeMounts ?? []).map((m) => [m.name, m.mountPath]));
      expect(mounts).toEqual({ 'cni-bin': flag(c, 'bin-dir'), 'cni-conf': flag(c, 'conf-dir') });
    }
  });
});

describe('the identity service', () => {
  const service = findObject('Service', 'trellis-identity') as KubeObject & { spec: { ports: { port: number; targetPort: string }[]; selector: Record<string, string> } };

  it('is reached where the agents look for it', () => {
    const [host, port] = flag(agent, 'identity-service')!.split(':');
    expect(host).toBe(`${service.metadata.name}.${service.metadata.namespace}.svc`);
    expect(service.spec.ports[0]!.port).toBe(Number(port));
    const target = identity.ports!.find((p) => p.name === service.spec.ports[0]!.targetPort)!;
    expect(flag(identity, 'listen')).toBe(`0.0.0.0:${target.containerPort}`);
    expect(service.spec.selector).toEqual(deployment.spec.selector.matchLabels);
  });

  it('publishes the bundle the agents read, trusts only the agent service account, and runs unprivileged', () => {
    // The agent reads the bundle from the ConfigMap the service publishes, mounted as a volume.
    const volume = (agentPod.volumes ?? []).find((v) => v.configMap)!;
    expect(`${NAMESPACE}/${volume.configMap!.name}`).toBe(flag(identity, 'bundle-configmap'));
    const mount = agent.volumeMounts!.find((m) => m.name === volume.name)!;
    expect(flag(agent, 'identity-ca-file')).toBe(`${mount.mountPath}/${BUNDLE_KEY}`);
    expect(flag(identity, 'agent-service-account')).toBe(`system:serviceaccount:${NAMESPACE}:${agentPod.serviceAccountName}`);
    expect(flag(identity, 'trust-domain')).toBe(flag(agent, 'trust-domain'));
    expect(deployment.spec.template.spec.serviceAccountName).toBe('trellis-identity');
    expect(identity.securityContext).toMatchObject({ allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
    expect((deployment.spec.template.spec as PodSpec & { securityContext?: { runAsNonRoot?: boolean } }).securityContext?.runAsNonRoot).toBe(true);
  });

  it('the Secret and ConfigMap it names are the ones its Role grants by name', () => {
    const role = findObject('Role', 'trellis-identity') as KubeObject & { rules: Rule[] };
    const names = (resource: string) => role.rules.filter((r) => r.resources?.includes(resource)).flatMap((r) => r.resourceNames ?? []);
    expect(names('secrets')).toEqual([flag(identity, 'ca-secret')!.split('/')[1]]);
    expect(names('configmaps')).toContain(flag(identity, 'bundle-configmap')!.split('/')[1]);
    expect(flag(identity, 'ca-secret')!.split('/')[0]).toBe(role.metadata.namespace);
  });
});

/** Roles Trellis ships for users to bind, not for its own service accounts. */
const USER_ROLES = [`ClusterRole/${TAP_CLUSTER_ROLE}`];
const TAP_DISCOVERY = 'trellis-tap-discovery';

describe('RBAC', () => {
  const roles = installObjects()
    .map(({ obj }) => obj)
    .filter((o) => o.kind === 'Role' || o.kind === 'ClusterRole') as (KubeObject & { rules: Rule[] })[];

  it('has no wildcard anywhere, and no verbs that hand out more rights', () => {
    expect(roles.map((r) => `${r.kind}/${r.metadata.name}`)).toEqual(expect.arrayContaining(['ClusterRole/trellis-agent', 'ClusterRole/trellis-identity', 'Role/trellis-identity']));
    for (const role of roles) {
      for (const rule of role.rules) {
        const where = `${role.kind} ${role.metadata.name}: ${JSON.stringify(rule)}`;
        for (const v of [...(rule.apiGroups ?? []), ...(rule.resources ?? []), ...rule.verbs, ...(rule.resourceNames ?? [])]) expect(v, where).not.toContain('*');
        expect(rule.nonResourceURLs, where).toBeUndefined();
        for (const v of ['escalate', 'bind', 'impersonate', 'deletecollection']) expect(rule.verbs, where).not.toContain(v);
      }
      expect(JSON.stringify(role)).not.toContain('"*"');
    }
  });

  it('every binding names an existing role and service account; only the roles users bind are left unbound', () => {
    const objects = installObjects().map(({ obj }) => obj);
    const bindings = objects.filter((o) => o.kind === 'RoleBinding' || o.kind === 'ClusterRoleBinding') as (KubeObject & { roleRef: { kind: string; name: string }; subjects: { kind: string; name: string; namespace: string }[] })[];
    const unbound = roles.filter((r) => !bindings.some((b) => b.roleRef.kind === r.kind && b.roleRef.name === r.metadata.name)).map((r) => `${r.kind}/${r.metadata.name}`);
    expect(unbound).toEqual(USER_ROLES);
    for (const b of bindings) {
      const role = objects.find((o) => o.kind === b.roleRef.kind && o.metadata.name === b.roleRef.name && (o.kind === 'ClusterRole' || o.metadata.namespace === b.metadata.namespace));
      expect(role, `${b.kind} ${b.metadata.name}`).toBeDefined();
      if (b.metadata.name === TAP_DISCOVERY) {
        // What `trellis tap --kubeconfig` reads to find and check the agents, for anyone signed in.
        expect(b.subjects).toEqual([{ apiGroup: 'rbac.authorization.k8s.io', kind: 'Group', name: 'system:authenticated' }]);
        continue;
      }
      for (const s of b.subjects) {
        expect(s.kind).toBe('ServiceAccount');
        expect(objects.find((o) => o.kind === 'ServiceAccount' && o.metadata.name === s.name && o.metadata.namespace === s.namespace), s.name).toBeDefined();
      }
    }
  });
});

describe('tap', () => {
  it('the ClusterRole users bind grants watch on tap.tap.trellis.dev and nothing else, as the agents ask', () => {
    const role = findObject('ClusterRole', TAP_CLUSTER_ROLE) as KubeObject & { rules: Rule[] };
    expect(role.rules).toEqual([{ apiGroups: [TAP_GROUP], resources: [TAP_RESOURCE], verbs: [TAP_VERB] }]);
  });

  it('anyone signed in may read the trust bundle and list the agent pods, which `trellis tap --kubeconfig` needs, and nothing more', () => {
    const role = findObject('Role', TAP_DISCOVERY) as KubeObject & { rules: Rule[] };
    expect(role.metadata.namespace).toBe(AGENT_NAMESPACE);
    expect(role.rules).toEqual([
      { apiGroups: [''], resources: ['configmaps'], resourceNames: [BUNDLE_CONFIGMAP], verbs: ['get'] },
      { apiGroups: [''], resources: ['pods'], verbs: ['list'] },
    ]);
  });

  it('the agent may review tokens and access (nothing more of either group), and serves the tap port', () => {
    const role = findObject('ClusterRole', 'trellis-agent') as KubeObject & { rules: Rule[] };
    const of = (group: string) => role.rules.filter((r) => r.apiGroups?.includes(group));
    expect(of('authentication.k8s.io')).toEqual([{ apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] }]);
    expect(of('authorization.k8s.io')).toEqual([{ apiGroups: ['authorization.k8s.io'], resources: ['subjectaccessreviews'], verbs: ['create'] }]);
    expect(flag(agent, 'tap-addr')).toBe(`0.0.0.0:${TAP_PORT}`);
    expect(flag(agent, 'source')).toBe('kube');
    // The agents' namespace and service account are the identity the tap port's certificate carries.
    expect(daemonSet.metadata.namespace).toBe(AGENT_NAMESPACE);
    expect(agentPod.serviceAccountName).toBe(AGENT_SERVICE_ACCOUNT);
  });
});

describe('consistency with the CLI, the image and monitoring', () => {
  const program = new Command('trellis');
  registerAgentCommand(program);
  registerIdentityCommands(program);
  const optionsOf = (name: string) => new Set(program.commands.find((c) => c.name() === name)!.options.map((o) => o.long));

  it.each([
    ['agent', agent],
    ['identity', identity],
  ] as const)('every flag the %s container passes exists in the CLI', (command, container) => {
    expect(container.args?.[0]).toBe(command);
    const known = optionsOf(command);
    const unknown = (container.args ?? []).slice(1).map((a) => a.split('=')[0]!).filter((f) => f.startsWith('--') && !known.has(f));
    expect(unknown, `flags the CLI's \`trellis ${command}\` does not define`).toEqual([]);
  });

  it('every container runs the same image, which the Dockerfile builds with what the containers call', () => {
    const images = new Set([...allContainers(agentPod), ...allContainers(deployment.spec.template.spec)].map((c) => c.image));
    expect([...images]).toEqual(['ghcr.io/trellis-mesh/trellis:0.1.0']);
    const dockerfile = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
    expect(dockerfile).toMatch(/ENTRYPOINT \["node", "\/opt\/trellis\/dist\/agent\/main\.js"\]/);
    expect(dockerfile).toMatch(/COPY .*manifests\/cni\/install-cni\.mjs \/opt\/trellis\/cni\/install-cni\.mjs/);
    expect(dockerfile).toMatch(/COPY .*native\/build\/trellis-cni \/opt\/trellis\/cni\/trellis-cni/);
    expect(dockerfile).toMatch(/apt-get install[^\n]*\bnftables\b/);
    const install = agentPod.initContainers!.find((c) => c.name === 'install-cni')!;
    expect(flag(install, 'bin-src')).toBe('/opt/trellis/cni/trellis-cni');
  });

  it('the PodMonitor scrapes the agents’ metrics port', () => {
    const monitor = loadYaml(path.join(MANIFESTS, 'monitoring', 'podmonitor.yaml'))[0] as KubeObject & {
      spec: { selector: { matchLabels: Record<string, string> }; namespaceSelector: { matchNames: string[] }; podMetricsEndpoints: { port?: string; path: string; relabelings?: unknown[] }[] };
    };
    expect(monitor.apiVersion).toBe('monitoring.coreos.com/v1');
    expect(monitor.spec.selector.matchLabels).toEqual(daemonSet.spec.selector.matchLabels);
    expect(monitor.spec.namespaceSelector.matchNames).toEqual([NAMESPACE]);
    const endpoint = monitor.spec.podMetricsEndpoints[0]!;
    expect(endpoint.port).toBeUndefined();
    expect(endpoint.relabelings).toEqual(
      expect.arrayContaining([
        { sourceLabels: ['__meta_kubernetes_pod_container_name', '__meta_kubernetes_pod_container_init'], regex: 'agent;false', action: 'keep' },
        { sourceLabels: ['__meta_kubernetes_pod_ip'], regex: '(.+)', targetLabel: '__address__', replacement: '${1}:15020', action: 'replace' },
      ]),
    );
    expect(endpoint.path).toBe('/metrics');
  });
});
