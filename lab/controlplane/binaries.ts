// Where the control plane's binaries are: the cache directory scripts/build-k8s.mjs builds into (it alone knows
// the versions, from the Go modules in lab/controlplane/). Missing binaries are built here, once, by that script.
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LabError } from '../errors.js';
import { run } from '../cluster/run.js';

export const BINARIES = ['etcd', 'etcdctl', 'kube-apiserver', 'kube-controller-manager', 'kubectl'] as const;
export type Binary = (typeof BINARIES)[number];

export interface K8sBinaries {
  /** <cache>/k8s-<version> */
  dir: string;
  path(binary: Binary): string;
  /** The Gateway API CRD files of the standard channel (what docs/install.md has a cluster install). */
  gatewayCrds: string[];
  /** The experimental channel's (HTTPRoute rules' `name` and `retry` among them, in v1.2). */
  gatewayExperimentalCrds: string[];
}

/** The first build takes 4–7 min on 2 cores and needs ~2.6 GiB of free memory (see lab/controlplane/README.md). */
const BUILD_TIMEOUT_MS = 30 * 60_000;

/** The checkout this file belongs to (lab/controlplane under vitest, dist/lab/controlplane compiled). */
export function repoRoot(): string {
  const from = path.dirname(fileURLToPath(import.meta.url));
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'scripts', 'build-k8s.mjs'))) return dir;
    if (path.dirname(dir) === dir) throw new LabError('ECONTROLPLANE', `no trellis checkout (scripts/build-k8s.mjs) above ${from}`);
  }
}

/**
 * The binaries, built first when any is missing (the build prints its steps; `log` is told that it runs and
 * how long it took). A failed build throws with the script's own report of the failing step.
 */
export async function k8sBinaries(log: (line: string) => void = () => {}): Promise<K8sBinaries> {
  const script = path.join(repoRoot(), 'scripts', 'build-k8s.mjs');
  const printed = await run(process.execPath, [script, '--print-dir'], { timeoutMs: 30_000 });
  if (printed.code !== 0) {
    throw new LabError('ECONTROLPLANE', `${script} --print-dir failed: ${(printed.stderr || printed.stdout).trim()}`);
  }
  const dir = printed.stdout.trim();
  const binPath = (b: Binary) => path.join(dir, 'bin', b);
  const missing = BINARIES.filter((b) => !existsSync(binPath(b)));
  if (missing.length > 0) {
    log(`control plane: ${missing.join(', ')} missing in ${dir}; building them with scripts/build-k8s.mjs (4–7 min on 2 cores the first time)`);
    const started = Date.now();
    const built = await run(process.execPath, [script], { timeoutMs: BUILD_TIMEOUT_MS });
    const took = ((Date.now() - started) / 1000).toFixed(0);
    if (built.code !== 0) {
      const tail = `${built.stdout}\n${built.stderr}`.trim().split('\n').slice(-40).join('\n');
      throw new LabError('ECONTROLPLANE', `building the control plane failed after ${took} s (scripts/build-k8s.mjs, exit ${built.code}):\n${tail}`);
    }
    log(`control plane: built in ${took} s`);
    const still = BINARIES.filter((b) => !existsSync(binPath(b)));
    if (still.length > 0) throw new LabError('ECONTROLPLANE', `scripts/build-k8s.mjs succeeded but ${still.join(', ')} is still missing in ${dir}`);
  }
  const crdDir = path.join(dir, 'crds');
  const channels = readdirSync(crdDir).filter((d) => d.startsWith('gateway-api-'));
  const standard = channels.find((d) => !d.endsWith('-experimental'));
  const experimental = channels.find((d) => d.endsWith('-experimental'));
  if (!standard || !experimental) throw new LabError('ECONTROLPLANE', `no Gateway API CRDs (both channels) in ${crdDir}: run \`npm run build:k8s\``);
  const yamls = (d: string) =>
    readdirSync(path.join(crdDir, d))
      .filter((f) => f.startsWith('gateway.networking.k8s.io_') && f.endsWith('.yaml'))
      .sort()
      .map((f) => path.join(crdDir, d, f));
  return { dir, path: binPath, gatewayCrds: yamls(standard), gatewayExperimentalCrds: yamls(experimental) };
}
