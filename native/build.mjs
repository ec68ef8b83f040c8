// Builds the native parts with the system C compiler: the addon (native/trellis.c -> native/build/trellis.node) and
// the chained CNI plugin (native/cni/trellis-cni.c -> native/build/trellis-cni, static). No node-gyp: one call each.
import { spawnSync } from 'node:child_process';
import { mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = dirname(here);
const self = fileURLToPath(import.meta.url);
// CC may carry a wrapper and flags ("ccache gcc").
const [cc, ...ccArgs] = (process.env.CC?.trim() || 'cc').split(/\s+/);

function mtime(path) {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return -1;
  }
}

const headersHint = 'It needs gcc or clang with the C library headers (apt-get install gcc libc6-dev; apk add build-base).';

/** Compiles one target unless it is newer than its sources; returns false (after saying why) on failure. */
function build({ source, extraSources, output, flags, hint }) {
  const shown = relative(root, output);
  const newestSource = Math.max(...[source, ...extraSources, self].map(mtime));
  if (mtime(output) > newestSource) {
    console.log(`native: ${shown} is up to date`);
    return true;
  }
  const temp = `${output}.tmp-${process.pid}`;
  const args = [...ccArgs, '-O2', '-Wall', '-Wextra', '-Werror', ...flags, '-o', temp, source];
  mkdirSync(dirname(output), { recursive: true });
  const started = performance.now();
  const run = spawnSync(cc, args, { encoding: 'utf8' });
  if (run.error || run.status !== 0) {
    rmSync(temp, { force: true });
    if (run.stderr) process.stderr.write(run.stderr);
    if (run.error?.code === 'ENOENT') {
      console.error(
        `native: no C compiler "${cc}" found. ` +
          'Install one (apt-get install gcc libc6-dev; apk add build-base; dnf install gcc) or set CC.',
      );
    } else {
      const why = hint(run.stderr ?? '');
      console.error(`native: ${cc} failed to compile ${relative(root, source)} (${run.error?.message ?? `exit ${run.status}`}). ${why}`);
    }
    return false;
  }
  renameSync(temp, output);
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  console.log(`native: built ${shown} with ${cc} in ${seconds}s`);
  return true;
}

const require = createRequire(import.meta.url);
const includeDir = join(dirname(require.resolve('node-api-headers/package.json')), 'include');

const addon = build({
  source: join(here, 'trellis.c'),
  extraSources: [join(here, 'checks.h')],
  output: join(here, 'build', 'trellis.node'),
  flags: ['-fPIC', '-shared', '-DNAPI_VERSION=8', `-I${includeDir}`],
  hint: () => headersHint,
});

// Static, so the init container can copy it onto any node, whatever C library the node has.
const plugin = build({
  source: join(here, 'cni', 'trellis-cni.c'),
  extraSources: [],
  output: join(here, 'build', 'trellis-cni'),
  flags: ['-static'],
  hint: (stderr) =>
    /cannot find -lc\b|cannot find crt/.test(stderr)
      ? 'It is linked statically and needs the static C library (libc.a: apt-get install libc6-dev; ' +
        'apk add musl-dev; dnf install glibc-static).'
      : headersHint,
});

if (!addon || !plugin) process.exit(1);
