// `trellis dashboard`: serves the dashboard page on loopback (viz/dashboard/server.ts) until Ctrl-C. Prometheus is
// found once, as every viewer command finds it; each time the page asks, a session evaluated at that moment computes
// the view of the namespace it shows (viz/dashboard/view.ts).
import net from 'node:net';
import { InvalidArgumentError, type Command } from 'commander';
import { parseDuration } from '../../agent/config.js';
import { VizError } from '../errors.js';
import { startDashboard } from '../dashboard/server.js';
import { dashboardView } from '../dashboard/view.js';
import { locate } from '../prom/locate.js';
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
    .option('--allow-remote', 'listen on a non-loopback --listen address (anyone who reaches it sees the mesh\'s metrics)')
    .addHelpText(
      'after',
      '\nExamples:\n  trellis dashboard                        the lab\'s Prometheus, on http://127.0.0.1:50750/\n' +
        '  trellis dashboard --prometheus http://127.0.0.1:9090 --dir ./objects -n shop\n' +
        '\nThe page reads nothing but this command: it asks it for one namespace\'s view, and this command asks Prometheus.\n' +
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
