// Protocol selection for an outbound connection to a Service port: what the port declares (appProtocol, or
// the port name's prefix, as Istio reads it), else a bounded sniff of the client's first bytes. A client that
// sends nothing (a server-speaks-first protocol: SMTP, MySQL...) never waits longer than the detection
// timeout, and ports known to be server-first are never sniffed at all.
import type { Readable } from 'node:stream';
import type { ServicePortInfo } from '../model/services.js';
import type { Metrics } from '../telemetry/metrics.js';

export type AppProtocol = 'http1' | 'h2' | 'tcp';

/** HTTP/2 connection preface (RFC 9113 section 3.4). */
export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'];
/** Enough bytes to tell any method above, its space, and the preface apart. */
const SNIFF_BYTES = H2_PREFACE.length;

/**
 * What the Service port says it carries, or undefined when it says nothing (then the connection is sniffed).
 * appProtocol wins over the port name; `grpc` and `kubernetes.io/h2c` are HTTP/2 with prior knowledge.
 */
export function declaredProtocol(port: Pick<ServicePortInfo, 'name' | 'appProtocol'>): AppProtocol | undefined {
  const app = port.appProtocol?.toLowerCase();
  if (app !== undefined) {
    if (app === 'http' || app === 'kubernetes.io/http') return 'http1';
    if (app === 'http2' || app === 'kubernetes.io/h2c' || app === 'grpc' || app === 'grpc-web') return app === 'grpc-web' ? 'http1' : 'h2';
    if (app === 'tcp' || app === 'https' || app === 'tls' || app === 'kubernetes.io/ws' || app === 'kubernetes.io/wss') return 'tcp';
    // Unknown appProtocol values (e.g. vendor prefixes): fall through to the name, then sniffing.
  }
  const name = port.name?.toLowerCase();
  if (!name) return undefined;
  const prefix = name.split('-')[0];
  if (prefix === 'http') return 'http1';
  if (prefix === 'http2' || prefix === 'grpc' || prefix === 'h2c') return 'h2';
  if (prefix === 'tcp' || prefix === 'https' || prefix === 'tls' || prefix === 'mongo' || prefix === 'mysql' || prefix === 'redis') return 'tcp';
  return undefined;
}

/**
 * Classifies the first bytes of a connection: 'more' while they could still be HTTP/1 or HTTP/2 and more bytes
 * are needed to say. HTTP/1 is a known method followed by a space; HTTP/2 is the full preface.
 */
export function classify(head: Buffer): AppProtocol | 'more' {
  const n = Math.min(head.length, SNIFF_BYTES);
  if (n === 0) return 'more';
  let preface = true;
  for (let i = 0; i < n; i++) if (head[i] !== H2_PREFACE[i]) preface = false;
  if (preface) return n === SNIFF_BYTES ? 'h2' : 'more';
  let couldBeMethod = false;
  for (const m of METHODS) {
    const len = Math.min(n, m.length + 1);
    let same = true;
    for (let i = 0; i < len; i++) {
      const want = i < m.length ? m.charCodeAt(i) : 0x20;
      if (head[i] !== want) {
        same = false;
        break;
      }
    }
    if (!same) continue;
    if (n > m.length) return 'http1';
    couldBeMethod = true;
  }
  return couldBeMethod ? 'more' : 'tcp';
}

export interface SniffResult {
  protocol: AppProtocol;
  /** True when the client sent nothing (or too little) within the timeout. */
  timedOut: boolean;
}

/**
 * Peeks at what `socket` sends until its first bytes say which protocol it speaks, the client ends or the
 * timeout passes. Nothing is consumed: every byte read is put back, so the next handler reads the stream from
 * its first byte (and an early FIN is not delivered before those bytes).
 */
export function sniff(socket: Readable, timeoutMs: number): Promise<SniffResult> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (protocol: AppProtocol, timedOut: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off('readable', onReadable);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      resolve({ protocol, timedOut });
    };
    const onReadable = () => {
      const buffered = socket.read() as Buffer | null;
      if (buffered === null) return;
      socket.unshift(buffered);
      const verdict = classify(buffered);
      if (verdict !== 'more') finish(verdict, false);
    };
    const onEnd = () => finish('tcp', false);
    const timer = setTimeout(() => finish('tcp', true), timeoutMs);
    socket.on('readable', onReadable);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
  });
}

/**
 * On a port declared HTTP, which version: HTTP/2 with prior knowledge (the preface) or HTTP/1.1, as Istio
 * accepts both there (gRPC clients speak h2c to "http" ports). Client-first, so nothing waits in practice; a
 * client that stays silent past the timeout is served as HTTP/1.1.
 */
export async function httpVersion(socket: Readable, timeoutMs: number): Promise<'http1' | 'h2'> {
  if (timeoutMs <= 0) return 'http1';
  const found = await sniff(socket, timeoutMs);
  return found.protocol === 'h2' ? 'h2' : 'http1';
}

/**
 * The protocol an endpoint's port carries as its Services declare it, when they agree; when they do not (a TCP
 * Service and an HTTP Service on one pod port) or say nothing, undefined: a hint or a sniff decides.
 */
export function declaredForEndpoint(ports: readonly Pick<ServicePortInfo, 'name' | 'appProtocol'>[]): AppProtocol | undefined {
  let found: AppProtocol | undefined;
  for (const sp of ports) {
    const p = declaredProtocol(sp);
    if (p === undefined || (found !== undefined && p !== found)) return undefined;
    found = p;
  }
  return found;
}

export interface DetectOptions {
  /** How long an undeclared port waits for the client's first bytes before it is carried as opaque TCP; 0: never sniff. */
  readonly detectTimeoutMs: number;
  /** Ports never sniffed (server-speaks-first protocols). */
  readonly opaquePorts: ReadonlySet<number>;
}

export interface Selection {
  protocol: AppProtocol;
  /** True when the bytes were looked at (they stay in the socket's buffer). */
  sniffed: boolean;
}

/**
 * The one protocol selection, for both directions: a port declared HTTP is asked which version (HTTP/2 with prior
 * knowledge or HTTP/1.1); another declaration is taken as it is; an undeclared port is sniffed, unless it is an
 * opaque port or sniffing is off. Bytes looked at stay in the socket's buffer.
 */
export async function selectProtocol(
  socket: Readable,
  port: number,
  declared: AppProtocol | undefined,
  options: DetectOptions,
  metrics: Pick<Metrics, 'protocolDetectTimeouts' | 'protocolDetections'>,
): Promise<Selection> {
  if (declared === 'http1') return { protocol: await httpVersion(socket, options.detectTimeoutMs), sniffed: true };
  if (declared) return { protocol: declared, sniffed: false };
  if (options.detectTimeoutMs === 0 || options.opaquePorts.has(port)) return { protocol: 'tcp', sniffed: false };
  const found = await sniff(socket, options.detectTimeoutMs);
  if (found.timedOut) metrics.protocolDetectTimeouts.inc();
  metrics.protocolDetections.inc({ protocol: found.protocol });
  return { protocol: found.protocol, sniffed: true };
}
