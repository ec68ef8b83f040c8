// The tap API of one agent: trellis.tap.v1.Tap/Observe over gRPC on a Unix socket (--tap-socket). The socket is a
// plain listener until someone connects: grpc-js and the .proto are loaded then, so an agent nobody taps carries
// neither. Who may tap is one function (`authorize`): in local mode whoever can open the socket (root; it is made
// 0600), in cluster mode (a later slice) the caller's Kubernetes token checked by TokenReview and a
// SubjectAccessReview for `watch` on `tap.tap.trellis.dev` in the tapped namespace, refused with the reason.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { TrellisError } from '../errors.js';
import type { TapEvent } from './events.js';
import type { ObserveRequest } from './proto.js';
import type { TapService } from './service.js';

/** Response metadata of an accepted tap: the rate bound in force (the agent's cap may be lower than asked). */
export const MAX_RPS_METADATA = 'trellis-tap-max-rps';

/** Why a caller may not tap: a gRPC status (PERMISSION_DENIED, UNAUTHENTICATED) and what to do. */
export interface TapRefusal {
  status: grpc.status;
  message: string;
}

export interface TapServerInputs {
  socketPath: string;
  service: TapService;
  logger: Logger;
  /** What makes this process's socket name unique beside the path (default: the pid). */
  instance?: string;
  /** Who may tap; undefined: anyone who can open the socket (local mode). */
  authorize?: (metadata: grpc.Metadata, request: ObserveRequest) => Promise<TapRefusal | undefined>;
}

export class TapServer {
  private grpc: Promise<{ inject: (socket: net.Socket) => void; close: () => void }> | undefined;
  private readonly sockets = new Set<net.Socket>();

  private constructor(
    private readonly inputs: TapServerInputs,
    private readonly listener: net.Server,
    /** The socket this process listens on; the socket path is a symbolic link to it. */
    private readonly own: string,
  ) {
    listener.on('connection', (socket) => void this.accept(socket));
  }

  /**
   * Listens on the socket path. The socket itself is `PATH.PID` and PATH a symbolic link to it, swapped in atomically:
   * an agent started beside its predecessor (a restart, an upgrade) takes the path over while the predecessor's open
   * streams go on, and the predecessor leaving removes its own socket only (Node unlinks a Unix socket's file when
   * its server closes: with one shared file, it would remove its successor's).
   */
  static async listen(inputs: TapServerInputs): Promise<TapServer> {
    const file = inputs.socketPath;
    const own = `${file}.${inputs.instance ?? process.pid}`;
    const fail = (err: Error) => new TrellisError('ELISTEN', `tap socket ${file}: ${err.message} (pass --tap-socket PATH in a writable directory, or --tap-socket off)`);
    try {
      fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
      // A socket left by a process that had this pid and died.
      if (fs.lstatSync(own, { throwIfNoEntry: false })?.isSocket()) fs.unlinkSync(own);
    } catch (err) {
      throw fail(err as Error);
    }
    const listener = net.createServer();
    await new Promise<void>((resolve, reject) => {
      listener.once('error', (err) => reject(fail(err)));
      listener.listen(own, () => resolve());
    });
    try {
      fs.chmodSync(own, 0o600);
      const link = `${own}.link`;
      fs.rmSync(link, { force: true });
      fs.symlinkSync(path.basename(own), link);
      fs.renameSync(link, file);
    } catch (err) {
      listener.close();
      throw fail(err as Error);
    }
    return new TapServer(inputs, listener, own);
  }

  /**
   * Stops listening; the open streams (which the service's stop() has ended with their last summary by then) get up to
   * `graceMs` to reach their readers, then their connections are cut: a reader never holds the agent's shutdown.
   */
  async close(graceMs = 1000): Promise<void> {
    const closed = new Promise<void>((resolve) => this.listener.close(() => resolve()));
    try {
      // The path is still ours unless a successor took it over.
      if (fs.readlinkSync(this.inputs.socketPath) === path.basename(this.own)) fs.unlinkSync(this.inputs.socketPath);
    } catch {
      // Gone already, or not a link any more.
    }
    if (this.grpc) (await this.grpc.catch(() => undefined))?.close();
    const deadline = Date.now() + graceMs;
    while (this.sockets.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  private async accept(socket: net.Socket): Promise<void> {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined);
    try {
      this.grpc ??= this.start();
      (await this.grpc).inject(socket);
    } catch (err) {
      this.inputs.logger.error({ err: (err as Error).message }, 'tap: cannot serve gRPC');
      socket.destroy();
    }
  }

  /** grpc-js and the .proto, loaded on the first connection. */
  private async start(): Promise<{ inject: (socket: net.Socket) => void; close: () => void }> {
    const grpcjs = await import('@grpc/grpc-js');
    const { tapServiceDefinition } = await import('./proto.js');
    const server = new grpcjs.Server();
    server.addService(tapServiceDefinition(), {
      Observe: (call: grpc.ServerWritableStream<ObserveRequest, TapEvent>) => void this.observe(grpcjs, call),
    });
    const injector = server.createConnectionInjector(grpcjs.ServerCredentials.createInsecure());
    return { inject: (socket) => injector.injectConnection(socket), close: () => injector.destroy() };
  }

  private async observe(grpcjs: typeof grpc, call: grpc.ServerWritableStream<ObserveRequest, TapEvent>): Promise<void> {
    const { service, logger } = this.inputs;
    const req = call.request;
    call.on('error', () => undefined);
    const refuse = (status: grpc.status, message: string) => {
      logger.warn({ reason: message }, 'tap refused');
      call.emit('error', { code: status, details: message });
    };
    const refusal = await this.inputs.authorize?.(call.metadata, req);
    if (refusal) return refuse(refusal.status, refusal.message);
    if (call.cancelled) return;
    let session;
    try {
      session = service.open(
        { limit: req.limit ?? 0, durationMs: req.durationMs ?? 0, maxRps: req.maxRps ?? 0, match: req.match },
        {
          write: (e) => void call.write(e),
          backlog: () => call.writableLength,
          end: () => call.end(),
        },
      );
    } catch (err) {
      const e = err as TrellisError;
      return refuse(e.code === 'EINVAL' ? grpcjs.status.INVALID_ARGUMENT : grpcjs.status.RESOURCE_EXHAUSTED, e.message);
    }
    const md = new grpcjs.Metadata();
    md.set(MAX_RPS_METADATA, String(session.maxRps));
    call.sendMetadata(md);
    logger.info({ tap: session.id, limit: req.limit ?? 0, durationMs: req.durationMs ?? 0, maxRps: session.maxRps }, 'tap opened');
    const gone = () => {
      if (session.closed) return;
      session.end();
      logger.info({ tap: session.id, delivered: session.delivered, dropped: session.droppedTotal }, 'tap closed by its reader');
    };
    call.once('cancelled', gone);
    call.once('close', gone);
  }
}
