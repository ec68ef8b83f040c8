// Bench: the latency histogram of the load generator. Log-linear buckets (as HdrHistogram lays them out):
// exact below 2048 µs, then 1024 sub-buckets per power of two, so p99.9 keeps 0.1% precision up to hours.

/** Values below this are counted exactly (µs). */
const EXACT = 2048;
/** Sub-buckets per power of two above EXACT: the relative error is at most 1/SUB. */
const SUB = 1024;
/** 2^MAX_EXP µs (about 19 hours) is the largest distinct value; above it values share the top bucket. */
const MAX_EXP = 36;
const BUCKETS = EXACT + (MAX_EXP - 11 + 1) * SUB;

export interface LatencySummary {
  count: number;
  p50_ms: number | null;
  p90_ms: number | null;
  p99_ms: number | null;
  p999_ms: number | null;
  max_ms: number | null;
  mean_ms: number | null;
}

export class LatencyHistogram {
  private readonly counts = new Float64Array(BUCKETS);
  private n = 0;
  private sum = 0;
  private maxUs = 0;

  get count(): number {
    return this.n;
  }

  /** Records one latency in microseconds (negative values count as 0). */
  record(us: number): void {
    const v = us > 0 ? Math.round(us) : 0;
    this.counts[bucketOf(v)]!++;
    this.n++;
    this.sum += v;
    if (v > this.maxUs) this.maxUs = v;
  }

  merge(other: LatencyHistogram): void {
    for (let i = 0; i < BUCKETS; i++) this.counts[i]! += other.counts[i]!;
    this.n += other.n;
    this.sum += other.sum;
    if (other.maxUs > this.maxUs) this.maxUs = other.maxUs;
  }

  /**
   * The value at nearest rank ceil(q * count), in µs: the highest value its bucket stands for (never
   * above the largest value recorded), so a percentile is never reported lower than it was.
   */
  percentileUs(q: number): number | null {
    if (this.n === 0) return null;
    if (!(q > 0 && q <= 1)) throw new RangeError(`percentile must be in (0, 1], got ${q}`);
    const rank = Math.max(1, Math.ceil(q * this.n));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) return Math.min(highestOf(i), this.maxUs);
    }
    return this.maxUs;
  }

  maxValueUs(): number | null {
    return this.n === 0 ? null : this.maxUs;
  }

  summary(): LatencySummary {
    const ms = (us: number | null): number | null => (us === null ? null : Math.round(us) / 1000);
    return {
      count: this.n,
      p50_ms: ms(this.percentileUs(0.5)),
      p90_ms: ms(this.percentileUs(0.9)),
      p99_ms: ms(this.percentileUs(0.99)),
      p999_ms: ms(this.percentileUs(0.999)),
      max_ms: ms(this.maxValueUs()),
      mean_ms: this.n === 0 ? null : Math.round(this.sum / this.n) / 1000,
    };
  }
}

/** Bucket index of a non-negative integer value. */
export function bucketOf(v: number): number {
  if (v < EXACT) return v;
  let exp = Math.floor(Math.log2(v));
  // log2 of a value just below a power of two may round up to it.
  if (2 ** exp > v) exp--;
  exp = Math.min(exp, MAX_EXP);
  const scale = 2 ** (exp - 10);
  const mantissa = Math.min(Math.floor(v / scale), 2 * SUB - 1);
  return EXACT + (exp - 11) * SUB + (mantissa - SUB);
}

/** The highest value that falls in bucket i. */
export function highestOf(i: number): number {
  if (i < EXACT) return i;
  const k = i - EXACT;
  const exp = 11 + Math.floor(k / SUB);
  const mantissa = SUB + (k % SUB);
  return (mantissa + 1) * 2 ** (exp - 10) - 1;
}
