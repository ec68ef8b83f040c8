// `trellis top NS/WORKLOAD`: the workload's busiest edges and routes (viz/top.ts), one picture every --interval,
// cleared and redrawn on a terminal, one after the other otherwise (`-o json`: one JSON line each). The rows come from
// Prometheus, which holds no paths; below them, the busiest paths come from tapping the workload's agents for the
// interval (viz/tap/paths.ts), bounded by --max-rps. When no agent can be tapped, one line says why.
import { InvalidArgumentError, type Command } from 'commander';
import { parseDuration } from '../../agent/config.js';
import { VizError } from '../errors.js';
import { locate, type Located } from '../prom/locate.js';
import { selector } from '../promql.js';
import { locateAgents, type TapAgent } from '../tap/locate.js';
import { pathsHeading, pathsTable, tapPaths, type PathsPicture } from '../tap/paths.js';
import { top, topTable, type TopTarget } from '../top.js';
import { explainEmpty, sessionOn, withCommonFlags, type CommonFlags, type Session } from './common.js';

interface TopFlags extends CommonFlags {
  interval: number;
  iterations?: number;
  maxRps: number;
  socket?: string[];
}

/** The agents to tap for paths, or why there are none (said in one line on every picture). */
export type TapReach = { readonly agents: readonly TapAgent[] } | { readonly problem: string };

/** Where the pictures go: a terminal is cleared before each one. */
export interface Screen {
  write(text: string): unknown;
  readonly isTTY?: boolean;
  readonly rows?: number;
}

const CLEAR = '\x1b[H\x1b[2J';
const HIDE_CURSOR = '\x1b[?25l';
const SHOW_CURSOR = '\x1b[?25h';
const NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;
export const DEFAULT_TOP_MAX_RPS = 100;

function intervalArg(text: string): number {
  let ms: number;
  try {
    ms = parseDuration(text, '--interval');
  } catch {
    throw new InvalidArgumentError('write a duration: 2s, 5s, 1m');
  }
  if (ms < 1000) throw new InvalidArgumentError('1s at least: every picture runs the queries again');
  return ms;
}

function maxRpsArg(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > 100_000) throw new InvalidArgumentError('a whole number from 1 to 100000');
  return n;
}

/** --socket names the agents; else the lab whose Prometheus is read; a Prometheus of --prometheus has no agents we reach. */
export function tapReach(flags: { socket?: string[] | undefined }, located: Pick<Located, 'lab'>, stateRoot?: string): TapReach {
  try {
    if (flags.socket?.length) return { agents: locateAgents({ socket: flags.socket }, stateRoot).agents };
    if (located.lab !== undefined) return { agents: locateAgents({ lab: located.lab }, stateRoot).agents };
  } catch (err) {
    return { problem: (err as Error).message };
  }
  return { problem: "tap reaches a lab's agents, or an agent on this node with --socket PATH (a cluster's, through the API server, is a later slice)" };
}

function iterationsArg(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('a whole number, 1 or more');
  return n;
}

/** "viz/client" or "client" (with -n). */
export function parseTarget(text: string, namespace: string): TopTarget {
  const parts = text.split('/');
  const [ns, wl] = parts.length === 2 ? [parts[0]!, parts[1]!] : parts.length === 1 ? [namespace, parts[0]!] : ['', ''];
  if (!NAME.test(ns) || !NAME.test(wl)) throw new VizError('ECONFIG', `"${text}": name the workload as NAMESPACE/WORKLOAD, e.g. demo/server (or WORKLOAD with -n)`);
  return { namespace: ns, workload: wl };
}

export function registerTopCommand(program: Command): void {
  withCommonFlags(
    program
      .command('top <workload>')
      .description("a workload's busiest edges and routes (from Prometheus) and paths (tapped from its agents), both ways, refreshed live in the terminal")
      .usage('NS/WORKLOAD [--window 1m] [--interval 2s] [--iterations N] [--max-rps N] [--socket PATH] [-o table|wide|json]')
      .option('--interval <duration>', 'time between pictures (and how long each tap for paths lasts)', intervalArg, 2000)
      .option('--iterations <n>', 'stop after N pictures (default: until Ctrl-C)', iterationsArg)
      .option('--max-rps <n>', 'requests per second each agent sends the tap for paths at most; more are dropped and counted', maxRpsArg, DEFAULT_TOP_MAX_RPS)
      .option('--socket <path...>', "tap the agent serving this socket (`trellis agent --tap-socket`) for paths, instead of the lab's"),
    { allNamespaces: false },
  )
    .addHelpText(
      'after',
      '\nExamples:\n  trellis top demo/server                  who calls server and what server calls, every 2 s\n' +
        '  trellis top client -n demo --iterations 1 -o wide\n' +
        `\nA row is a caller of the workload (FROM it, TO the workload) or something it calls (per Service and route rule),\n` +
        'from Prometheus over --window. Below, the busiest paths (method and path, per peer and route rule) from tapping\n' +
        "the workload's agents for each --interval, at most --max-rps per agent (drops are counted); `trellis tap` shows\n" +
        'each request.',
    )
    .action(async (workload: string, flags: TopFlags) => {
      const target = parseTarget(workload, flags.namespace);
      const located = locate({ prometheus: flags.prometheus, lab: flags.lab });
      const open = () => sessionOn(located, { ...flags, namespace: target.namespace, allNamespaces: false });
      // The first picture must work: a wrong name or an unreachable Prometheus stops here with its one line.
      const first = await open();
      const rows = await top(target, first.ctx);
      if (rows.length === 0) await refuseUnknown(target, first);
      const reach = tapReach(flags, located);
      await runTop({
        screen: process.stdout,
        interval: flags.interval,
        iterations: flags.iterations,
        picture: async (_i, signal) => {
          // The tap runs for the interval; the Prometheus rows are read as it ends, so both are of the same moment.
          const paths = 'agents' in reach ? await tapPaths({ agents: reach.agents, target, maxRps: flags.maxRps, durationMs: flags.interval, signal }) : reach.problem;
          const s = await open();
          return picture(target, s, await top(target, s.ctx), flags, paths);
        },
      });
    });
}

/**
 * One picture: a header line, the Prometheus rows or why there are none, then the paths the tap saw (or the one line
 * saying why the agents could not be tapped).
 */
export function picture(t: TopTarget, s: Pick<Session, 'output' | 'provenance' | 'window'> & { client: { at: number; where: string } }, rows: Awaited<ReturnType<typeof top>>, flags: Pick<TopFlags, 'interval'>, paths: PathsPicture | string): string {
  if (s.output === 'json') {
    const p = typeof paths === 'string' ? { error: paths } : { seconds: paths.seconds, agents: paths.agents, failed: paths.failed, dropped: paths.dropped, rows: paths.rows };
    return `${JSON.stringify({ ...s.provenance, workload: `${t.namespace}/${t.workload}`, rows, paths: p })}\n`;
  }
  const wide = s.output === 'wide';
  const at = new Date(s.client.at * 1000).toTimeString().slice(0, 8);
  const head = `trellis top ${t.namespace}/${t.workload}  ${at}  window ${s.window}, every ${flags.interval / 1000} s, Prometheus ${s.client.where}\n\n`;
  const edges = rows.length === 0 ? `no traffic to or from ${t.namespace}/${t.workload} in the last ${s.window}\n` : `${topTable(t, rows, { wide })}\n`;
  let tail: string;
  if (typeof paths === 'string') tail = `paths: not tapped: ${paths}\n`;
  else if (paths.agents.length === 0 || paths.rows.length === 0) tail = `${pathsHeading(paths)}${paths.agents.length ? `\nno request to or from ${t.namespace}/${t.workload} in the interval` : ''}\n`;
  else tail = `${pathsHeading(paths)}\n${pathsTable(t, paths.rows, { wide })}\n`;
  return `${head}${edges}\n${tail}`;
}

/** No row at all: a workload the metrics have never seen is an error (with the names they have); an idle one is not. */
async function refuseUnknown(t: TopTarget, s: Session): Promise<void> {
  const seen = new Set<string>();
  for (const side of ['source', 'destination']) {
    const by = `count by (${side}_workload) `;
    const sel = selector({ [`${side}_workload_namespace`]: t.namespace });
    for (const v of await s.client.query(`${by}(trellis_requests_total${sel}) or ${by}(trellis_tcp_connections_opened_total${sel})`)) {
      const w = v.labels[`${side}_workload`];
      if (w && w !== 'unknown') seen.add(w);
    }
  }
  if (seen.has(t.workload)) return;
  if (seen.size === 0) {
    const why = await explainEmpty(s, `in namespace ${t.namespace}`);
    if (why.error) throw new VizError('ENODATA', why.message);
  }
  const list = [...seen].sort();
  throw new VizError(
    'ENODATA',
    `no mesh traffic recorded to or from ${t.namespace}/${t.workload} (workloads with some in ${t.namespace}: ${list.slice(0, 12).join(', ') || 'none'}${list.length > 12 ? ', ...' : ''}): check the name and the namespace`,
  );
}

export interface TopLoop {
  readonly screen: Screen;
  readonly interval: number;
  /** undefined: until SIGINT/SIGTERM. */
  readonly iterations: number | undefined;
  /**
   * The i-th picture (from 0); `signal` aborts when the process is told to stop. A failure after the first is shown
   * in place of the picture, and the loop goes on.
   */
  readonly picture: (i: number, signal: AbortSignal) => Promise<string>;
  readonly sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

/** Draws pictures until the count is reached or the process is told to stop; a terminal's cursor is given back. */
export async function runTop(loop: TopLoop): Promise<void> {
  const tty = loop.screen.isTTY === true;
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const sleep = loop.sleep ?? defaultSleep;
  if (tty) loop.screen.write(HIDE_CURSOR);
  try {
    for (let i = 0; loop.iterations === undefined || i < loop.iterations; i++) {
      const started = Date.now();
      let text: string;
      try {
        text = await loop.picture(i, stop.signal);
      } catch (err) {
        if (i === 0) throw err;
        text = `trellis top: ${(err as Error).message} (trying again in ${loop.interval / 1000} s)\n`;
      }
      if (stop.signal.aborted) break;
      loop.screen.write(tty ? `${CLEAR}${fit(text, loop.screen.rows)}` : i > 0 && !text.startsWith('{') ? `\n${text}` : text);
      if (loop.iterations !== undefined && i + 1 >= loop.iterations) break;
      await sleep(Math.max(0, loop.interval - (Date.now() - started)), stop.signal);
      if (stop.signal.aborted) break;
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (tty) loop.screen.write(SHOW_CURSOR);
  }
}

/** Cut to the terminal's height, saying how many rows did not fit. */
export function fit(text: string, rows: number | undefined): string {
  const lines = text.replace(/\n$/, '').split('\n');
  if (!rows || lines.length <= rows - 1) return `${lines.join('\n')}\n`;
  const keep = Math.max(1, rows - 2);
  return `${lines.slice(0, keep).join('\n')}\n(${lines.length - keep} more rows: a taller terminal shows them)\n`;
}

function defaultSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
  });
}
