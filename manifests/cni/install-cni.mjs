// Chains the trellis-cni plugin into the node's CNI configuration: run by the agent DaemonSet's init container
// (once, before the agent starts) and by its cni-watch container (again every few seconds). Idempotent.
//
//   node install-cni.mjs [--bin-src F] [--bin-dir D] [--conf-dir D] [--socket P] [--timeout-ms N]
//                        [--optin-file P] [--wait-seconds N] [--watch-seconds N] [--uninstall]
//
// The container runtime uses the first file of the CNI config directory, by name, among *.conf, *.conflist and
// *.json. This script puts {"type":"trellis-cni",...} last in that file's plugin list (turning a single-plugin
// .conf into a .conflist), copies the plugin binary next to the other plugins, and changes nothing when both
// are already in place. --uninstall takes the entry out of every config file and removes the binary.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const PLUGIN_TYPE = 'trellis-cni';
const CONF_EXTENSIONS = ['.conf', '.conflist', '.json'];
// CNI chaining (prevResult) exists from spec 0.3.0 on.
const MIN_CHAIN_VERSION = [0, 3, 0];

const DEFAULTS = {
  'bin-src': '/opt/trellis/cni/trellis-cni',
  'bin-dir': '/host/opt/cni/bin',
  'conf-dir': '/host/etc/cni/net.d',
  socket: '/var/run/trellis/cni.sock',
  'timeout-ms': '10000',
  'optin-file': '/var/run/trellis/cni/optin',
  'wait-seconds': '600',
  'watch-seconds': '0',
};

class InstallError extends Error {}

function log(message) {
  process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), component: 'install-cni', msg: message })}\n`);
}

function parseArgs(argv) {
  const opts = { ...DEFAULTS, uninstall: false };
  for (const arg of argv) {
    if (arg === '--uninstall') {
      opts.uninstall = true;
      continue;
    }
    const m = /^--([a-z-]+)=(.*)$/.exec(arg);
    if (!m || !(m[1] in DEFAULTS)) {
      throw new InstallError(`unknown argument ${arg}; flags are --${Object.keys(DEFAULTS).join('=..., --')}=... and --uninstall`);
    }
    opts[m[1]] = m[2];
  }
  for (const key of ['timeout-ms', 'wait-seconds', 'watch-seconds']) {
    if (!/^\d+$/.test(opts[key])) throw new InstallError(`--${key}=${opts[key]} must be a whole number`);
  }
  return opts;
}

function pluginEntry(opts) {
  return { type: PLUGIN_TYPE, socket: opts.socket, timeout_ms: Number(opts['timeout-ms']), optin_file: opts['optin-file'] };
}

/** Config files in the order the container runtime considers them (libcni: sorted by name). */
function confFiles(dir) {
  let names;
  try {
    names = fs.readdirSync(dir);
  } catch (err) {
    if (err.code === 'ENOENT') return [];
    throw err;
  }
  return names
    .filter((n) => !n.startsWith('.') && CONF_EXTENSIONS.includes(path.extname(n)))
    .sort()
    .map((n) => path.join(dir, n))
    .filter((p) => fs.statSync(p).isFile());
}

function readJson(file) {
  const text = fs.readFileSync(file, 'utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new InstallError(`${file} is not valid JSON (${err.message}); fix or remove it, the container runtime cannot use it either`);
  }
}

function versionAtLeast(version, min) {
  const parts = String(version ?? '0.1.0').split('.').map(Number);
  for (let i = 0; i < min.length; i++) {
    const a = parts[i] ?? 0;
    if (a !== min[i]) return a > min[i];
  }
  return true;
}

/** Writes through a dot-file in the same directory and renames, so the runtime never reads half a file. */
function writeAtomic(file, content, mode) {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.trellis-${process.pid}`);
  fs.writeFileSync(tmp, content, { mode });
  try {
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}

function digest(file) {
  try {
    return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  } catch (err) {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  }
}

function installBinary(opts) {
  const src = opts['bin-src'];
  const dst = path.join(opts['bin-dir'], PLUGIN_TYPE);
  const want = digest(src);
  if (!want) throw new InstallError(`plugin binary ${src} is missing; the image must ship it (native/build/trellis-cni)`);
  if (digest(dst) === want) return false;
  fs.mkdirSync(opts['bin-dir'], { recursive: true });
  writeAtomic(dst, fs.readFileSync(src), 0o755);
  fs.chmodSync(dst, 0o755);
  log(`installed ${dst}`);
  return true;
}

/** The plugin list without any trellis-cni entry, and the conflist fields around it. */
function asConflist(file, conf) {
  if (Array.isArray(conf.plugins)) return conf;
  if (typeof conf.type !== 'string') {
    throw new InstallError(`${file} has neither "plugins" nor "type"; it is not a CNI config`);
  }
  const { cniVersion, name, ...plugin } = conf;
  return { cniVersion, name, plugins: [plugin] };
}

function chainInto(file, opts) {
  const original = readJson(file);
  const conflist = asConflist(file, original);
  if (!versionAtLeast(conflist.cniVersion, MIN_CHAIN_VERSION)) {
    throw new InstallError(`${file} declares cniVersion ${conflist.cniVersion}; chained plugins need 0.3.0 or later`);
  }
  const plugins = conflist.plugins.filter((p) => p?.type !== PLUGIN_TYPE);
  const next = { ...conflist, plugins: [...plugins, pluginEntry(opts)] };
  const target = path.extname(file) === '.conf' ? file.slice(0, -'.conf'.length) + '.conflist' : file;
  const content = `${JSON.stringify(next, null, 2)}\n`;
  if (target === file && fs.readFileSync(file, 'utf8') === content) return false;
  const mode = fs.statSync(file).mode & 0o777;
  writeAtomic(target, content, mode);
  if (target !== file) {
    // The .conf would sort before its .conflist and stay the one the runtime uses.
    fs.rmSync(file);
    log(`converted ${file} to ${target} and added ${PLUGIN_TYPE} as its last plugin`);
  } else {
    log(`added ${PLUGIN_TYPE} as the last plugin of ${file}`);
  }
  return true;
}

function removeFrom(file) {
  const conf = readJson(file);
  if (!Array.isArray(conf.plugins) || !conf.plugins.some((p) => p?.type === PLUGIN_TYPE)) return false;
  const next = { ...conf, plugins: conf.plugins.filter((p) => p?.type !== PLUGIN_TYPE) };
  writeAtomic(file, `${JSON.stringify(next, null, 2)}\n`, fs.statSync(file).mode & 0o777);
  log(`removed ${PLUGIN_TYPE} from ${file}`);
  return true;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits for the node's primary CNI to write its config: on a new node it may start after us. */
async function firstConf(opts) {
  const deadline = Date.now() + Number(opts['wait-seconds']) * 1000;
  let said = false;
  for (;;) {
    const first = confFiles(opts['conf-dir'])[0];
    if (first) return first;
    if (Date.now() >= deadline) {
      throw new InstallError(
        `no CNI config (*.conf, *.conflist, *.json) in ${opts['conf-dir']} after ${opts['wait-seconds']}s; ` +
          'install the cluster network (CNI) first, or mount its config directory here if it is elsewhere',
      );
    }
    if (!said) log(`waiting for a CNI config in ${opts['conf-dir']}`);
    said = true;
    await sleep(1000);
  }
}

async function install(opts) {
  installBinary(opts);
  const first = await firstConf(opts);
  chainInto(first, opts);
}

function uninstall(opts) {
  for (const file of confFiles(opts['conf-dir'])) removeFrom(file);
  const bin = path.join(opts['bin-dir'], PLUGIN_TYPE);
  if (fs.existsSync(bin)) {
    fs.rmSync(bin);
    log(`removed ${bin}`);
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.uninstall) return uninstall(opts);
  await install(opts);
  log(`${PLUGIN_TYPE} is in place`);
  const every = Number(opts['watch-seconds']) * 1000;
  if (!every) return;
  // Stopping leaves the plugin in the chain: new opted-in pods then wait for an agent, never skip the mesh.
  process.once('SIGTERM', () => process.exit(0));
  process.once('SIGINT', () => process.exit(0));
  for (;;) {
    await sleep(every);
    try {
      await install(opts);
    } catch (err) {
      log(`re-check failed, retrying in ${every / 1000}s: ${err.message}`);
    }
  }
}

main().catch((err) => {
  process.stderr.write(`install-cni: ${err instanceof InstallError ? err.message : err.stack}\n`);
  process.exit(1);
});
