// What `trellis stat`, `edges` and `routes` share: their flags (parsed and checked once into a frozen object),
// finding and asking Prometheus, and the one line that explains an empty answer.
import { InvalidArgumentError, type Command } from 'commander';
import { VizError } from '../errors.js';
import { OUTPUTS, asJson, type Output, type Provenance } from '../format.js';
import { PromClient } from '../prom/client.js';
import { locate, type Located } from '../prom/locate.js';
import { ALL_RULES, parseWindow, type Source } from '../promql.js';
import type { QueryContext } from '../query.js';

export interface CommonFlags {
  namespace: string;
  allNamespaces?: boolean;
  window: string;
  output: string;
  prometheus?: string;
  lab?: string;
}

export interface Session {
  readonly client: PromClient;
  readonly ctx: QueryContext;
  readonly located: Located;
  readonly output: Output;
  /** undefined with -A. */
  readonly namespace: string | undefined;
  readonly window: string;
  readonly provenance: Provenance;
}

export const DEFAULT_NAMESPACE = 'default';

/** The flags every viewer command takes; `namespaces`: also -n and -A. */
export function withCommonFlags(cmd: Command, opts: { allNamespaces: boolean }): Command {
  cmd.option('-n, --namespace <ns>', 'the namespace', DEFAULT_NAMESPACE);
  if (opts.allNamespaces) cmd.option('-A, --all-namespaces', 'every namespace');
  return cmd
    .option('--window <duration>', 'the window rates and latencies are taken over (30s, 1m, 5m, 1h...)', windowArg, '1m')
    .option('-o, --output <format>', `${OUTPUTS.join('|')}`, outputArg, 'table')
    .option('--prometheus <url>', "a Prometheus's base URL (a cluster's: it must scrape every node's :15020); default: the lab's")
    .option('--lab <name>', 'read the Prometheus of this lab (default: the only lab running one)');
}

export function windowArg(text: string): string {
  const w = parseWindow(text);
  if (!w) throw new InvalidArgumentError('write a number and a unit: 30s, 1m, 5m, 1h');
  return w;
}

function outputArg(text: string): string {
  if (!(OUTPUTS as readonly string[]).includes(text)) throw new InvalidArgumentError(`use ${OUTPUTS.join(', ')}`);
  return text;
}

/** Finds Prometheus, checks it answers, and settles where the rates come from (recording rules or raw). */
export async function openSession(flags: CommonFlags, stateRoot?: string): Promise<Session> {
  return sessionOn(locate({ prometheus: flags.prometheus, lab: flags.lab }, stateRoot), flags);
}

/**
 * A session on a Prometheus already found, evaluated now: what a command that refreshes (`top`, the dashboard)
 * opens for every picture, so each is one consistent moment and a rule loaded meanwhile is used from then on.
 */
export async function sessionOn(located: Located, flags: Pick<CommonFlags, 'window' | 'output' | 'namespace' | 'allNamespaces'>): Promise<Session> {
  const client = new PromClient(located.transport);
  const loaded = await client.recordingRules();
  const source: Source = { window: flags.window, rules: ALL_RULES.every((r) => loaded.has(r)) };
  return Object.freeze({
    client,
    ctx: { query: (expr: string) => client.query(expr), source },
    located,
    output: flags.output as Output,
    namespace: flags.allNamespaces ? undefined : flags.namespace,
    window: flags.window,
    provenance: {
      prometheus: client.where,
      ...(located.lab !== undefined && { lab: located.lab }),
      window: flags.window,
      recordingRules: source.rules && flags.window === '1m',
      at: new Date(client.at * 1000).toISOString(),
    },
  });
}

/**
 * Why a query found nothing, as one line: Prometheus holds no Trellis metrics at all (an error), the namespace has
 * never had mesh traffic (an error: likely not in the mesh), or it had none in the window (not an error).
 */
export async function explainEmpty(s: Session, what: string): Promise<{ error: boolean; message: string }> {
  // Requests and connections: a connection the agent carries as HTTP is counted per request only.
  const any = await s.client.query('count(trellis_requests_total) or count(trellis_tcp_connections_opened_total)');
  if (any.length === 0) {
    return {
      error: true,
      message:
        `Prometheus at ${s.client.where} holds no Trellis metrics: it does not scrape the agents (every node's :15020/metrics; ` +
        'manifests/monitoring/podmonitor.yaml), or no meshed pod has had traffic yet',
    };
  }
  if (s.namespace !== undefined) {
    const seen = new Set<string>();
    for (const side of ['destination', 'source']) {
      const by = `count by (${side}_workload_namespace)`;
      for (const v of await s.client.query(`${by} (trellis_requests_total) or ${by} (trellis_tcp_connections_opened_total)`)) {
        const ns = v.labels[`${side}_workload_namespace`];
        if (ns && ns !== 'unknown') seen.add(ns);
      }
    }
    if (!seen.has(s.namespace)) {
      const list = [...seen].sort().join(', ') || 'none';
      return {
        error: true,
        message: `no mesh traffic recorded in namespace ${s.namespace} (namespaces with some: ${list}): is it in the mesh (annotation trellis.dev/mesh: enabled on the Namespace), and are its workloads called? -A shows every namespace`,
      };
    }
  }
  return { error: false, message: `no traffic ${what} in the last ${s.window}: widen --window, or send some` };
}

/** Prints the answer. An empty one is explained in one line (stderr); when it is an error, the command fails. */
export async function print(s: Session, rows: readonly unknown[], table: () => string, what: string): Promise<void> {
  const empty = rows.length === 0 ? await explainEmpty(s, what) : undefined;
  if (empty?.error) throw new VizError('ENODATA', empty.message);
  if (s.output === 'json') process.stdout.write(asJson(s.provenance, rows));
  else if (empty) process.stderr.write(`${empty.message}\n`);
  else process.stdout.write(`${table()}\n`);
}

/** "in namespace demo" / "in any namespace", for messages. */
export function where(namespace: string | undefined): string {
  return namespace === undefined ? 'in any namespace' : `in namespace ${namespace}`;
}
