// `trellis dashboard`: serves the dashboard page on loopback (viz/dashboard/server.ts) until Ctrl-C. Prometheus is
// found once, as every viewer command finds it; each time the page asks, a session evaluated at that moment computes
// the view of the namespace it shows (viz/dashboard/view.ts). The live view taps the lab's agents (or --socket's) from
// here (viz/dashboard/live.ts).
import net from 'node:net';
import { InvalidArgumentError, type Command } from 'commander';
import { parseDuration } from '../../agent/config.js';
import { VizError } from '../errors.js';
import { liveTapHandler } from '../dashboard/live.js';
import { startDashboard } from '../dashboard/server.js';
import { dashboardView } from '../dashboard/view.js';
import { locate } from '../prom/locate.js';
import { locateAgents } from '../tap/locate.js';
import { stat } from '../stat.js';
import { sessionOn, windowArg } from './common.js';

export const DEFAULT_LISTEN = '127.0.0.1:50750';
const NAMESPACE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

interface DashboardFlags {
  listen: { host: string; port: number };
  namespace?: string;
  window: string;
  refresh: number;
  prometheus?: string;
  lab?: string;
  dir?: string;
  socket?: string[];
  tapMaxRps: number;
  tapDuration: number;
}

function tapMaxRpsArg(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > 1000) throw new InvalidArgumentError('a whole number from 1 to 1000');
  return n;
}

function tapDurationArg(text: string): number {
  let ms: number;
  try {
    ms = parseDuration(text, '--tap-duration');
  } catch {
    throw new InvalidArgumentError('write a duration: 30s, 1m, 5m');
  }
  if (ms < 1000 || ms > 3600_000) throw new InvalidArgumentError('from 1s to 1h');
  return ms;
}

function listenArg(text: string): { host: string; port: number } {
  const m = /^(.*):(\d{1,5})$/.exec(text);
  const host = (m?.[1] ?? '').replace(/^\[|\]$/g, '');
  const port = Number(m?.[2]);
  if (!m || !(net.isIP(host) || host === 'localhost') || port > 65535) throw new InvalidArgumentError('write IP:PORT, e.g. 127.0.0.1:50750 (port 0: any free port)');
  return { host, port };
}

function refreshArg(text: string): number {
  let ms: number;
  try {
    ms = parseDuration(text, '--refresh');
  } catch {
    throw new InvalidArgumentError('write a duration: 2s, 5s, 1m');
  }
  if (ms < 1000) throw new InvalidArgumentError('1s at least: every refresh runs the queries again');
  return ms;
}

function namespaceArg(text: string): string {
  if (!NAMESPACE.test(text)) throw new InvalidArgumentError('a namespace name: lower case letters, digits and -');
  return text;
}

export function registerDashboardCommand(program: Command): void {
  program
    .command('dashboard')
    .description('serve a page on localhost: per namespace the workloads (as `stat`), the edges as a graph, the routes\' split against the weights, refreshed live (from Prometheus)')
    .usage('[--listen 127.0.0.1:PORT] [-n NS] [--prometheus URL | --lab NAME] [--window 1m] [--refresh 5s]')
    .option('--listen <ip:port>', 'where the page is served: a loopback address (any other needs --allow-remote)', listenArg, listenArg(DEFAULT_LISTEN))
    .option('-n, --namespace <ns>', 'the namespace the page opens on (default: the one with the most requests)', namespaceArg)
    .option('--window <duration>', 'the window rates and latencies are taken over (30s, 1m, 5m, 1h...)', windowArg, '1m')
    .option('--refresh <duration>', 'how often the page asks again', refreshArg, 5000)
    .option('--prometheus <url>', "a Prometheus's base URL (a cluster's: it must scrape every node's :15020); default: the lab's")
    .option('--lab <name>', 'read the Prometheus of this lab (default: the only lab running one)')
    .option('--dir <path>', "the Services and routes, as YAML files in a directory (as `trellis routes --dir`); default: the lab's")
    .option('--socket <path...>', "the live view taps the agent serving this socket (`trellis agent --tap-socket`) instead of the lab's")
    .option('--tap-max-rps <n>', 'requests and connections per second each agent sends one live view at most (more are dropped and counted)', tapMaxRpsArg, 20)
    .option('--tap-duration <duration>', 'how long a live view lasts before the page must start it again', tapDurationArg, 120_000)
    .option('--allow-remote', 'listen on a non-loopback --listen address (anyone who reaches it sees the mesh\'s metrics)')
    .addHelpText(
      'after',
      '\nExamples:\n  trellis dashboard                        the lab\'s Prometheus, on http://127.0.0.1:50750/\n' +
        '  trellis dashboard --prometheus http://127.0.0.1:9090 --dir ./objects -n shop\n' +
        '\nThe page reads nothing but this command: it asks it for one namespace\'s view, and this command asks Prometheus;\n' +
        'its live view asks this command, which taps the agents (a lab\'s, or --socket\'s) and streams what they see.\n' +
        'The charts (uPlot) and the graph layout (dagre) come from the installed npm packages: no network is needed.',
    )
    .action(async (flags: DashboardFlags & { allowRemote?: boolean }) => {
      const { host } = flags.listen;
      const loopback = host === 'localhost' || host === '::1' || host.startsWith('127.');
      if (!loopback && !flags.allowRemote) {
        throw new VizError('ECONFIG', `--listen ${host}: not a loopback address; the page has no login, so anyone who reaches it reads the mesh's metrics: use 127.0.0.1, or add --allow-remote if that is what you want`);
      }
      const located = locate({ prometheus: flags.prometheus, lab: flags.lab });
      const objectsDir = flags.dir ?? located.objectsDir;
      const base = { window: flags.window, output: 'json' };
      // Prometheus answers now, or the command says why and stops.
      await sessionOn(located, { ...base, namespace: flags.namespace ?? 'default' });

      const busiest = async (): Promise<string> => {
        const s = await sessionOn(located, { ...base, namespace: 'default' });
        const rows = await stat({ kind: 'namespace', namespace: undefined }, s.ctx);
        const best = [...rows].sort((a, b) => b.rps - a.rps || b.tcp.openedPerSecond - a.tcp.openedPerSecond || a.name.localeCompare(b.name))[0];
        return best?.name ?? 'default';
      };
      const server = await startDashboard({
        host,
        port: flags.listen.port,
        refreshMs: flags.refresh,
        view: async (namespace) => {
          const ns = namespace ?? flags.namespace ?? (await busiest());
          return dashboardView({ session: await sessionOn(located, { ...base, namespace: ns }), objectsDir });
        },
        liveTap: liveTapHandler({
          maxRps: flags.tapMaxRps,
          durationMs: flags.tapDuration,
          agents: () => {
            if (flags.socket?.length) return locateAgents({ socket: flags.socket }).agents;
            if (located.lab !== undefined) return locateAgents({ lab: located.lab }).agents;
            throw new VizError('ENOLAB', "the live view taps a lab's agents, or an agent on this node with --socket PATH (a cluster's, through the API server, is a later slice)");
          },
        }),
      });
      const from = located.lab !== undefined ? `lab '${located.lab}'` : flags.prometheus;
      process.stdout.write(`Trellis dashboard on ${server.url} (Prometheus of ${from}, window ${flags.window}, refreshed every ${flags.refresh / 1000} s); Ctrl-C to stop\n`);
      await new Promise<void>((resolve) => {
        const stop = () => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          void server.close().then(resolve);
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
    });
}
