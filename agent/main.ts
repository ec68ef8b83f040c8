#!/usr/bin/env node
// The `trellis` command: parses arguments and starts the chosen subcommand; nothing else happens here.
// Only the chosen subcommand's module is loaded (all of them for help), so a lab pod's `trellis tool ...`
// starts in a fraction of the time the agent's whole module graph would take.
// The harness commands (lab, demo, bench, tool) live in lab/ beside agent/, the mesh viewer (stat, edges, routes, check,
// dashboard, top, tap) in viz/; a build without them (the image) says so instead of failing on a missing module. agent/ never
// imports either: they are found at run time.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';

type Register = (program: Command) => void;

const agent = async (): Promise<Register> => (await import('./cli/agent.js')).registerAgentCommand;
const identity = async (): Promise<Register> => (await import('./cli/identity.js')).registerIdentityCommands;
const policy = async (): Promise<Register> => (await import('./cli/policy.js')).registerPolicyCommands;

/** The compiled harness (lab/cli/commands.ts) and viewer (viz/cli/commands.ts), next to dist/agent when the checkout built them. */
const HARNESS = new URL('../lab/cli/commands.js', import.meta.url);
const HARNESS_COMMANDS = ['lab', 'demo', 'bench', 'tool'] as const;
const VIZ = new URL('../viz/cli/commands.js', import.meta.url);
const VIZ_COMMANDS = ['stat', 'edges', 'routes', 'check', 'dashboard', 'top', 'tap'] as const;

/** A command registered by a module found at run time; `what` says which part of the checkout it is. */
function external(name: string, module: URL, exported: 'registerHarnessCommand' | 'registerVizCommand', what: string): () => Promise<Register> {
  return async () => {
    if (!existsSync(fileURLToPath(module))) {
      // Registered as a stub, so `trellis --help` still lists it and running it explains itself.
      return (program) =>
        void program
          .command(name, { hidden: false })
          .description(`(not in this build) ${what}; run it from a source checkout after \`npm run build\``)
          .allowUnknownOption()
          .argument('[args...]')
          .action(() => {
            throw Object.assign(
              new Error(`\`trellis ${name}\` is part of ${what}, which this build does not include (the agent image ships the agent only); run it from a source checkout after \`npm ci && npm run build\``),
              { code: 'ECONFIG' },
            );
          });
    }
    const mod = (await import(module.href)) as Record<typeof exported, (name: string) => Promise<Register>>;
    return mod[exported](name);
  };
}

const harness = (name: string) => external(name, HARNESS, 'registerHarnessCommand', `the lab harness (the ${name} command)`);
const viz = (name: string) => external(name, VIZ, 'registerVizCommand', `the mesh viewer (the ${name} command)`);

/** Subcommand name -> the module that registers it (`identity` also registers `ca`). */
const BY_NAME: Record<string, () => Promise<Register>> = {
  agent,
  identity,
  ca: identity,
  policy,
  ...Object.fromEntries(HARNESS_COMMANDS.map((n) => [n, harness(n)])),
  ...Object.fromEntries(VIZ_COMMANDS.map((n) => [n, viz(n)])),
};
const ALL = [agent, identity, policy, ...VIZ_COMMANDS.map(viz), ...HARNESS_COMMANDS.map(harness)];

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
