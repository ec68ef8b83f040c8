// The ready file: present (with this pid) exactly while the agent is ready, gone when it is not or stops; a file
// another process wrote at the same path is never removed.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { ReadyFile } from '../../agent/telemetry/ready-file.js';

const dir = mkdtempSync(join(tmpdir(), 'trellis-ready-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const logger = pino({ level: 'silent' });

describe('ReadyFile', () => {
  it('follows readiness, holds the pid, and goes on close', () => {
    const path = join(dir, 'sub', 'ready');
    let reason: string | undefined = 'state not loaded';
    const f = new ReadyFile({ path, notReadyReason: () => reason, logger });
    expect(existsSync(path)).toBe(false);
    reason = undefined;
    f.check();
    expect(readFileSync(path, 'utf8')).toBe(`${process.pid}\n`);
    reason = 'pod shop/a not enrolled';
    f.check();
    expect(existsSync(path)).toBe(false);
    reason = undefined;
    f.check();
    expect(existsSync(path)).toBe(true);
    f.close();
    expect(existsSync(path)).toBe(false);
  });

  it('leaves a file another process owns', () => {
    const path = join(dir, 'shared');
    const f = new ReadyFile({ path, notReadyReason: () => undefined, logger });
    expect(existsSync(path)).toBe(true);
    writeFileSync(path, '999999\n');
    f.close();
    expect(readFileSync(path, 'utf8')).toBe('999999\n');
  });

  it('says which flag is wrong when its directory cannot be made', () => {
    const file = join(dir, 'plain-file');
    writeFileSync(file, 'x');
    expect(() => new ReadyFile({ path: join(file, 'ready'), notReadyReason: () => undefined, logger })).toThrow(/--ready-file .*cannot create its directory/);
  });
});
