// Workload tools: the backend of the L7 tests. One port speaks HTTP/1.1, h2c (prior knowledge) and WebSocket,
// and every answer says who answered and what arrived, so routing, rewrites and header filters can be observed.
import { createHash } from 'node:crypto';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { dropOnError, serve, type ListenOptions, type ToolServer } from './server.js';

/** What the echo answers (JSON), for every request it serves itself. */
export interface EchoReply {
  name: string;
  method: string;
  /** The path as it arrived, without the query. */
  path: string;
  /** Query parameters; a repeated one is a list. */
  query: Record<string, string | string[]>;
  /** Host header, or :authority over HTTP/2. */
  host: string;
  /** Request headers, lowercase, without HTTP/2 pseudo-headers. */
  headers: Record<string, string | string[]>;
  protocol: 'http/1.1' | 'h2';
  bodyLength: number;
  /** This request's number at this server, from 1 (what --fail-every counts). */
  n: number;
}

export interface L7EchoOptions extends ListenOptions {
  name: string;
  /** Every Nth request is answered 503 (0 or absent: never). */
  failEvery?: number;
  /** Log one JSON line per request, protocol error and WebSocket, so tests can tell what reached the backend. */
  logRequests?: boolean;
}

/** Request headers that steer the answer (a test asks the backend to fail or to be slow for one request). */
export const ECHO_STATUS_HEADER = 'x-echo-status';
export const ECHO_DELAY_HEADER = 'x-echo-delay-ms';
/** Response header naming the server, also on answers whose body is not JSON. */
export const ECHO_NAME_HEADER = 'x-echo-name';

const MAX_DELAY_MS = 60_000;
/** RFC 6455 section 1.3: the GUID the accept key is derived with. */
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const MAX_WS_FRAME = 16 * 1024 * 1024;
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
/** Enough of the preface to tell it from any HTTP/1 request line ("PRI " is no HTTP/1 method). */
const PEEK_BYTES = 4;

export function startL7Echo(opts: L7EchoOptions): Promise<ToolServer> {
  let served = 0;
  const log = (entry: Record<string, unknown>): void => {
    if (opts.logRequests) process.stdout.write(`${JSON.stringify({ name: opts.name, ...entry })}\n`);
  };

  const handle = (req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse): void => {
    const n = ++served;
    let bodyLength = 0;
    req.on('data', (chunk: Buffer) => (bodyLength += chunk.length));
    req.on('end', () => {
      void answer(n, bodyLength).catch(() => res.destroy());
    });
    req.on('error', () => res.destroy());

    const answer = async (n: number, bodyLength: number): Promise<void> => {
      const url = new URL(req.url ?? '/', 'http://echo');
      const headers = plainHeaders(req.headers);
      const reply: EchoReply = {
        name: opts.name,
        method: req.method ?? '',
        path: url.pathname,
        query: queryOf(url.searchParams),
        host: (req.httpVersionMajor === 2 ? (req as http2.Http2ServerRequest).authority : req.headers.host) ?? '',
        headers,
        protocol: req.httpVersionMajor === 2 ? 'h2' : 'http/1.1',
        bodyLength,
        n,
      };
      let status = 200;
      const asked = Number(single(headers[ECHO_STATUS_HEADER]));
      if (Number.isInteger(asked) && asked >= 200 && asked <= 599) status = asked;
      if (opts.failEvery && n % opts.failEvery === 0) status = 503;
      const delay = Number(single(headers[ECHO_DELAY_HEADER]));
      if (delay > 0) await sleep(Math.min(delay, MAX_DELAY_MS));
      log({ event: 'request', n, method: reply.method, path: reply.path, protocol: reply.protocol, status, headers });
      if (res.destroyed) return;
      const body = req.method === 'HEAD' ? '' : JSON.stringify(reply);
      // Both response kinds have this shape; the union of their overloads is not callable as such.
      (res as http.ServerResponse).writeHead(status, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        [ECHO_NAME_HEADER]: opts.name,
      });
      res.end(body);
    };
  };

  const h1 = http.createServer(handle);
  // Longer than common client idle timeouts, so the client, not the server, closes idle connections.
  h1.keepAliveTimeout = 65_000;
  h1.on('clientError', (err: Error & { code?: string; rawPacket?: Buffer }, socket) => {
    // Recorded so a test can prove a malformed request never got this far.
    log({ event: 'client-error', code: err.code ?? 'EUNKNOWN', raw: err.rawPacket?.subarray(0, 512).toString('latin1') ?? '' });
    if (socket.writable) {
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    }
    socket.destroy();
  });
  h1.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    dropOnError(socket);
    const key = req.headers['sec-websocket-key'];
    if (req.headers.upgrade?.toLowerCase() !== 'websocket' || typeof key !== 'string') {
      socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    log({ event: 'websocket', path: req.url ?? '', headers: plainHeaders(req.headers) });
    const accept = createHash('sha1').update(key + WS_GUID).digest('base64');
    socket.write(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Accept: ${accept}\r\n${ECHO_NAME_HEADER}: ${opts.name}\r\n\r\n`,
    );
    echoFrames(socket, head);
  });

  const h2 = http2.createServer(handle);
  h2.on('sessionError', () => {});

  // One port for both: the first bytes say which protocol the client speaks.
  const front = net.createServer((socket) => {
    dropOnError(socket);
    const chunks: Buffer[] = [];
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      const seen = Buffer.concat(chunks);
      const peeked = seen.subarray(0, PEEK_BYTES);
      const isH2 = peeked.equals(H2_PREFACE.subarray(0, peeked.length));
      if (isH2 && seen.length < PEEK_BYTES) return;
      socket.off('data', onData);
      socket.pause();
      socket.unshift(seen);
      if (isH2) {
        h2.emit('connection', socket);
      } else {
        h1.emit('connection', socket);
        socket.resume();
      }
    };
    socket.on('data', onData);
  });
  return serve('l7-echo', front, opts);
}

/**
 * A WebSocket echo (RFC 6455) as small as it can be: every data frame comes back with its payload and opcode
 * (unmasked, as a server sends), a ping gets a pong, a close is answered with a close.
 */
function echoFrames(socket: net.Socket, head: Buffer): void {
  let buffered = head;
  const onData = (chunk: Buffer): void => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    for (;;) {
      const frame = parseFrame(buffered);
      if (frame === undefined) return;
      if (frame === 'too-large') {
        socket.destroy();
        return;
      }
      buffered = buffered.subarray(frame.size);
      if (frame.opcode === 0x8) {
        socket.end(encodeFrame(0x8, true, frame.payload));
        socket.off('data', onData);
        return;
      }
      if (frame.opcode === 0x9) socket.write(encodeFrame(0xa, true, frame.payload));
      else if (frame.opcode === 0xa) continue;
      else socket.write(encodeFrame(frame.opcode, frame.fin, frame.payload));
    }
  };
  socket.on('data', onData);
  if (head.length > 0) onData(Buffer.alloc(0));
}

interface Frame {
  fin: boolean;
  opcode: number;
  payload: Buffer;
  /** Bytes the frame took in the buffer. */
  size: number;
}

function parseFrame(b: Buffer): Frame | 'too-large' | undefined {
  if (b.length < 2) return undefined;
  const fin = (b[0]! & 0x80) !== 0;
  const opcode = b[0]! & 0x0f;
  const masked = (b[1]! & 0x80) !== 0;
  let length = b[1]! & 0x7f;
  let offset = 2;
  if (length === 126) {
    if (b.length < 4) return undefined;
    length = b.readUInt16BE(2);
    offset = 4;
  } else if (length === 127) {
    if (b.length < 10) return undefined;
    const big = b.readBigUInt64BE(2);
    if (big > BigInt(MAX_WS_FRAME)) return 'too-large';
    length = Number(big);
    offset = 10;
  }
  if (length > MAX_WS_FRAME) return 'too-large';
  const maskAt = offset;
  if (masked) offset += 4;
  if (b.length < offset + length) return undefined;
  const payload = Buffer.from(b.subarray(offset, offset + length));
  if (masked) for (let i = 0; i < payload.length; i++) payload[i]! ^= b[maskAt + (i % 4)]!;
  return { fin, opcode, payload, size: offset + length };
}

export function encodeFrame(opcode: number, fin: boolean, payload: Buffer, mask?: Buffer): Buffer {
  const lengthBytes = payload.length < 126 ? 0 : payload.length < 65536 ? 2 : 8;
  const header = Buffer.alloc(2 + lengthBytes + (mask ? 4 : 0));
  header[0] = (fin ? 0x80 : 0) | opcode;
  const maskBit = mask ? 0x80 : 0;
  if (lengthBytes === 0) header[1] = maskBit | payload.length;
  else if (lengthBytes === 2) {
    header[1] = maskBit | 126;
    header.writeUInt16BE(payload.length, 2);
  } else {
    header[1] = maskBit | 127;
    header.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  if (!mask) return Buffer.concat([header, payload]);
  mask.copy(header, 2 + lengthBytes);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i]! ^= mask[i % 4]!;
  return Buffer.concat([header, body]);
}

function plainHeaders(headers: http.IncomingHttpHeaders | http2.IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(headers)) {
    if (k.startsWith(':') || v === undefined) continue;
    out[k] = v;
  }
  return out;
}

function queryOf(params: URLSearchParams): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of params) {
    const prev = out[k];
    out[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return out;
}

function single(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}
