// `dir` source: a directory of ordinary Kubernetes YAML, reloaded on change; feeds the store as one snapshot.
// A file that fails to parse keeps its last good objects; an invalid object keeps its last good version.
import { promises as fsp, watch, type FSWatcher } from 'node:fs';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import type { Logger } from 'pino';
import { parsePlainYaml } from './dir-yaml.js';
import { objectKey, type KubeObject } from './objects.js';
import { validateObject } from './validate.js';

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
  /** Debounce for bursts of file events. */
  debounceMs?: number;
}

const YAML_FILE = /\.(ya?ml|json)$/i;

export class DirSource {
  private readonly inputs: DirSourceInputs;
  /** One non-recursive watcher per directory: Node's recursive mode on Linux watches files one by one and
   * misses a file replaced by rename (the way atomic writers, kubectl cp and ConfigMap mounts update). */
  private readonly watchers = new Map<string, FSWatcher>();
  private timer: NodeJS.Timeout | undefined;
  private loading: Promise<void> | undefined;
  private again = false;
  /** Last good objects per file, by object key. */
  private readonly good = new Map<string, Map<string, KubeObject>>();
  /** Last text per file, so unchanged files are not re-parsed. */
  private readonly texts = new Map<string, string>();
  private closed = false;

  constructor(inputs: DirSourceInputs) {
    this.inputs = inputs;
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
    this.loading = this.load().finally(() => {
      this.loading = undefined;
      if (this.again && !this.closed) {
        this.again = false;
        void this.reload();
      }
    });
    return this.loading;
  }

  private schedule(): void {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.reload(), this.inputs.debounceMs ?? 50);
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
    const { files, dirs } = await listTree(this.inputs.dir);
    this.watchDirs(dirs);
    const problems: SourceProblem[] = [];
    for (const gone of [...this.good.keys()].filter((f) => !files.includes(f))) {
      this.good.delete(gone);
      this.texts.delete(gone);
    }
    for (const file of files) {
      let text: string;
      try {
        text = await fsp.readFile(file, 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
          this.good.delete(file);
          this.texts.delete(file);
          continue;
        }
        problems.push({ file, reason: `cannot read: ${(err as Error).message}` });
        continue;
      }
      if (this.texts.get(file) === text) continue;
      this.texts.set(file, text);
      const parsed = parseFile(file, text, this.good.get(file));
      problems.push(...parsed.problems);
      if (parsed.objects) this.good.set(file, parsed.objects);
    }
    for (const p of problems) {
      this.inputs.logger.error({ file: p.file, object: p.object, reason: p.reason }, 'dir source: invalid input ignored; last good state stays in force');
    }
    const merged = new Map<string, KubeObject>();
    for (const file of [...this.good.keys()].sort()) {
      for (const [key, obj] of this.good.get(file)!) {
        if (merged.has(key)) {
          problems.push({ file, object: key, reason: 'defined in more than one file; the first file (by name) wins' });
          continue;
        }
        merged.set(key, obj);
      }
    }
    if (!this.closed) this.inputs.onSnapshot({ objects: [...merged.values()], problems });
  }
}

async function listTree(dir: string): Promise<{ files: string[]; dirs: string[] }> {
  const entries = await fsp.readdir(dir, { recursive: true, withFileTypes: true });
  const files = entries
    .filter((e) => e.isFile() && YAML_FILE.test(e.name) && !e.name.startsWith('.'))
    .map((e) => path.join(e.parentPath, e.name))
    .sort();
  const dirs = [dir, ...entries.filter((e) => e.isDirectory()).map((e) => path.join(e.parentPath, e.name))];
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
  for (const [i, raw] of raws.entries()) {
    if (raw === null || raw === undefined) continue;
    const items = isList(raw) ? raw.items : [raw];
    for (const item of items) {
      const label = describe(item, i);
      const v = validateObject(item);
      if (v.ok) {
        objects.set(objectKey(v.object), v.object);
        continue;
      }
      problems.push({ file, object: label, reason: v.reason });
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
