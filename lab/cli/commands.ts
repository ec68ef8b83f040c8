// The harness's subcommands of `trellis` (lab, demo, bench, tool), found by agent/main.ts at run time: the agent
// never imports lab/, and a build without the harness (the image) says so instead.
import type { Command } from 'commander';

type Register = (program: Command) => void;

const COMMANDS: Record<string, () => Promise<Register>> = {
  lab: async () => (await import('./lab.js')).registerLabCommands,
  demo: async () => (await import('./demo.js')).registerDemoCommand,
  bench: async () => (await import('./bench.js')).registerBenchCommand,
  tool: async () => (await import('./tool.js')).registerToolCommands,
};

/** Loads only the named command's module (a lab pod's `trellis tool ...` starts without the lab's modules). */
export async function registerHarnessCommand(name: string): Promise<Register> {
  const load = COMMANDS[name];
  if (!load) throw new Error(`no harness command ${name}`);
  return load();
}
