// Workload tools: the benchmark's HTTP/1.1 load generator. Open loop: request i is due at i/rate, goes to
// connection i mod C and waits there if that connection is busy; its latency counts from when it was due,
// so queueing behind a slow response shows (no coordinated omission). Closed loop (rate 0): each connection
// sends again as soon as it is answered, for the most requests per second the path carries.
import net from 'node:net';
import { Worker } from 'node:worker_threads';
import { LatencyHistogram } from '../load/histogram.js';
import { ResponseParser, type ResponseDone } from '../load/http-response.js';
import { OpenLoopSchedule } from '../load/schedule.js';
import { LabError } from '../errors.js';
import { parseHttpUrl, requestBytes, type HttpTarget } from './http-url.js';
import { codeOf } from './wait.js';

export interface HttpBenchOptions {
  url: string;
  /** Requests per second; 0 runs closed loop. */
  rate: number;
  /** Measured seconds, after the warm-up. */
  durationS: number;
  /** Keep-alive connections. */
  connections: number;
  /** Seconds at the same rate before measuring (connections open, caches and JITs warm). */
  warmupS?: number;
  /** A request unanswered this long fails and its connection is replaced; default 10 s. */
  timeoutMs?: number;
}

export interface HttpBenchReport {
  mode: 'open' | 'closed';
  target_rps: number | null;
  connections: number;
  duration_s: number;
  warmup_s: number;
  /** Requests due in the measured window (open loop) or sent in it (closed loop). */
  sent: number;
  /** Of those, answered with a status below 400. */
  ok: number;
  errors: number;
  /** By status code ("503") or error code ("ECONNRESET", "ETIMEDOUT", "EOVERLOAD"). */
  error_counts: Record<string, number>;
  /** Successful answers that arrived within the measured window, per second of it. */
  achieved_rps: number;
  /** Every answer of the run, warm-up included (what the proxies' CPU time is divided by). */
  completed_total: number;
  p50_ms: number | null;
  p90_ms: number | null;
  p99_ms: number | null;
  p999_ms: number | null;
  max_ms: number | null;
  mean_ms: number | null;
  /** p99 of how late the generator woke for due requests: when large, the generator is the bottleneck. */
  send_lag_p99_ms: number | null;
}

interface Item {
  /** When it was due (open loop) or sent (closed loop), ns from the start. */
  due: number;
  measured: boolean;
}

const RECONNECT_DELAY_MS = 20;
const MAX_RECONNECTS = 100;
const WATCHDOG_MS = 50;
/** Queued requests across all connections before new ones fail with EOVERLOAD (bounds memory). */
const MAX_QUEUED = 1_000_000;

export const HTTP_BENCH_LIMITS = Object.freeze({ maxRate: 1_000_000, maxDurationS: 3600, maxConnections: 10_000, maxWarmupS: 600 });

export async function httpBench(opts: HttpBenchOptions): Promise<HttpBenchReport> {
  const L = HTTP_BENCH_LIMITS;
  if (!(opts.rate >= 0 && opts.rate <= L.maxRate)) throw new LabError('EINVAL', `rate must be 0 (closed loop) to ${L.maxRate} req/s`);
  if (!(opts.durationS > 0 && opts.durationS <= L.maxDurationS)) throw new LabError('EINVAL', `duration must be above 0 and at most ${L.maxDurationS} s`);
  if (!(Number.isInteger(opts.connections) && opts.connections >= 1 && opts.connections <= L.maxConnections)) {
    throw new LabError('EINVAL', `connections must be 1 to ${L.maxConnections}`);
  }
  const warmupS = opts.warmupS ?? 0;
  if (!(warmupS >= 0 && warmupS <= L.maxWarmupS)) throw new LabError('EINVAL', `warm-up must be 0 to ${L.maxWarmupS} s`);
  return new BenchRun({ ...opts, warmupS, timeoutMs: opts.timeoutMs ?? 10_000 }).run();
}

class BenchRun {
  private readonly target: HttpTarget;
  private readonly request: Buffer;
  private readonly base = process.hrtime.bigint();
  private readonly schedule: OpenLoopSchedule | undefined;
  private readonly warmupNs: number;
  private readonly endNs: number;
  private readonly hist = new LatencyHistogram();
  private readonly lag = new LatencyHistogram();
  private readonly conns: Conn[] = [];
  private readonly errorCounts: Record<string, number> = {};
  private next = 0;
  private queued = 0;
  private sent = 0;
  private ok = 0;
  private errors = 0;
  private inWindow = 0;
  private completedTotal = 0;
  /** No more requests are started; what is in flight may finish. */
  stopping = false;
  private finish: (() => void) | undefined;
  private abort: ((err: Error) => void) | undefined;

  constructor(readonly opts: Required<HttpBenchOptions>) {
    this.target = parseHttpUrl(opts.url);
    this.request = requestBytes(this.target);
    this.schedule = opts.rate > 0 ? new OpenLoopSchedule({ rate: opts.rate, durationS: opts.durationS, warmupS: opts.warmupS }) : undefined;
    this.warmupNs = Math.round(opts.warmupS * 1e9);
    this.endNs = Math.round((opts.warmupS + opts.durationS) * 1e9);
  }

  now(): number {
    return Number(process.hrtime.bigint() - this.base);
  }

  async run(): Promise<HttpBenchReport> {
    const done = new Promise<void>((resolve, reject) => {
      this.finish = resolve;
      this.abort = reject;
    });
    for (let c = 0; c < this.opts.connections; c++) {
      const conn = new Conn(this, c, this.target.host, this.target.port, this.request);
      this.conns.push(conn);
      conn.connect();
    }
    const ticker = this.schedule ? this.startTicker(this.schedule) : undefined;
    const hardStopNs = this.endNs + this.opts.timeoutMs * 1e6 + 2e9;
    const watchdog = setInterval(() => {
      const now = this.now();
      if (!this.schedule && !this.stopping && now >= this.endNs) this.stopping = true;
      for (const c of this.conns) c.checkTimeout(now, this.opts.timeoutMs * 1e6);
      if (now >= hardStopNs) {
        this.stopping = true;
        for (const c of this.conns) c.abandon('ETIMEDOUT');
        if (this.schedule && this.next < this.schedule.total) {
          this.abort?.(new LabError('ETIMEDOUT', `only ${this.next} of ${this.schedule.total} requests were scheduled in time`));
        }
      }
      this.maybeDone();
    }, WATCHDOG_MS);
    try {
      await done;
    } finally {
      clearInterval(watchdog);
      await ticker?.terminate();
      for (const c of this.conns) c.close();
    }
    return this.report();
  }

  /** A worker thread sleeps until each due time (Atomics.wait takes fractions of a ms, timers do not) and pings. */
  private startTicker(schedule: OpenLoopSchedule): Worker {
    const worker = new Worker(TICKER_SOURCE, { eval: true, workerData: { base: this.base, rate: schedule.rate, total: schedule.total } });
    worker.on('message', () => this.pump());
    worker.on('error', (err) => this.abort?.(new LabError('ETICKER', `http-bench: the scheduling thread failed: ${err.message}`)));
    return worker;
  }

  /** Hands every request due by now to its connection. */
  private pump(): void {
    const s = this.schedule!;
    const now = this.now();
    const due = s.dueBy(now);
    if (this.next < due) this.lag.record((now - s.intendedNs(this.next)) / 1000);
    for (; this.next < due; this.next++) {
      const item: Item = { due: s.intendedNs(this.next), measured: s.isMeasured(this.next) };
      if (item.measured) this.sent++;
      if (this.queued >= MAX_QUEUED) {
        this.fail(item, 'EOVERLOAD');
        continue;
      }
      this.queued++;
      this.conns[OpenLoopSchedule.connectionOf(this.next, this.conns.length)]!.enqueue(item);
    }
    if (this.next >= s.total) this.stopping = true;
  }

  /** Closed loop: the next request for an idle connection, or none once the run has ended. */
  closedLoopItem(): Item | undefined {
    if (this.schedule || this.stopping) return undefined;
    const now = this.now();
    if (now >= this.endNs) {
      this.stopping = true;
      return undefined;
    }
    const measured = now >= this.warmupNs;
    if (measured) this.sent++;
    return { due: now, measured };
  }

  dequeued(): void {
    this.queued--;
  }

  complete(item: Item, r: ResponseDone): void {
    const now = this.now();
    this.completedTotal++;
    // Throughput counts every good response inside the measured window, a warm-up request's too: when the
    // target cannot keep up, the warm-up's backlog drains into the window, and what the path delivered
    // meanwhile is its throughput all the same.
    if (r.status < 400 && now >= this.warmupNs && now <= this.endNs) this.inWindow++;
    if (!item.measured) return;
    if (r.status >= 400) {
      this.countError(String(r.status));
      return;
    }
    this.ok++;
    this.hist.record((now - item.due) / 1000);
  }

  fail(item: Item, code: string): void {
    if (item.measured) this.countError(code);
  }

  maybeDone(): void {
    if (!this.stopping || !this.finish) return;
    if (this.schedule && this.next < this.schedule.total) return;
    if (this.conns.every((c) => c.idle)) {
      this.finish();
      this.finish = undefined;
    }
  }

  private countError(code: string): void {
    this.errors++;
    this.errorCounts[code] = (this.errorCounts[code] ?? 0) + 1;
  }

  private report(): HttpBenchReport {
    const h = this.hist.summary();
    const lag = this.lag.percentileUs(0.99);
    return {
      mode: this.schedule ? 'open' : 'closed',
      target_rps: this.schedule ? this.opts.rate : null,
      connections: this.opts.connections,
      duration_s: this.opts.durationS,
      warmup_s: this.opts.warmupS,
      sent: this.sent,
      ok: this.ok,
      errors: this.errors,
      error_counts: this.errorCounts,
      achieved_rps: Math.round((this.inWindow / this.opts.durationS) * 10) / 10,
      completed_total: this.completedTotal,
      p50_ms: h.p50_ms,
      p90_ms: h.p90_ms,
      p99_ms: h.p99_ms,
      p999_ms: h.p999_ms,
      max_ms: h.max_ms,
      mean_ms: h.mean_ms,
      send_lag_p99_ms: lag === null ? null : Math.round(lag) / 1000,
    };
  }
}

/** One keep-alive connection: one request in flight, the rest queued in due order. */
class Conn {
  private socket: net.Socket | undefined;
  private connected = false;
  private readonly queue: Item[] = [];
  private head = 0;
  private inflight: { item: Item; sentAt: number } | undefined;
  private reconnects = 0;
  private dead = false;
  private closed = false;

  constructor(
    private readonly run: BenchRun,
    private readonly index: number,
    private readonly host: string,
    private readonly port: number,
    private readonly request: Buffer,
  ) {}

  get idle(): boolean {
    return this.inflight === undefined && this.head >= this.queue.length;
  }

  connect(): void {
    if (this.closed) return;
    const socket = net.connect({ host: this.host, port: this.port, noDelay: true });
    this.socket = socket;
    const parser = new ResponseParser((r) => this.onResponse(r));
    socket.on('connect', () => {
      this.connected = true;
      this.kick();
    });
    socket.on('data', (chunk: Buffer) => {
      try {
        parser.feed(chunk);
      } catch (err) {
        socket.destroy(err as Error);
      }
    });
    let failure: string | undefined;
    socket.on('error', (err) => (failure = codeOf(err)));
    socket.on('close', () => {
      if (this.socket !== socket) return;
      const clean = parser.end() && this.inflight === undefined;
      this.onClose(clean, failure ?? 'ECLOSED');
    });
  }

  enqueue(item: Item): void {
    if (this.dead) {
      this.run.dequeued();
      this.run.fail(item, 'ECONNECT');
      return;
    }
    this.queue.push(item);
    this.kick();
  }

  checkTimeout(now: number, timeoutNs: number): void {
    if (this.inflight && now - this.inflight.sentAt > timeoutNs) {
      this.socket?.destroy(new LabError('ETIMEDOUT', `no response within ${timeoutNs / 1e6} ms`));
    }
  }

  /** Fails everything still queued or in flight with `code` (the run is out of time). */
  abandon(code: string): void {
    if (this.inflight) this.run.fail(this.inflight.item, code);
    this.inflight = undefined;
    for (; this.head < this.queue.length; this.head++) {
      this.run.dequeued();
      this.run.fail(this.queue[this.head]!, code);
    }
    this.compact();
  }

  close(): void {
    this.closed = true;
    this.socket?.destroy();
  }

  private kick(): void {
    if (!this.connected || this.inflight || this.closed) return;
    let item: Item | undefined;
    if (this.head < this.queue.length) {
      item = this.queue[this.head++]!;
      this.run.dequeued();
      this.compact();
    } else {
      item = this.run.closedLoopItem();
    }
    if (!item) {
      this.run.maybeDone();
      return;
    }
    this.inflight = { item, sentAt: this.run.now() };
    this.socket!.write(this.request);
  }

  private onResponse(r: ResponseDone): void {
    const f = this.inflight;
    if (!f) {
      this.socket?.destroy(new LabError('EPROTO', 'response without a request'));
      return;
    }
    this.inflight = undefined;
    this.run.complete(f.item, r);
    if (r.close) {
      // The server ends this connection; the next request goes on a new one.
      this.connected = false;
      this.socket?.end();
      return;
    }
    this.kick();
  }

  /** `clean`: the server ended the connection between responses (Connection: close, idle timeout). */
  private onClose(clean: boolean, code: string): void {
    this.connected = false;
    this.socket = undefined;
    if (this.inflight) {
      this.run.fail(this.inflight.item, code);
      this.inflight = undefined;
    }
    if (this.closed) return;
    const more = this.head < this.queue.length || !this.run.stopping;
    if (more && (clean || this.reconnects < MAX_RECONNECTS)) {
      if (!clean) this.reconnects++;
      setTimeout(() => this.connect(), clean ? 0 : RECONNECT_DELAY_MS);
      return;
    }
    if (more) {
      process.stderr.write(`http-bench: connection ${this.index} gave up after ${MAX_RECONNECTS} reconnects (last: ${code})\n`);
    }
    this.dead = true;
    this.abandon(code);
    this.run.maybeDone();
  }

  /** Drops the consumed front of the queue now and then, so it does not grow for the whole run. */
  private compact(): void {
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
  }
}

const TICKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { base, rate, total } = workerData;
const cell = new Int32Array(new SharedArrayBuffer(4));
const now = () => Number(process.hrtime.bigint() - base);
const due = (i) => Math.round((i * 1e9) / rate);
let i = 0;
while (i < total) {
  const wait = due(i) - now();
  if (wait > 0) Atomics.wait(cell, 0, 0, wait / 1e6);
  // Everything due by now goes in one message.
  const t = now();
  let j = i;
  while (j + 1 < total && due(j + 1) <= t) j++;
  parentPort.postMessage(j);
  i = j + 1;
}
`;
