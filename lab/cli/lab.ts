// `trellis lab ...`: brings a lab up from manifests, shows it, runs commands in its pods, annotates its
// objects, takes it down. Pods and agents are detached, so the lab outlives the command that made it.
import { spawn } from 'node:child_process';
import os from 'node:os';
import type { Command } from 'commander';
import { formatTable } from '../../agent/cli/table.js';
import { parseDuration } from '../../agent/config.js';
import { LabError } from '../errors.js';
import { Lab, requireRootUser, sweep, type LabStatus } from '../cluster/lab.js';
import { loadManifests } from '../cluster/manifests.js';
import { DEFAULT_LAB_NAME, DEFAULT_STATE_ROOT } from '../cluster/names.js';

interface LabFlags {
  name: string;
  stateRoot: string;
}

/** --agent-args "FLAGS": the agents' extra flags, split at spaces as a shell would without quotes (the bench's way). */
export function splitAgentArgs(text: string, agents = true): string[] {
  if (!agents) throw new LabError('EINVAL', '--agent-args goes with agents: drop --no-agents, or --agent-args');
  const args = text.split(/\s+/).filter(Boolean);
  if (args.length > 0 && !args[0]!.startsWith('-')) throw new LabError('EINVAL', `--agent-args "${text}": give agent flags, e.g. "--workers 2 --log-level debug"`);
  return args;
}

export function registerLabCommands(program: Command): void {
  const lab = program
    .command('lab')
    .description('a cluster on this machine, made of network namespaces: one per node, one per pod (needs root)');

  withLabFlags(
    lab
      .command('up')
      .description('build a lab from Pod, Service and Namespace manifests and start one agent per node')
      .requiredOption('-f, --file <path...>', 'manifest file or directory (repeatable)')
      .option('--nodes <names>', 'comma-separated node names, in order (default: the Pods\' spec.nodeName values)')
      .option('--no-agents', 'build the network and pods only, no Trellis agents')
      .option('--log-level <level>', "agents' log level: trace|debug|info|warn|error")
      .option('--agent-args <flags>', "extra flags for every agent, split at spaces, e.g. \"--workers 2 --tap-max-rps 500\" ({node} stands for the node's name)")
      .option(
        '--cluster',
        'cluster mode: a real control plane (etcd, kube-apiserver, kube-controller-manager; built from source on first use) in the lab, ' +
          'every object created through its API, the agents on --source kube (see `trellis lab kubectl`)',
      )
      .option('--gateway-channel <channel>', 'with --cluster: the Gateway API CRDs installed, standard|experimental (routes with rules[].name or retry need experimental)', 'standard')
      .option('--prometheus', "run a Prometheus in the lab (a netns of its own) scraping every agent, with manifests/monitoring/'s recording rules: what `trellis stat|edges|routes|top|dashboard` read")
      .option('--scrape-interval <duration>', 'with --prometheus: how often it scrapes the agents and evaluates the rules', '2s')
      .option('--internet', 'an internet for egress: a netns on the fabric owning 198.18.0.0/15 (never routed on the real internet), reached from every pod through its node; run servers there with `ip netns exec trl-NAME-inet ...`')
      .addHelpText(
        'after',
        '\nExamples:\n  trellis lab up -f examples/demo/mesh.yaml\n  trellis lab up -f manifests/ --name b --nodes n1,n2,n3 --no-agents\n' +
          '  trellis lab up -f examples/demo/mesh.yaml --cluster\n' +
          '  trellis lab up -f examples/demo/mesh.yaml --prometheus && trellis stat -n demo\n' +
          '  trellis lab up -f examples/demo/mesh.yaml --agent-args "--workers 2 --tap-redact-headers x-api-key"\n' +
          '\nEvery Pod needs spec.nodeName. Each container\'s command (and args) runs in the pod\'s netns; images are ignored.',
      ),
  ).action(async (flags: LabFlags & { file: string[]; nodes?: string; agents: boolean; logLevel?: string; agentArgs?: string; cluster?: boolean; gatewayChannel: string; prometheus?: boolean; scrapeInterval: string; internet?: boolean }) => {
    if (flags.gatewayChannel !== 'standard' && flags.gatewayChannel !== 'experimental') {
      throw new LabError('EINVAL', `--gateway-channel ${flags.gatewayChannel}: use standard or experimental`);
    }
    const started = Date.now();
    const l = await Lab.up(flags.file, {
      name: flags.name,
      stateRoot: flags.stateRoot,
      agents: flags.agents,
      ...(flags.logLevel !== undefined && { logLevel: flags.logLevel }),
      ...(flags.agentArgs !== undefined && { agentArgs: splitAgentArgs(flags.agentArgs, flags.agents) }),
      ...(flags.nodes !== undefined && { nodes: flags.nodes.split(',').map((s) => s.trim()).filter(Boolean) }),
      ...(flags.cluster && { cluster: { gatewayChannel: flags.gatewayChannel } }),
      ...(flags.prometheus && { prometheus: { scrapeInterval: flags.scrapeInterval } }),
      ...(flags.internet && { internet: true }),
      progress: (step) => process.stderr.write(`lab ${flags.name}: ${step}\n`),
    });
    process.stdout.write(`${statusTable(await l.status())}\n`);
    const prom = l.prometheus;
    if (prom) {
      const lab = flags.name === DEFAULT_LAB_NAME ? '' : ` --lab ${flags.name}`;
      process.stderr.write(`prometheus: ${prom.url} in netns ${prom.netns}, scraping every ${prom.scrapeInterval}; read it with \`trellis stat${lab} -n NAMESPACE\`\n`);
    }
    if (l.internet) process.stderr.write(`internet: ${l.internet.network} in netns ${l.internet.netns}\n`);
    const down = flags.name === DEFAULT_LAB_NAME ? 'trellis lab down' : `trellis lab down --name ${flags.name}`;
    process.stderr.write(`lab ${l.name} is up (${((Date.now() - started) / 1000).toFixed(1)} s); remove it with \`${down}\`\n`);
  });

  withLabFlags(
    lab
      .command('kubectl [args...]')
      .description("run kubectl as the admin against a cluster-mode lab's API server (inside the lab's fabric netns)")
      .usage('[--name N] -- KUBECTL ARGS...')
      .addHelpText('after', '\nExample:\n  trellis lab kubectl -- get pods,endpointslices -A -o wide'),
  ).action(async (args: string[], flags: LabFlags) => {
    requireRootUser();
    const l = await Lab.attach(flags.name, flags.stateRoot);
    const cmd = await l.kubectlCommand(args);
    const child = spawn(cmd.file, cmd.args, { stdio: 'inherit' });
    process.exitCode = await new Promise<number>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code, signal) => resolve(code ?? 128 + (signal ? (os.constants.signals[signal] ?? 0) : 0)));
    });
  });

  withLabFlags(
    lab
      .command('status')
      .description('nodes, pods, services and agents of a lab')
      .option('-o, --output <format>', 'table|json', 'table'),
  ).action(async (flags: LabFlags & { output: string }) => {
    if (flags.output !== 'table' && flags.output !== 'json') {
      throw new LabError('EINVAL', `unknown output format "${flags.output}": use table or json`);
    }
    const status = await (await Lab.attach(flags.name, flags.stateRoot)).status();
    process.stdout.write(flags.output === 'json' ? `${JSON.stringify(status, null, 2)}\n` : `${statusTable(status)}\n`);
  });

  withLabFlags(
    lab
      .command('exec <pod> <command...>')
      .description('run a command in a pod\'s network namespace, with its environment; exits with the command\'s code')
      .usage('NS/POD [--name N] -- COMMAND [ARGS...]')
      // Options go anywhere before `--`; everything after it is the command, untouched.
      .showHelpAfterError('(put -- before the command and its flags: trellis lab exec NS/POD [--name N] -- COMMAND [ARGS...])')
      .addHelpText('after', '\nExample:\n  trellis lab exec demo/client -- trellis tool http-load --url http://10.96.0.10/ --count 10'),
  ).action(async (pod: string, command: string[], flags: LabFlags) => {
    requireRootUser();
    const l = await Lab.attach(flags.name, flags.stateRoot);
    const cmd = l.podCommand(pod, command);
    const child = spawn(cmd.file, cmd.args, { env: cmd.env, stdio: 'inherit' });
    process.exitCode = await new Promise<number>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code, signal) => resolve(code ?? 128 + (signal ? (os.constants.signals[signal] ?? 0) : 0)));
    });
  });

  withLabFlags(
    lab
      .command('annotate <target> <changes...>')
      .description('set (KEY=VALUE) or remove (KEY-) annotations on a realized Pod, or with --namespace-object on a Namespace')
      .usage('NS/POD KEY=VALUE|KEY- ...  |  --namespace-object NS KEY=VALUE|KEY- ...')
      .option('--namespace-object', 'the target is a Namespace name, not NS/POD')
      .addHelpText(
        'after',
        '\nExamples:\n  trellis lab annotate demo/client trellis.dev/mesh=disabled\n  trellis lab annotate demo/client trellis.dev/mesh-\n' +
          '  trellis lab annotate --namespace-object plain trellis.dev/mesh=enabled\n' +
          '\nThe change goes to the realized object in the lab\'s cluster/ directory, which the agents watch.',
      ),
  ).action(async (target: string, changes: string[], flags: LabFlags & { namespaceObject?: boolean }) => {
    const l = await Lab.attach(flags.name, flags.stateRoot);
    for (const change of changes) {
      const { key, value } = parseChange(change);
      if (flags.namespaceObject) await l.setNamespaceAnnotation(target, key, value);
      else await l.setPodAnnotation(target, key, value);
      const kind = flags.namespaceObject ? 'namespace' : 'pod';
      process.stdout.write(value === null ? `${kind} ${target}: removed ${key}\n` : `${kind} ${target}: ${key}=${value}\n`);
    }
  });

  withLabFlags(
    lab
      .command('apply')
      .description('create or replace routes and policies (HTTPRoute, GRPCRoute, FaultInjection, RetryBudget...) in a running lab')
      .requiredOption('-f, --file <path...>', 'manifest file or directory (repeatable)')
      .addHelpText(
        'after',
        '\nExample:\n  trellis lab apply -f examples/routes/split.yaml\n' +
          '\nThe objects go to the lab\'s cluster/ directory, which the agents watch; Pods and Services are fixed at `lab up`.',
      ),
  ).action(async (flags: LabFlags & { file: string[] }) => {
    const l = await Lab.attach(flags.name, flags.stateRoot);
    const m = await loadManifests(flags.file);
    // Everything goes to apply, so a Pod or Service in the files is refused with a reason, not dropped.
    await l.apply([...m.namespaces, ...m.pods, ...m.services, ...m.extensions].map((s) => s.object));
    for (const { object: o } of m.extensions) process.stdout.write(`${o.kind} ${o.metadata.namespace}/${o.metadata.name} applied\n`);
  });

  withLabFlags(
    lab
      .command('delete <kind> <object>')
      .description('delete a route or policy from a running lab')
      .usage('KIND NS/NAME')
      .addHelpText('after', '\nExample:\n  trellis lab delete HTTPRoute demo/split'),
  ).action(async (kind: string, object: string, flags: LabFlags) => {
    const l = await Lab.attach(flags.name, flags.stateRoot);
    const [ns, name] = object.includes('/') ? (object.split('/', 2) as [string, string]) : ['default', object];
    const removed = await l.remove(kind, ns, name);
    if (!removed) throw new LabError('ENOTFOUND', `no ${kind} ${ns}/${name} in lab '${l.name}'`);
    process.stdout.write(`${kind} ${ns}/${name} deleted\n`);
  });

  withLabFlags(
    lab
      .command('restart-agent <node>')
      .description("replace a node's agent as a DaemonSet rolling update does (maxSurge 1): the new one starts beside the old, and once it is ready the old one hands over and drains")
      .option('--drain <duration>', "the new agent's --drain (the old one drains for what it was started with)")
      .option('--agent-args <flags>', 'extra flags for the new agent only, after the lab\'s own, e.g. "--capture nft" (a hand-over to another capture mode)'),
  ).action(async (node: string, flags: LabFlags & { drain?: string; agentArgs?: string }) => {
    const l = await Lab.attach(flags.name, flags.stateRoot);
    const drainMs = flags.drain === undefined ? undefined : parseDuration(flags.drain, '--drain');
    const agentArgs = flags.agentArgs === undefined ? undefined : splitAgentArgs(flags.agentArgs);
    const t = await l.restartAgent(node, { ...(drainMs !== undefined && { drainMs }), ...(agentArgs && { agentArgs }) });
    process.stdout.write(`agent on ${node} replaced: the new one ready after ${Math.round(t.readyMs)} ms, the old one gone ${Math.round(t.stopMs)} ms later\n`);
  });

  withLabFlags(lab.command('down').description('end all processes of a lab, delete its namespaces and state')).action(
    async (flags: LabFlags) => {
      const l = await Lab.attach(flags.name, flags.stateRoot);
      await l.down();
      process.stdout.write(`lab ${l.name} is down\n`);
    },
  );

  lab
    .command('sweep')
    .description('remove every lab leftover on this machine: trl-* namespaces, their processes, state directories')
    .option('--prefix <prefix>', 'only namespaces and labs under this prefix, e.g. trl-mylab-', 'trl-')
    .option('--state-root <dir>', 'where lab state lives', DEFAULT_STATE_ROOT)
    .action(async (flags: { prefix: string; stateRoot: string }) => {
      const removed = await sweep({ prefix: flags.prefix, stateRoot: flags.stateRoot });
      process.stdout.write(removed.length ? `${removed.map((r) => `removed ${r}`).join('\n')}\n` : 'nothing to remove\n');
    });
}

function withLabFlags(cmd: Command): Command {
  return cmd
    .option('--name <name>', 'lab name (1-8 of a-z0-9)', DEFAULT_LAB_NAME)
    .option('--state-root <dir>', 'where lab state lives', DEFAULT_STATE_ROOT);
}

function parseChange(change: string): { key: string; value: string | null } {
  if (change.endsWith('-') && !change.includes('=')) return { key: change.slice(0, -1), value: null };
  const eq = change.indexOf('=');
  if (eq <= 0) throw new LabError('EINVAL', `"${change}": write KEY=VALUE to set an annotation or KEY- to remove it`);
  return { key: change.slice(0, eq), value: change.slice(eq + 1) };
}

export function statusTable(s: LabStatus): string {
  const nodes = table(
    ['NODE', 'FABRIC IP', 'POD CIDR', 'NETNS', 'AGENT'],
    s.nodes.map((n) => [
      n.name,
      n.fabricIp,
      n.podCidr,
      n.netns,
      n.agent ? `pid ${n.agent.pid} ${n.agent.alive ? 'running' : 'exited'}` : 'not running',
    ]),
  );
  const pods = table(
    ['POD', 'NODE', 'IP', 'MESH', 'PROCESS', 'NETNS'],
    s.pods.map((p) => [
      `${p.namespace}/${p.name}`,
      p.node,
      p.ip,
      p.mesh,
      p.processes.length === 0
        ? 'none'
        : p.processes.map((r) => `pid ${r.pid} ${r.alive ? 'running' : 'exited'}`).join(', '),
      p.netns,
    ]),
  );
  const services = table(
    ['SERVICE', 'CLUSTER-IP', 'PORTS'],
    s.services.map((v) => [
      `${v.namespace}/${v.name}`,
      v.clusterIP,
      v.ports
        .map((p) => `${p.name ? `${p.name}:` : ''}${p.port}->${p.targetPortName ?? p.targetPort}${p.appProtocol ? ` (${p.appProtocol})` : ''}`)
        .join(', '),
    ]),
  );
  const prom = s.prometheus && `prometheus ${s.prometheus.url} in netns ${s.prometheus.netns}, pid ${s.prometheus.pid} ${s.prometheus.alive ? 'running' : 'exited'}`;
  return [`lab ${s.name} (state ${s.stateDir})`, '', nodes, '', pods, '', services, ...(prom ? ['', prom] : [])].join('\n');
}

function table(header: string[], rows: string[][]): string {
  return rows.length === 0 ? `${header[0]}: none` : formatTable([header, ...rows]);
}
