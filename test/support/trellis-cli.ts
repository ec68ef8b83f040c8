// Runs the built `trellis` command (dist/) with the project's Node, as a user would, and returns what it printed.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export function trellis(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const main = path.join(ROOT, 'dist/agent/main.js');
  if (!existsSync(main)) throw new Error('run `npm run build` first: these tests run the trellis command');
  return new Promise((resolve) => {
    execFile(path.join(ROOT, 'node_modules/.bin/node'), [main, ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}
