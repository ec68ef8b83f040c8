// The tap API of one agent: trellis.tap.v1.Tap/Observe over gRPC, on a Unix socket (--tap-socket) and, in cluster
// mode, on a TCP port over TLS (--tap-addr). Both are plain listeners until someone connects: grpc-js and the .proto
// are loaded then, so an agent nobody taps carries neither. Who may tap is one function (`authorize`): on the socket
// whoever can open it (root; it is made 0600), on the port the caller's Kubernetes token checked by TokenReview and a
// SubjectAccessReview for `watch` on `tap.tap.trellis.dev` in the tapped namespaces (authorize.ts), refused with why.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { TrellisError } from '../errors.js';
import type { TapRefusal } from './authorize.js';
import type { TapEvent } from './events.js';
import { compileMatch } from './match.js';
import type { ObserveRequest } from './proto.js';
import type { TapService } from './service.js';

/** Response metadata of an accepted tap: the rate bound in force (the agent's cap may be lower than asked). */
export const MAX_RPS_METADATA = 'trellis-tap-max-rps';

/** A TLS handshake on the tap port must end within this long. */
const HANDSHAKE_TIMEOUT_MS = 10_000;

interface TapServerBase {
  service: TapService;
  logger: Logger;
  /** Who may tap; undefined: anyone who can open the socket (local mode). */
  authorize?: (metadata: grpc.Metadata, request: ObserveRequest) => Promise<TapRefusal | undefined>;
}

export interface TapServerInputs extends TapServerBase {
  socketPath: string;
  /** What makes this process's socket name unique beside the path (default: the pid). */
  instance?: string;
}

/** The serving certificate of the tap port: key and chain (PEM), as the agent's own SVID holds them. */
export interface TapCertificate {
  keyPem: string;
  certPem: string;
}

export interface TapTlsInputs extends TapServerBase {
  host: string;
  port: number;
  certificate: TapCertificate;
  /** Refusals need an authorizer here: the port is reachable from the network. */
  authorize: NonNullable<TapServerBase['authorize']>;
}

function refusalStatus(grpcjs: typeof grpc, code: TapRefusal['code'] | 'EINVAL'): grpc.status {
  switch (code) {
    case 'EINVAL':
      return grpcjs.status.INVALID_ARGUMENT;
    case 'EUNAUTHENTICATED':
      return grpcjs.status.UNAUTHENTICATED;
    case 'EPERMISSION':
      return grpcjs.status.PERMISSION_DENIED;
    case 'EUNAVAILABLE':
      return grpcjs.status.UNAVAILABLE;
    case 'EINTERNAL':
      return grpcjs.status.INTERNAL;
  }
}

/** The bearer token's metadata, as authorize.ts reads it. */
export function authorizationOf(metadata: grpc.Metadata): string | undefined {
  const v = metadata.get('authorization')[0];
  return typeof v === 'string' ? v : undefined;
}

export class TapServer {
  private grpc: Promise<{ inject: (socket: Duplex) => void; close: () => void }> | undefined;
  private readonly sockets = new Set<net.Socket>();

  private constructor(
    private readonly inputs: TapServerBase & { socketPath?: string },
    private readonly listener: net.Server,
    /** The socket this process listens on, the socket path being a symbolic link to it; undefined on the TCP port. */
    private readonly own: string | undefined,
  ) {
    if (listener instanceof tls.Server) {
      // The raw connections are held for close(); gRPC gets them once the handshake is done.
      listener.on('connection', (socket: net.Socket) => this.hold(socket));
      listener.on('secureConnection', (socket: tls.TLSSocket) => void this.serve(socket));
      listener.on('tlsClientError', (err) => this.inputs.logger.debug({ err: err.message }, 'tap: TLS handshake failed'));
    } else {
      listener.on('connection', (socket) => {
        this.hold(socket);
        void this.serve(socket);
      });
    }
  }

  /**
   * Listens on host:port over TLS 1.3 with `certificate` (the agent's own SVID), SO_REUSEPORT so that an agent started
   * beside its predecessor binds it too. Every call is authorized by `authorize`.
   */
  static async listenTls(inputs: TapTlsInputs): Promise<TapServer> {
    const listener = tls.createServer({
      key: inputs.certificate.keyPem,
      cert: inputs.certificate.certPem,
      minVersion: 'TLSv1.3',
      ALPNProtocols: ['h2'],
      handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
    });
    await new Promise<void>((resolve, reject) => {
      listener.once('error', (err) => reject(new TrellisError('ELISTEN', `tap port ${inputs.host}:${inputs.port}: ${err.message} (pass --tap-addr IP:PORT, or --tap-addr off)`)));
      listener.listen({ host: inputs.host, port: inputs.port, reusePort: true }, () => resolve());
    });
    return new TapServer(inputs, listener, undefined);
  }

  /** The port listened on (the TCP listener's; 0 for the socket). */
  get port(): number {
    const a = this.listener.address();
    return typeof a === 'object' && a ? a.port : 0;
  }

  /** A renewed serving certificate, for the connections from now on. */
  setCertificate(certificate: TapCertificate): void {
    if (this.listener instanceof tls.Server) this.listener.setSecureContext({ key: certificate.keyPem, cert: certificate.certPem, minVersion: 'TLSv1.3' });
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
      if (this.own && fs.readlinkSync(this.inputs.socketPath!) === path.basename(this.own)) fs.unlinkSync(this.inputs.socketPath!);
    } catch {
      // Gone already, or not a link any more.
    }
    if (this.grpc) (await this.grpc.catch(() => undefined))?.close();
    const deadline = Date.now() + graceMs;
    while (this.sockets.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  private hold(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined);
  }

  private async serve(socket: Duplex): Promise<void> {
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
  private async start(): Promise<{ inject: (socket: Duplex) => void; close: () => void }> {
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
    let refusal: { code: TapRefusal['code'] | 'EINVAL'; message: string } | undefined;
    try {
      // A tree that is not one is refused as such before anyone is asked who may tap it.
      compileMatch(req.match);
      refusal = await this.inputs.authorize?.(call.metadata, req);
    } catch (err) {
      refusal = { code: err instanceof TrellisError && err.code === 'EINVAL' ? 'EINVAL' : 'EINTERNAL', message: (err as Error).message };
    }
    if (refusal) return refuse(refusalStatus(grpcjs, refusal.code), refusal.message);
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
