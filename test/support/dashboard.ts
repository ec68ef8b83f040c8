// `trellis dashboard` as a user starts it, for the browser tests: the built command in a process of its own, its URL
// read from what it prints, a stop that waits for it to exit, and a Chromium page to open it in.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';

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

/** The dashboard as a person sees it: the command started, and a page of Debian's Chromium (headless) to open it in. */
export interface DashboardInBrowser {
  readonly dashboard: DashboardProcess;
  readonly browser: Browser;
  readonly page: Page;
  /** Closes the browser, then stops the command. */
  close(): Promise<void>;
}

export const CHROMIUM = '/usr/bin/chromium';

export async function openDashboard(args: string[]): Promise<DashboardInBrowser> {
  const dashboard = await startDashboard(args);
  try {
    const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
    const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
    return {
      dashboard,
      browser,
      page,
      close: async () => {
        await browser.close();
        await dashboard.stop();
      },
    };
  } catch (err) {
    await dashboard.stop();
    throw err;
  }
}
