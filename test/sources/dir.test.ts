import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, renameSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { DirSource, parseFile, type Snapshot } from '../../agent/sources/dir.js';
import { captureLogger } from '../support/logger.js';
import { requireRoot } from '../support/root.js';

const pod = (name: string, extra = '') => `apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  namespace: demo
spec:
  nodeName: node-a
  containers: [{ name: c }]
status:
  podIP: 10.244.1.${name.length + 2}
${extra}`;

describe('dir source', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const tmp = () => {
    const d = mkdtempSync(path.join(tmpdir(), 'trellis-dir-'));
    dirs.push(d);
    return d;
  };

  it('parses multi-document files and defaults the namespace', () => {
    const r = parseFile('x.yaml', `${pod('a')}---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n`);
    expect(r.problems).toEqual([]);
    expect([...r.objects!.keys()]).toEqual(['Pod/demo/a', 'Service/default/s']);
  });

  it('reports an invalid object with file, object and field, and keeps its last good version', () => {
    const first = parseFile('p.yaml', pod('a'));
    const bad = pod('a').replace('podIP: 10.244.1.3', 'podIP: not-an-ip');
    const r = parseFile('p.yaml', bad, first.objects);
    expect(r.problems).toHaveLength(1);
    expect(r.problems[0]).toMatchObject({ file: 'p.yaml', object: 'Pod/demo/a' });
    expect(r.problems[0]!.reason).toMatch(/status\.podIP/);
    expect(r.objects!.get('Pod/demo/a')).toEqual(first.objects!.get('Pod/demo/a'));
  });

  it('rejects a file with a YAML syntax error as a whole', () => {
    const r = parseFile('bad.yaml', `${pod('a')}---\nkind: [unclosed\n`);
    expect(r.objects).toBeUndefined();
    expect(r.problems[0]!.reason).toMatch(/invalid YAML/);
  });

  it('carries routes and Trellis policy kinds, and ignores a version it does not understand', () => {
    const r = parseFile('f.yaml', `apiVersion: traffic.trellis.dev/v1alpha1
kind: FaultInjection
metadata: {name: slow, namespace: demo}
spec: {delay: {fixedDelay: 1s, percentage: {value: 10}}}
---
apiVersion: traffic.trellis.dev/v1alpha2
kind: FaultInjection
metadata: {name: future, namespace: demo}
spec: {}
`);
    expect([...r.objects!.keys()]).toEqual(['FaultInjection/demo/slow']);
    expect(r.problems).toHaveLength(1);
    expect(r.problems[0]!.reason).toMatch(/apiVersion traffic\.trellis\.dev\/v1alpha2 of FaultInjection is not understood.*reads traffic\.trellis\.dev\/v1alpha1.*ignored/);
  });

  it('names unsupported kinds', () => {
    const r = parseFile('k.yaml', 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n');
    expect(r.problems[0]!.reason).toMatch(/unsupported kind "Deployment"/);
  });

  it('reloads on change and keeps the last good state when a file turns invalid', async () => {
    const dir = tmp();
    writeFileSync(path.join(dir, 'a.yaml'), pod('a'));
    const snaps: Snapshot[] = [];
    const { logger, lines } = captureLogger();
    const src = new DirSource({ dir, logger, onSnapshot: (s) => snaps.push(s), debounceMs: 10 });
    await src.start();
    try {
      expect(snaps.at(-1)!.objects.map((o) => o.metadata.name)).toEqual(['a']);
      const next = async (pred: (s: Snapshot) => boolean) => {
        const deadline = Date.now() + 3000;
        while (Date.now() < deadline) {
          if (snaps.length && pred(snaps.at(-1)!)) return snaps.at(-1)!;
          await new Promise((r) => setTimeout(r, 20));
        }
        throw new Error('no matching snapshot');
      };
      const tmpFile = path.join(dir, '.b.tmp');
      writeFileSync(tmpFile, pod('bb'));
      renameSync(tmpFile, path.join(dir, 'b.yaml'));
      await next((s) => s.objects.length === 2);
      writeFileSync(path.join(dir, 'b.yaml'), 'kind: [broken');
      const s = await next((s) => s.problems.length > 0);
      expect(s.objects.map((o) => o.metadata.name).sort()).toEqual(['a', 'bb']);
      expect(lines().some((l) => l.file === path.join(dir, 'b.yaml') && String(l.reason).includes('invalid YAML'))).toBe(true);
      rmSync(path.join(dir, 'b.yaml'));
      await next((s) => s.objects.length === 1 && s.problems.length === 0);
    } finally {
      src.close();
    }
  });

  it('reads a directory of thousands of files in one snapshot, and a reload of an unchanged directory delivers none', async () => {
    const dir = tmp();
    mkdirSync(path.join(dir, 'many'));
    for (let i = 0; i < 1500; i++) writeFileSync(path.join(dir, 'many', `svc-${i}.yaml`), service(`s${i}`, 80));
    const snaps: Snapshot[] = [];
    const src = new DirSource({ dir, logger: captureLogger().logger, onSnapshot: (s) => snaps.push(s) });
    await src.start();
    try {
      expect(snaps).toHaveLength(1);
      expect(snaps[0]!.objects).toHaveLength(1500);
      expect(snaps[0]!.problems).toEqual([]);
      // Settled files (written long ago, by their stat) are not read again: nothing to deliver.
      for (let i = 0; i < 1500; i += 100) utimesSync(path.join(dir, 'many', `svc-${i}.yaml`), new Date(0), new Date(0));
      await src.reload();
      const afterTouch = snaps.length;
      await src.reload();
      expect(snaps.length).toBe(afterTouch);
      rmSync(path.join(dir, 'many', 'svc-7.yaml'));
      await src.reload();
      expect(snaps.at(-1)!.objects).toHaveLength(1499);
    } finally {
      src.close();
    }
  });

  it('sees a rewrite of the same size right after a load, even within one timestamp tick', async () => {
    const dir = tmp();
    const file = path.join(dir, 's.yaml');
    const snaps: Snapshot[] = [];
    const src = new DirSource({ dir, logger: captureLogger().logger, onSnapshot: (s) => snaps.push(s) });
    // Each rewrite lands within a millisecond or so of the load before it: whatever the filesystem's timestamp
    // granularity (the racy-file rule covers a coarse one), each is seen.
    writeFileSync(file, service('s', 80));
    await src.start();
    try {
      const ports = () => (snaps.at(-1)!.objects[0] as { spec: { ports: { port: number }[] } }).spec.ports[0]!.port;
      expect(ports()).toBe(80);
      for (let i = 0; i < 5; i++) {
        const port = 81 + i;
        writeFileSync(file, service('s', port));
        await src.reload();
        expect(ports()).toBe(port);
      }
    } finally {
      src.close();
    }
  });

  it('keeps the last good state when the directory cannot be listed any more, and says so', async () => {
    const dir = tmp();
    writeFileSync(path.join(dir, 's.yaml'), service('s', 80));
    const snaps: Snapshot[] = [];
    const { logger, lines } = captureLogger();
    const src = new DirSource({ dir, logger, onSnapshot: (s) => snaps.push(s) });
    await src.start();
    try {
      rmSync(dir, { recursive: true, force: true });
      await src.reload();
      expect(snaps).toHaveLength(1);
      expect(lines().some((l) => String(l.msg).includes('cannot list the directory') && String(l.err).includes('ENOENT'))).toBe(true);
    } finally {
      src.close();
    }
  });

  it('reads without updating access times', async () => {
    const dir = tmp();
    const file = path.join(dir, 's.yaml');
    const control = path.join(dir, 'control.txt');
    for (const f of [file, control]) {
      writeFileSync(f, service('s', 80));
      // An access time older than the modification time: a plain read updates it (relatime, strictatime).
      utimesSync(f, new Date(Date.now() - 3_600_000), statSync(f).mtime);
    }
    const before = statSync(file).atimeMs;
    readFileSync(control);
    expect(statSync(control).atimeMs, `reads do not update access times under ${dir} (noatime?): nothing to observe`).toBeGreaterThan(before);
    const snaps: Snapshot[] = [];
    const src = new DirSource({ dir, logger: captureLogger().logger, onSnapshot: (s) => snaps.push(s) });
    await src.start();
    src.close();
    expect(snaps[0]!.objects).toHaveLength(1);
    expect(statSync(file).atimeMs).toBe(before);
  });

  it('reads plainly where the kernel refuses to leave access times alone (files of another owner)', () => {
    // O_NOATIME is refused (EPERM) to a process that neither owns the file nor has CAP_FOWNER: the built
    // source runs as nobody over a directory root owns, is refused once and opens plainly.
    requireRoot('reading files of another owner');
    const dir = tmp();
    writeFileSync(path.join(dir, 's.yaml'), service('s', 80));
    chmodSync(dir, 0o755);
    const script = `
      const { DirSource } = await import(${JSON.stringify(pathToFileURL(path.join(import.meta.dirname, '../../dist/agent/sources/dir.js')).href)});
      const logger = { info() {}, warn() {}, error() {} };
      const snaps = [];
      const src = new DirSource({ dir: ${JSON.stringify(dir)}, logger, onSnapshot: (s) => snaps.push(s) });
      await src.start();
      src.close();
      console.log(JSON.stringify({ objects: snaps[0].objects.length, noAtime: src.noAtime }));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { uid: 65534, gid: 65534, encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    // noAtime 0: it tried, was refused and fell back (undefined: dist/ is older than this test, npm run build).
    expect(JSON.parse(r.stdout)).toEqual({ objects: 1, noAtime: 0 });
  });

  it('reads YAML beyond the plain subset with the full parser (flow style, block scalars, anchors)', () => {
    const r = parseFile('f.yaml', `apiVersion: v1
kind: Service
metadata:
  name: s
  annotations:
    note: |
      two
      lines
    same: &a x
    again: *a
spec: {ports: [{port: 80}]}
`);
    expect(r.problems).toEqual([]);
    const svc = r.objects!.get('Service/default/s') as { metadata: { annotations: Record<string, string> } };
    expect(svc.metadata.annotations).toEqual({ note: 'two\nlines\n', same: 'x', again: 'x' });
  });
});

function service(name: string, port: number): string {
  return `apiVersion: v1
kind: Service
metadata:
  name: ${name}
  namespace: demo
spec:
  clusterIP: 10.96.0.1
  ports:
  - name: http
    port: ${port}
`;
}
