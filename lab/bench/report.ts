// Bench: the report, as a table for people (median [min–max] per path, then ratios against `direct`
// and against the HAProxy path of the same layer) and as JSON for machines.
import { formatTable } from '../../agent/cli/table.js';
import type { PathDef } from './paths.js';
import { ratio, type MetricDef, type ResultRow, type Results } from './results.js';

export interface ReportInput {
  /** Every path of the run, the unavailable ones included (they get a column of n/a and a note). */
  paths: readonly PathDef[];
  catalogue: readonly MetricDef[];
  results: Results;
  /** Lines printed above the tables (machine, pinning, TLS, durations). */
  header: readonly string[];
  /** Things that make numbers less trustworthy (errors, a generator that fell behind...). */
  warnings: readonly string[];
}

/** 3 significant digits (whole numbers from 100 up), no trailing zeros, no exponent notation. */
export function formatNumber(v: number): string {
  if (Math.abs(v) >= 100) return v.toFixed(0);
  return Number(v.toPrecision(3)).toString();
}

export function formatRatio(r: number | undefined): string {
  return r === undefined ? '-' : `${r >= 10 ? r.toFixed(1) : r.toFixed(2)}x`;
}

export function formatReport(input: ReportInput): string {
  const out: string[] = [...input.header, ''];
  const names = input.paths.map((p) => p.name);
  const measured = input.catalogue.filter((m) => names.some((p) => input.results.get(p, m.name)));

  const main: string[][] = [['METRIC', 'UNIT', ...names]];
  for (const m of measured) {
    main.push([
      m.name,
      m.unit,
      ...input.paths.map((p) => {
        if (p.unavailable) return 'n/a';
        const s = input.results.get(p.name, m.name);
        if (!s) return '-';
        return s.min === s.max ? formatNumber(s.median) : `${formatNumber(s.median)} [${formatNumber(s.min)}–${formatNumber(s.max)}]`;
      }),
    ]);
  }
  out.push(formatTable(main, 2));
  for (const p of input.paths) if (p.unavailable) out.push(`${p.name}: not available (${p.unavailable})`);

  const pairs = ratioPairs(input.paths);
  if (pairs.length > 0) {
    out.push('', 'Ratios (path ÷ baseline; for req/s, Gbit/s and conn/s higher is better, for the rest lower is better):');
    const rt: string[][] = [['METRIC', ...pairs.map(([a, b]) => `${a}/${b}`)]];
    for (const m of measured) {
      const cells = pairs.map(([a, b]) => formatRatio(ratio(input.results.get(a, m.name)?.median, input.results.get(b, m.name)?.median)));
      if (cells.every((c) => c === '-')) continue;
      rt.push([m.name, ...cells]);
    }
    out.push(formatTable(rt, 1));
  }
  if (input.warnings.length > 0) {
    out.push('', 'Warnings:');
    for (const w of input.warnings) out.push(`  - ${w}`);
  }
  return `${out.join('\n')}\n`;
}

/** (path, baseline) pairs: every runnable path against direct, and a mesh path against its HAProxy peer. */
export function ratioPairs(paths: readonly PathDef[]): [string, string][] {
  const runnable = new Set(paths.filter((p) => !p.unavailable).map((p) => p.name));
  const pairs: [string, string][] = [];
  for (const p of paths) {
    if (!runnable.has(p.name) || p.name === 'direct') continue;
    if (runnable.has('direct')) pairs.push([p.name, 'direct']);
    if (p.haproxyPeer && runnable.has(p.haproxyPeer)) pairs.push([p.name, p.haproxyPeer]);
    if (p.peer && runnable.has(p.peer)) pairs.push([p.name, p.peer]);
  }
  return pairs;
}

export interface BenchJson {
  results: ResultRow[];
  machine: Record<string, unknown>;
}

/** `{"results":[{"path","metric","value","unit", min, max, samples}], "machine": {...}}`; unavailable paths are left out. */
export function benchJson(input: Pick<ReportInput, 'paths' | 'catalogue' | 'results'>, machine: Record<string, unknown>): BenchJson {
  const runnable = input.paths.filter((p) => !p.unavailable).map((p) => p.name);
  return { results: input.results.rows(runnable, input.catalogue), machine };
}
