// `dir` source: a directory of ordinary Kubernetes YAML, reloaded on change; feeds the store as one snapshot.
// A file that fails to parse keeps its last good objects; an invalid object keeps its last good version.
import { closeSync, constants, fstatSync, promises as fsp, openSync, readdirSync, readFileSync, readSync, statSync, watch, type FSWatcher, type Stats } from 'node:fs';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import type { Logger } from 'pino';
import { parsePlainYaml } from './dir-yaml.js';
import { objectKey, type KubeObject } from '../model/objects.js';
import { validateObject } from '../model/validate.js';

export interface SourceProblem {
  file: string;
  object?: string;
  reason: string;
}

export interface Snapshot {
  objects: KubeObject[];
  problems: SourceProblem[];
}

export interface DirSourceInputs {
  dir: string;
  logger: Logger;
  /** Called with every new full snapshot (the store diffs). */
  onSnapshot: (snapshot: Snapshot) => void;
  /** Debounce for bursts of file events (20 ms, as the kube source: an editor or kubectl cp writes in a few ms). */
  debounceMs?: number;
}

const YAML_FILE = /\.(ya?ml|json)$/i;
const { O_RDONLY, O_NOATIME } = constants;
/** Files read and parsed per turn of the event loop: a big directory never stalls the proxy for long. */
const FILES_PER_TURN = 256;
/**
 * A file modified this close to when it was read may change again within its timestamp's granularity
 * (a jiffy on Linux, up to 2 s elsewhere) without its stat changing: it is read again next time.
 */
const RACY_MS = 2000;

/** Files up to this size are read into one reused buffer; larger ones get a buffer of their own. */
const READ_BUFFER_BYTES = 64 * 1024;

/**
 * A file as the last load left it: what its last read saw, to tell without reading it again whether it
 * changed, and its last good objects.
 */
interface FileState {
  ino: number;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  /** Date.now() just before it was read. */
  readAt: number;
  /** Its text, kept only while it is racy (see RACY_MS): a re-read with the same text is not parsed again. */
  text: string | undefined;
  /** Last good objects, by object key; undefined until the file first parsed. */
  objects: Map<string, KubeObject> | undefined;
}

export class DirSource {
  private readonly inputs: DirSourceInputs;
  /** One non-recursive watcher per directory: Node's recursive mode on Linux watches files one by one and
   * misses a file replaced by rename (the way atomic writers, kubectl cp and ConfigMap mounts update). */
  private readonly watchers = new Map<string, FSWatcher>();
  private timer: NodeJS.Timeout | undefined;
  private loading: Promise<void> | undefined;
  private again = false;
  /** Per file read: what its last read saw (unchanged files are neither read nor parsed again) and its last good objects. */
  private readonly files = new Map<string, FileState>();
  /** Whether a file was added, changed, found invalid or removed since the last snapshot; unset before the first. */
  private changed = true;
  /** Whether a snapshot was delivered (start() has succeeded). */
  private delivered = false;
  /** Files parsed by the current load. */
  private parsed = 0;
  /** O_NOATIME while the kernel accepts it (see open()); 0 once refused or where there is none. */
  private noAtime = O_NOATIME ?? 0;
  /** Reused for every small file read. */
  private buffer: Buffer | undefined;
  private closed = false;

  constructor(inputs: DirSourceInputs) {
    this.inputs = { ...inputs, dir: path.resolve(inputs.dir) };
  }

  /** Loads once, then watches. Resolves after the first snapshot was delivered. */
  async start(): Promise<void> {
    await fsp.mkdir(this.inputs.dir, { recursive: true });
    await this.reload();
  }

  close(): void {
    this.closed = true;
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
    if (this.timer) clearTimeout(this.timer);
  }

  /** Reloads now (also used by tests and a periodic safety net). */
  reload(): Promise<void> {
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = this.load()
      .catch((err: Error) => {
        // Before the first snapshot, start() reports it; later the last good state stays and a later reload
        // tries again (a reload that throws would end the agent: nobody awaits the timer's).
        if (!this.delivered) throw err;
        if (!this.closed) this.inputs.logger.error({ err: err.message, dir: this.inputs.dir }, 'dir source: cannot list the directory; the last good state stays in force');
      })
      .finally(() => {
        this.loading = undefined;
        if (this.again && !this.closed) {
          this.again = false;
          this.reload().catch(() => undefined);
        }
      });
    return this.loading;
  }

  private schedule(): void {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.reload().catch(() => undefined), this.inputs.debounceMs ?? 20);
  }

  private watchDirs(dirs: string[]): void {
    if (this.closed) return;
    for (const [dir, w] of this.watchers) {
      if (!dirs.includes(dir)) {
        w.close();
        this.watchers.delete(dir);
      }
    }
    for (const dir of dirs) {
      if (this.watchers.has(dir)) continue;
      try {
        const w = watch(dir, () => this.schedule());
        w.on('error', (err) => this.inputs.logger.error({ err, dir }, 'dir source: watch failed'));
        this.watchers.set(dir, w);
      } catch (err) {
        this.inputs.logger.error({ err, dir }, 'dir source: cannot watch directory');
      }
    }
  }

  private async load(): Promise<void> {
    const started = performance.now();
    this.parsed = 0;
    const { files, dirs } = listTree(this.inputs.dir);
    this.watchDirs(dirs);
    const problems: SourceProblem[] = [];
    const listed = new Set(files);
    for (const file of this.files.keys()) if (!listed.has(file)) this.forget(file);
    // Synchronous reads in slices: a read costs a few microseconds (fs.promises costs a hundred, for 20 000
    // files seconds), and the loop turns between slices, so connections go on being served.
    for (let i = 0; i < files.length; i += FILES_PER_TURN) {
      if (i > 0) await new Promise((resolve) => setImmediate(resolve));
      if (this.closed) return;
      for (let k = i; k < Math.min(i + FILES_PER_TURN, files.length); k++) this.readFile(files[k]!, problems);
    }
    for (const p of problems) {
      this.inputs.logger.error({ file: p.file, object: p.object, reason: p.reason }, 'dir source: invalid input ignored; last good state stays in force');
    }
    // Nothing changed (most reloads of the periodic safety net): the store keeps what it has, recompiling
    // nothing. The first load always delivers, even of an empty directory.
    if (!this.changed && problems.length === 0) return;
    this.changed = false;
    const merged = new Map<string, KubeObject>();
    // In file name order: files is sorted, and a file with objects that is not listed was forgotten above.
    for (const file of files) {
      const objects = this.files.get(file)?.objects;
      if (!objects) continue;
      for (const [key, obj] of objects) {
        if (merged.has(key)) {
          problems.push({ file, object: key, reason: 'defined in more than one file; the first file (by name) wins' });
          continue;
        }
        merged.set(key, obj);
      }
    }
    if (this.closed) return;
    const objects = [...merged.values()];
    const loaded = performance.now();
    this.inputs.onSnapshot({ objects, problems });
    this.delivered = true;
    // How long a change took to apply: reading what changed, then compiling and swapping the state.
    this.inputs.logger.info(
      { files: files.length, parsed: this.parsed, objects: objects.length, problems: problems.length, loadMs: Math.round(loaded - started), applyMs: Math.round(performance.now() - loaded) },
      'dir source: snapshot applied',
    );
  }

  /** Reads and parses one file unless its stat says it is unchanged since the last read. */
  private readFile(file: string, problems: SourceProblem[]): void {
    const readAt = Date.now();
    const prev = this.files.get(file);
    let read: { st: Stats; text: string };
    try {
      // A file known and settled is only stat'ed; a new or changed one is stat'ed through the descriptor it
      // is read from, so its stat and its text belong together.
      if (prev && prev.text === undefined && sameFile(prev, statSync(file))) return;
      read = this.readText(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') this.forget(file);
      else problems.push({ file, reason: `cannot read: ${(err as Error).message}` });
      return;
    }
    const { st, text } = read;
    const isRacy = readAt - Math.max(st.mtimeMs, st.ctimeMs) < RACY_MS;
    const unchanged = prev?.text === text && sameFile(prev, st);
    const state: FileState = prev ?? { ino: 0, size: 0, mtimeMs: 0, ctimeMs: 0, readAt: 0, text: undefined, objects: undefined };
    state.ino = st.ino;
    state.size = st.size;
    state.mtimeMs = st.mtimeMs;
    state.ctimeMs = st.ctimeMs;
    state.readAt = readAt;
    state.text = isRacy ? text : undefined;
    if (!prev) this.files.set(file, state);
    if (unchanged) return;
    this.changed = true;
    this.parsed++;
    const parsed = parseFile(file, text, state.objects);
    for (const p of parsed.problems) problems.push(p);
    if (parsed.objects) state.objects = parsed.objects;
  }

  private readText(file: string): { st: Stats; text: string } {
    const fd = this.open(file);
    try {
      const st = fstatSync(fd);
      if (st.size < READ_BUFFER_BYTES) {
        this.buffer ??= Buffer.allocUnsafe(READ_BUFFER_BYTES);
        const n = readSync(fd, this.buffer, 0, READ_BUFFER_BYTES, 0);
        // A file that grew past the buffer since fstat is read whole below.
        if (n < READ_BUFFER_BYTES) return { st, text: this.buffer.toString('utf8', 0, n) };
      }
      return { st, text: readFileSync(fd, 'utf8') };
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Opens for reading without updating the file's access time where the kernel allows it (Linux, the file's
   * owner or CAP_FOWNER): a first read of a new file would otherwise write its inode back, a tenth of the
   * cost of reading a directory that just arrived. Elsewhere, or refused once, files are opened plainly.
   */
  private open(file: string): number {
    if (this.noAtime) {
      try {
        return openSync(file, O_RDONLY | this.noAtime);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EPERM') throw err;
        this.noAtime = 0;
      }
    }
    return openSync(file, O_RDONLY);
  }

  private forget(file: string): void {
    this.files.delete(file);
    this.changed = true;
  }
}

/** Same inode, size, mtime and ctime: an editor's rename, a rewrite or a touch each change one of them. */
function sameFile(seen: FileState, st: Stats): boolean {
  return seen.ino === st.ino && seen.size === st.size && seen.mtimeMs === st.mtimeMs && seen.ctimeMs === st.ctimeMs;
}

/**
 * The YAML files under `dir` (sorted) and the directories to watch. Synchronous, directory by directory: for
 * 20 000 files a third less CPU than fs.promises' recursive readdir, and one short pause of the loop.
 */
function listTree(dir: string): { files: string[]; dirs: string[] } {
  const files: string[] = [];
  const dirs = [dir];
  for (let i = 0; i < dirs.length; i++) {
    // dir is absolute and normalized, and so is every path under it: no path.join per entry.
    const parent = dirs[i]!;
    let entries;
    try {
      entries = readdirSync(parent, { withFileTypes: true });
    } catch (err) {
      // A subdirectory moved away or removed since its parent was listed is not there: its own event
      // brings the next reload. The top directory failing is the caller's to report.
      const code = (err as NodeJS.ErrnoException).code;
      if (i > 0 && (code === 'ENOENT' || code === 'ENOTDIR')) continue;
      throw err;
    }
    for (const e of entries) {
      if (e.isDirectory()) dirs.push(`${parent}/${e.name}`);
      else if (e.isFile() && YAML_FILE.test(e.name) && !e.name.startsWith('.')) files.push(`${parent}/${e.name}`);
    }
  }
  files.sort();
  return { files, dirs };
}

/**
 * Parses one file. A YAML syntax error anywhere rejects the whole file (objects: undefined -> keep last good);
 * an invalid object is replaced by its previous good version, if any.
 */
export function parseFile(
  file: string,
  text: string,
  previous?: Map<string, KubeObject>,
): { objects?: Map<string, KubeObject>; problems: SourceProblem[] } {
  const problems: SourceProblem[] = [];
  // Plain block YAML (what tools write) is read by the fast path; anything else by the full library.
  let raws = parsePlainYaml(text);
  if (!raws) {
    const docs = parseAllDocuments(text);
    const list = Array.isArray(docs) ? docs : [docs];
    for (const [i, doc] of list.entries()) {
      if (doc.errors.length) {
        problems.push({ file, object: `document ${i + 1}`, reason: `invalid YAML: ${doc.errors[0]!.message.split('\n')[0]}` });
      }
    }
    if (problems.length) return { problems };
    raws = list.map((doc) => doc.toJS() as unknown);
  }
  const objects = new Map<string, KubeObject>();
  for (let i = 0; i < raws.length; i++) {
    const raw = raws[i];
    if (raw === null || raw === undefined) continue;
    const items = isList(raw) ? raw.items : [raw];
    for (const item of items) {
      const v = validateObject(item);
      if (v.ok) {
        objects.set(objectKey(v.object), v.object);
        continue;
      }
      problems.push({ file, object: describe(item, i), reason: v.reason });
      const key = keyOf(item);
      const last = key ? previous?.get(key) : undefined;
      if (key && last) objects.set(key, last);
    }
  }
  return { objects, problems };
}

function isList(raw: unknown): raw is { items: unknown[] } {
  const r = raw as { kind?: unknown; items?: unknown };
  return typeof r.kind === 'string' && r.kind.endsWith('List') && Array.isArray(r.items);
}

function keyOf(item: unknown): string | undefined {
  const o = item as { kind?: unknown; metadata?: { name?: unknown; namespace?: unknown } };
  if (typeof o?.kind !== 'string' || typeof o.metadata?.name !== 'string') return undefined;
  const ns = typeof o.metadata.namespace === 'string' ? o.metadata.namespace : o.kind === 'Namespace' ? '' : 'default';
  return `${o.kind}/${ns}/${o.metadata.name}`;
}

function describe(item: unknown, index: number): string {
  return keyOf(item) ?? `document ${index + 1}`;
}
