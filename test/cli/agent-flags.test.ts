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

describe('agent --tcp-health', () => {
  it('is on by default, off when told, and refuses anything but on or off', () => {
    expect(agentConfig({ node: 'n', dir: '/nonexistent' }).tcpHealth).toBe(true);
    expect(agentConfig({ node: 'n', dir: '/nonexistent', tcpHealth: 'off' }).tcpHealth).toBe(false);
    expect(() => agentConfig({ node: 'n', dir: '/nonexistent', tcpHealth: 'maybe' })).toThrow(/--tcp-health maybe: use on or off/);
  });
});

describe('agent --tracing-*', () => {
  const base = { node: 'n', dir: '/nonexistent' };
  it('is off without an endpoint; gRPC at 1% by default; each flag checked with what to give', () => {
    expect(agentConfig(base).tracing).toBeUndefined();
    expect(agentConfig({ ...base, tracingEndpoint: 'http://otel:4317' }).tracing).toEqual({ endpoint: 'http://otel:4317/', protocol: 'grpc', sampleRatio: 0.01 });
    expect(agentConfig({ ...base, tracingEndpoint: 'http://otel:4318/v1/traces', tracingProtocol: 'http/json', tracingSampleRatio: '1' }).tracing).toEqual({ endpoint: 'http://otel:4318/v1/traces', protocol: 'http/json', sampleRatio: 1 });
    expect(() => agentConfig({ ...base, tracingSampleRatio: '0.5' })).toThrow(/go with --tracing-endpoint/);
    expect(() => agentConfig({ ...base, tracingEndpoint: 'otel:4317' })).toThrow(/an http:\/\/ or https:\/\/ URL/);
    expect(() => agentConfig({ ...base, tracingEndpoint: 'http://otel:4317/x' })).toThrow(/OTLP\/gRPC takes no path/);
    expect(() => agentConfig({ ...base, tracingEndpoint: 'http://otel:4317', tracingProtocol: 'zipkin' })).toThrow(/use grpc .*http\/protobuf or http\/json/);
    for (const bad of ['2', '-0.1', 'half', '1e-2']) expect(() => agentConfig({ ...base, tracingEndpoint: 'http://otel:4317', tracingSampleRatio: bad })).toThrow(/a number from 0 to 1/);
  });
});

describe('agent --tap-addr', () => {
  it('serves the tap port by default in cluster mode only, and refuses it where no API server can authorize callers', () => {
    expect(agentConfig({ node: 'n', source: 'kube' }).tap.addr).toEqual({ host: '0.0.0.0', port: 15022 });
    expect(agentConfig({ node: 'n', source: 'kube', tapAddr: '10.0.0.5:4190' }).tap.addr).toEqual({ host: '10.0.0.5', port: 4190 });
    expect(agentConfig({ node: 'n', source: 'kube', tapAddr: 'off' }).tap.addr).toBeUndefined();
    expect(agentConfig({ node: 'n', dir: '/nonexistent' }).tap.addr).toBeUndefined();
    expect(() => agentConfig({ node: 'n', dir: '/nonexistent', tapAddr: '0.0.0.0:15022' })).toThrow(/--tap-addr 0.0.0.0:15022: .* goes with --source kube/);
    expect(() => agentConfig({ node: 'n', source: 'kube', tapAddr: 'node:15022' })).toThrow(/--tap-addr: "node:15022" must be IP:PORT/);
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

describe('agent --same-node', () => {
  it('is on by default, off when asked, and refuses anything else', () => {
    expect(agentConfig({ node: 'n', dir: '/nonexistent' }).sameNode).toBe(true);
    expect(agentConfig({ node: 'n', dir: '/nonexistent', sameNode: 'off' }).sameNode).toBe(false);
    expect(() => agentConfig({ node: 'n', dir: '/nonexistent', sameNode: 'maybe' })).toThrow(/--same-node maybe: use on or off/);
    expect(agentConfig({ node: 'n', dir: '/nonexistent' }).sameNodeSplice).toBe('user');
    expect(agentConfig({ node: 'n', dir: '/nonexistent', sameNodeSplice: 'kernel' }).sameNodeSplice).toBe('kernel');
    expect(() => agentConfig({ node: 'n', dir: '/nonexistent', sameNodeSplice: 'auto' })).toThrow(/--same-node-splice auto: use user or kernel/);
    expect(agentConfig({ node: 'n', dir: '/nonexistent', cgroupRoot: '/sys/fs/cgroup' }).cgroupRoot).toBe('/sys/fs/cgroup');
    expect(() => agentConfig({ node: 'n', dir: '/nonexistent', cgroupRoot: 'sys/fs/cgroup' })).toThrow(/--cgroup-root sys\/fs\/cgroup: give an absolute path/);
  });
});
