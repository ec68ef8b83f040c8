// `trellis routes svc/NAME`: per route rule and backend of a Service, the golden metrics and the observed split
// against the configured weights (viz/routes.ts). The routes themselves come from the objects: a lab's, or --dir.
import type { Command } from 'commander';
import { VizError } from '../errors.js';
import { routesTable } from '../format.js';
import { configuredRules, loadRouteState, routes } from '../routes.js';
import { openSession, print, withCommonFlags, type CommonFlags } from './common.js';

interface RoutesFlags extends CommonFlags {
  dir?: string;
}

export function registerRoutesCommand(program: Command): void {
  withCommonFlags(
    program
      .command('routes <service>')
      .description("per HTTPRoute/GRPCRoute rule and backend of a Service: success rate, requests per second, latency, and the split observed against the weights (from Prometheus)")
      .usage('svc/NAME [-n NS] [--dir DIR] [--window 1m] [-o table|wide|json]')
      .option('--dir <path>', "the Services and routes, as YAML files in a directory (the agent's dir source format; `kubectl get services,httproutes,grpcroutes -A -o yaml` saved there does); default: the lab's"),
    { allNamespaces: false },
  )
    .addHelpText(
      'after',
      '\nExample:\n  trellis routes svc/server -n demo\n' +
        '\nWEIGHT is the backend\'s configured share of its rule; SPLIT the share of the rule\'s requests it got in the window.\n' +
        `The ${'[default]'} row counts meshed callers' requests to the Service that no route took.`,
    )
    .action(async (service: string, flags: RoutesFlags) => {
      const m = /^(?:svc|service|services)\/([a-z0-9]([-a-z0-9]*[a-z0-9])?)$/.exec(service);
      if (!m) throw new VizError('ECONFIG', `"${service}": name the Service as svc/NAME, e.g. svc/server`);
      const name = m[1]!;
      const s = await openSession(flags);
      const dir = flags.dir ?? s.located.objectsDir;
      if (dir === undefined) {
        throw new VizError(
          'ECONFIG',
          'which routes belong to a Service is in the route objects, not in the metrics: pass --dir with them ' +
            '(e.g. `kubectl get services,httproutes,grpcroutes -A -o yaml > DIR/routes.yaml`)',
        );
      }
      const rules = configuredRules(await loadRouteState(dir), s.namespace!, name);
      const rows = await routes(s.namespace!, name, rules, s.ctx);
      await print(s, rows, () => routesTable(rows, { wide: s.output === 'wide' }), `to svc/${name} in namespace ${s.namespace}`);
    });
}
