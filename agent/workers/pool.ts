// The agent's worker threads, seen from the main thread: started with the agent's config, each given every
// snapshot the store applies and told which pods to open listeners for; their certificate requests answered
// from the one certificate source, their metrics gathered into the agent's /metrics and their access lines
// written to the one audit trail. A worker that dies is logged and counted; the others and the main thread go on.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { AgentConfig } from '../config.js';
import { TrellisError } from '../errors.js';
import type { CertSource } from '../identity/certs.js';
import type { KubeObject } from '../model/objects.js';
import type { Workload } from '../state/workload.js';
import type { TapService } from '../tap/service.js';
import type { FromWorker, ToWorker } from './messages.js';

export interface WorkersInputs {
  /** Worker threads beside the main thread (the agent's --workers minus one). */
  count: number;
  config: AgentConfig;
  certs: CertSource;
  /** Writes a whole access line made by a worker. */
  audit: (line: string) => void;
  /** The agent's taps: the open ones are sent to every worker, what workers observe comes back to it. */
  tap?: TapService | undefined;
  logger: Logger;
}

/** The worker threads' entry, beside this file once compiled. */
const WORKER = new URL('./worker.js', import.meta.url);

/** How long the main thread waits for a worker to open or report before it says the worker is stuck. */
const REPLY_TIMEOUT_MS = 10_000;

interface Thread {
  index: number;
  worker: Worker;
  alive: boolean;
}

export class Workers {
  private readonly threads: Thread[] = [];
  private readonly replies = new Map<number, { resolve: (m: FromWorker) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private nextId = 1;
  private readonly unsubscribe: () => void;
  private unsubscribeTaps: (() => void) | undefined;

  private constructor(private readonly inputs: WorkersInputs) {
    this.unsubscribe = inputs.certs.onRotate((svid) => this.broadcast({ t: 'rotate', svid }));
  }

  /** Starts the threads and waits until each is ready. */
  static async start(inputs: WorkersInputs): Promise<Workers> {
    // A worker thread runs the compiled agent; from sources (an in-process test) there is no worker.js to run.
    if (!existsSync(fileURLToPath(WORKER))) {
      throw new TrellisError('ECONFIG', `--workers ${inputs.count + 1} needs the compiled agent (${fileURLToPath(WORKER)} is missing): run \`npm run build\`, or run with --workers 1`);
    }
    const w = new Workers(inputs);
    await Promise.all(Array.from({ length: inputs.count }, (_, i) => w.spawn(i + 1)));
    w.unsubscribeTaps = inputs.tap?.subscribe((specs) => w.broadcast({ t: 'taps', specs }));
    return w;
  }

  get size(): number {
    return this.threads.filter((t) => t.alive).length;
  }

  /** Every worker applies the same objects the main thread's store just did. */
  snapshot(objects: readonly KubeObject[]): void {
    this.broadcast({ t: 'snapshot', objects });
  }

  /** Opens the pod's listeners in every worker; rejects with the first failure. */
  async openListeners(pod: Workload): Promise<void> {
    const replies = await Promise.all(this.alive().map((t) => this.request(t, (id) => ({ t: 'open', id, pod }))));
    const failed = replies.find((r) => r.t === 'opened' && r.error);
    if (failed && failed.t === 'opened') throw new TrellisError('ELISTEN', `a worker thread could not open the listeners of ${pod.key}: ${failed.error}`);
  }

  closeListeners(key: string): void {
    this.broadcast({ t: 'close', key });
  }

  /** Each live worker's metrics, as prom-client's JSON (for AggregatorRegistry). */
  metrics(): Promise<unknown[][]> {
    return Promise.all(this.alive().map((t) => this.request(t, (id) => ({ t: 'metrics', id })).then((m) => (m.t === 'metrics' ? m.json : []))));
  }

  /** Stops every worker: listeners close, connections drain for at most drainMs; then the threads end. */
  async stop(drainMs: number): Promise<{ drained: number; cut: number }> {
    this.unsubscribe();
    this.unsubscribeTaps?.();
    let drained = 0;
    let cut = 0;
    await Promise.all(
      this.alive().map(async (t) => {
        try {
          const r = await this.request(t, () => ({ t: 'stop', drainMs }), drainMs + REPLY_TIMEOUT_MS);
          if (r.t === 'stopped') {
            drained += r.drained;
            cut += r.cut;
          }
        } catch (err) {
          this.inputs.logger.warn({ worker: t.index, err: (err as Error).message }, 'worker thread did not stop in time');
        }
        t.alive = false;
        await t.worker.terminate();
      }),
    );
    return { drained, cut };
  }

  private alive(): Thread[] {
    return this.threads.filter((t) => t.alive);
  }

  private spawn(index: number): Promise<void> {
    const worker = new Worker(WORKER);
    const thread: Thread = { index, worker, alive: true };
    this.threads.push(thread);
    return new Promise((resolve, reject) => {
      let ready = false;
      worker.on('message', (m: FromWorker) => {
        if (m.t === 'ready') {
          ready = true;
          resolve();
          return;
        }
        this.onMessage(thread, m);
      });
      worker.on('error', (err) => {
        this.inputs.logger.error({ worker: index, err: err.message, stack: err.stack }, 'worker thread failed');
        if (!ready) reject(new TrellisError('EAGENT', `worker thread ${index} failed to start: ${err.message}`));
      });
      worker.on('exit', (code) => {
        if (thread.alive) this.inputs.logger.error({ worker: index, code }, 'worker thread exited; its connections are gone, the other threads go on');
        thread.alive = false;
        if (!ready) reject(new TrellisError('EAGENT', `worker thread ${index} exited at start (code ${code})`));
      });
      worker.postMessage({ t: 'init', config: this.inputs.config, worker: index, trustBundle: this.inputs.certs.trustBundle() } satisfies ToWorker);
    });
  }

  private onMessage(thread: Thread, m: FromWorker): void {
    switch (m.t) {
      case 'audit':
        for (const line of m.lines) this.inputs.audit(line);
        return;
      case 'tap':
        this.inputs.tap?.fromWorker(m.batch);
        return;
      case 'cert':
        this.inputs.certs.get(m.identity).then(
          (svid) => thread.worker.postMessage({ t: 'svid', id: m.id, svid } satisfies ToWorker),
          (err: Error) => thread.worker.postMessage({ t: 'svid', id: m.id, error: err.message } satisfies ToWorker),
        );
        return;
      case 'opened':
      case 'metrics':
      case 'stopped': {
        const id = m.t === 'stopped' ? -thread.index : m.id;
        const r = this.replies.get(id);
        if (!r) return;
        this.replies.delete(id);
        clearTimeout(r.timer);
        r.resolve(m);
        return;
      }
      case 'ready':
        return;
    }
  }

  /** Sends a message built with a fresh id (stop uses the thread's own) and waits for its reply. */
  private request(t: Thread, make: (id: number) => ToWorker, timeoutMs = REPLY_TIMEOUT_MS): Promise<FromWorker> {
    const msg = make(this.nextId++);
    const id = msg.t === 'stop' ? -t.index : (msg as { id: number }).id;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.replies.delete(id);
        reject(new TrellisError('ETIMEDOUT', `worker thread ${t.index} did not answer ${msg.t} within ${timeoutMs} ms`));
      }, timeoutMs);
      timer.unref();
      this.replies.set(id, { resolve, reject, timer });
      t.worker.postMessage(msg);
    });
  }

  private broadcast(m: ToWorker): void {
    for (const t of this.alive()) t.worker.postMessage(m);
  }
}
