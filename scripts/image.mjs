#!/usr/bin/env node
// `npm run image`: builds the Trellis image (Dockerfile) with buildah, without any container registry.
// The two base images the Dockerfile names are made here when local container storage lacks them:
//   docker.io/library/debian:bookworm-slim         debootstrap --variant=minbase, trimmed like the official slim image
//   docker.io/library/node:<NODE_VERSION>-bookworm-slim  that + the `node` devDependency's binary + npm from the npm registry
// Every RUN that downloads (base images and project) shares the host's network namespace (--network=host); the
// node image's self-check runs with --network=none. No bridge, route or firewall rule is ever added to the host:
// nothing here uses buildah's default network (CNI, which would).
// Images live in root's containers-storage (/var/lib/containers/storage), outside the repository.
import { spawnSync } from 'node:child_process';
import { accessSync, chmodSync, constants, copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const SUITE = 'bookworm';
const DEBIAN_IMAGE = `docker.io/library/debian:${SUITE}-slim`;
const DEFAULT_MIRROR = 'http://deb.debian.org/debian';
const STORAGE = '/var/lib/containers/storage';
/** Extra CAs the host trusts (a TLS-intercepting proxy's): passed to the npm step as a build secret. */
const HOST_CA_DIR = '/usr/local/share/ca-certificates';
const CA_SECRET_ID = 'npm-ca';
/**
 * OCI runtime of every RUN and container: runc. Debian 12's crun (1.8.1) refuses hosts with cgroup v1 controllers
 * and a cgroup2 hierarchy that has one too ("cgroups in hybrid mode not supported"), as machines without systemd
 * often are; runc works there and on pure cgroup v2 alike. The test passes the same to podman.
 */
const RUNTIME = 'runc';
/** apt packages that bring each command; setup-debian.sh installs them all. */
const PACKAGE_OF = { buildah: 'buildah', podman: 'podman', debootstrap: 'debootstrap', runc: 'runc' };

const USAGE = `Usage: npm run image [-- options]

Builds the Trellis image from the Dockerfile with buildah (--pull=never, RUN steps with --network=host).
Base images missing from local storage are made first, without a registry:
  ${DEBIAN_IMAGE}  from debootstrap --variant=minbase (Debian mirror only)
  docker.io/library/node:<NODE_VERSION>-bookworm-slim  + node_modules/node/bin/node + npm (npm registry)
Extra CAs in ${HOST_CA_DIR} reach the npm step as the build secret "${CA_SECRET_ID}", never a layer.
Needs root, buildah, podman, runc and debootstrap (apt-get install -y buildah podman runc debootstrap, or
scripts/setup-debian.sh), and \`npm ci\` done (the node binary comes from node_modules/node).

Options:
  --tag <name>        name of the project image (default trellis:dev)
  --no-cache          rebuild every Dockerfile step (default: reuse cached layers)
  --rebuild-base      make the two base images again even if present
  --base-only         make the base images (if missing) and stop
  --mirror <url>      Debian mirror for debootstrap and the base image's sources (default ${DEFAULT_MIRROR})
  --no-host-ca        do not pass ${HOST_CA_DIR} as the build secret
  -h, --help          this text

Images are kept in containers-storage under ${STORAGE} (outside the repository);
\`podman images\` lists them, \`podman rmi <name>\` removes one.`;

class UsageError extends Error {}

function log(text) {
  console.log(`image: ${text}`);
}

function seconds(ms) {
  return `${(ms / 1000).toFixed(1)} s`;
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB (${(bytes / 2 ** 20).toFixed(1)} MiB)`;
}

function onPath(command) {
  return (process.env.PATH ?? '').split(':').some((dir) => {
    try {
      accessSync(join(dir || '.', command), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

function requireTools(commands) {
  const missing = commands.filter((c) => !onPath(c));
  if (missing.length === 0) return;
  const packages = [...new Set(missing.map((c) => PACKAGE_OF[c] ?? c))].join(' ');
  throw new UsageError(
    `${missing.join(', ')} not found on PATH. Install with\n  apt-get install -y --no-install-recommends ${packages}\n` +
      'or run scripts/setup-debian.sh (as root), which installs everything the image build and its test need.',
  );
}

/**
 * Runs a command; throws with its output's tail on failure. quiet: output is kept and shown only if it fails;
 * capture: stdout is returned.
 */
function run(command, args, { quiet = false, capture = false, cwd = root, env = process.env } = {}) {
  const piped = quiet || capture;
  const result = spawnSync(command, args, {
    cwd,
    env,
    encoding: 'utf8',
    maxBuffer: 256 * 2 ** 20,
    stdio: piped ? ['ignore', 'pipe', 'pipe'] : 'inherit',
  });
  if (result.error?.code === 'ENOENT') requireTools([command]);
  if (result.error || result.status !== 0) {
    const tail = piped ? `${result.stdout ?? ''}${result.stderr ?? ''}`.trimEnd().split('\n').slice(-40).join('\n') : '';
    const why = result.error ? result.error.message : result.signal ? `signal ${result.signal}` : `exit ${result.status}`;
    throw new Error(`${command} ${args.join(' ')} failed (${why})${tail ? `:\n${tail}` : ''}`);
  }
  return capture ? result.stdout.trim() : '';
}

function imageExists(name) {
  return spawnSync('buildah', ['inspect', '--type', 'image', name], { stdio: 'ignore' }).status === 0;
}

function imageId(name) {
  return run('podman', ['image', 'inspect', '--format', '{{.Id}}', name], { capture: true });
}

/** Uncompressed size in bytes, as `podman images` shows it. */
function imageSize(name) {
  return Number(run('podman', ['image', 'inspect', '--format', '{{.Size}}', name], { capture: true }));
}

/** A working container with a fixed name: one left behind by an interrupted run is removed first. */
function workingContainer(from, name) {
  spawnSync('buildah', ['rm', name], { stdio: 'ignore' });
  return run('buildah', ['from', '--pull=never', '--name', name, from], { capture: true });
}

function nodeVersionOfDockerfile() {
  const m = /^ARG NODE_VERSION=(\S+)\s*$/m.exec(readFileSync(join(root, 'Dockerfile'), 'utf8'));
  if (!m) throw new Error('Dockerfile: no `ARG NODE_VERSION=...` line');
  return m[1];
}

/** The Node binary the `node` devDependency installed, checked against the Dockerfile's NODE_VERSION. */
function nodeBinary(wanted) {
  const bin = join(root, 'node_modules', 'node', 'bin', 'node');
  if (!existsSync(bin)) throw new UsageError(`${bin} is missing: run \`npm ci\` first (the node devDependency brings it).`);
  const version = run(bin, ['--version'], { capture: true }).replace(/^v/, '');
  if (version !== wanted) {
    throw new UsageError(`node_modules/node is Node ${version} but the Dockerfile's NODE_VERSION is ${wanted}: make them the same (package.json devDependency "node").`);
  }
  return bin;
}

// The official slim image's trims (debuerreotype --slimify): dpkg leaves these out of every later install too.
const DPKG_EXCLUDES = `# Set by scripts/image.mjs like the official slim image: no documentation but copyright files, no man
# pages, info, lintian overrides or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
`;

// The official images' apt and dpkg settings (debuerreotype-minimizing-config).
const APT_FILES = {
  'etc/apt/apt.conf.d/docker-clean':
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n' +
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n' +
    'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n',
  'etc/apt/apt.conf.d/docker-autoremove-suggests': 'Apt::AutoRemove::SuggestsImportant "false";\n',
  'etc/apt/apt.conf.d/docker-gzip-indexes': 'Acquire::GzipIndexes "true";\n',
  'etc/apt/apt.conf.d/docker-no-languages': 'Acquire::Languages "none";\n',
  'etc/dpkg/dpkg.cfg.d/docker-apt-speedup': 'force-unsafe-io\n',
  'etc/dpkg/dpkg.cfg.d/docker': DPKG_EXCLUDES,
  // No service starts in a container when a package is installed.
  'usr/sbin/policy-rc.d': '#!/bin/sh\nexit 101\n',
};

function aptSources(mirror) {
  const security = mirror.replace(/\/debian\/?$/, '/debian-security');
  const keyring = 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg';
  return (
    `Types: deb\nURIs: ${mirror}\nSuites: ${SUITE} ${SUITE}-updates\nComponents: main\n${keyring}\n\n` +
    (security !== mirror ? `Types: deb\nURIs: ${security}\nSuites: ${SUITE}-security\nComponents: main\n${keyring}\n` : '')
  );
}

// Runs inside the new base (network: the host's): point releases and security fixes, then the slim trims of
// what debootstrap had already unpacked before the dpkg excludes existed.
const SLIM_SCRIPT = `set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get upgrade -y -qq >/dev/null
apt-get clean
find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find /usr/share/doc -mindepth 1 -depth -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/groff/* /usr/share/info/* /usr/share/lintian/* /usr/share/linda/*
find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/cache/ldconfig/aux-cache
find /var/log -type f -delete
`;

/** debian:bookworm-slim from a minbase debootstrap. Returns the build time in ms. */
function buildDebianBase(mirror) {
  const started = performance.now();
  const work = mkdtempSync(join('/var/tmp', 'trellis-debootstrap-'));
  const rootfs = join(work, 'rootfs');
  let ctr;
  try {
    log(`debootstrap --variant=minbase ${SUITE} from ${mirror} (a few minutes) ...`);
    run('debootstrap', ['--variant=minbase', SUITE, rootfs, mirror], { quiet: true });
    // The host's resolver and name are not the image's; the container engine provides both at run time.
    for (const file of ['etc/resolv.conf', 'etc/hostname']) rmSync(join(rootfs, file), { force: true });
    rmSync(join(rootfs, 'etc/apt/sources.list'), { force: true });
    writeFileSync(join(rootfs, 'etc/apt/sources.list.d/debian.sources'), aptSources(mirror));
    for (const [file, text] of Object.entries(APT_FILES)) writeFileSync(join(rootfs, file), text);
    chmodSync(join(rootfs, 'usr/sbin/policy-rc.d'), 0o755);

    ctr = workingContainer('scratch', 'trellis-base-debian');
    const mnt = run('buildah', ['mount', ctr], { capture: true });
    run('cp', ['-a', `${rootfs}/.`, `${mnt}/`]);
    run('buildah', ['umount', ctr], { quiet: true });
    log('apt-get upgrade and slim trims in the new base ...');
    run('buildah', ['run', '--runtime', RUNTIME, '--network=host', ctr, '--', '/bin/sh', '-c', SLIM_SCRIPT], { quiet: true });
    // `buildah run` leaves empty mount points for the files it bind-mounted; the engine provides them at run time.
    const mnt2 = run('buildah', ['mount', ctr], { capture: true });
    for (const file of ['etc/resolv.conf', 'etc/hostname', 'etc/hosts', 'run/.containerenv']) {
      const path = join(mnt2, file);
      if (existsSync(path) && statSync(path).size === 0) rmSync(path);
    }
    run('buildah', ['umount', ctr], { quiet: true });
    run('buildah', [
      'config',
      '--cmd', '["bash"]',
      '--env', 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      '--label', `org.opencontainers.image.description=Debian ${SUITE} minbase, slim; made by trellis scripts/image.mjs`,
      ctr,
    ], { quiet: true });
    run('buildah', ['commit', '--rm', ctr, DEBIAN_IMAGE], { quiet: true });
    ctr = undefined;
  } finally {
    if (ctr) spawnSync('buildah', ['rm', ctr], { stdio: 'ignore' });
    rmSync(work, { recursive: true, force: true });
  }
  return performance.now() - started;
}

/** node:<version>-bookworm-slim: the Debian base + the node devDependency's binary + npm. Returns ms. */
function buildNodeBase(image, nodeVersion) {
  const started = performance.now();
  const bin = nodeBinary(nodeVersion);
  // The npm running this script (`npm run image`), or the one on PATH.
  const npmVersion = run('npm', ['--version'], { capture: true });
  let ctr;
  try {
    ctr = workingContainer(DEBIAN_IMAGE, 'trellis-base-node');
    const mnt = run('buildah', ['mount', ctr], { capture: true });
    copyFileSync(bin, join(mnt, 'usr/local/bin/node'));
    chmodSync(join(mnt, 'usr/local/bin/node'), 0o755);
    log(`npm@${npmVersion} from the npm registry into the node image ...`);
    run('npm', ['install', '--global', '--prefix', join(mnt, 'usr/local'), '--no-audit', '--no-fund', '--ignore-scripts', `npm@${npmVersion}`], { quiet: true });
    run('buildah', ['umount', ctr], { quiet: true });
    // No network at all: only checks that both run in the image.
    const versions = run('buildah', ['run', '--runtime', RUNTIME, '--network=none', ctr, '--', '/bin/sh', '-c', 'node --version && npm --version'], { capture: true });
    log(`node image runs: ${versions.split('\n').join(', npm ')}`);
    run('buildah', [
      'config',
      '--cmd', '["node"]',
      '--env', `NODE_VERSION=${nodeVersion}`,
      '--label', `org.opencontainers.image.description=Node ${nodeVersion} (the node npm package's binary) and npm ${npmVersion} on ${DEBIAN_IMAGE}; made by trellis scripts/image.mjs`,
      ctr,
    ], { quiet: true });
    run('buildah', ['commit', '--rm', ctr, image], { quiet: true });
    ctr = undefined;
  } finally {
    if (ctr) spawnSync('buildah', ['rm', ctr], { stdio: 'ignore' });
  }
  return performance.now() - started;
}

/** The host's extra CAs (*.crt under HOST_CA_DIR, as update-ca-certificates reads them), concatenated. */
function hostCaBundle() {
  if (!existsSync(HOST_CA_DIR)) return '';
  const files = [];
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith('.crt')) files.push(path);
    }
  };
  walk(HOST_CA_DIR);
  return files.map((f) => readFileSync(f, 'utf8').trimEnd() + '\n').join('');
}

function main() {
  const { values: flags } = parseArgs({
    options: {
      tag: { type: 'string', default: 'trellis:dev' },
      'no-cache': { type: 'boolean', default: false },
      'rebuild-base': { type: 'boolean', default: false },
      'base-only': { type: 'boolean', default: false },
      mirror: { type: 'string', default: DEFAULT_MIRROR },
      'no-host-ca': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (flags.help) {
    console.log(USAGE);
    return;
  }
  if (process.getuid?.() !== 0) {
    throw new UsageError(`needs root: buildah and podman use root's containers-storage (${STORAGE}); run \`sudo npm run image\`.`);
  }
  const nodeVersion = nodeVersionOfDockerfile();
  const nodeImage = `docker.io/library/node:${nodeVersion}-${SUITE}-slim`;
  requireTools(['buildah', 'podman', RUNTIME]);
  const needDebian = flags['rebuild-base'] || !imageExists(DEBIAN_IMAGE);
  if (needDebian) requireTools(['debootstrap']);

  if (needDebian) {
    const ms = buildDebianBase(flags.mirror);
    log(`${DEBIAN_IMAGE} built in ${seconds(ms)}, ${megabytes(imageSize(DEBIAN_IMAGE))}`);
  } else {
    log(`${DEBIAN_IMAGE} present, reused (${megabytes(imageSize(DEBIAN_IMAGE))})`);
  }
  if (needDebian || flags['rebuild-base'] || !imageExists(nodeImage)) {
    const ms = buildNodeBase(nodeImage, nodeVersion);
    log(`${nodeImage} built in ${seconds(ms)}, ${megabytes(imageSize(nodeImage))}`);
  } else {
    nodeBinary(nodeVersion);
    log(`${nodeImage} present, reused (${megabytes(imageSize(nodeImage))})`);
  }
  if (flags['base-only']) return;

  // --force-rm: a failed step leaves no working container behind.
  const args = ['build', '--runtime', RUNTIME, '--pull=never', '--network=host', '--layers', '--force-rm', '--file', 'Dockerfile', '--tag', flags.tag];
  if (flags['no-cache']) args.push('--no-cache');
  const ca = flags['no-host-ca'] ? '' : hostCaBundle();
  let secretDir;
  try {
    if (ca) {
      // Readable by root only, outside the repository, deleted right after the build.
      secretDir = mkdtempSync(join(tmpdir(), 'trellis-image-'));
      const file = join(secretDir, `${CA_SECRET_ID}.pem`);
      writeFileSync(file, ca, { mode: 0o600 });
      args.push('--secret', `id=${CA_SECRET_ID},src=${file}`);
      log(`host CAs from ${HOST_CA_DIR} passed to the npm step as build secret "${CA_SECRET_ID}"`);
    }
    args.push('.');
    const previous = imageExists(flags.tag) ? imageId(flags.tag) : undefined;
    log(`buildah ${args.join(' ')}`);
    const started = performance.now();
    run('buildah', args);
    const ms = performance.now() - started;
    log(`${flags.tag} built in ${seconds(ms)}${flags['no-cache'] ? ' (no cache)' : ''}; size ${megabytes(imageSize(flags.tag))} uncompressed`);
    // The image the tag named before is untagged now: removed with the layers only it used (not if a container
    // still uses it). The build stage's cached layers stay for the next build.
    if (previous && previous !== imageId(flags.tag)) {
      const rmi = spawnSync('podman', ['rmi', previous], { stdio: 'ignore' });
      if (rmi.status === 0) log(`removed the previous ${flags.tag} (${previous.slice(0, 12)})`);
    }
  } finally {
    if (secretDir) rmSync(secretDir, { recursive: true, force: true });
  }
  log(`images are in containers-storage under ${STORAGE}, outside the repository (podman images)`);
}

try {
  main();
} catch (err) {
  console.error(`image: ${err instanceof UsageError || err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? '' : 'failed: '}${err.message}`);
  if (err.code?.startsWith?.('ERR_PARSE_ARGS')) console.error('Try: npm run image -- --help');
  process.exit(err instanceof UsageError || err.code?.startsWith?.('ERR_PARSE_ARGS') ? 2 : 1);
}
