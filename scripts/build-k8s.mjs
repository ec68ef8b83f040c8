#!/usr/bin/env node
// Builds a real Kubernetes control plane from source for the lab, cached outside the repository:
//   <cache>/k8s-<version>/bin/{kube-apiserver,kube-controller-manager,kubectl,etcd,etcdctl}
//   <cache>/k8s-<version>/crds/gateway-api-<version>/*.yaml               (the standard channel CRDs)
//   <cache>/k8s-<version>/crds/gateway-api-<version>-experimental/*.yaml  (the experimental channel's)
// <cache> is $TRELLIS_K8S_CACHE, else ~/.cache/trellis. The versions come from the Go modules in
// lab/controlplane/{k8s,etcd} (see lab/controlplane/README.md). A stamp file makes a rerun a no-op
// while those go.mod/go.sum files, the Go version and the recipe below stay the same.
//
//   node scripts/build-k8s.mjs              build (or do nothing when the stamp matches)
//   node scripts/build-k8s.mjs --print-dir  print the cache dir and exit
//   node scripts/build-k8s.mjs --force      rebuild even when the stamp matches
import { spawn, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const k8sMod = path.join(repo, 'lab/controlplane/k8s');
const etcdMod = path.join(repo, 'lab/controlplane/etcd');

// Gateway API CRDs come from the module zip of sigs.k8s.io/gateway-api (config/crd/standard/).
// The h1: hash pins the zip, as a go.sum line would.
const GATEWAY_API = { version: 'v1.2.1', sum: 'h1:fZZ/+RyRb+Y5tGkwxFKuYuSRQHu9dZtbjenblleOLHM=' };
// The same tags Kubernetes' own release build uses (hack/lib/golang.sh) for non-debug builds.
const K8S_TAGS = 'selinux,notest,grpcnotrace';
// Bump when the way the binaries are built changes, so cached builds are redone.
const RECIPE = 1;

const args = new Set(process.argv.slice(2));
for (const a of args) {
  if (!['--print-dir', '--force'].includes(a)) {
    console.error(`build-k8s: unknown argument ${a} (use --print-dir or --force)`);
    process.exit(2);
  }
}

function requiredVersion(goModPath, modulePath) {
  const text = fs.readFileSync(goModPath, 'utf8');
  const re = new RegExp(`^\\s*(?:require\\s+)?${modulePath.replace(/[.]/g, '\\.')}\\s+(v\\S+)`, 'm');
  const m = re.exec(text);
  if (!m) throw new Error(`${goModPath} does not require ${modulePath}`);
  return m[1];
}

const k8sVersion = requiredVersion(path.join(k8sMod, 'go.mod'), 'k8s.io/kubernetes');
const etcdVersion = requiredVersion(path.join(etcdMod, 'go.mod'), 'go.etcd.io/etcd/server/v3');
const cacheRoot = process.env.TRELLIS_K8S_CACHE || path.join(os.homedir(), '.cache', 'trellis');
const dir = path.join(cacheRoot, `k8s-${k8sVersion}`);
const binDir = path.join(dir, 'bin');
const crdDir = path.join(dir, 'crds', `gateway-api-${GATEWAY_API.version}`);
// v1.2's standard channel lacks HTTPRoute rules' `name` and `retry`, which the lab's own examples use.
const experimentalCrdDir = `${crdDir}-experimental`;
const stampFile = path.join(dir, 'stamp.json');
const BINARIES = ['kube-apiserver', 'kube-controller-manager', 'kubectl', 'etcd', 'etcdctl'];

if (args.has('--print-dir')) {
  console.log(dir);
  process.exit(0);
}

const t0 = Date.now();
const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;

let goVersion;
try {
  // Run in the module so that a `go` line newer than the local Go shows the toolchain it selects.
  goVersion = execFileSync('go', ['env', 'GOVERSION'], { cwd: k8sMod, encoding: 'utf8' }).trim();
} catch (err) {
  console.error(`build-k8s: cannot run \`go env GOVERSION\` (${err.message.split('\n')[0]}); install Go 1.26+`);
  process.exit(1);
}

const hash = createHash('sha256');
for (const f of ['k8s/go.mod', 'k8s/go.sum', 'etcd/go.mod', 'etcd/go.sum']) {
  hash.update(`${f}\0`).update(fs.readFileSync(path.join(repo, 'lab/controlplane', f))).update('\0');
}
hash.update(`${goVersion}\0${RECIPE}\0${K8S_TAGS}\0${GATEWAY_API.version}\0${GATEWAY_API.sum}`);
const stamp = hash.digest('hex');

function stampMatches() {
  try {
    const s = JSON.parse(fs.readFileSync(stampFile, 'utf8'));
    return s.hash === stamp && BINARIES.every((b) => fs.existsSync(path.join(binDir, b)));
  } catch {
    return false;
  }
}

const timeBin = fs.existsSync('/usr/bin/time') ? '/usr/bin/time' : null;

// Runs one step and resolves with its standard output; on failure prints the step and the last 30 lines
// of its output and exits 1. Reports the wall time, and the peak RSS when /usr/bin/time is there.
async function step(name, cmd, cmdArgs, opts = {}) {
  const started = Date.now();
  console.log(`build-k8s: ${name} ...`);
  const timeFile = timeBin ? path.join(os.tmpdir(), `build-k8s-${process.pid}.time`) : null;
  const [file, argv] = timeBin ? [timeBin, ['-v', '-o', timeFile, cmd, ...cmdArgs]] : [cmd, cmdArgs];
  const lines = [];
  const stdout = [];
  let partial = '';
  const collect = (chunk) => {
    const parts = (partial + chunk.toString('utf8')).split('\n');
    partial = parts.pop();
    for (const l of parts) {
      lines.push(l);
      if (lines.length > 2000) lines.splice(0, 1000);
    }
  };
  const code = await new Promise((resolve) => {
    const child = spawn(file, argv, { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (chunk) => {
      stdout.push(chunk);
      collect(chunk);
    });
    child.stderr.on('data', collect);
    child.on('error', (err) => {
      lines.push(String(err));
      resolve(-1);
    });
    child.on('close', (c) => resolve(c));
  });
  if (partial) lines.push(partial);
  let rssKiB = null;
  if (timeFile) {
    try {
      const t = fs.readFileSync(timeFile, 'utf8');
      const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(t);
      if (m) rssKiB = Number(m[1]);
      fs.rmSync(timeFile, { force: true });
    } catch {
      // no rusage: the step still counts
    }
  }
  const took = secs(Date.now() - started);
  if (code !== 0) {
    const tail = lines.slice(-30);
    console.error(`build-k8s: step "${name}" FAILED (exit ${code}) after ${took}; last ${tail.length} lines of output:`);
    for (const l of tail) console.error(`  ${l}`);
    process.exit(1);
  }
  const rss = rssKiB ? `, peak RSS ${(rssKiB / 1024).toFixed(0)} MiB` : '';
  console.log(`build-k8s: ${name} done in ${took}${rss}`);
  return Buffer.concat(stdout).toString('utf8');
}

// Gateway API CRDs come from the module zip (both channels); the checksum database checks the zip, and so does
// GATEWAY_API.sum. Outside any module, so the download touches no go.mod.
async function copyGatewayCrds() {
  const out = await step(
    `gateway-api ${GATEWAY_API.version} CRDs`,
    'go',
    ['mod', 'download', '-json', `sigs.k8s.io/gateway-api@${GATEWAY_API.version}`],
    { cwd: os.tmpdir(), env: { GOFLAGS: '', GO111MODULE: 'on' } },
  );
  const info = JSON.parse(out);
  if (info.Sum !== GATEWAY_API.sum) {
    console.error(`build-k8s: sigs.k8s.io/gateway-api@${GATEWAY_API.version} has sum ${info.Sum}, expected ${GATEWAY_API.sum}`);
    process.exit(1);
  }
  for (const [channel, to] of [['standard', crdDir], ['experimental', experimentalCrdDir]]) {
    const from = path.join(info.Dir, 'config', 'crd', channel);
    fs.rmSync(to, { recursive: true, force: true });
    fs.mkdirSync(to, { recursive: true });
    for (const f of fs.readdirSync(from).filter((f) => f.startsWith('gateway.networking.k8s.io_') && f.endsWith('.yaml'))) fs.writeFileSync(path.join(to, f), fs.readFileSync(path.join(from, f)));
    console.log(`build-k8s: copied ${fs.readdirSync(to).length} CRD files (${channel} channel) to ${to}`);
  }
}

if (!args.has('--force') && stampMatches()) {
  // A cache made before the experimental channel was kept gets it without a rebuild.
  if (!fs.existsSync(experimentalCrdDir)) await copyGatewayCrds();
  console.log(`build-k8s: ${dir} is up to date (Kubernetes ${k8sVersion}, etcd ${etcdVersion}, ${goVersion}), ${secs(Date.now() - t0)}`);
  process.exit(0);
}

fs.mkdirSync(binDir, { recursive: true });
fs.rmSync(stampFile, { force: true });

// A committed go.sum is all `go build` needs: -mod=readonly fails instead of writing to go.mod/go.sum.
const goEnv = { CGO_ENABLED: '0', GOFLAGS: `${process.env.GOFLAGS ?? ''} -mod=readonly`.trim() };
const k8sMinor = /^v(\d+)\.(\d+)\./.exec(k8sVersion);
// buildDate: the release's publish time as the module proxy records it (the proxy does not know the git commit).
let buildDate;
try {
  buildDate = JSON.parse(
    execFileSync('go', ['list', '-m', '-json', 'k8s.io/kubernetes'], { cwd: k8sMod, encoding: 'utf8', env: { ...process.env, ...goEnv }, stdio: ['ignore', 'pipe', 'pipe'] }),
  ).Time;
} catch (err) {
  console.error(`build-k8s: step "resolve k8s.io/kubernetes" FAILED: ${String(err.stderr || err.message).trim().split('\n').slice(-30).join('\n  ')}`);
  process.exit(1);
}
const ldflags = ['-s', '-w'];
for (const pkg of ['k8s.io/component-base/version', 'k8s.io/client-go/pkg/version']) {
  ldflags.push(
    `-X ${pkg}.gitVersion=${k8sVersion}`,
    `-X ${pkg}.gitMajor=${k8sMinor[1]}`,
    `-X ${pkg}.gitMinor=${k8sMinor[2]}`,
    `-X ${pkg}.gitTreeState=clean`,
    `-X ${pkg}.gitCommit=`,
    `-X ${pkg}.buildDate=${buildDate ?? '1970-01-01T00:00:00Z'}`,
  );
}

console.log(`build-k8s: building Kubernetes ${k8sVersion}, etcd ${etcdVersion}, Gateway API CRDs ${GATEWAY_API.version} with ${goVersion} into ${dir}`);
for (const cmd of ['kube-apiserver', 'kube-controller-manager', 'kubectl']) {
  await step(
    cmd,
    'go',
    ['build', '-trimpath', '-tags', K8S_TAGS, '-ldflags', ldflags.join(' '), '-o', path.join(binDir, cmd), `k8s.io/kubernetes/cmd/${cmd}`],
    { cwd: k8sMod, env: goEnv },
  );
}
for (const [cmd, pkg] of [
  ['etcd', 'go.etcd.io/etcd/server/v3'],
  ['etcdctl', 'go.etcd.io/etcd/etcdctl/v3'],
]) {
  await step(cmd, 'go', ['build', '-trimpath', '-ldflags', '-s -w', '-o', path.join(binDir, cmd), pkg], { cwd: etcdMod, env: goEnv });
}

await copyGatewayCrds();

fs.writeFileSync(
  stampFile,
  `${JSON.stringify({ hash: stamp, kubernetes: k8sVersion, etcd: etcdVersion, gatewayApi: GATEWAY_API.version, go: goVersion, builtAt: new Date().toISOString() }, null, 2)}\n`,
);
console.log(`build-k8s: done in ${secs(Date.now() - t0)}; binaries in ${binDir}`);
