// Property-test parameters: a short seeded run in `npm test`; `npm run fuzz` sets FUZZ_RUNS (10^5) and FUZZ_MS (the
// time each property may take), so a long run is bounded in count and in time and still reproducible by its seed.
export function fuzz(shortRuns: number, seed: number): { numRuns: number; seed: number; interruptAfterTimeLimit?: number; markInterruptAsFailure?: boolean } {
  const runs = process.env.FUZZ_RUNS ? Number(process.env.FUZZ_RUNS) : shortRuns;
  const ms = process.env.FUZZ_MS ? Number(process.env.FUZZ_MS) : undefined;
  return { numRuns: runs, seed, ...(ms !== undefined && { interruptAfterTimeLimit: ms, markInterruptAsFailure: false }) };
}

/** Vitest timeout for a property test: its time limit with room, or the default short run's. */
export function fuzzTimeout(shortMs = 30_000): number {
  return process.env.FUZZ_MS ? Number(process.env.FUZZ_MS) + 30_000 : shortMs;
}
