// `trellis check [--pre]`: the mesh's health from Prometheus, or (--pre) whether this node can run the agent
// (viz/check.ts). One line per check, each failure with its fix; exit 1 when one failed.
import { InvalidArgumentError, type Command } from 'commander';
import { failedChecks, formatChecks, localNode, meshChecks, nodeChecks, type CheckResult } from '../check.js';
import { PromClient } from '../prom/client.js';
import { locate } from '../prom/locate.js';
import { parseWindow } from '../promql.js';

interface CheckFlags {
  pre?: boolean;
  cniBinDir: string;
  cniConfDir: string;
  window: string;
  output: string;
  prometheus?: string;
  lab?: string;
}

export function registerCheckCommand(program: Command): void {
  program
    .command('check')
    .description("the mesh's health from Prometheus (agents up, config in sync, rejected objects, capture repairs), or with --pre whether this node can run the agent")
    .usage('[--pre] [--prometheus URL | --lab NAME] [--window 5m] [-o table|json]')
    .option('--pre', 'before install, on a node: nftables, the kernel\'s connection hand-over, cgroup v2, what the eBPF capture mode needs, the CNI directories')
    .option('--cni-bin-dir <dir>', 'with --pre: where CNI plugins live', '/opt/cni/bin')
    .option('--cni-conf-dir <dir>', 'with --pre: where CNI configuration lives', '/etc/cni/net.d')
    .option('--window <duration>', 'how far back rejected objects and capture repairs count', windowArg, '5m')
    .option('-o, --output <format>', 'table|json', outputArg, 'table')
    .option('--prometheus <url>', "a Prometheus's base URL (it must scrape every node's :15020); default: the lab's")
    .option('--lab <name>', 'read the Prometheus of this lab (default: the only lab running one)')
    .addHelpText('after', '\nExamples:\n  trellis check --pre\n  trellis check --prometheus http://127.0.0.1:9090\n  trellis check --lab demo -o json')
    .action(async (flags: CheckFlags) => {
      const results = flags.pre ? await nodeChecks(localNode, { cniBin: flags.cniBinDir, cniConf: flags.cniConfDir }) : await fromPrometheus(flags);
      process.stdout.write(flags.output === 'json' ? `${JSON.stringify({ checks: results }, null, 2)}\n` : `${formatChecks(results)}\n`);
      const failed = failedChecks(results);
      if (failed) throw failed;
    });
}

/** The mesh checks; Prometheus not found or not answering is the first failed check, not a crash. */
async function fromPrometheus(flags: CheckFlags): Promise<CheckResult[]> {
  let client: PromClient;
  let rules: Set<string>;
  try {
    client = new PromClient(locate({ prometheus: flags.prometheus, lab: flags.lab }).transport);
    rules = await client.recordingRules();
  } catch (err) {
    const e = err as Error & { code?: string };
    if (e.code === 'ECONFIG') throw err;
    return [{ check: 'prometheus', verdict: 'fail', detail: e.message.replace(/;[^;]*$/, ''), fix: e.message.includes(';') ? e.message.slice(e.message.lastIndexOf(';') + 2) : 'pass --prometheus URL' }];
  }
  return meshChecks((expr) => client.query(expr), { window: flags.window, loadedRules: rules, where: client.where });
}

function windowArg(text: string): string {
  const w = parseWindow(text);
  if (!w) throw new InvalidArgumentError('write a number and a unit: 30s, 5m, 1h');
  return w;
}

function outputArg(text: string): string {
  if (text !== 'table' && text !== 'json') throw new InvalidArgumentError('use table or json');
  return text;
}
