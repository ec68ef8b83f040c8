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
