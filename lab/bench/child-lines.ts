// Bench: talking to a long-running tool in a pod (conn-hold, wait-http) through the JSON lines it prints.
import type { ChildProcess } from 'node:child_process';
import { LabError } from '../errors.js';

type Json = Record<string, unknown>;

export class ChildLines {
  private readonly seen: Json[] = [];
  private readonly waiters = new Set<() => void>();
  private stderrTail = '';
  private exitCode: number | null | undefined;

  constructor(
    private readonly child: ChildProcess,
    private readonly what: string,
  ) {
    let partial = '';
    child.stdout?.on('data', (d: Buffer) => {
      const lines = (partial + d.toString('utf8')).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        try {
          const v = JSON.parse(line) as unknown;
          if (v && typeof v === 'object') this.seen.push(v as Json);
        } catch {
          // Not a JSON line (a tool's "listening" note): ignored.
        }
      }
      this.wake();
    });
    child.stderr?.on('data', (d: Buffer) => {
      this.stderrTail = (this.stderrTail + d.toString('utf8')).slice(-2000);
    });
    child.once('exit', (code) => {
      this.exitCode = code;
      this.wake();
    });
  }

  /** The first line (seen so far or to come) that `match` accepts; rejects on exit or after timeoutMs. */
  async next(match: (line: Json) => boolean, timeoutMs: number, waitingFor: string): Promise<Json> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.seen.findIndex(match);
      if (i >= 0) return this.seen.splice(i, 1)[0]!;
      if (this.exitCode !== undefined) {
        throw new LabError('ETOOL', `${this.what} exited (code ${String(this.exitCode)}) before ${waitingFor}: ${this.stderrTail.trim() || 'no output'}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new LabError('ETIMEDOUT', `${this.what}: no ${waitingFor} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer);
          this.waiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, left);
        this.waiters.add(wake);
      });
    }
  }

  /** Closes the tool's stdin (its signal to finish) and waits for it to exit, killing it after timeoutMs. */
  async finish(timeoutMs: number): Promise<void> {
    this.child.stdin?.end();
    if (this.exitCode !== undefined) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    await exited;
    clearTimeout(timer);
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }
}
