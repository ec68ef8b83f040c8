// Test support: a TCP forwarder from 127.0.0.1 on the host to an address inside a netns (the control plane's
// API server), so code under test that only takes a kubeconfig (client-node: the kube source, the status writer,
// the identity service) reaches it from the test process. It also plays the network between them: pause() is a
// partition (connections reset, new ones refused), setLatency() a slow path (each chunk towards the server late).
import net from 'node:net';
import { connectInNetns } from '../../agent/native/index.js';

export class ApiForward {
  readonly port: number;
  private readonly server: net.Server;
  private readonly pairs = new Set<{ client: net.Socket; upstream: net.Socket }>();
  private paused = false;
  private latencyMs = 0;

  private constructor(server: net.Server, port: number) {
    this.server = server;
    this.port = port;
  }

  static async start(netnsPath: string, target: { host: string; port: number }): Promise<ApiForward> {
    let self: ApiForward | undefined;
    const server = net.createServer({ allowHalfOpen: true }, (client) => self!.accept(client, netnsPath, target));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    self = new ApiForward(server, (server.address() as net.AddressInfo).port);
    return self;
  }

  /** https://127.0.0.1:<port>: the API server's certificate names 127.0.0.1. */
  get url(): string {
    return `https://127.0.0.1:${this.port}`;
  }

  /** A partition: every forwarded connection is reset, new ones too, until resume(). */
  pause(): void {
    this.paused = true;
    for (const p of this.pairs) {
      p.client.resetAndDestroy();
      p.upstream.destroy();
    }
  }

  resume(): void {
    this.paused = false;
  }

  /** Every chunk towards the server is passed on this much later (0: at once). */
  setLatency(ms: number): void {
    this.latencyMs = ms;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const p of this.pairs) {
      p.client.destroy();
      p.upstream.destroy();
    }
    await closed;
  }

  private accept(client: net.Socket, netnsPath: string, target: { host: string; port: number }): void {
    if (this.paused) {
      client.resetAndDestroy();
      return;
    }
    const upstream = connectInNetns(netnsPath, { ...target, timeoutMs: 5_000 });
    const pair = { client, upstream };
    this.pairs.add(pair);
    const done = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
    client.on('data', (d: Buffer) => {
      if (this.latencyMs === 0) {
        upstream.write(d);
        return;
      }
      // Order is kept: every chunk waits the same delay.
      client.pause();
      setTimeout(() => {
        if (!upstream.destroyed) upstream.write(d);
        client.resume();
      }, this.latencyMs);
    });
    client.on('end', () => upstream.end());
    upstream.pipe(client);
  }
}
