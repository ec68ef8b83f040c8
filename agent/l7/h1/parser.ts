// The HTTP/1.1 parser: llhttp as Node's own HTTP server runs it (strict mode, the same limits and the same
// errors), reached through node:_http_common's HTTPParser, without the IncomingMessage, ServerResponse and
// ClientRequest objects that cost most of the CPU of a request. One parser per connection, reused for every
// message on it and pooled between connections, as Node pools its own.
import { createRequire } from 'node:module';

/** The shape of Node's llhttp binding (lib/_http_common.js, src/node_http_parser.cc). */
interface NodeParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(chunk: Buffer): number | ParseError;
  finish(): number | ParseError | undefined;
  remove(): void;
  free(): void;
  close(): void;
  [k: number]: unknown;
}

interface ParserModule {
  HTTPParser: {
    new (): NodeParser;
    REQUEST: number;
    RESPONSE: number;
    kOnHeaders: number;
    kOnHeadersComplete: number;
    kOnBody: number;
    kOnMessageComplete: number;
    kOnExecute: number;
    kLenientNone: number;
  };
  methods: readonly string[];
}

/** An llhttp error: code HPE_* (HPE_HEADER_OVERFLOW for a head over the limit), reason, and where it stopped. */
export interface ParseError extends Error {
  code: string;
  reason: string;
  bytesParsed: number;
}

const { HTTPParser, methods } = createRequire(import.meta.url)('_http_common') as ParserModule;

/**
 * Method names by llhttp's method id (llhttp_method_t), which is what the parser reports. Node exports its HTTP
 * methods only (ids 0-33 in llhttp's order, then QUERY, whose id is 46); llhttp also parses PRI (34) and RTSP's
 * methods (35-45) in requests, so a plain index into Node's list would name those wrongly (or not at all).
 */
export const METHODS: readonly string[] = llhttpMethods(methods);

function llhttpMethods(http: readonly string[]): string[] {
  if (http[33] !== 'SOURCE' || http[34] !== 'QUERY') {
    throw new Error(`this Node's llhttp method list is not the one agent/l7/h1/parser.ts maps (${http.length} methods, ${http.slice(32).join(',')})`);
  }
  const rtsp = ['DESCRIBE', 'ANNOUNCE', 'SETUP', 'PLAY', 'PAUSE', 'TEARDOWN', 'GET_PARAMETER', 'SET_PARAMETER', 'REDIRECT', 'RECORD', 'FLUSH'];
  return [...http.slice(0, 34), 'PRI', ...rtsp, ...http.slice(34)];
}

/** What a parsed message head carries. */
export interface Head {
  versionMinor: number;
  /** Raw header fields, [name, value, ...], as they came (names in their case, values unchanged). */
  raw: string[];
  /** Request: method and target. */
  method: string;
  url: string;
  /** Response: status code. */
  status: number;
  /** The message asks for an Upgrade (or is CONNECT): the parser stops after the head. */
  upgrade: boolean;
  keepAlive: boolean;
}

/** What the connection does with a parser's events. Return SKIP_BODY from head() for a response with no body. */
export interface ParserEvents {
  head(h: Head): number;
  body(chunk: Buffer): void;
  /** The message ended; trailers (chunked) when any came. */
  complete(trailers: string[] | undefined): void;
}

/** head() return value: this response has no body whatever its headers say (HEAD, 1xx, 204, 304). */
export const SKIP_BODY = 1;

type Kind = 'request' | 'response';

interface Bound extends NodeParser {
  events: ParserEvents;
  pendingRaw: string[];
  pendingUrl: string;
  headDone: boolean;
}

function onHeaders(this: Bound, raw: string[], url: string): void {
  // Heads of more than 32 fields, trailers, and heads split across reads arrive in parts before (or after) the head.
  for (let i = 0; i < raw.length; i++) this.pendingRaw.push(raw[i]!);
  this.pendingUrl += url;
}

function onHeadersComplete(
  this: Bound,
  _major: number,
  minor: number,
  raw: string[] | undefined,
  method: number | undefined,
  url: string | undefined,
  status: number | undefined,
  _statusMessage: string | undefined,
  upgrade: boolean,
  keepAlive: boolean,
): number {
  let fields = raw;
  if (fields === undefined) {
    fields = this.pendingRaw;
    this.pendingRaw = [];
  } else if (this.pendingRaw.length > 0) {
    fields = this.pendingRaw.concat(fields);
    this.pendingRaw = [];
  }
  let target = url;
  if (target === undefined) target = this.pendingUrl;
  else if (this.pendingUrl) target = this.pendingUrl + target;
  this.pendingUrl = '';
  this.headDone = true;
  return this.events.head({
    versionMinor: minor,
    raw: fields,
    method: method === undefined ? '' : METHODS[method]!,
    url: target,
    status: status ?? 0,
    upgrade,
    keepAlive,
  });
}

function onBody(this: Bound, chunk: Buffer): void {
  this.events.body(chunk);
}

function onMessageComplete(this: Bound): void {
  const trailers = this.pendingRaw.length > 0 ? this.pendingRaw : undefined;
  this.pendingRaw = [];
  this.pendingUrl = '';
  this.headDone = false;
  this.events.complete(trailers);
}

const RESOURCE = Object.freeze({ type: 'TRELLIS_HTTP' });
const pool: Bound[] = [];
const POOL_MAX = 1000;

/** One connection's parser. */
export class Parser {
  private p: Bound | undefined;

  constructor(kind: Kind, events: ParserEvents, maxHeaderBytes: number) {
    const p = (pool.pop() ?? Parser.make()) as Bound;
    p.initialize(kind === 'request' ? HTTPParser.REQUEST : HTTPParser.RESPONSE, RESOURCE, maxHeaderBytes, HTTPParser.kLenientNone);
    p.events = events;
    p.pendingRaw = [];
    p.pendingUrl = '';
    p.headDone = false;
    this.p = p;
  }

  private static make(): Bound {
    const p = new HTTPParser() as Bound;
    p[HTTPParser.kOnHeaders] = onHeaders;
    p[HTTPParser.kOnHeadersComplete] = onHeadersComplete;
    p[HTTPParser.kOnBody] = onBody;
    p[HTTPParser.kOnMessageComplete] = onMessageComplete;
    return p;
  }

  /** Parses a chunk; returns the bytes consumed (fewer than given after an Upgrade head) or the error. */
  execute(chunk: Buffer): number | ParseError {
    return this.p ? this.p.execute(chunk) : 0;
  }

  /** The peer closed: a body delimited by the close ends here; an unfinished message is an error. */
  finish(): ParseError | undefined {
    const r = this.p?.finish();
    return r instanceof Error ? r : undefined;
  }

  /** Whether a message has begun and not ended (its head was parsed). */
  get inMessage(): boolean {
    return this.p?.headDone ?? false;
  }

  /** Gives the parser back (to the pool); it must not be used after. */
  release(): void {
    const p = this.p;
    if (!p) return;
    this.p = undefined;
    p.events = NOOP_EVENTS;
    p.pendingRaw = [];
    p.remove();
    if (pool.length < POOL_MAX) {
      p.free();
      pool.push(p);
    } else {
      // Let the parser's own stack unwind before its C++ side goes (release may be called from a callback).
      setImmediate(() => p.close());
    }
  }
}

const NOOP_EVENTS: ParserEvents = { head: () => 0, body: () => undefined, complete: () => undefined };
