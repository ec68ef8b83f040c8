// Protocol selection for a connection to a Service port: what the port declares (appProtocol, or the port name's
// prefix, as Istio reads it), else a bounded sniff of the client's first bytes, which finds HTTP/1 wherever an app
// could parse a request (any method), so identity headers a client forged never pass the agent unparsed. A client
// that sends nothing (a server-speaks-first protocol: SMTP, MySQL...) never waits longer than the detection
// timeout, and ports known to be server-first are never sniffed at all.
import type { Readable } from 'node:stream';
import type { ServicePortInfo } from '../model/services.js';
import type { Metrics } from '../telemetry/metrics.js';
import { METHODS as PARSER_METHODS } from './h1/parser.js';

export type AppProtocol = 'http1' | 'h2' | 'tcp';

/** HTTP/2 connection preface (RFC 9113 section 3.4). */
export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/**
 * How far a sniff looks for the end of a request line: RFC 9112 section 3 asks recipients to support request
 * lines of at least 8000 octets. Bytes that could still be a request line this far in are HTTP/1 (see classify).
 */
export const SNIFF_LIMIT = 8 * 1024;

const SP = 0x20;
const HTAB = 0x09;
const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
const DIGIT_0 = 0x30;
const DIGIT_9 = 0x39;

/** RFC 9110 section 5.6.2: the bytes of a token, which is what a method is. */
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~") TCHAR[c.charCodeAt(0)] = 1;
for (let c = 0x30; c <= 0x39; c++) TCHAR[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) TCHAR[c] = TCHAR[c + 0x20] = 1;

/** Between a request line's parts: SP, and HTAB as RFC 9112 section 3 lets a recipient read it (Tomcat does). */
const isSeparator = (b: number) => b === SP || b === HTAB;
/** A byte of a request-target as a sniff reads it: anything but SP and controls (the HTTP layer judges the rest). */
const isTargetByte = (b: number) => b > SP && b !== 0x7f;

/**
 * Every method llhttp knows (h1/parser.ts names them by llhttp's ids: HTTP's, PRI and RTSP's). llhttp, the agent's
 * parser and Node's (so an app's), takes only these without a version (HTTP/0.9's form, headers still read after
 * it) or with an RTSP or ICE version.
 */
const LLHTTP_METHODS: ReadonlySet<string> = new Set(PARSER_METHODS);

/** Protocol names a request line's version may carry: HTTP for any method, the others as llhttp takes them. */
const VERSIONS: readonly { name: Buffer; anyMethod: boolean }[] = [
  { name: Buffer.from('HTTP/', 'latin1'), anyMethod: true },
  { name: Buffer.from('RTSP/', 'latin1'), anyMethod: false },
  { name: Buffer.from('ICE/', 'latin1'), anyMethod: false },
];

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
 * Classifies the first bytes of a connection: 'more' while they could still become an HTTP/1 request line or the
 * HTTP/2 preface, 'tcp' as soon as they cannot.
 *
 * An HTTP/1 request line is RFC 9112's: a method (any token: extension and lowercase methods too), SP, a
 * request-target, SP, HTTP/DIGIT.DIGIT, CRLF; read as leniently as the parsers an app may run read it (llhttp in
 * Node, Go's, Tomcat's): empty lines before it, several SP or HTAB between its parts, a bare LF, and for methods
 * llhttp knows, no version at all (HTTP/0.9's form, headers still follow) or an RTSP/ICE one. A line is HTTP/1
 * at the end of its version (CR or LF). The agent's own parser refuses (400) what it does not take itself, so whatever an app
 * could read as HTTP is parsed by the agent first and reaches the app with the identity headers the agent set.
 * Bytes that are still a possible request line at SNIFF_LIMIT are HTTP/1 too: a long target never makes a
 * request opaque.
 */
export function classify(head: Buffer): AppProtocol | 'more' {
  const n = Math.min(head.length, SNIFF_LIMIT);
  if (n === 0) return 'more';
  const p = Math.min(n, H2_PREFACE.length);
  if (head.compare(H2_PREFACE, 0, p, 0, p) === 0) return p === H2_PREFACE.length ? 'h2' : 'more';
  const line = requestLine(head, n);
  return line === 'more' && n === SNIFF_LIMIT ? 'http1' : line;
}

/** classify() for HTTP/1 on head[0, n): the request line's parts in order, each as far as the bytes go. */
function requestLine(head: Buffer, n: number): AppProtocol | 'more' {
  let i = 0;
  while (i < n && (head[i] === CR || head[i] === LF)) i++;
  const method = i;
  while (i < n && TCHAR[head[i]!] === 1) i++;
  if (i === n) return 'more';
  if (i === method || !isSeparator(head[i]!)) return 'tcp';
  const methodEnd = i;
  while (i < n && isSeparator(head[i]!)) i++;
  if (i === n) return 'more';
  const target = i;
  while (i < n && isTargetByte(head[i]!)) i++;
  if (i === n) return 'more';
  const known = () => LLHTTP_METHODS.has(head.toString('latin1', method, methodEnd));
  // The line ends without a version (llhttp takes "CONNECT \r\n" even without a target).
  if (head[i] === CR || head[i] === LF) return known() ? 'http1' : 'tcp';
  if (i === target || !isSeparator(head[i]!)) return 'tcp';
  while (i < n && isSeparator(head[i]!)) i++;
  if (i === n) return 'more';
  let name: Buffer | undefined;
  for (const v of VERSIONS) {
    const len = Math.min(v.name.length, n - i);
    if (head.compare(v.name, 0, len, i, i + len) !== 0 || (!v.anyMethod && !known())) continue;
    if (len < v.name.length) return 'more';
    name = v.name;
    break;
  }
  if (name === undefined) return 'tcp';
  i += name.length;
  // DIGIT "." DIGIT, then the end of the line.
  for (let k = 0; k < 4; k++, i++) {
    if (i === n) return 'more';
    const b = head[i]!;
    if (!(k === 1 ? b === DOT : k === 3 ? b === CR || b === LF : b >= DIGIT_0 && b <= DIGIT_9)) return 'tcp';
  }
  return 'http1';
}

export interface SniffResult {
  protocol: AppProtocol;
  /** True when the client sent nothing (tcp), or too little to tell (http1), within the timeout. */
  timedOut: boolean;
}

/**
 * Peeks at what `socket` sends until its first bytes say which protocol it speaks, the client ends or the
 * timeout passes. Nothing is consumed: every byte read is put back at once, so the next handler reads the stream
 * from its first byte (and an early FIN is not delivered before those bytes). At the timeout, a client that sent
 * nothing is opaque TCP (a server-speaks-first protocol), but one that sent the start of what could still be a
 * request line is HTTP/1: pausing in the middle of a request must not make it opaque.
 */
export async function sniff(socket: Readable, timeoutMs: number): Promise<SniffResult> {
  const found = await peek(socket, timeoutMs, (head, final) => {
    const verdict = head.length === 0 ? 'more' : classify(head);
    if (verdict !== 'more') return verdict;
    if (final === 'end') return 'tcp';
    return final === 'timeout' ? (head.length > 0 ? 'http1' : 'tcp') : undefined;
  });
  return { protocol: found.value, timedOut: found.timedOut };
}

/**
 * Why a peek must decide now: the client ended (FIN, or the socket closed) behind the bytes it sent, or the time is
 * up; false while more bytes may come.
 */
export type PeekFinal = 'end' | 'timeout' | false;

/**
 * The one way the agent looks at a client's first bytes (protocol detection, egress names): `judge` is asked again
 * each time new bytes arrive, with everything sent so far, and answers undefined while it needs more; it must answer
 * once `final` is set. Nothing is consumed: every byte read is put back at once. A client that sends nothing holds
 * nothing past `timeoutMs`; how many bytes are looked at is the judge's bound (the socket stops reading from the
 * kernel past its buffer's high-water mark, so a judge that needs more than that decides at the timeout).
 */
export function peek<T>(socket: Readable, timeoutMs: number, judge: (head: Buffer, final: PeekFinal) => T | undefined): Promise<{ value: T; timedOut: boolean }> {
  return new Promise((resolve) => {
    /** Bytes looked at so far; they are in the socket's buffer. */
    let head: Buffer = EMPTY;
    let done = false;
    const finish = (value: T, timedOut: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off('readable', onReadable);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      resolve({ value, timedOut });
    };
    // Whether the client has ended (FIN) behind the bytes buffered: asking for one byte more than there is gives
    // null until then, and all of them after (put back, so 'end' waits for the next reader).
    const ended = () => {
      const all = socket.read(socket.readableLength + 1) as Buffer | null;
      if (all === null) return false;
      socket.unshift(all);
      return true;
    };
    const onReadable = () => {
      if (socket.readableLength > head.length) {
        head = socket.read() as Buffer;
        socket.unshift(head);
        const verdict = judge(head, false);
        if (verdict !== undefined) return finish(verdict, false);
      }
      // Nothing new (a stream announces bytes put back as readable again: reading them again would be a busy
      // loop that starves the timeout), or the client ended before its bytes said anything.
      if (head.length > 0 && ended()) finish(judge(head, 'end')!, false);
    };
    const onEnd = () => finish(judge(head, 'end')!, false);
    // The timeout measures the client's silence, not the agent's own stalls: when it fires, what arrived meanwhile (a
    // FIN behind a short opaque message, say) is read first, in this turn of the event loop, before the verdict.
    const timer = setTimeout(() => setImmediate(() => {
      if (!done) finish(judge(head, 'timeout')!, true);
    }), timeoutMs);
    socket.on('readable', onReadable);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
  });
}

const EMPTY = Buffer.alloc(0);

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
 * opaque port or sniffing is off. `port`: several when the connection has more than one (outbound: the Service port
 * and the pods' target ports, so a Service port 80 in front of MySQL's 3306 is opaque on both sides, as inbound sees
 * only 3306). Bytes looked at stay in the socket's buffer.
 */
export async function selectProtocol(
  socket: Readable,
  port: number | readonly number[],
  declared: AppProtocol | undefined,
  options: DetectOptions,
  metrics: Pick<Metrics, 'protocolDetectTimeouts' | 'protocolDetections'>,
): Promise<Selection> {
  if (declared === 'http1') return { protocol: await httpVersion(socket, options.detectTimeoutMs), sniffed: true };
  if (declared) return { protocol: declared, sniffed: false };
  if (options.detectTimeoutMs === 0 || (typeof port === 'number' ? options.opaquePorts.has(port) : port.some((p) => options.opaquePorts.has(p)))) {
    return { protocol: 'tcp', sniffed: false };
  }
  const found = await sniff(socket, options.detectTimeoutMs);
  if (found.timedOut) metrics.protocolDetectTimeouts.inc();
  metrics.protocolDetections.inc({ protocol: found.protocol });
  return { protocol: found.protocol, sniffed: true };
}
