// `trellis tap NS/WORKLOAD|NS/POD`: the live requests and connections of a workload, one line per event, from every
// agent that carries its traffic (viz/tap/): a lab's (their sockets), or a cluster's (their tap ports, as the
// kubeconfig's user). Reads the agents' tap API, never Prometheus.
import { InvalidArgumentError, type Command } from 'commander';
import { parseDuration } from '../../agent/config.js';
import { VizError } from '../errors.js';
import { TAP_OUTPUTS, type TapOutput } from '../tap/format.js';
import { clusterAgents } from '../tap/cluster.js';
import { locateAgents, type TapAgent } from '../tap/locate.js';
import { observeRequest, parseTapTarget } from '../tap/request.js';
import { runTap } from '../tap/tap.js';

interface TapFlags {
  namespace?: string;
  to?: string;
  method?: string;
  path?: string;
  maxRps: number;
  duration?: number;
  limit: number;
  output: TapOutput;
  lab?: string;
  socket?: string[];
  /** true: `--kubeconfig` without a path (the usual one). */
  kubeconfig?: string | true;
}

function countArg(min: number): (text: string) => number {
  return (text) => {
    const n = Number(text);
    if (!/^\d+$/.test(text) || n < min || n > 1_000_000) throw new InvalidArgumentError(`a whole number from ${min} to 1000000`);
    return n;
  };
}

function durationArg(text: string): number {
  try {
    const ms = parseDuration(text, '--duration');
    if (ms < 100 || ms > 24 * 3600_000) throw new Error('range');
    return ms;
  } catch {
    throw new InvalidArgumentError('a duration from 100ms to 24h: 10s, 1m, 1h');
  }
}

function outputArg(text: string): TapOutput {
  // `table` is accepted for the viewer's other commands' sake: the lines are tap's table.
  const o = text === 'table' ? 'line' : text;
  if (!(TAP_OUTPUTS as readonly string[]).includes(o)) throw new InvalidArgumentError(`use ${TAP_OUTPUTS.join(', ')}`);
  return o as TapOutput;
}

export function registerTapCommand(program: Command): void {
  program
    .command('tap <target>')
    .description('the live requests and connections of a workload or pod, from every agent that carries them (both sides), one line per event')
    .usage('NS/WORKLOAD|NS/POD [--to NS/WORKLOAD] [--method M] [--path PREFIX] [--max-rps N] [--duration D] [--limit N] [-o line|wide|json] [--lab NAME | --kubeconfig [PATH]]')
    .option('-n, --namespace <ns>', 'the namespace of a target (and --to) given without one')
    .option('--to <target>', 'only what the target calls on this workload or pod (NS/NAME)')
    .option('--method <method>', 'only HTTP requests of this method (opaque TCP connections have none)')
    .option('--path <prefix>', 'only HTTP requests whose path starts with this')
    .option('--max-rps <n>', "observations per second each agent sends at most; more are dropped and counted ('drop' lines); 0: the agent's cap (--tap-max-rps)", countArg(0), 100)
    .option('--duration <duration>', 'stop after this long (default: at --limit, or Ctrl-C)', durationArg)
    .option('--limit <n>', 'stop after N observations (requests, connection opens and closes), all agents together (0: no limit)', countArg(0), 0)
    .option('-o, --output <format>', 'line (like linkerd viz tap), wide (identities, Service, route, request id, headers), json (the events as the agents send them)', outputArg, 'line')
    .option('--lab <name>', "tap this lab's agents (default: the only lab running)")
    .option('--socket <path...>', "tap the agent serving this socket (`trellis agent --tap-socket`) instead of a lab's")
    .option('--kubeconfig [path]', "tap a cluster's agents (every node's, on their tap port) as this kubeconfig's user, whom RBAC must let watch tap.tap.trellis.dev in the namespace (ClusterRole trellis-tap); without PATH: $KUBECONFIG or ~/.kube/config")
    .addHelpText(
      'after',
      '\nExamples:\n  trellis tap demo/server                          every request to and from server\n' +
        '  trellis tap demo/client --to demo/server --method GET --path /api --limit 20\n' +
        '  trellis tap demo/client -o json --duration 10s\n' +
        '  trellis tap shop/web --kubeconfig                in a cluster, as the kubeconfig user (RBAC: ClusterRole trellis-tap)\n' +
        '\nLines: req (method, authority, path), rsp (status, time to first byte), end (status, gRPC status, duration, bytes,\n' +
        'the policy that denied it), tcp (an opaque connection: open, close with bytes both ways), drop (observations the\n' +
        'agent dropped past --max-rps). proxy=out is the caller\'s agent, proxy=in the callee\'s. Header values the agent\n' +
        'redacts (authorization, cookie, ... and its --tap-redact-headers) show as [REDACTED]; bodies are never shown.',
    )
    .action(async (target: string, flags: TapFlags) => {
      const ns = flags.namespace;
      const ask = {
        target: parseTapTarget(target, ns),
        to: flags.to === undefined ? undefined : parseTapTarget(flags.to, ns, '--to'),
        method: flags.method,
        path: flags.path,
        maxRps: flags.maxRps,
        limit: flags.limit,
        durationMs: flags.duration ?? 0,
      };
      const request = observeRequest(ask);
      let agents: TapAgent[];
      let where: string;
      if (flags.kubeconfig !== undefined) {
        if (flags.lab !== undefined || flags.socket?.length) throw new VizError('ECONFIG', '--kubeconfig taps a cluster\'s agents, --lab a lab\'s, --socket one agent: give one of them');
        const found = await clusterAgents(flags.kubeconfig === true ? undefined : flags.kubeconfig);
        agents = found.agents;
        where = ` of cluster ${found.server} (every node: callers can run anywhere)`;
      } else {
        const located = locateAgents({ socket: flags.socket, lab: flags.lab });
        agents = located.agents;
        where = located.lab ? ` of lab ${located.lab}` : '';
      }
      const abort = new AbortController();
      const stop = () => abort.abort();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      process.stderr.write(`tapping ${target}${ask.to ? ` -> ${flags.to}` : ''} on ${agents.length} agent${agents.length === 1 ? '' : 's'}${where}: ${agents.map((a) => a.node).join(', ')}\n`);
      const result = await runTap({ agents, request, output: flags.output, out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t), signal: abort.signal });
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      const bounds = [...new Set(result.accepted.map((a) => a.maxRps))].join('/');
      process.stderr.write(`${result.observations} observations from ${result.accepted.length} agent${result.accepted.length === 1 ? '' : 's'}, ${result.dropped} dropped${bounds ? ` (at most ${bounds}/s per agent)` : ''}\n`);
      if (result.failed.length === agents.length) throw new VizError('EUNAVAILABLE', `no agent could be tapped (${result.failed.map((f) => f.node).join(', ')})`);
    });
}
