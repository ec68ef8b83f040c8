#!/usr/bin/env node
// The `trellis` command: parses arguments and starts the chosen subcommand; nothing else happens here.
// Only the chosen subcommand's module is loaded (all of them for help), so a lab pod's `trellis tool ...`
// starts in a fraction of the time the agent's whole module graph would take.
import { Command } from 'commander';

type Register = (program: Command) => void;

const agent = async (): Promise<Register> => (await import('./cli/agent.js')).registerAgentCommand;
const identity = async (): Promise<Register> => (await import('./cli/identity.js')).registerIdentityCommands;
const lab = async (): Promise<Register> => (await import('./cli/lab.js')).registerLabCommands;
const policy = async (): Promise<Register> => (await import('./cli/policy.js')).registerPolicyCommands;
const tool = async (): Promise<Register> => (await import('./cli/tool.js')).registerToolCommands;
const demo = async (): Promise<Register> => (await import('./cli/demo.js')).registerDemoCommand;
const bench = async (): Promise<Register> => (await import('./cli/bench.js')).registerBenchCommand;

/** Subcommand name -> the module that registers it (`identity` also registers `ca`). */
const BY_NAME: Record<string, () => Promise<Register>> = { agent, identity, ca: identity, lab, policy, tool, demo, bench };
const ALL = [agent, identity, lab, policy, tool, demo, bench];

async function main(): Promise<void> {
  const program = new Command('trellis')
    .description('Trellis: a sidecarless service mesh for Kubernetes')
    .showHelpAfterError();
  const chosen = BY_NAME[process.argv[2] ?? ''];
  for (const load of chosen ? [chosen] : ALL) (await load())(program);
  await program.parseAsync(process.argv);
}

main().catch((err: Error & { code?: string }) => {
  process.stderr.write(`trellis: ${err.message}\n`);
  process.exit(err.code === 'ECONFIG' ? 2 : 1);
});
