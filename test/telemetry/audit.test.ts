// The audit trail's destination: every line written or counted as dropped with its reason, size-based rotation
// on real files, write failures (a full device, a directory removed), a bounded backlog, and stdout shared with
// the agent's own log through a pipe.
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants as fsConstants, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createAuditLog, type AuditLog, type AuditOptions } from '../../agent/telemetry/audit.js';
import { captureLogger } from '../support/logger.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

let dir: string;
const opened: AuditLog[] = [];

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'trellis-audit-'));
});

afterEach(async () => {
  for (const a of opened.splice(0)) await a.close();
  rmSync(dir, { recursive: true, force: true });
});

function audit(opts: Partial<AuditOptions> = {}) {
  const registry = new Registry();
  const log = captureLogger();
  const a = createAuditLog({ registry, logger: log.logger, ...opts });
  opened.push(a);
  return { audit: a, registry, notices: log.lines };
}

async function counts(registry: Registry): Promise<{ written: number; dropped: Record<string, number> }> {
  const written = (await registry.getSingleMetric('trellis_audit_lines_total')!.get()).values[0]?.value ?? 0;
  const dropped: Record<string, number> = {};
  for (const v of (await registry.getSingleMetric('trellis_audit_dropped_total')!.get()).values) dropped[String(v.labels['reason'])] = v.value;
  return { written, dropped };
}

function linesOf(file: string): Record<string, unknown>[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('audit trail to a file', () => {
  it('writes exactly one line per log call under 10 000 quick writes, in order, and counts them', async () => {
    const file = path.join(dir, 'audit.log');
    const { audit: a, registry } = audit({ file, base: { node: 'n1' } });
    for (let i = 0; i < 10_000; i++) a.logger.info({ seq: i, src: { ip: '10.0.0.1', port: 40_000 + (i % 1000) }, request_id: `r-${i}` }, 'request');
    await a.flush();
    const lines = linesOf(file);
    expect(lines).toHaveLength(10_000);
    expect(lines.map((l) => l['seq'])).toEqual(Array.from({ length: 10_000 }, (_, i) => i));
    expect(lines[0]).toMatchObject({ level: 30, node: 'n1', log: 'access', msg: 'request', request_id: 'r-0' });
    expect(typeof lines[0]!['time']).toBe('string');
    expect(await counts(registry)).toEqual({ written: 10_000, dropped: {} });
  });

  it('reuses its write buffers without a line overwritten: waves of lines of every length while earlier writes are out', async () => {
    const file = path.join(dir, 'audit.log');
    const { audit: a, registry } = audit({ file, flushDelayMs: 1 });
    let seq = 0;
    for (let wave = 0; wave < 40; wave++) {
      // Each wave fills more than one 64 KiB buffer; the next starts while its writes are on the thread pool.
      for (let i = 0; i < 400; i++, seq++) a.logger.info({ seq, pad: 'x'.repeat((seq * 37) % 500) }, 'request');
      await new Promise((resolve) => setTimeout(resolve, wave % 3));
    }
    await a.flush();
    const lines = linesOf(file);
    expect(lines.map((l) => l['seq'])).toEqual(Array.from({ length: seq }, (_, i) => i));
    for (const l of lines) expect(l['pad']).toBe('x'.repeat((Number(l['seq']) * 37) % 500));
    expect(await counts(registry)).toEqual({ written: seq, dropped: {} });
  });

  it('gathers the lines of flushDelayMs into one write; flush() and a full chunk do not wait for it', async () => {
    const file = path.join(dir, 'audit.log');
    const { audit: a, registry } = audit({ file, flushDelayMs: 200 });
    for (let i = 0; i < 3; i++) a.logger.info({ seq: i }, 'request');
    await new Promise((resolve) => setTimeout(resolve, 50));
    // Gathered, not written yet: a write per line was what the delay removes.
    expect(readFileSync(file, 'utf8')).toBe('');
    await a.flush();
    expect(linesOf(file).map((l) => l['seq'])).toEqual([0, 1, 2]);
    // A file chunk's worth (1 MiB) goes at once, well before the delay.
    const started = performance.now();
    for (let i = 0; i < 1200; i++) a.logger.info({ seq: 3 + i, pad: 'y'.repeat(1000) }, 'request');
    while (linesOf(file).length < 1000 && performance.now() - started < 150) await new Promise((resolve) => setTimeout(resolve, 5));
    expect(linesOf(file).length).toBeGreaterThanOrEqual(1000);
    await a.flush();
    expect(await counts(registry)).toEqual({ written: 1203, dropped: {} });
  });

  it('rotates by size: PATH -> PATH.1 ... PATH.maxFiles, the oldest overwritten, no line cut or lost across files', async () => {
    const file = path.join(dir, 'audit.log');
    // A file left by a previous agent is appended to, and counts toward the first rotation.
    writeFileSync(file, `${JSON.stringify({ seq: -1 })}\n`);
    const { audit: a, registry } = audit({ file, maxBytes: 8192, maxFiles: 3 });
    const total = 600;
    for (let i = 0; i < total; i++) {
      a.logger.info({ seq: i, pad: 'x'.repeat(40) }, 'connection');
      // Spread over turns of the event loop, as traffic is: several writes, several rotations.
      if (i % 50 === 49) await a.flush();
    }
    await a.flush();
    const files = [`${file}.3`, `${file}.2`, `${file}.1`, file];
    for (const f of files) {
      expect(existsSync(f), f).toBe(true);
      expect(statSync(f).size, f).toBeLessThanOrEqual(8192);
      expect(statSync(f).size, f).toBeGreaterThan(4096);
    }
    expect(existsSync(`${file}.4`)).toBe(false);
    // Oldest to newest, the kept lines are one contiguous run ending with the last line logged.
    const seqs = files.flatMap((f) => linesOf(f).map((l) => l['seq'] as number));
    expect(seqs[seqs.length - 1]).toBe(total - 1);
    expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => total - seqs.length + i));
    expect(seqs.length).toBeLessThan(total);
    expect(await counts(registry)).toEqual({ written: total, dropped: {} });
  });

  it('a full device: every line is counted as dropped with ENOSPC, and the failure is reported once', async () => {
    const fd = openSync('/dev/full', 'w');
    try {
      const { audit: a, registry, notices } = audit({ fd });
      for (let i = 0; i < 100; i++) a.logger.info({ seq: i }, 'request');
      await a.flush();
      for (let i = 0; i < 50; i++) a.logger.info({ seq: i }, 'request');
      await a.flush();
      expect(await counts(registry)).toEqual({ written: 0, dropped: { ENOSPC: 150 } });
      const errors = notices().filter((n) => n['msg'] && String(n['msg']).startsWith('audit trail: lines dropped'));
      expect(errors).toHaveLength(1);
      expect(errors[0]).toMatchObject({ reason: 'ENOSPC', destination: `fd ${fd}` });
    } finally {
      closeSync(fd);
    }
  });

  it('the directory removed under the file: lines counted as dropped (ENOENT), writing resumes when it is back', async () => {
    const sub = path.join(dir, 'logs');
    mkdirSync(sub);
    const file = path.join(sub, 'audit.log');
    const { audit: a, registry, notices } = audit({ file, reopenCheckMs: 0 });
    for (let i = 0; i < 10; i++) a.logger.info({ seq: i }, 'request');
    await a.flush();
    rmSync(sub, { recursive: true });
    // Writes to the open descriptor of a deleted file succeed and are never read: the check notices instead.
    for (let i = 10; i < 30; i++) a.logger.info({ seq: i }, 'request');
    await a.flush();
    expect(await counts(registry)).toEqual({ written: 10, dropped: { ENOENT: 20 } });
    mkdirSync(sub);
    for (let i = 30; i < 35; i++) a.logger.info({ seq: i }, 'request');
    await a.flush();
    expect(linesOf(file).map((l) => l['seq'])).toEqual([30, 31, 32, 33, 34]);
    expect(await counts(registry)).toEqual({ written: 15, dropped: { ENOENT: 20 } });
    expect(notices().map((n) => n['msg'])).toContain('audit trail: writing again');
  });

  it('a file moved away (external logrotate) is reopened at its path', async () => {
    const file = path.join(dir, 'audit.log');
    const { audit: a, registry } = audit({ file, reopenCheckMs: 0 });
    a.logger.info({ seq: 0 }, 'request');
    await a.flush();
    renameSync(file, `${file}.old`);
    a.logger.info({ seq: 1 }, 'request');
    await a.flush();
    expect(linesOf(`${file}.old`).map((l) => l['seq'])).toEqual([0]);
    expect(linesOf(file).map((l) => l['seq'])).toEqual([1]);
    expect(await counts(registry)).toEqual({ written: 2, dropped: {} });
  });

  it('a bounded backlog: past it lines are dropped and counted exactly (backlog_full), never lost silently', async () => {
    const file = path.join(dir, 'audit.log');
    const { audit: a, registry } = audit({ file, maxBacklogBytes: 20_000 });
    // One synchronous burst: nothing can be written before it ends, so the backlog fills.
    for (let i = 0; i < 10_000; i++) a.logger.info({ seq: i }, 'request');
    await a.flush();
    const { written, dropped } = await counts(registry);
    expect(dropped['backlog_full']).toBeGreaterThan(0);
    expect(written + dropped['backlog_full']!).toBe(10_000);
    expect(Object.keys(dropped)).toEqual(['backlog_full']);
    const lines = linesOf(file);
    expect(lines).toHaveLength(written);
    // The first lines of the burst are the ones kept.
    expect(lines.map((l) => l['seq'])).toEqual(Array.from({ length: written }, (_, i) => i));
  });

  it('lines after close are counted (closed); close flushes what was logged before', async () => {
    const file = path.join(dir, 'audit.log');
    const { audit: a, registry } = audit({ file });
    for (let i = 0; i < 5; i++) a.logger.info({ seq: i }, 'request');
    await a.close();
    a.logger.info({ seq: 5 }, 'request');
    expect(linesOf(file)).toHaveLength(5);
    expect(await counts(registry)).toEqual({ written: 5, dropped: { closed: 1 } });
  });

  it('a file that cannot be opened fails at start, saying what to do', () => {
    expect(() => createAuditLog({ file: path.join(dir, 'missing', 'audit.log'), registry: new Registry(), logger: captureLogger().logger })).toThrow(
      /cannot open the audit file .*missing\/audit.log: .*ENOENT.*create its directory, or mount a writable volume there/,
    );
  });

  it('enabled: false (--no-audit) writes nothing and counts nothing', async () => {
    const file = path.join(dir, 'audit.log');
    const { audit: a, registry } = audit({ file, enabled: false });
    a.logger.info({ seq: 0 }, 'request');
    await a.flush();
    expect(readFileSync(file, 'utf8')).toBe('');
    expect(await counts(registry)).toEqual({ written: 0, dropped: {} });
  });
});

describe('audit trail to a pipe nobody reads', () => {
  // A FIFO whose read end is open but never read: the pipe fills after 64 KiB.
  function fifo(): { path: string; reader: number } {
    const p = path.join(dir, 'audit.fifo');
    execFileSync('mkfifo', [p]);
    return { path: p, reader: openSync(p, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK) };
  }

  function drainReader(reader: number): string {
    const buf = Buffer.alloc(1 << 20);
    let text = '';
    for (;;) {
      try {
        const n = readSync(reader, buf);
        if (n === 0) return text;
        text += buf.toString('utf8', 0, n);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return text;
        throw err;
      }
    }
  }

  async function ticksDuring<T>(work: Promise<T>): Promise<{ value: T; ticks: number; ms: number }> {
    let ticks = 0;
    const t = setInterval(() => ticks++, 10);
    const started = performance.now();
    try {
      return { value: await work, ticks, ms: performance.now() - started };
    } finally {
      clearInterval(t);
    }
  }

  it('non-blocking (as the agent opens a FIFO): the event loop keeps turning, shutdown waits a bounded time, the rest is counted', async () => {
    const { path: p, reader } = fifo();
    try {
      const { audit: a, registry } = audit({ file: p, closeTimeoutMs: 300 });
      for (let i = 0; i < 200; i++) a.logger.info({ seq: i, pad: 'p'.repeat(1000) }, 'request');
      const { ticks, ms } = await ticksDuring(a.close());
      expect(ms).toBeLessThan(2000);
      expect(ticks).toBeGreaterThan(10);
      const { written, dropped } = await counts(registry);
      expect(written).toBeGreaterThan(0);
      expect(dropped['closed']).toBeGreaterThan(0);
      expect(written + dropped['closed']!).toBe(200);
      // What was counted as written is in the pipe, as whole lines.
      const lines = drainReader(reader).split('\n').filter(Boolean).map((l) => JSON.parse(l) as { seq: number });
      expect(lines.map((l) => l.seq)).toEqual(Array.from({ length: written }, (_, i) => i));
    } finally {
      closeSync(reader);
    }
  });

  it('blocking (a descriptor inherited that way): written through the thread pool, never stalling the event loop', async () => {
    const { path: p, reader } = fifo();
    const fd = openSync(p, 'w');
    try {
      const { audit: a, registry } = audit({ fd, closeTimeoutMs: 300 });
      for (let i = 0; i < 200; i++) a.logger.info({ seq: i, pad: 'b'.repeat(1000) }, 'request');
      const { ticks } = await ticksDuring(a.close());
      expect(ticks).toBeGreaterThan(10);
      const { written, dropped } = await counts(registry);
      expect(written + dropped['closed']!).toBe(200);
      expect(dropped['closed']).toBeGreaterThan(0);
    } finally {
      // The write blocked in the thread pool ends (EPIPE) once the read end is gone.
      closeSync(reader);
      closeSync(fd);
    }
  });
});

describe('audit trail to stdout', () => {
  it('shares a slow pipe with the agent log: every line whole, none lost, the count exact', async () => {
    const dist = path.join(ROOT, 'dist/agent/telemetry/audit.js');
    if (!existsSync(dist)) throw new Error('run `npm run build` first: this test runs dist/agent/telemetry/audit.js in a child process');
    // The child writes 20 000 audit lines and 2 000 agent log lines to the same stdout pipe, then prints the
    // counters on stderr; the parent reads slowly at first, so the pipe fills (EAGAIN) while lines queue.
    const script = `
      import pino from 'pino';
      import { Registry } from 'prom-client';
      import { createAuditLog } from ${JSON.stringify(dist)};
      const logger = pino({ base: { node: 'n1' } });
      const registry = new Registry();
      const a = createAuditLog({ registry, logger, base: { node: 'n1' } });
      for (let round = 0; round < 20; round++) {
        for (let i = 0; i < 1000; i++) a.logger.info({ seq: round * 1000 + i, pad: 'y'.repeat(300) }, 'request');
        for (let i = 0; i < 100; i++) logger.info({ seq: round * 100 + i, pad: 'z'.repeat(300) }, 'agent');
        await new Promise((r) => setImmediate(r));
      }
      await a.close();
      logger.flush();
      const metric = async (n) => (await registry.getSingleMetric(n).get()).values;
      process.stderr.write(JSON.stringify({ written: await metric('trellis_audit_lines_total'), dropped: await metric('trellis_audit_dropped_total') }));
    `;
    const child = spawn(path.join(ROOT, 'node_modules/.bin/node'), ['--input-type=module', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const chunks: Buffer[] = [];
    child.stdout.pause();
    await new Promise((r) => setTimeout(r, 300));
    child.stdout.on('data', (d: Buffer) => chunks.push(d));
    child.stdout.resume();
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code, stderr).toBe(0);
    const lines = Buffer.concat(chunks).toString('utf8').split('\n').filter(Boolean);
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const auditSeqs = parsed.filter((l) => l['log'] === 'access').map((l) => l['seq']);
    expect(auditSeqs).toEqual(Array.from({ length: 20_000 }, (_, i) => i));
    expect(parsed.filter((l) => l['msg'] === 'agent')).toHaveLength(2000);
    const reported = JSON.parse(stderr) as { written: { value: number }[]; dropped: unknown[] };
    expect(reported.written[0]!.value).toBe(20_000);
    expect(reported.dropped).toEqual([]);
  });
});
