// Giving memory back after a burst. Two things keep an agent's RSS at its peak once traffic stops:
//  - V8 runs a full GC only when the old generation reaches its limit (64 MB at start, see cli/agent.ts), so
//    tens of MB of garbage promoted during the burst stay in the heap while nothing allocates;
//  - malloc keeps the socket and TLS buffers freed meanwhile in its arenas.
// Every tick (10 s) the C heap's free pages go back to the kernel (malloc_trim, a few ms at most); and when
// the agent was idle during the whole tick (under 2% of a CPU) and its heap grew well past what the last
// full GC left, one full GC runs first, on an idle agent, where its pause costs no request anything.
// Measured in the bench lab: after an L7 overload, idle anonymous memory ~100 -> ~31 MB per agent.

export interface ReclaimInputs {
  /** CPU time of this process so far, microseconds (process.cpuUsage(): user + system). */
  cpuMicros(): number;
  /** V8 heap in use, bytes. */
  heapUsed(): number;
  /** A full GC; absent when node runs without --expose-gc. */
  gc: (() => void) | undefined;
  /** Free C-heap pages back to the kernel. */
  trim(): void;
  now(): number;
}

/** Below this share of one CPU over a tick, the agent counts as idle. */
const IDLE_CPU_SHARE = 0.02;
/** A full GC on an idle agent only when the heap holds this much more than the last one left. */
const GROWTH_BYTES = 16 * 1024 * 1024;

export class MemoryReclaimer {
  private lastCpu: number;
  private lastAt: number;
  /** Heap in use after the last full GC this class ran (or at start). */
  private baseline: number;

  constructor(private readonly inputs: ReclaimInputs) {
    this.lastCpu = inputs.cpuMicros();
    this.lastAt = inputs.now();
    this.baseline = inputs.heapUsed();
  }

  /** One tick; says what it did (for the debug log and tests). */
  tick(): { gc: boolean } {
    const { inputs } = this;
    const cpu = inputs.cpuMicros();
    const at = inputs.now();
    const share = (cpu - this.lastCpu) / 1000 / Math.max(1, at - this.lastAt);
    this.lastCpu = cpu;
    this.lastAt = at;
    let gc = false;
    if (inputs.gc && share < IDLE_CPU_SHARE && inputs.heapUsed() > this.baseline + GROWTH_BYTES) {
      inputs.gc();
      this.baseline = inputs.heapUsed();
      gc = true;
    }
    inputs.trim();
    return { gc };
  }
}
