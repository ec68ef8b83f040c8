// The layering of agent/ (docs/code.md): folders import one way, from the data path's upper
// layers down to the config model; nothing in agent/ imports the lab harness (lab/), which imports agent/.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');

/**
 * Layers from the bottom up: a module may import its own layer and the layers below it, never one above.
 * Files directly in agent/ are their own units (errors.ts is the bottom, main.ts the top).
 */
const LAYERS: readonly (readonly string[])[] = [
  ['errors.ts', 'clock.ts', 'constants.ts'],
  ['native'],
  ['model'],
  ['identity', 'telemetry'],
  ['state'],
  ['security', 'io', 'tap', 'tracing'],
  ['l7'],
  ['proxy'],
  ['capture', 'sources'],
  ['identity-service'],
  ['config.ts', 'dataplane.ts', 'workers', 'app.ts'],
  ['cli'],
  ['main.ts'],
];

function files(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) out.push(...files(p));
    else if (name.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** Relative module specifiers of every static import and export-from, and of literal dynamic imports. */
function imports(file: string): string[] {
  const src = readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of src.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s*['"]([^'"]+)['"]/gm)) out.push(m[1]!);
  for (const m of src.matchAll(/^\s*import\s*['"]([^'"]+)['"]/gm)) out.push(m[1]!);
  for (const m of src.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) out.push(m[1]!);
  return out.filter((s) => s.startsWith('.'));
}

/** The unit of agent/ a path belongs to: its top folder, or the file itself when it sits in agent/. */
function unitOf(abs: string): string {
  const rel = path.relative(path.join(ROOT, 'agent'), abs);
  const first = rel.split(path.sep)[0]!;
  return first;
}

interface Edge {
  from: string;
  to: string;
  file: string;
  spec: string;
}

function agentEdges(): { edges: Edge[]; outside: Edge[] } {
  const edges: Edge[] = [];
  const outside: Edge[] = [];
  for (const file of files(path.join(ROOT, 'agent'))) {
    for (const spec of imports(file)) {
      const target = path.resolve(path.dirname(file), spec);
      const rel = path.relative(path.join(ROOT, 'agent'), target);
      const e = { from: unitOf(file), to: unitOf(target), file: path.relative(ROOT, file), spec };
      if (rel.startsWith('..')) outside.push(e);
      else if (e.from !== e.to) edges.push(e);
    }
  }
  return { edges, outside };
}

/** A cycle in the unit graph, as the list of units around it, or undefined. */
function findCycle(edges: readonly Edge[]): string[] | undefined {
  const next = new Map<string, Set<string>>();
  for (const e of edges) {
    let s = next.get(e.from);
    if (!s) next.set(e.from, (s = new Set()));
    s.add(e.to);
  }
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (u: string): string[] | undefined => {
    state.set(u, 'open');
    stack.push(u);
    for (const v of next.get(u) ?? []) {
      if (state.get(v) === 'open') return [...stack.slice(stack.indexOf(v)), v];
      if (!state.has(v)) {
        const c = visit(v);
        if (c) return c;
      }
    }
    stack.pop();
    state.set(u, 'done');
    return undefined;
  };
  for (const u of next.keys()) {
    if (state.has(u)) continue;
    const c = visit(u);
    if (c) return c;
  }
  return undefined;
}

describe('agent/ layering', () => {
  const { edges, outside } = agentEdges();

  it('imports nothing outside agent/ but packages (never the lab harness)', () => {
    expect(outside.map((e) => `${e.file}: ${e.spec}`)).toEqual([]);
  });

  it('has no import cycle between its folders', () => {
    const cycle = findCycle(edges);
    expect(cycle && `cycle: ${cycle.join(' -> ')}`).toBeUndefined();
  });

  it('imports only downward, in the order of LAYERS', () => {
    const layerOf = new Map<string, number>();
    LAYERS.forEach((units, i) => units.forEach((u) => layerOf.set(u, i)));
    const units = new Set([...readdirSync(path.join(ROOT, 'agent'))]);
    const unknown = [...units].filter((u) => !layerOf.has(u) && (u.endsWith('.ts') || statSync(path.join(ROOT, 'agent', u)).isDirectory()));
    expect(unknown, 'every folder and top-level file of agent/ has a layer (add it to LAYERS)').toEqual([]);
    const upward = edges.filter((e) => layerOf.get(e.to)! > layerOf.get(e.from)!).map((e) => `${e.file} imports ${e.spec} (${e.from} sits below ${e.to})`);
    expect(upward).toEqual([]);
  });

  it('finds a cycle when there is one (the check itself works)', () => {
    const e = (from: string, to: string): Edge => ({ from, to, file: from, spec: to });
    expect(findCycle([e('a', 'b'), e('b', 'c'), e('c', 'a')])).toEqual(['a', 'b', 'c', 'a']);
    expect(findCycle([e('a', 'b'), e('b', 'c'), e('a', 'c')])).toBeUndefined();
  });
});

describe('lab/ (the harness)', () => {
  it('may import agent/ and viz/; the agent build cannot see lab/ (a composite project that includes agent/ only)', () => {
    const tsconfig = readFileSync(path.join(ROOT, 'tsconfig.json'), 'utf8');
    expect(tsconfig).toMatch(/"composite": true/);
    expect(tsconfig).toMatch(/"include": \["agent\/\*\*\/\*\.ts"\]/);
    const lab = readFileSync(path.join(ROOT, 'lab/tsconfig.json'), 'utf8');
    expect(lab).toMatch(/"references": \[\{ "path": "\.\." \}, \{ "path": "\.\.\/viz" \}\]/);
  });
});

describe('viz/ (the mesh viewer)', () => {
  it('imports agent/ and packages only, never lab/ (which imports it)', () => {
    const outside = files(path.join(ROOT, 'viz')).flatMap((file) =>
      imports(file)
        .map((spec) => ({ file: path.relative(ROOT, file), rel: path.relative(ROOT, path.resolve(path.dirname(file), spec)) }))
        .filter(({ rel }) => !rel.startsWith(`viz${path.sep}`) && !rel.startsWith(`agent${path.sep}`))
        .map(({ file, rel }) => `${file}: ${rel}`),
    );
    expect(outside).toEqual([]);
    const viz = readFileSync(path.join(ROOT, 'viz/tsconfig.json'), 'utf8');
    expect(viz).toMatch(/"composite": true/);
    expect(viz).toMatch(/"references": \[\{ "path": "\.\." \}\]/);
  });

  it('is found by agent/main.ts at run time, never imported', () => {
    const main = readFileSync(path.join(ROOT, 'agent/main.ts'), 'utf8');
    expect(main).toMatch(/new URL\('\.\.\/viz\/cli\/commands\.js', import\.meta\.url\)/);
    expect(imports(path.join(ROOT, 'agent/main.ts')).filter((s) => s.includes('viz'))).toEqual([]);
  });
});
