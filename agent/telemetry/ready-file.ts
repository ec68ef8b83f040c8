// The agent's readiness as a file: present (holding the pid) while this process is ready, absent otherwise. During
// a hand-over two agents answer on the node's health port (SO_REUSEPORT), so a request there may reach either; the
// file is this process's alone (the lab waits on it, a DaemonSet's exec readiness probe tests it).
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { TrellisError } from '../errors.js';

const CHECK_MS = 500;

export class ReadyFile {
  private ready = false;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly inputs: { path: string; notReadyReason: () => string | undefined; logger: Logger },
  ) {
    try {
      mkdirSync(dirname(inputs.path), { recursive: true });
    } catch (err) {
      throw new TrellisError('ECONFIG', `--ready-file ${inputs.path}: cannot create its directory (${(err as Error).message})`, { cause: err });
    }
    this.check();
    this.timer = setInterval(() => this.check(), CHECK_MS);
    this.timer.unref();
  }

  /** Re-reads readiness now (also every half second). */
  check(): void {
    const ready = this.inputs.notReadyReason() === undefined;
    if (ready === this.ready) return;
    this.ready = ready;
    try {
      if (ready) {
        const tmp = `${this.inputs.path}.${process.pid}.tmp`;
        writeFileSync(tmp, `${process.pid}\n`);
        renameSync(tmp, this.inputs.path);
      } else {
        this.remove();
      }
    } catch (err) {
      this.ready = !ready;
      this.inputs.logger.warn({ err: (err as Error).message, file: this.inputs.path }, 'cannot update the ready file');
    }
  }

  /** Not ready from now on: the file goes. */
  close(): void {
    clearInterval(this.timer);
    this.ready = false;
    this.remove();
  }

  /** Removes the file if it is this process's (a successor given the same path keeps its own). */
  private remove(): void {
    let owner: string;
    try {
      owner = readFileSync(this.inputs.path, 'utf8').trim();
    } catch {
      return;
    }
    if (owner === String(process.pid)) rmSync(this.inputs.path, { force: true });
  }
}
