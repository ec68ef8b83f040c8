// The dir source's fast YAML reader against the yaml library: wherever the fast path answers, it must give
// what parseAllDocuments().toJS() gives, and it must never accept a text the library rejects.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments, stringify } from 'yaml';
import { parsePlainYaml } from '../../agent/sources/dir-yaml.js';
import { scaleObjects } from '../../lab/bench/scale.js';
import { mulberry32 } from '../support/prng.js';

/** What the library makes of the text: the documents, or undefined when any has an error. */
function library(text: string): unknown[] | undefined {
  const docs = parseAllDocuments(text);
  const list = Array.isArray(docs) ? docs : [docs];
  if (list.some((d) => d.errors.length > 0)) return undefined;
  return list.map((d) => d.toJS() as unknown);
}

/** The fast path either declines or agrees with the library exactly (Object.is on numbers, so -0 counts). */
function agrees(text: string): 'fast' | 'declined' {
  const fast = parsePlainYaml(text);
  if (fast === undefined) return 'declined';
  const lib = library(text);
  expect(lib, `the library rejects what the fast path accepted:\n${text}`).toBeDefined();
  expect(fast, text).toEqual(lib);
  return 'fast';
}

describe('parsePlainYaml', () => {
  it('reads what stringify writes, object for object', () => {
    const objects = scaleObjects({ services: 20, endpointsPerService: 3 });
    for (const o of objects) {
      const text = stringify(o);
      expect(agrees(text)).toBe('fast');
      expect(parsePlainYaml(text)).toEqual([o]);
    }
  });

  it('reads kubectl-style manifests: several documents, comments, sequences at the key column, quotes', () => {
    const text = `# the demo server
---
apiVersion: v1
kind: Pod
metadata:
  name: server   # trailing comment
  namespace: demo
  labels:
    app.kubernetes.io/name: server
    trellis.dev/mesh: "enabled"
  annotations:
    note: 'it''s here'
    url: http://example.com:8080/a#frag
    path: "C:\\\\dir \\"q\\" \\u00e9"
spec:
  containers:
  - name: c
    image: nginx:1.25
    args:
    - --port
    - "8080"
    - -v
    ports:
    - containerPort: 8080
      protocol: TCP
  -
    name: d
  tolerations: []
  nodeSelector: {}
  empty:
  nested:
  - - a
    - b
  - # an empty-looking item with a block below
    k: v
---
---
kind: Service
`;
    expect(agrees(text)).toBe('fast');
    const docs = parsePlainYaml(text)!;
    expect(docs).toHaveLength(3);
    expect(docs[1]).toBeNull();
  });

  it('resolves plain scalars as the YAML 1.2 core schema does', () => {
    const values = [
      '~', 'null', 'Null', 'NULL', 'nUll', 'true', 'True', 'TRUE', 'tRue', 'false', 'FALSE', 'yes', 'no', 'on', 'off', 'y',
      '0', '-0', '+0', '007', '-12', '+12', '0o17', '0o18', '0x1F', '0X1F', '0xg', '1_000', '12345678901234567890',
      '1.0', '1.', '.5', '-.5', '+.5', '1e3', '1E-3', '-1.5e+2', '.inf', '-.Inf', '+.INF', '.nan', '.NaN', 'NaN', 'inf',
      '1.2.3', '10.244.1.2', '2024-01-01', '12:30', '1:2', 'v1', 'n', 'f', 't', '.', '-', '--x', '-x', 'a#b', 'a b',
      '10.96.100.100', '1..2', '1.5.e3', '0.0', '00', '0o17.1', '0x1F.2', '1e3.5', '12.e3', '1_0', 'a.b.c', '/x/y', '_x', 'x/', 'nullx',
      'truex', 'falsey', 'tru', 'fals', 'nul', 'Nope', 'Tcp', 'F1', 'n0', 'TCP', 'discovery.k8s.io/v1', 'x'.repeat(70), '9'.repeat(70),
    ];
    for (const v of values) agrees(`k: ${v}\n`);
    expect(parsePlainYaml('k: -0\n')).toEqual([{ k: -0 }]);
    expect(parsePlainYaml('k: 0x1F\n')).toEqual([{ k: 31 }]);
  });

  it('reads keys and values met before as it read them the first time, whatever else shares their slot (seeded)', () => {
    // Thousands of distinct keys and values: the shared tables' slots collide many times over.
    const random = mulberry32(99);
    const chars = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-';
    const word = (first: string) => first + Array.from({ length: Math.floor(random() * 12) }, () => chars[Math.floor(random() * chars.length)]).join('');
    const keys = Array.from({ length: 3000 }, () => word('abcdefghijklmnopqrstuvwxyz'[Math.floor(random() * 26)]!));
    const values = Array.from({ length: 3000 }, () => word(chars[Math.floor(random() * chars.length)]!));
    for (let n = 0; n < 2000; n++) {
      const lines = Array.from({ length: 1 + Math.floor(random() * 6) }, () => `${keys[Math.floor(random() * keys.length)]}: ${values[Math.floor(random() * values.length)]}`);
      agrees(`${lines.join('\n')}\n`);
    }
  });

  it('counts documents as the library does', () => {
    for (const text of ['', '\n', '# c\n', '---\n', 'a: 1\n---\n', '---\na: 1\n', '# c\n---\na: 1\n', 'a: 1\n---\n# c\n---\nb: 2', 'a: 1\n---\n---\n']) {
      expect(agrees(text), JSON.stringify(text)).toBe('fast');
    }
  });

  it('declines what is beyond the subset or malformed', () => {
    const declined = [
      'a: 1\na: 2\n', // duplicate key: an error in the library
      'a: &x 1\nb: *x\n',
      'a: !!str 1\n',
      'a: |\n  text\n',
      'a: >-\n  text\n',
      'a: [1, 2]\n',
      'a: {b: 1}\n',
      'a: b\n  c\n', // multi-line plain
      'a:\n  b\n',
      'a: "open\n  close"\n',
      'a: b: c\n',
      'a: b:\n',
      '"q": 1\n',
      '? a\n: b\n',
      '1: a\n',
      'true: a\n',
      '__proto__: 1\n',
      'a:\n\tb: 1\n',
      'a: 1\r\n',
      '\ufeffa: 1\n',
      'a: 1\n...\n',
      '%YAML 1.2\n---\na: 1\n',
      '--- a\n',
      'plain\n',
      'a:\n  b: 1\n c: 2\n',
      'a: 1\n  b: 2\n',
      '- a\nb: 1\n',
      'a: "x\\q"\n',
      'a: "\\ud83d\\ude00"\n',
      "a: 'x' y\n",
      'a: "x"y\n',
      'a: @x\n',
      'a: `x\n',
      `${'k'.repeat(1100)}: 1\n`,
    ];
    for (const text of declined) expect(parsePlainYaml(text), JSON.stringify(text)).toBeUndefined();
  });

  it('agrees with the library on the manifests in this repository', () => {
    const root = path.resolve(__dirname, '../..');
    const files = [...yamlFiles(path.join(root, 'examples')), ...yamlFiles(path.join(root, 'manifests'))];
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) agrees(readFileSync(f, 'utf8'));
  });

  it('never accepts what the library rejects, nor reads it differently, under random edits (seeded)', () => {
    const random = mulberry32(20240611);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
    const pieces = [' ', '  ', ':', ': ', '-', '- ', '#', ' #', "'", '"', '\\', '[', ']', '{', '}', '\n', '\n  ', '---\n', 'x', '0', '.', '&', '*', '!', '|', '>', '?', ','];
    let fast = 0;
    for (let n = 0; n < 3000; n++) {
      let text = stringify(randomObject(random, 3));
      for (let k = Math.floor(random() * 4); k > 0; k--) {
        const at = Math.floor(random() * (text.length + 1));
        const cut = random() < 0.3 ? Math.floor(random() * 3) : 0;
        text = text.slice(0, at) + (random() < 0.8 ? pick(pieces) : '') + text.slice(at + cut);
      }
      if (agrees(text) === 'fast') fast++;
    }
    // Most edited texts are still plain YAML: the comparison above was not vacuous.
    expect(fast).toBeGreaterThan(1000);
  });
});

function yamlFiles(dir: string): string[] {
  let entries;
  try {
    entries = readdirSync(dir, { recursive: true, withFileTypes: true });
  } catch {
    return [];
  }
  return entries.filter((e) => e.isFile() && /\.ya?ml$/.test(e.name)).map((e) => path.join(e.parentPath, e.name));
}

/** A random nested value with the keys and scalars manifests have, and some that look like other types. */
function randomObject(random: () => number, depth: number): Record<string, unknown> {
  const keys = ['name', 'namespace', 'app.kubernetes.io/name', 'kind', 'ports', 'port', 'x_y', 'a-b', 'spec', 'items'];
  const scalars: unknown[] = ['plain', 'with space', 'http://a:80/b', '10.0.0.1', 'true', 'null', '0x10', '-1', '1e3', '', ' lead', 'it\'s', 'q"uote', 'a #b', 'a: b', '- x', '#x', 7, -3, 0.5, 1e21, true, false, null, [], {}];
  const n = 1 + Math.floor(random() * 4);
  const o: Record<string, unknown> = {};
  for (let i = 0; i < n; i++) {
    const key = keys[Math.floor(random() * keys.length)]!;
    const r = random();
    if (depth > 0 && r < 0.25) o[key] = randomObject(random, depth - 1);
    else if (depth > 0 && r < 0.45) {
      o[key] = Array.from({ length: 1 + Math.floor(random() * 3) }, () =>
        random() < 0.5 ? randomObject(random, depth - 1) : scalars[Math.floor(random() * scalars.length)],
      );
    } else o[key] = scalars[Math.floor(random() * scalars.length)];
  }
  return o;
}
