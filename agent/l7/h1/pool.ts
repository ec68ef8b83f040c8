// L7 upstream, HTTP/1.1: kept-alive connections pooled per (source pod, endpoint, Service), last used first out.
// A request takes an idle connection or opens one; a connection comes back when its exchange is whole and both
// sides keep it alive. Idle ones close after a while (one coarse timer for the pool), and a pod that leaves takes
// its connections with it.
import type { Duplex } from 'node:stream';
import type { Workload } from '../../state/workload.js';
import { UpstreamError, type UpstreamEndpoint, type UpstreamRequest, type UpstreamResponse } from '../upstream-types.js';
import { H1Client, type ClientOwner } from './client.js';

/** Opens the byte stream a connection runs on (the outbound side: HBONE or TCP; the inbound side: the app). */
export type Opener = (src: Workload, ep: UpstreamEndpoint) => Promise<Duplex>;

export interface H1PoolOptions {
  open: Opener;
  maxHeaderBytes: number;
  /** An idle connection closes after this long: below the 5 s most servers (Node's among them) keep one. */
  idleMs?: number;
  /** Idle connections kept per key; more are closed when they come back. */
  maxIdle?: number;
}

const IDLE_MS = 4_000;
const MAX_IDLE = 64;
const SWEEP_MS = 1_000;

export class H1Pool implements ClientOwner {
  private readonly idle = new Map<string, H1Client[]>();
  /** Source pod key -> the keys of its connections (for forget). */
  private readonly bySource = new Map<string, Set<string>>();
  /** Keys of sources that left: their connections are not kept when they come back. */
  private readonly forgotten = new Set<string>();
  private readonly busy = new Set<H1Client>();
  private sweep: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly options: H1PoolOptions) {}

  async send(src: Workload, ep: UpstreamEndpoint, req: UpstreamRequest): Promise<UpstreamResponse> {
    if (this.closed) throw new UpstreamError('connect', 'the agent is stopping');
    const key = `${src.key}|${ep.ip}:${ep.port}|${ep.service ?? ''}|${ep.caller ?? ''}`;
    let client = this.take(key);
    if (!client) {
      let transport: Duplex;
      try {
        transport = await this.options.open(src, ep);
      } catch (err) {
        throw new UpstreamError('connect', (err as Error).message);
      }
      if (this.closed) {
        transport.destroy();
        throw new UpstreamError('connect', 'the agent is stopping');
      }
      client = new H1Client(key, transport, this, this.options.maxHeaderBytes);
      let keys = this.bySource.get(src.key);
      if (!keys) this.bySource.set(src.key, (keys = new Set()));
      keys.add(key);
      this.forgotten.delete(src.key);
    }
    this.busy.add(client);
    return client.send(req);
  }

  /** Idle connections in the pool now (for tests). */
  idleCount(): number {
    let n = 0;
    for (const list of this.idle.values()) n += list.length;
    return n;
  }

  released(client: H1Client): void {
    this.busy.delete(client);
    const src = client.key.slice(0, client.key.indexOf('|'));
    if (this.closed || this.forgotten.has(src) || !client.alive) return client.destroy();
    let list = this.idle.get(client.key);
    if (!list) this.idle.set(client.key, (list = []));
    if (list.length >= (this.options.maxIdle ?? MAX_IDLE)) return client.destroy();
    client.idleSince = Date.now();
    list.push(client);
    if (!this.sweep) {
      this.sweep = setInterval(() => this.expire(), SWEEP_MS);
      this.sweep.unref();
    }
  }

  lost(client: H1Client): void {
    this.busy.delete(client);
    const list = this.idle.get(client.key);
    if (!list) return;
    const i = list.indexOf(client);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.idle.delete(client.key);
  }

  /**
   * Lets go of a source pod's connections (it left this node or the mesh, or its listeners were reopened): idle
   * ones close now, busy ones when their exchange ends.
   */
  forget(srcKey: string): void {
    this.forgotten.add(srcKey);
    for (const key of this.bySource.get(srcKey) ?? []) {
      for (const c of this.idle.get(key) ?? []) c.destroy();
      this.idle.delete(key);
    }
    this.bySource.delete(srcKey);
  }

  close(): void {
    this.closed = true;
    if (this.sweep) clearInterval(this.sweep);
    for (const list of this.idle.values()) for (const c of list) c.destroy();
    this.idle.clear();
    for (const c of this.busy) c.destroy();
    this.busy.clear();
  }

  private take(key: string): H1Client | undefined {
    const list = this.idle.get(key);
    while (list && list.length > 0) {
      const c = list.pop()!;
      if (list.length === 0) this.idle.delete(key);
      if (c.alive) return c;
      // Dead already, or riding on an HBONE session that got GOAWAY: let go of it from this side.
      c.destroy();
    }
    return undefined;
  }

  private expire(): void {
    const limit = Date.now() - (this.options.idleMs ?? IDLE_MS);
    for (const [key, list] of this.idle) {
      // Oldest first: the list is in the order connections came back.
      while (list.length > 0 && list[0]!.idleSince < limit) list.shift()!.destroy();
      // Those whose HBONE session got GOAWAY go within a sweep, not at their idle timeout.
      for (let i = list.length - 1; i >= 0; i--) if (!list[i]!.alive) list.splice(i, 1)[0]!.destroy();
      if (list.length === 0) this.idle.delete(key);
    }
    if (this.idle.size === 0 && this.sweep) {
      clearInterval(this.sweep);
      this.sweep = undefined;
    }
  }
}
