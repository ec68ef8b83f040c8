// Bench: the OTLP collector the agents export their spans to with `trellis bench --tracing RATIO`. It listens for
// OTLP/gRPC inside each node's netns at 127.0.0.1:4317 (where its agent runs) and answers every TraceService/Export at
// once without decoding it, so what the bench measures is the agents' side of tracing, not a collector's.
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { listenInNetns } from '../../agent/native/index.js';

export const OTLP_SINK_PORT = 4317;

const pass = (b: Buffer) => b;

/** OTLP/gRPC's TraceService with its messages left as bytes (the sink counts them; a test receiver decodes them). */
export const TRACE_SERVICE_RAW: grpc.ServiceDefinition = {
  Export: {
    path: '/opentelemetry.proto.collector.trace.v1.TraceService/Export',
    requestStream: false,
    responseStream: false,
    requestSerialize: pass,
    requestDeserialize: pass,
    responseSerialize: pass,
    responseDeserialize: pass,
  },
};

export class OtlpSink {
  exports = 0;
  bytes = 0;
  private readonly grpcServer = new grpc.Server();
  private readonly injector: ReturnType<grpc.Server['createConnectionInjector']>;
  private readonly servers: net.Server[] = [];
  private readonly sockets = new Set<net.Socket>();

  constructor() {
    this.grpcServer.addService(
      TRACE_SERVICE_RAW,
      {
        Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
          this.exports++;
          this.bytes += call.request.length;
          callback(null, Buffer.alloc(0));
        },
      },
    );
    this.injector = this.grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  }

  /** Listens in the netns, on the address the agents are told (--tracing-endpoint http://127.0.0.1:4317). */
  async listen(netnsPath: string): Promise<void> {
    const server = net.createServer((socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
      this.injector.injectConnection(socket);
    });
    await listenInNetns(server, netnsPath, { host: '127.0.0.1', port: OTLP_SINK_PORT });
    this.servers.push(server);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await Promise.all(this.servers.splice(0).map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    this.grpcServer.forceShutdown();
    this.injector.destroy();
  }
}
