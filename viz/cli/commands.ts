// The viewer's subcommands of `trellis` (stat, edges, routes, check, dashboard, top, tap), found by agent/main.ts at run time: the agent never
// imports viz/, and a build without it (the image) says so instead.
import type { Command } from 'commander';

type Register = (program: Command) => void;

const COMMANDS: Record<string, () => Promise<Register>> = {
  stat: async () => (await import('./stat.js')).registerStatCommand,
  edges: async () => (await import('./edges.js')).registerEdgesCommand,
  routes: async () => (await import('./routes.js')).registerRoutesCommand,
  check: async () => (await import('./check.js')).registerCheckCommand,
  dashboard: async () => (await import('./dashboard.js')).registerDashboardCommand,
  top: async () => (await import('./top.js')).registerTopCommand,
  tap: async () => (await import('./tap.js')).registerTapCommand,
};

export const VIZ_COMMANDS = Object.keys(COMMANDS);

export async function registerVizCommand(name: string): Promise<Register> {
  const load = COMMANDS[name];
  if (!load) throw new Error(`no viewer command ${name}`);
  return load();
}
