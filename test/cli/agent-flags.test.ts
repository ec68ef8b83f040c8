// `trellis agent` flags that decide what the audit trail does: through the real command line (commander's
// --no-audit) and through agentConfig.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { agentConfig } from '../../agent/config.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function trellis(args: string[]): Promise<{ code: number; stderr: string }> {
  const main = path.join(ROOT, 'dist/agent/main.js');
  if (!existsSync(main)) throw new Error('run `npm run build` first: these tests run the trellis command');
  return new Promise((resolve) => {
    execFile(path.join(ROOT, 'node_modules/.bin/node'), [main, ...args], { timeout: 30_000 }, (err, _stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stderr });
    });
  });
}

describe('agent audit flags', () => {
  it('writes the audit trail by default, whatever --log-level says', () => {
    for (const logLevel of ['info', 'warn', 'error']) {
      expect(agentConfig({ node: 'n', dir: '/nonexistent', logLevel }).audit.enabled).toBe(true);
    }
  });

  it('--no-audit turns it off, and refuses the file flags beside it', async () => {
    expect(agentConfig({ node: 'n', dir: '/nonexistent', audit: false }).audit.enabled).toBe(false);
    expect(() => agentConfig({ node: 'n', dir: '/nonexistent', audit: false, auditFile: '/tmp/a.log' })).toThrow(/--no-audit turns the audit trail off/);
    // The command line maps --no-audit to the same flag (the error comes before anything is started).
    const r = await trellis(['agent', '--node', 'n', '--dir', '/nonexistent', '--no-audit', '--audit-file', '/tmp/a.log']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--no-audit turns the audit trail off/);
  });
});
