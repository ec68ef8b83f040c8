// `trellis dashboard` as a user starts it, for the browser tests: the built command in a process of its own, its URL
// read from what it prints, and a stop that waits for it to exit.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '../..');

export interface DashboardProcess {
  readonly url: string;
  readonly child: ChildProcess;
  /** SIGINT, then waits for the exit. */
  stop(): Promise<void>;
}

/** Starts `trellis dashboard ARGS`; resolves once it prints the URL it serves on. */
export function startDashboard(args: string[]): Promise<DashboardProcess> {
  const child = spawn(path.join(ROOT, 'node_modules/.bin/node'), [path.join(ROOT, 'dist/agent/main.js'), 'dashboard', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGINT');
    await exited;
  };
  let text = '';
  child.stderr!.on('data', (d: Buffer) => (text += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`trellis dashboard printed no URL in 15 s: ${text}`));
    }, 15_000);
    child.stdout!.on('data', (d: Buffer) => {
      text += d.toString();
      const m = /on (http:\/\/\S+\/) /.exec(text);
      if (m) (clearTimeout(timer), resolve({ url: m[1]!, child, stop }));
    });
    child.once('exit', (code) => (clearTimeout(timer), reject(new Error(`trellis dashboard exited ${code}: ${text}`))));
  });
}
