// `trellis agent` flags that decide what the audit trail does: through the real command line (commander's
// --no-audit) and through agentConfig.
import { describe, expect, it } from 'vitest';
import { agentConfig } from '../../agent/config.js';
import { trellis } from '../support/trellis-cli.js';

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

describe('agent --preserve-source-ip', () => {
  it('is on by default, off when told, and refuses anything but on or off', () => {
    expect(agentConfig({ node: 'n', dir: '/nonexistent' }).preserveSourceIp).toBe(true);
    expect(agentConfig({ node: 'n', dir: '/nonexistent', preserveSourceIp: 'off' }).preserveSourceIp).toBe(false);
    expect(() => agentConfig({ node: 'n', dir: '/nonexistent', preserveSourceIp: 'yes' })).toThrow(/--preserve-source-ip yes: use on or off/);
  });
});

describe('docs/cli.md', () => {
  it('documents every flag of `trellis agent` and `trellis identity`', async () => {
    const { readFileSync } = await import('node:fs');
    const doc = readFileSync(new URL('../../docs/cli.md', import.meta.url), 'utf8');
    for (const command of ['agent', 'identity']) {
      const help = await trellis([command, '--help']);
      expect(help.code).toBe(0);
      const flags = [...help.stdout.matchAll(/^\s+(?:-\w, )?(--[a-z0-9-]+)/gm)].map((m) => m[1]!).filter((f) => f !== '--help');
      expect(flags.length).toBeGreaterThan(5);
      expect(flags.filter((f) => !doc.includes(`\`${f}`)), `trellis ${command} flags missing from docs/cli.md`).toEqual([]);
    }
  });
});
