// An OTLP trace receiver for tests: OTLP/gRPC (TraceService/Export) and OTLP/HTTP (POST /v1/traces, protobuf or
// JSON), decoding with the OTLP definitions as OpenTelemetry's transformer shipped them compiled by protobufjs
// (otel-otlp-transformer-0.57, a dev dependency), never with the agent's own encoder. Listens on loopback, or inside
// a network namespace (a lab node's, where its agent reaches it at 127.0.0.1).
import { createRequire } from 'node:module';
import http from 'node:http';
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { listenInNetns } from '../../agent/native/index.js';
import { TRACE_SERVICE_RAW } from '../../lab/bench/otlp-sink.js';

const require = createRequire(import.meta.url);
// eslint-disable-next-line @typescript-eslint/no-require-imports
const root = require('otel-otlp-transformer-0.57/build/src/generated/root.js') as {
  opentelemetry: { proto: { collector: { trace: { v1: { ExportTraceServiceRequest: { decode(b: Uint8Array): unknown; toObject(m: unknown, o: object): unknown } } } } } };
};
const Request = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;

/** A received span, the same whatever the protocol. */
export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  /** '' for a root span. */
  parentSpanId: string;
  traceState: string;
  name: string;
  /** OTLP's SpanKind: 2 SERVER, 3 CLIENT. */
  kind: number;
  startNs: bigint;
  endNs: bigint;
  attributes: Record<string, string | number | boolean>;
  status: { code: number; message: string };
  resource: Record<string, string | number | boolean>;
  /** How it arrived. */
  protocol: 'grpc' | 'http/protobuf' | 'http/json';
}

type AnyValue = { stringValue?: string; intValue?: string | number; boolValue?: boolean; doubleValue?: number };
type KeyValue = { key: string; value?: AnyValue };

function value(v: AnyValue | undefined): string | number | boolean {
  if (!v) return '';
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.doubleValue !== undefined) return v.doubleValue;
  return '';
}

const attrs = (kvs: KeyValue[] | undefined) => Object.fromEntries((kvs ?? []).map((kv) => [kv.key, value(kv.value)]));

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  traceState?: string;
  name: string;
  kind?: number;
  startTimeUnixNano: string | number;
  endTimeUnixNano: string | number;
  attributes?: KeyValue[];
  status?: { code?: number; message?: string };
}

/** Both encodings decoded to OTLP's object form (ids as hex: protobuf bytes are turned into it). */
function spansOf(request: { resourceSpans?: { resource?: { attributes?: KeyValue[] }; scopeSpans?: { spans?: OtlpSpan[] }[] }[] }, protocol: ReceivedSpan['protocol']): ReceivedSpan[] {
  const out: ReceivedSpan[] = [];
  for (const rs of request.resourceSpans ?? []) {
    const resource = attrs(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        out.push({
          traceId: s.traceId,
          spanId: s.spanId,
          parentSpanId: s.parentSpanId ?? '',
          traceState: s.traceState ?? '',
          name: s.name,
          kind: s.kind ?? 0,
          startNs: BigInt(s.startTimeUnixNano),
          endNs: BigInt(s.endTimeUnixNano),
          attributes: attrs(s.attributes),
          status: { code: s.status?.code ?? 0, message: s.status?.message ?? '' },
          resource,
          protocol,
        });
      }
    }
  }
  return out;
}

/** Decodes an ExportTraceServiceRequest in protobuf. */
export function decodeProtobuf(body: Uint8Array, protocol: ReceivedSpan['protocol'] = 'http/protobuf'): ReceivedSpan[] {
  const message = Request.decode(body);
  const obj = Request.toObject(message, { longs: String, enums: Number, bytes: String, defaults: false }) as Parameters<typeof spansOf>[0];
  // bytes: String gives base64; ids are hex on the JSON side and in the agent's headers.
  for (const rs of obj.resourceSpans ?? []) {
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        s.traceId = Buffer.from(s.traceId, 'base64').toString('hex');
        s.spanId = Buffer.from(s.spanId, 'base64').toString('hex');
        if (s.parentSpanId) s.parentSpanId = Buffer.from(s.parentSpanId, 'base64').toString('hex');
      }
    }
  }
  return spansOf(obj, protocol);
}

export function decodeJson(body: Buffer): ReceivedSpan[] {
  return spansOf(JSON.parse(body.toString('utf8')) as Parameters<typeof spansOf>[0], 'http/json');
}

export class OtlpReceiver {
  readonly spans: ReceivedSpan[] = [];
  /** Export calls answered, by protocol. */
  readonly exports = { grpc: 0, 'http/protobuf': 0, 'http/json': 0 };
  private readonly servers: net.Server[] = [];
  private readonly grpcServer = new grpc.Server();
  private readonly injector: ReturnType<grpc.Server['createConnectionInjector']>;
  /** When set, connections are accepted and never answered (a collector that hangs). */
  hang = false;
  private readonly held = new Set<net.Socket>();
  private readonly accepted = new Set<net.Socket>();

  constructor() {
    this.grpcServer.addService(
      TRACE_SERVICE_RAW,
      {
        Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
          this.spans.push(...decodeProtobuf(call.request, 'grpc'));
          this.exports.grpc++;
          callback(null, Buffer.alloc(0));
        },
      },
    );
    this.injector = this.grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  }

  private http = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const type = req.headers['content-type'] ?? '';
      if (req.method !== 'POST' || req.url !== '/v1/traces') return void res.writeHead(404).end();
      if (type.startsWith('application/json')) {
        this.spans.push(...decodeJson(body));
        this.exports['http/json']++;
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      } else if (type.startsWith('application/x-protobuf')) {
        this.spans.push(...decodeProtobuf(body));
        this.exports['http/protobuf']++;
        res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
      } else {
        res.writeHead(415).end();
      }
    });
  });

  private accept(kind: 'grpc' | 'http'): (socket: net.Socket) => void {
    return (socket) => {
      if (this.hang) {
        this.held.add(socket);
        socket.on('error', () => undefined);
        socket.once('close', () => this.held.delete(socket));
        return;
      }
      this.accepted.add(socket);
      socket.once('close', () => this.accepted.delete(socket));
      if (kind === 'grpc') this.injector.injectConnection(socket);
      else this.http.emit('connection', socket);
    };
  }

  /** Listens for gRPC and HTTP on `host` (loopback by default, or inside `netnsPath`); returns the ports. */
  async listen(opts: { netnsPath?: string; host?: string; grpcPort?: number; httpPort?: number } = {}): Promise<{ grpc: number; http: number }> {
    const host = opts.host ?? '127.0.0.1';
    const ports = { grpc: 0, http: 0 };
    for (const kind of ['grpc', 'http'] as const) {
      const server = net.createServer({ pauseOnConnect: false }, this.accept(kind));
      const port = (kind === 'grpc' ? opts.grpcPort : opts.httpPort) ?? 0;
      if (opts.netnsPath) await listenInNetns(server, opts.netnsPath, { host, port });
      else await new Promise<void>((resolve) => server.listen(port, host, resolve));
      this.servers.push(server);
      ports[kind] = (server.address() as net.AddressInfo).port;
    }
    return ports;
  }

  /** Stops listening: connections are refused from now on (a collector that is down). */
  async stopListening(): Promise<void> {
    await Promise.all(this.servers.splice(0).map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }

  /** Cuts every connection accepted so far: the senders must connect again (and meet `hang`, or a closed port). */
  cutConnections(): void {
    for (const s of this.accepted) s.destroy();
  }

  async close(): Promise<void> {
    // Connections first: a server's close() waits for every connection it accepted to end.
    for (const s of this.held) s.destroy();
    this.cutConnections();
    await this.stopListening();
    this.http.closeAllConnections();
    this.grpcServer.forceShutdown();
    this.injector.destroy();
  }
}
