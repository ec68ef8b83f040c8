#!/usr/bin/env node
// The `trellis` command: parses arguments and starts the chosen subcommand; nothing else happens here.
import { Command } from 'commander';
import { registerAgentCommand } from './cli/agent.js';
import { registerBenchCommand } from './cli/bench.js';
import { registerDemoCommand } from './cli/demo.js';
import { registerIdentityCommands } from './cli/identity.js';
import { registerLabCommands } from './cli/lab.js';
import { registerPolicyCommands } from './cli/policy.js';
import { registerToolCommands } from './cli/tool.js';

const program = new Command('trellis')
  .description('Trellis: a sidecarless service mesh for Kubernetes')
  .showHelpAfterError();
registerAgentCommand(program);
registerIdentityCommands(program);
registerLabCommands(program);
registerPolicyCommands(program);
registerToolCommands(program);
registerDemoCommand(program);
registerBenchCommand(program);

program.parseAsync(process.argv).catch((err: Error & { code?: string }) => {
  process.stderr.write(`trellis: ${err.message}\n`);
  process.exit(err.code === 'ECONFIG' ? 2 : 1);
});
