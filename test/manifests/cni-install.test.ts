// manifests/cni/install-cni.mjs, the installer the DaemonSet runs: chains trellis-cni last into the first CNI config,
// idempotently, turns a single .conf into a .conflist, waits for a config to appear, and uninstalls cleanly.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MANIFESTS } from './load.js';

const SCRIPT = path.join(MANIFESTS, 'cni', 'install-cni.mjs');
const ENTRY = { type: 'trellis-cni', socket: '/var/run/trellis/cni.sock', timeout_ms: 10000, optin_file: '/var/run/trellis/cni/optin' };

let dir: string;
let binSrc: string;
let binDir: string;
let confDir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trellis-cni-install-'));
  binSrc = path.join(dir, 'src', 'trellis-cni');
  binDir = path.join(dir, 'opt', 'cni', 'bin');
  confDir = path.join(dir, 'etc', 'cni', 'net.d');
  fs.mkdirSync(path.dirname(binSrc), { recursive: true });
  fs.mkdirSync(binDir, { recursive: true });
  fs.mkdirSync(confDir, { recursive: true });
  fs.writeFileSync(binSrc, '#!/bin/sh\necho plugin v1\n');
});

afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function args(extra: string[] = []): string[] {
  return [SCRIPT, `--bin-src=${binSrc}`, `--bin-dir=${binDir}`, `--conf-dir=${confDir}`, '--wait-seconds=0', ...extra];
}

function run(extra: string[] = []): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, args(extra), { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function conf(name: string): { cniVersion: string; name: string; plugins: Record<string, unknown>[] } {
  return JSON.parse(fs.readFileSync(path.join(confDir, name), 'utf8')) as ReturnType<typeof conf>;
}

const calico = {
  name: 'k8s-pod-network',
  cniVersion: '0.3.1',
  plugins: [
    { type: 'calico', ipam: { type: 'calico-ipam' } },
    { type: 'portmap', snat: true, capabilities: { portMappings: true } },
  ],
};

describe('install-cni', () => {
  it('appends trellis-cni as the last plugin of the first config by name and copies the binary', () => {
    fs.writeFileSync(path.join(confDir, '10-calico.conflist'), JSON.stringify(calico), { mode: 0o600 });
    fs.writeFileSync(path.join(confDir, '99-loopback.conf'), JSON.stringify({ cniVersion: '1.0.0', name: 'lo', type: 'loopback' }));
    const r = run();
    expect(r.status, r.stderr).toBe(0);
    const c = conf('10-calico.conflist');
    expect(c.plugins.map((p) => p['type'])).toEqual(['calico', 'portmap', 'trellis-cni']);
    expect(c.plugins[2]).toEqual(ENTRY);
    expect({ name: c.name, cniVersion: c.cniVersion }).toEqual({ name: calico.name, cniVersion: calico.cniVersion });
    // Only the file the runtime uses is changed, and its mode is kept.
    expect(JSON.parse(fs.readFileSync(path.join(confDir, '99-loopback.conf'), 'utf8'))).toEqual({ cniVersion: '1.0.0', name: 'lo', type: 'loopback' });
    expect(fs.statSync(path.join(confDir, '10-calico.conflist')).mode & 0o777).toBe(0o600);
    const bin = path.join(binDir, 'trellis-cni');
    expect(fs.readFileSync(bin, 'utf8')).toBe(fs.readFileSync(binSrc, 'utf8'));
    expect(fs.statSync(bin).mode & 0o777).toBe(0o755);
    expect(fs.readdirSync(confDir).sort()).toEqual(['10-calico.conflist', '99-loopback.conf']);
  });

  it('is idempotent: a second run changes nothing, and a changed flag replaces the entry instead of adding one', () => {
    fs.writeFileSync(path.join(confDir, '10-calico.conflist'), JSON.stringify(calico));
    expect(run().status).toBe(0);
    const first = fs.readFileSync(path.join(confDir, '10-calico.conflist'), 'utf8');
    const mtime = fs.statSync(path.join(confDir, '10-calico.conflist')).mtimeMs;
    const again = run();
    expect(again.status).toBe(0);
    expect(again.stdout).not.toMatch(/added|installed/);
    expect(fs.readFileSync(path.join(confDir, '10-calico.conflist'), 'utf8')).toBe(first);
    expect(fs.statSync(path.join(confDir, '10-calico.conflist')).mtimeMs).toBe(mtime);

    expect(run(['--timeout-ms=3000']).status).toBe(0);
    const plugins = conf('10-calico.conflist').plugins;
    expect(plugins.filter((p) => p['type'] === 'trellis-cni')).toEqual([{ ...ENTRY, timeout_ms: 3000 }]);
    expect(plugins.at(-1)!['type']).toBe('trellis-cni');
  });

  it('moves trellis-cni back to the end when another plugin was appended after it', () => {
    fs.writeFileSync(path.join(confDir, '10-calico.conflist'), JSON.stringify({ ...calico, plugins: [calico.plugins[0], ENTRY, calico.plugins[1]] }));
    expect(run().status).toBe(0);
    expect(conf('10-calico.conflist').plugins.map((p) => p['type'])).toEqual(['calico', 'portmap', 'trellis-cni']);
  });

  it('turns a single-plugin .conf into a .conflist (removing the .conf, which would sort first)', () => {
    fs.writeFileSync(path.join(confDir, '10-flannel.conf'), JSON.stringify({ cniVersion: '0.3.1', name: 'cbr0', type: 'flannel', delegate: { hairpinMode: true } }));
    expect(run().status).toBe(0);
    expect(fs.readdirSync(confDir)).toEqual(['10-flannel.conflist']);
    expect(conf('10-flannel.conflist')).toEqual({
      cniVersion: '0.3.1',
      name: 'cbr0',
      plugins: [{ type: 'flannel', delegate: { hairpinMode: true } }, ENTRY],
    });
  });

  it('updates the binary when the image ships a new one', () => {
    fs.writeFileSync(path.join(confDir, '10-calico.conflist'), JSON.stringify(calico));
    expect(run().status).toBe(0);
    fs.writeFileSync(binSrc, '#!/bin/sh\necho plugin v2\n');
    const r = run();
    expect(r.stdout).toMatch(/installed .*trellis-cni/);
    expect(fs.readFileSync(path.join(binDir, 'trellis-cni'), 'utf8')).toContain('v2');
  });

  it('refuses what cannot be chained, saying why', () => {
    fs.writeFileSync(path.join(confDir, '10-old.conf'), JSON.stringify({ cniVersion: '0.2.0', name: 'old', type: 'bridge' }));
    let r = run();
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/cniVersion 0\.2\.0; chained plugins need 0\.3\.0/);
    fs.writeFileSync(path.join(confDir, '10-old.conf'), '{ not json');
    r = run();
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/10-old\.conf is not valid JSON/);
    r = run(['--bogus=1']);
    expect(r.stderr).toMatch(/unknown argument --bogus=1/);
  });

  it('fails with a clear message when no CNI config appears in time', () => {
    const r = run();
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/no CNI config .* after 0s; install the cluster network \(CNI\) first/);
  });

  it('waits for the primary CNI to write its config', async () => {
    const child = spawn(process.execPath, [...args(), '--wait-seconds=20'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    await waitFor(() => out.includes('waiting for a CNI config'));
    fs.writeFileSync(path.join(confDir, '05-cilium.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'cilium', plugins: [{ type: 'cilium-cni' }] }));
    expect(await exited).toBe(0);
    expect(conf('05-cilium.conflist').plugins.map((p) => p['type'])).toEqual(['cilium-cni', 'trellis-cni']);
  });

  it('with --watch-seconds puts the entry back when the primary CNI rewrites its config, and exits 0 on SIGTERM', async () => {
    fs.writeFileSync(path.join(confDir, '10-calico.conflist'), JSON.stringify(calico));
    const child = spawn(process.execPath, [...args(), '--watch-seconds=1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      await waitFor(() => conf('10-calico.conflist').plugins.length === 3);
      // What Calico's installer does when it restarts: it writes its own config again.
      fs.writeFileSync(path.join(confDir, '10-calico.conflist'), JSON.stringify(calico));
      await waitFor(() => conf('10-calico.conflist').plugins.at(-1)?.['type'] === 'trellis-cni', 5_000);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
    // Stopping leaves the plugin in place: pods must not start outside the mesh while the agent restarts.
    expect(conf('10-calico.conflist').plugins.at(-1)).toEqual(ENTRY);
  });

  it('--uninstall takes trellis-cni out of every config and removes the binary', () => {
    fs.writeFileSync(path.join(confDir, '10-calico.conflist'), JSON.stringify(calico));
    expect(run().status).toBe(0);
    fs.writeFileSync(path.join(confDir, '20-other.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'o', plugins: [{ type: 'x' }, ENTRY] }));
    const r = run(['--uninstall']);
    expect(r.status, r.stderr).toBe(0);
    expect(conf('10-calico.conflist').plugins.map((p) => p['type'])).toEqual(['calico', 'portmap']);
    expect(conf('20-other.conflist').plugins.map((p) => p['type'])).toEqual(['x']);
    expect(fs.existsSync(path.join(binDir, 'trellis-cni'))).toBe(false);
    expect(run(['--uninstall']).status).toBe(0);
  });
});

async function waitFor(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let ok = false;
    try {
      ok = check();
    } catch {
      ok = false;
    }
    if (ok) return;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}
