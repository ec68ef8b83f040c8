// CPU and memory of the proxies, as read from /proc: parsing, and reading this very process.
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ProcReader, parseCpuBusyTicks, parseProcStat, parseRssAnonKb, parseVmRssKb } from '../../../lab/bench/procfs.js';

// A real line, comm with a space and a parenthesis in it.
const STAT =
  '4242 (node (agent) x) S 1 4242 4242 0 -1 4194560 51234 0 12 0 1500 320 0 0 20 0 11 0 987654 1234567890 45678 ' +
  '18446744073709551615 1 1 0 0 0 0 0 16781312 17922 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0';

describe('parseProcStat', () => {
  it('reads utime, stime and threads after the last parenthesis', () => {
    expect(parseProcStat(STAT)).toEqual({ utimeTicks: 1500, stimeTicks: 320, threads: 11 });
  });

  it('rejects a line that is not /proc/PID/stat', () => {
    expect(() => parseProcStat('garbage')).toThrow(/not a \/proc\/PID\/stat line/);
    expect(() => parseProcStat('1 (x) S 1')).toThrow(/field 14/);
  });
});

describe('parseRssAnonKb', () => {
  it('reads RssAnon in kB, not RssFile or VmRSS', () => {
    expect(parseRssAnonKb('VmRSS:\t  90092 kB\nRssAnon:\t   36420 kB\nRssFile:\t   53672 kB\n')).toBe(36420);
  });

  it('says so when there is none', () => {
    expect(() => parseRssAnonKb('Name:\tnode\nState:\tZ (zombie)\n')).toThrow(/no RssAnon/);
  });
});

describe('parseVmRssKb', () => {
  it('reads VmRSS in kB', () => {
    expect(parseVmRssKb('Name:\tnode\nVmPeak:\t  900 kB\nVmRSS:\t  183048 kB\nRssAnon:\t 1 kB\n')).toBe(183048);
  });

  it('says so when there is none (a zombie has no VmRSS)', () => {
    expect(() => parseVmRssKb('Name:\tnode\nState:\tZ (zombie)\n')).toThrow(/no VmRSS/);
  });
});

describe('ProcReader', () => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'trl-t-procfs-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('sums CPU seconds and RSS over processes', () => {
    for (const [pid, ut, st, rss] of [[10, 100, 50, 1000], [11, 20, 30, 24]] as const) {
      mkdirSync(path.join(root, String(pid)));
      writeFileSync(path.join(root, String(pid), 'stat'), STAT.replace('1500 320', `${ut} ${st}`));
      writeFileSync(path.join(root, String(pid), 'status'), `VmRSS:\t${rss} kB\nRssAnon:\t${rss / 2} kB\n`);
    }
    const r = new ProcReader(100, root);
    expect(r.cpuSeconds([10, 11])).toBeCloseTo(2.0, 10);
    expect(r.rssKb([10, 11])).toBe(1024);
    expect(r.anonKb([10, 11])).toBe(512);
    expect(() => r.cpuSeconds([12])).toThrow(/did the process exit/);
  });

  it('reads this process from the real /proc', () => {
    const r = new ProcReader();
    const before = r.cpuSeconds([process.pid]);
    let x = 0;
    for (let i = 0; i < 3e7; i++) x += i % 7;
    expect(x).toBeGreaterThan(0);
    expect(r.cpuSeconds([process.pid])).toBeGreaterThan(before);
    expect(r.rssKb([process.pid])).toBeGreaterThan(10_000);
    expect(r.anonKb([process.pid])).toBeGreaterThan(1_000);
    expect(r.anonKb([process.pid])).toBeLessThan(r.rssKb([process.pid]));
    expect(r.cpuBusySeconds(0)).toBeGreaterThan(0);
  });
});

describe('parseCpuBusyTicks', () => {
  const stat = [
    'cpu  179068 0 44160 1063599 3483 0 2972 5334 0 0',
    'cpu0 90000 10 20000 500000 1000 0 1500 300 0 0',
    'cpu1 89068 0 24160 563599 2483 0 1472 5034 0 0',
    'intr 123',
  ].join('\n');

  it('adds user, nice, system and steal of one CPU', () => {
    expect(parseCpuBusyTicks(stat, 0)).toBe(90000 + 10 + 20000 + 300);
    expect(parseCpuBusyTicks(stat, 1)).toBe(89068 + 24160 + 5034);
  });

  it('names a CPU that is not there', () => {
    expect(() => parseCpuBusyTicks(stat, 7)).toThrow(/no cpu7 line/);
  });
});
