// Builds the native boundary (native/trellis.c -> native/build/trellis.node) with the system C compiler.
// No node-gyp: one file, one compiler call, headers from the node-api-headers devDependency.
import { spawnSync } from 'node:child_process';
import { mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = dirname(here);
const sources = [join(here, 'trellis.c'), join(here, 'checks.h'), fileURLToPath(import.meta.url)];
const output = join(here, 'build', 'trellis.node');
const shown = relative(root, output);

function mtime(path) {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return -1;
  }
}

const newestSource = Math.max(...sources.map(mtime));
if (mtime(output) > newestSource) {
  console.log(`native: ${shown} is up to date`);
  process.exit(0);
}

const require = createRequire(import.meta.url);
const includeDir = join(dirname(require.resolve('node-api-headers/package.json')), 'include');
// CC may carry a wrapper and flags ("ccache gcc").
const [cc, ...ccArgs] = (process.env.CC?.trim() || 'cc').split(/\s+/);
const temp = `${output}.tmp-${process.pid}`;
const args = [
  ...ccArgs,
  '-O2',
  '-Wall',
  '-Wextra',
  '-Werror',
  '-fPIC',
  '-shared',
  '-DNAPI_VERSION=8',
  `-I${includeDir}`,
  '-o',
  temp,
  join(here, 'trellis.c'),
];

mkdirSync(dirname(output), { recursive: true });
const started = performance.now();
const run = spawnSync(cc, args, { encoding: 'utf8' });

if (run.error || run.status !== 0) {
  rmSync(temp, { force: true });
  const missingCompiler = run.error?.code === 'ENOENT';
  if (run.stderr) process.stderr.write(run.stderr);
  if (missingCompiler) {
    console.error(
      `native: no C compiler "${cc}" found. ` +
        'Install one (apt-get install gcc libc6-dev; apk add build-base; dnf install gcc) or set CC.',
    );
  } else {
    console.error(
      `native: ${cc} failed to compile native/trellis.c (${run.error?.message ?? `exit ${run.status}`}). ` +
        'It needs gcc or clang with the C library headers (apt-get install gcc libc6-dev; apk add build-base).',
    );
  }
  process.exit(1);
}

renameSync(temp, output);
const seconds = ((performance.now() - started) / 1000).toFixed(1);
console.log(`native: built ${shown} with ${cc} in ${seconds}s`);
