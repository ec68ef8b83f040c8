// Builds the native parts with the system's tools, into native/build/ (never committed). No node-gyp: one call each.
// - The BPF programs (native/bpf/NAME.bpf.c): clang -target bpf against a vmlinux.h that bpftool writes from this
//   kernel's BTF (/sys/kernel/btf/vmlinux), CO-RE, so the object runs on other kernels too; then bpftool makes a
//   libbpf skeleton (NAME.skel.h) with the object inside it.
// - The addon (native/trellis.c, native/bpf.c -> trellis.node), with the skeletons compiled in (the BPF objects travel
//   inside the addon: nothing to find at run time, never a mismatch between loader and object) and libbpf linked
//   dynamically (libbpf.so.1, which needs libelf.so.1 and libz.so.1): Debian's libbpf.a is built without -fPIC (and
//   libelf.a with local-exec TLS), so neither can go into a shared object; the image installs libbpf1.
// - The chained CNI plugin (native/cni/trellis-cni.c -> trellis-cni), static.
import { spawnSync } from 'node:child_process';
import { mkdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = dirname(here);
const out = join(here, 'build');
const self = fileURLToPath(import.meta.url);
// CC may carry a wrapper and flags ("ccache gcc").
const [cc, ...ccArgs] = (process.env.CC?.trim() || 'cc').split(/\s+/);
const CLANG = process.env.CLANG?.trim() || 'clang';
const BPFTOOL = process.env.BPFTOOL?.trim() || 'bpftool';
/** The kernel's BTF, where vmlinux.h comes from; any kernel's will do (CO-RE relocates at load time). */
const VMLINUX_BTF = process.env.VMLINUX_BTF?.trim() || '/sys/kernel/btf/vmlinux';

function mtime(path) {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return -1;
  }
}

const headersHint = 'It needs gcc or clang with the C library headers (apt-get install gcc libc6-dev; apk add build-base).';
const bpfToolsHint =
  'The BPF programs need clang, llvm, bpftool and libbpf-dev (apt-get install clang llvm bpftool libbpf-dev; ' +
  'bash scripts/setup-debian.sh installs them).';

/**
 * Runs one build step unless `output` is newer than every input; returns false (after saying why) on failure.
 * `run(temp)` writes the output to `temp` (renamed into place on success) and returns spawnSync's result.
 */
function step({ output, inputs, tool, what, run, hint }) {
  const shown = relative(root, output);
  if (mtime(output) > Math.max(...[...inputs, self].map(mtime))) {
    console.log(`native: ${shown} is up to date`);
    return true;
  }
  const temp = `${output}.tmp-${process.pid}`;
  mkdirSync(dirname(output), { recursive: true });
  const started = performance.now();
  const result = run(temp);
  if (result.error || result.status !== 0) {
    rmSync(temp, { force: true });
    if (result.stderr) process.stderr.write(result.stderr);
    if (result.error?.code === 'ENOENT') {
      console.error(`native: ${tool} not found (needed for ${shown}). ${hint('')}`);
    } else {
      console.error(`native: ${tool} failed to ${what} (${result.error?.message ?? `exit ${result.status}`}). ${hint(result.stderr ?? '')}`);
    }
    return false;
  }
  renameSync(temp, output);
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  console.log(`native: built ${shown} with ${tool} in ${seconds}s`);
  return true;
}

const spawn = (file, args) => spawnSync(file, args, { encoding: 'utf8', maxBuffer: 64 << 20 });

/** Compiles C `sources` into `output` with the system compiler. */
function compile({ sources, inputs = [], output, flags, libs = [], hint }) {
  return step({
    output,
    inputs: [...sources, ...inputs],
    tool: cc,
    what: `compile ${sources.map((s) => relative(root, s)).join(', ')}`,
    run: (temp) => spawn(cc, [...ccArgs, '-O2', '-Wall', '-Wextra', '-Werror', ...flags, '-o', temp, ...sources, ...libs]),
    hint: (stderr) => (stderr ? hint(stderr) : 'Install one (apt-get install gcc libc6-dev; apk add build-base; dnf install gcc) or set CC.'),
  });
}

/** vmlinux.h: every type of the kernel, for the BPF programs (with preserve_access_index, so field offsets relocate). */
function vmlinuxHeader() {
  const output = join(out, 'vmlinux.h');
  // Made once: CO-RE makes the build machine's kernel irrelevant to where the object runs.
  if (mtime(output) > 0) {
    console.log(`native: ${relative(root, output)} is up to date`);
    return true;
  }
  return step({
    output,
    inputs: [],
    tool: BPFTOOL,
    what: `dump ${VMLINUX_BTF} as C`,
    run: (temp) => {
      const r = spawn(BPFTOOL, ['btf', 'dump', 'file', VMLINUX_BTF, 'format', 'c']);
      if (!r.error && r.status === 0) writeFileSync(temp, r.stdout);
      return r;
    },
    hint: (stderr) =>
      /No such file|ENOENT/.test(stderr)
        ? `This kernel has no BTF at ${VMLINUX_BTF} (CONFIG_DEBUG_INFO_BTF); build where one has it, or point VMLINUX_BTF at another kernel's BTF file.`
        : bpfToolsHint,
  });
}

const bpfArch = { x64: 'x86', arm64: 'arm64', arm: 'arm', s390x: 's390', ppc64: 'powerpc', riscv64: 'riscv' }[process.arch] ?? process.arch;

/** One BPF program: NAME.bpf.c -> NAME.bpf.o (clang) -> NAME.o (bpftool gen object: linked, no DWARF) -> NAME.skel.h. */
function bpfProgram(name, skeleton) {
  const source = join(here, 'bpf', `${name}.bpf.c`);
  const header = join(here, 'bpf', `${name}.h`);
  const vmlinux = join(out, 'vmlinux.h');
  const object = join(out, `${name}.bpf.o`);
  const linked = join(out, `${name}.o`);
  const skel = join(out, `${name}.skel.h`);
  return (
    step({
      output: object,
      inputs: [source, header, vmlinux],
      tool: CLANG,
      what: `compile ${relative(root, source)}`,
      run: (temp) =>
        spawn(CLANG, ['-target', 'bpf', '-g', '-O2', '-mcpu=v3', `-D__TARGET_ARCH_${bpfArch}`, '-Wall', '-Werror', `-I${out}`, `-I${join(here, 'bpf')}`, '-c', source, '-o', temp]),
      hint: () => bpfToolsHint,
    }) &&
    step({ output: linked, inputs: [object], tool: BPFTOOL, what: `link ${relative(root, object)}`, run: (temp) => spawn(BPFTOOL, ['gen', 'object', temp, object]), hint: () => bpfToolsHint }) &&
    step({
      output: skel,
      inputs: [linked],
      tool: BPFTOOL,
      what: `make the skeleton of ${relative(root, linked)}`,
      run: (temp) => {
        const r = spawn(BPFTOOL, ['gen', 'skeleton', linked, 'name', skeleton]);
        if (!r.error && r.status === 0) writeFileSync(temp, r.stdout);
        return r;
      },
      hint: () => bpfToolsHint,
    })
  );
}

const require = createRequire(import.meta.url);
const includeDir = join(dirname(require.resolve('node-api-headers/package.json')), 'include');

const bpf = vmlinuxHeader() && bpfProgram('sk_lookup', 'trellis_sk_lookup') && bpfProgram('tcp_health', 'trellis_tcp_health') && bpfProgram('outbound', 'trellis_outbound') && bpfProgram('same_node', 'trellis_same_node');

// Only the module's entry points are exported; every other symbol of the addon stays local.
const exportsMap = join(here, 'exports.map');
const addon =
  bpf &&
  compile({
    sources: [join(here, 'trellis.c'), join(here, 'bpf.c')],
    inputs: [join(here, 'checks.h'), join(here, 'common.h'), join(here, 'bpf.h'), join(here, 'bpf', 'sk_lookup.h'), join(out, 'sk_lookup.skel.h'), join(here, 'bpf', 'tcp_health.h'), join(out, 'tcp_health.skel.h'), join(here, 'bpf', 'outbound.h'), join(out, 'outbound.skel.h'), join(here, 'bpf', 'same_node.h'), join(out, 'same_node.skel.h'), exportsMap],
    output: join(out, 'trellis.node'),
    flags: ['-fPIC', '-shared', '-DNAPI_VERSION=8', `-I${includeDir}`, `-I${out}`, `-I${join(here, 'bpf')}`, `-Wl,--version-script=${exportsMap}`],
    libs: ['-lbpf'],
    hint: (stderr) =>
      /cannot find -lbpf|bpf\/libbpf\.h/.test(stderr)
        ? 'The addon links libbpf: it needs its headers and libbpf.so (apt-get install libbpf-dev).'
        : headersHint,
  });

// Static, so the init container can copy it onto any node, whatever C library the node has.
const plugin = compile({
  sources: [join(here, 'cni', 'trellis-cni.c')],
  output: join(out, 'trellis-cni'),
  flags: ['-static'],
  hint: (stderr) =>
    /cannot find -lc\b|cannot find crt/.test(stderr)
      ? 'It is linked statically and needs the static C library (libc.a: apt-get install libc6-dev; ' +
        'apk add musl-dev; dnf install glibc-static).'
      : headersHint,
});

if (!addon || !plugin) process.exit(1);
