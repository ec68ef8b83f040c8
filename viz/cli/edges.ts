// `trellis edges [-n NS | -A]`: who talks to whom, with both identities and whether the edge is mTLS (viz/edges.ts).
import type { Command } from 'commander';
import { edges } from '../edges.js';
import { VizError } from '../errors.js';
import { edgesTable } from '../format.js';
import { openSession, print, where, withCommonFlags, type CommonFlags } from './common.js';

export function registerEdgesCommand(program: Command): void {
  withCommonFlags(
    program
      .command('edges [resource]')
      .description('who talks to whom: source and destination workloads, their identities, and whether the edge is mTLS (from Prometheus)')
      .usage('[deploy] [-n NS | -A] [--window 1m] [-o table|wide|json]'),
    { allNamespaces: true },
  )
    .addHelpText(
      'after',
      '\nAn edge is listed when it carried a request or opened a connection in the window, or holds one open now, and one end is in the namespace.\n' +
        'CLIENT_ID is the identity the destination verified (or, outside the mesh, "-"); SERVER_ID the one the caller verified.',
    )
    .action(async (resource: string | undefined, flags: CommonFlags) => {
      if (resource !== undefined && !['deploy', 'deployment', 'deployments', 'workload', 'workloads', 'wl'].includes(resource.toLowerCase())) {
        throw new VizError('ECONFIG', `edges are between workloads: drop "${resource}" (or write deploy)`);
      }
      const s = await openSession(flags);
      const rows = await edges(s.namespace, s.ctx);
      await print(s, rows, () => edgesTable(rows, { wide: s.output === 'wide' }), where(s.namespace));
    });
}
