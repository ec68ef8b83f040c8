// OTLP export of finished spans, one exporter per agent thread: a bounded queue, batches sent one at a time over
// gRPC (TraceService/Export, 4317) or HTTP (POST /v1/traces, 4318, protobuf or JSON). Encoding is OpenTelemetry's own
// (@opentelemetry/otlp-transformer's serializers), loaded when the exporter is made (the agent starting, before it
// carries traffic: compiling those modules takes a few hundred ms of one thread), so an agent without tracing never
// loads it. The request path only ever pushes onto the queue: a full queue drops the span and counts it, an export
// that fails drops its batch and counts it; a slow or broken collector never holds a request.
import http from 'node:http';
import https from 'node:https';
import type { Logger } from 'pino';
import type { Metrics } from '../telemetry/metrics.js';
import type { FinishedSpan, SpanSink } from './tracer.js';

export type OtlpProtocol = 'grpc' | 'http/protobuf' | 'http/json';

export interface OtlpExporterInputs {
  /** http(s)://host:port for gRPC; for HTTP the same, /v1/traces added when the URL has no path. */
  endpoint: string;
  protocol: OtlpProtocol;
  metrics: Metrics;
  logger: Logger;
  /** Spans waiting at most; past this they are dropped (OpenTelemetry's BatchSpanProcessor default). */
  maxQueue?: number;
  /** Spans per export at most. */
  maxBatch?: number;
  /** A batch smaller than maxBatch leaves after this long. */
  delayMs?: number;
  /** One export's limit. */
  timeoutMs?: number;
}

const GRPC_METHOD = '/opentelemetry.proto.collector.trace.v1.TraceService/Export';
/** How long a stopping agent gives its last spans to leave. */
const CLOSE_MS = 2000;
/** At most one warning per this long about failed exports (the counter has every one). */
const WARN_EVERY_MS = 60_000;

type Serialize = (spans: FinishedSpan[]) => Uint8Array | undefined;
type Send = (body: Uint8Array) => Promise<void>;

export class OtlpExporter implements SpanSink {
  private queue: FinishedSpan[] = [];
  private sending: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private serialize: Serialize | undefined;
  private send: Send | undefined;
  /** The serializer and transport being loaded; a failure is the first export's error. */
  private readonly loaded: Promise<void>;
  private lastWarning = 0;
  private closed = false;
  private readonly maxQueue: number;
  private readonly maxBatch: number;
  private readonly delayMs: number;
  private readonly timeoutMs: number;
  private readonly dropped: { queueFull: () => void; failed: (n: number) => void };

  constructor(private readonly inputs: OtlpExporterInputs) {
    this.maxQueue = inputs.maxQueue ?? 2048;
    this.maxBatch = inputs.maxBatch ?? 512;
    this.delayMs = inputs.delayMs ?? 1000;
    this.timeoutMs = inputs.timeoutMs ?? 10_000;
    const queueFull = inputs.metrics.tracingSpansDropped.labels({ reason: 'queue_full' });
    const failed = inputs.metrics.tracingSpansDropped.labels({ reason: 'export_failed' });
    this.dropped = { queueFull: () => queueFull.inc(), failed: (n) => failed.inc(n) };
    this.loaded = this.load();
    this.loaded.catch(() => undefined);
  }

  push(span: FinishedSpan): void {
    if (this.closed || this.queue.length >= this.maxQueue) return this.dropped.queueFull();
    this.queue.push(span);
    if (this.queue.length >= this.maxBatch) this.kick();
    else if (!this.timer) {
      this.timer = setTimeout(() => this.kick(), this.delayMs);
      this.timer.unref();
    }
  }

  /**
   * Sends what is queued (the agent stopping) for at most CLOSE_MS: a collector that does not answer holds the agent's
   * stop no longer than that, and what it did not take is counted as dropped.
   */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const deadline = new Promise<void>((resolve) => setTimeout(resolve, CLOSE_MS).unref());
    const flush = (async () => {
      while (this.queue.length > 0 || this.sending) {
        this.kick();
        await this.sending;
      }
    })();
    await Promise.race([flush, deadline]);
    const left = this.queue.length;
    this.queue = [];
    if (left > 0) this.dropped.failed(left);
    this.closeTransport?.();
  }

  private closeTransport: (() => void) | undefined;

  private kick(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.sending || this.queue.length === 0) return;
    const batch = this.queue.length <= this.maxBatch ? this.queue : this.queue.slice(0, this.maxBatch);
    this.queue = batch === this.queue ? [] : this.queue.slice(this.maxBatch);
    this.sending = this.export(batch).finally(() => {
      this.sending = undefined;
      if (this.queue.length >= this.maxBatch || (this.closed && this.queue.length > 0)) this.kick();
      else if (this.queue.length > 0 && !this.timer) {
        this.timer = setTimeout(() => this.kick(), this.delayMs);
        this.timer.unref();
      }
    });
  }

  private async export(batch: FinishedSpan[]): Promise<void> {
    try {
      await this.loaded;
      const body = this.serialize!(batch);
      if (!body) throw new Error('the spans could not be encoded');
      await this.send!(body);
      this.inputs.metrics.tracingSpansExported.inc(batch.length);
    } catch (err) {
      this.dropped.failed(batch.length);
      const now = performance.now();
      if (now - this.lastWarning >= WARN_EVERY_MS || this.lastWarning === 0) {
        this.lastWarning = now;
        this.inputs.logger.warn(
          { endpoint: this.inputs.endpoint, protocol: this.inputs.protocol, spans: batch.length, err: (err as Error).message },
          'trace export failed: spans dropped (counted in trellis_tracing_spans_dropped_total); is the collector up and does it speak this protocol (--tracing-protocol)?',
        );
      }
    }
  }

  /** Loads the serializer and opens the transport for the configured protocol. */
  private async load(): Promise<void> {
    const { ProtobufTraceSerializer, JsonTraceSerializer } = await import('@opentelemetry/otlp-transformer');
    type Spans = Parameters<typeof ProtobufTraceSerializer.serializeRequest>[0];
    const serializer = this.inputs.protocol === 'http/json' ? JsonTraceSerializer : ProtobufTraceSerializer;
    this.serialize = (spans) => serializer.serializeRequest(spans as unknown as Spans);
    const url = new URL(this.inputs.endpoint);
    if (this.inputs.protocol === 'grpc') {
      this.send = await grpcSender(url, this.timeoutMs, (close) => (this.closeTransport = close));
    } else {
      this.send = httpSender(url, this.inputs.protocol === 'http/json' ? 'application/json' : 'application/x-protobuf', this.timeoutMs, (close) => (this.closeTransport = close));
    }
  }
}

/** TraceService/Export over one grpc-js channel; the message is already encoded, so it is passed through as bytes. */
async function grpcSender(url: URL, timeoutMs: number, onClose: (close: () => void) => void): Promise<Send> {
  const grpc = await import('@grpc/grpc-js');
  const secure = url.protocol === 'https:';
  const client = new grpc.Client(`${url.hostname}:${url.port || (secure ? 443 : 4317)}`, secure ? grpc.credentials.createSsl() : grpc.credentials.createInsecure());
  onClose(() => client.close());
  const pass = (b: Buffer) => b;
  return (body) =>
    new Promise<void>((resolve, reject) => {
      client.makeUnaryRequest(GRPC_METHOD, pass, pass, Buffer.from(body.buffer, body.byteOffset, body.byteLength), new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err) => (err ? reject(new Error(`gRPC ${err.code}: ${err.details || err.message}`)) : resolve()));
    });
}

/** POST /v1/traces (or the URL's own path) on a kept-alive connection; any 2xx is accepted. */
function httpSender(url: URL, contentType: string, timeoutMs: number, onClose: (close: () => void) => void): Send {
  const secure = url.protocol === 'https:';
  const agent = secure ? new https.Agent({ keepAlive: true, maxSockets: 1 }) : new http.Agent({ keepAlive: true, maxSockets: 1 });
  onClose(() => agent.destroy());
  const path = url.pathname === '/' || url.pathname === '' ? '/v1/traces' : url.pathname;
  const request = secure ? https.request : http.request;
  return (body) =>
    new Promise<void>((resolve, reject) => {
      const req = request(
        { host: url.hostname, port: url.port || (secure ? 443 : 4318), path, method: 'POST', agent, timeout: timeoutMs, headers: { 'content-type': contentType, 'content-length': body.byteLength } },
        (res) => {
          res.resume();
          res.once('end', () => (res.statusCode! >= 200 && res.statusCode! < 300 ? resolve() : reject(new Error(`HTTP ${res.statusCode}`))));
          res.once('error', reject);
        },
      );
      req.once('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
      req.once('error', reject);
      req.end(body);
    });
}
