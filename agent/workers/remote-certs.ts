// A worker thread's certificate source: the main thread holds the workloads' SVIDs (one source for the agent,
// renewed there); a worker asks for one the first time it needs it, keeps it, and is told of every renewal.
import { TrellisError } from '../errors.js';
import type { CertSource, Svid } from '../identity/certs.js';

export class RemoteCerts implements CertSource {
  private readonly held = new Map<string, Svid>();
  private readonly asked = new Map<string, Promise<Svid>>();
  private readonly waiting = new Map<number, { resolve: (s: Svid) => void; reject: (e: Error) => void }>();
  private readonly rotations = new Set<(svid: Svid) => void>();
  private nextId = 1;

  constructor(
    private bundle: string,
    private readonly ask: (id: number, identity: string) => void,
  ) {}

  get(identity: string): Promise<Svid> {
    const svid = this.current(identity);
    if (svid) return Promise.resolve(svid);
    let p = this.asked.get(identity);
    if (!p) {
      const id = this.nextId++;
      p = new Promise<Svid>((resolve, reject) => this.waiting.set(id, { resolve, reject })).then(
        (s) => {
          this.asked.delete(identity);
          this.held.set(identity, s);
          return s;
        },
        (err: Error) => {
          this.asked.delete(identity);
          throw err;
        },
      );
      this.asked.set(identity, p);
      this.ask(id, identity);
    }
    return p;
  }

  current(identity: string): Svid | undefined {
    const s = this.held.get(identity);
    return s && s.notAfter > Date.now() ? s : undefined;
  }

  onRotate(cb: (svid: Svid) => void): () => void {
    this.rotations.add(cb);
    return () => this.rotations.delete(cb);
  }

  trustBundle(): string {
    return this.bundle;
  }

  forget(identity: string): void {
    this.held.delete(identity);
  }

  close(): void {
    for (const w of this.waiting.values()) w.reject(new TrellisError('ECLOSED', 'the agent is stopping'));
    this.waiting.clear();
  }

  /** The main thread's answer to a request. */
  answer(id: number, svid: Svid | undefined, error: string | undefined): void {
    const w = this.waiting.get(id);
    if (!w) return;
    this.waiting.delete(id);
    if (svid) w.resolve(svid);
    else w.reject(new TrellisError('EIDENTITY', error ?? 'no certificate'));
  }

  /** A renewal on the main thread: the new SVID replaces the held one, and listeners swap their context. */
  rotated(svid: Svid): void {
    this.held.set(svid.identity, svid);
    this.bundle = svid.caPem || this.bundle;
    for (const cb of this.rotations) cb(svid);
  }
}
