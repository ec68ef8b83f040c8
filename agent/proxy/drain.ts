// Counts the connections in flight so shutdown can wait for them (bounded) after it stops accepting.

export class Drain {
  private open = 0;
  private waiters: (() => void)[] = [];

  /** Marks one connection in flight; call the returned function once when it ends. */
  enter(): () => void {
    this.open++;
    let left = false;
    return () => {
      if (left) return;
      left = true;
      this.open--;
      if (this.open === 0) for (const w of this.waiters.splice(0)) w();
    };
  }

  active(): number {
    return this.open;
  }

  /** Resolves with the number still open when all have ended or `ms` has passed. */
  wait(ms: number): Promise<number> {
    if (this.open === 0) return Promise.resolve(0);
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        resolve(this.open);
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== done);
        resolve(this.open);
      }, ms);
      this.waiters.push(done);
    });
  }
}
