// `trellis stat [ns|deploy|svc] [NAME]`: golden metrics per row, read from Prometheus (viz/stat.ts says what a row is).
import { InvalidArgumentError, type Command } from 'commander';
import { VizError } from '../errors.js';
import { statTable } from '../format.js';
import { stat, type Peer, type StatKind, type StatRequest } from '../stat.js';
import { openSession, print, where, withCommonFlags, type CommonFlags } from './common.js';

const KINDS: Readonly<Record<string, StatKind>> = {
  ns: 'namespace',
  namespace: 'namespace',
  namespaces: 'namespace',
  deploy: 'workload',
  deployment: 'workload',
  deployments: 'workload',
  workload: 'workload',
  workloads: 'workload',
  wl: 'workload',
  sts: 'workload',
  statefulset: 'workload',
  ds: 'workload',
  daemonset: 'workload',
  svc: 'service',
  service: 'service',
  services: 'service',
};
const SHORT: Readonly<Record<StatKind, string>> = { namespace: 'ns', workload: 'deploy', service: 'svc' };

/** "deploy", "svc/web", "ns"... -> a kind and maybe a name. Pods are refused with the reason. */
export function parseResource(text: string): { kind: StatKind; name?: string } {
  const [k, name, ...rest] = text.split('/');
  if (rest.length || name === '') throw new VizError('ECONFIG', `"${text}": write KIND or KIND/NAME, e.g. deploy/web`);
  const lower = k!.toLowerCase();
  if (['po', 'pod', 'pods'].includes(lower)) {
    throw new VizError(
      'ECONFIG',
      "pods: the agents' metrics name workloads (a pod's app label, or its owner), not pods, so Prometheus cannot tell pods apart; use deploy/NAME",
    );
  }
  const kind = KINDS[lower];
  if (!kind) throw new VizError('ECONFIG', `unknown resource "${k}": use ns, deploy (any workload) or svc`);
  return name === undefined ? { kind } : { kind, name };
}

function peerArg(text: string): { kind: StatKind; name: string } {
  const slash = text.includes('/');
  const r = slash ? parseResource(text) : { kind: 'workload' as const, name: text };
  if (!r.name) throw new InvalidArgumentError('name one: KIND/NAME (deploy/web, ns/shop, svc/api) or a workload NAME');
  return { kind: r.kind, name: r.name };
}

interface StatFlags extends CommonFlags {
  from?: { kind: StatKind; name: string };
  to?: { kind: StatKind; name: string };
  fromNamespace?: string;
  toNamespace?: string;
}

export function registerStatCommand(program: Command): void {
  withCommonFlags(
    program
      .command('stat [resource] [name]')
      .description('success rate, requests per second, latency, TCP connections and the share of mTLS per namespace, workload or Service (from Prometheus)')
      .usage('[ns|deploy|svc] [NAME] [-n NS | -A] [--from RES | --to RES] [--window 1m] [-o table|wide|json]')
      .option('--from <resource>', 'only traffic from this caller: deploy/NAME (or NAME) or ns/NAME', peerArg)
      .option('--from-namespace <ns>', 'the namespace of --from (default: -n)')
      .option('--to <resource>', 'rows are the callers of this target: deploy/NAME (or NAME), svc/NAME or ns/NAME', peerArg)
      .option('--to-namespace <ns>', 'the namespace of --to (default: -n)'),
    { allNamespaces: true },
  )
    .addHelpText(
      'after',
      '\nExamples:\n  trellis stat -n demo                     every workload of demo, as a destination\n' +
        '  trellis stat deploy/server -n demo       one workload\n  trellis stat svc -n demo                 per Service\n' +
        '  trellis stat ns                          per namespace\n  trellis stat deploy -n demo --to server  who calls server, as they saw it\n' +
        '\nMESHED: the row\'s own agent reports it. SECURED: the share of its requests (without requests, of its connections) over mTLS.',
    )
    .action(async (resource: string | undefined, name: string | undefined, flags: StatFlags) => {
      const r = resource === undefined ? { kind: 'workload' as StatKind } : parseResource(resource);
      if (name !== undefined && r.name !== undefined) throw new VizError('ECONFIG', `"${resource}" already names one; drop "${name}"`);
      const s = await openSession(flags);
      const ns = s.namespace;
      const peer = (p: { kind: StatKind; name: string } | undefined, pns: string | undefined): Peer | undefined =>
        p && { ...p, namespace: pns ?? ns ?? 'default' };
      const req: StatRequest = {
        kind: r.kind,
        name: r.name ?? name,
        namespace: ns,
        from: peer(flags.from, flags.fromNamespace),
        to: peer(flags.to, flags.toNamespace),
      };
      const rows = await stat(req, s.ctx);
      if (rows.length === 0 && req.name !== undefined) throw await notFound(req, s);
      await print(s, rows, () => statTable(rows, { kind: req.kind, allNamespaces: ns === undefined, wide: s.output === 'wide' }), where(req.kind === 'namespace' ? undefined : ns));
    });
}

/** The named row is not there: say which are, so a typo shows. */
async function notFound(req: StatRequest, s: Awaited<ReturnType<typeof openSession>>): Promise<VizError> {
  const others = await stat({ ...req, name: undefined }, s.ctx);
  const scope = req.kind === 'namespace' ? '' : ` ${where(req.namespace)}`;
  const list = others.length ? `with traffic${scope}: ${others.slice(0, 12).map((o) => o.name).join(', ')}${others.length > 12 ? ', ...' : ''}` : `none has traffic${scope}`;
  return new VizError('ENODATA', `no traffic to ${SHORT[req.kind]}/${req.name}${scope} in the last ${s.window} (${list}): check the name and -n, or widen --window`);
}
