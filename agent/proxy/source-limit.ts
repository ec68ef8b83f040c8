// How many connections one source address may hold open on a thread's inbound plaintext listeners (15006, clients
// outside the mesh): past it, a new one is reset before anything is read, so one client cannot pile up idle
// connections until the agent runs out of descriptors or memory. Meshed callers arrive over HBONE, where their
// agent pools them; this applies to plaintext only.

export class SourceLimit {
  private readonly open = new Map<string, number>();

  constructor(readonly max: number) {}

  /** Counts a connection from `ip`; returns its release, or undefined (nothing counted) when `ip` is at the limit. */
  enter(ip: string | undefined): (() => void) | undefined {
    const key = ip ?? '';
    const n = this.open.get(key) ?? 0;
    if (n >= this.max) return undefined;
    this.open.set(key, n + 1);
    let left = false;
    return () => {
      if (left) return;
      left = true;
      const m = (this.open.get(key) ?? 1) - 1;
      if (m === 0) this.open.delete(key);
      else this.open.set(key, m);
    };
  }

  /** Open connections from `ip` now (for tests). */
  count(ip: string): number {
    return this.open.get(ip) ?? 0;
  }
}
