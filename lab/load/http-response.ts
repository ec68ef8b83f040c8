// Bench: a minimal HTTP/1.1 response reader for the load tools, which write requests as raw bytes and read
// responses off the socket themselves (Node's client costs more CPU than the proxies being measured).
import { LabError } from '../errors.js';

/** Bytes of a response head we accept before calling it malformed. */
const MAX_HEAD = 64 * 1024;
const CRLF = Buffer.from('\r\n');
const HEAD_END = Buffer.from('\r\n\r\n');

type State =
  | { kind: 'head' }
  | { kind: 'length'; left: number }
  | { kind: 'chunk-size' }
  | { kind: 'chunk-data'; left: number }
  | { kind: 'chunk-end' }
  | { kind: 'trailer' }
  | { kind: 'until-close' };

export interface ResponseDone {
  status: number;
  /** The server said Connection: close (or spoke HTTP/1.0 without keep-alive). */
  close: boolean;
}

/** Feed it the bytes of a connection; it calls back once per complete response, in order. */
export class ResponseParser {
  private state: State = { kind: 'head' };
  private pending: Buffer = Buffer.alloc(0);
  private status = 0;
  private close = false;

  constructor(private readonly onResponse: (r: ResponseDone) => void) {}

  /** Whether a response is partly read (a close now would cut it). */
  get midResponse(): boolean {
    return this.state.kind !== 'head' || this.pending.length > 0;
  }

  /** Throws LabError('EPROTO') on bytes that are not an HTTP/1.x response. */
  feed(chunk: Buffer): void {
    const buf = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = Buffer.alloc(0);
    let at = 0;
    while (at < buf.length) {
      const s = this.state;
      switch (s.kind) {
        case 'head': {
          const end = buf.indexOf(HEAD_END, at);
          if (end < 0) {
            if (buf.length - at > MAX_HEAD) throw protoError(`response head longer than ${MAX_HEAD} bytes`);
            this.pending = buf.subarray(at);
            return;
          }
          this.readHead(buf.toString('latin1', at, end));
          at = end + HEAD_END.length;
          break;
        }
        case 'length': {
          const take = Math.min(s.left, buf.length - at);
          at += take;
          s.left -= take;
          if (s.left === 0) this.done();
          break;
        }
        case 'chunk-size': {
          const eol = buf.indexOf(CRLF, at);
          if (eol < 0) {
            if (buf.length - at > 1024) throw protoError('chunk size line too long');
            this.pending = buf.subarray(at);
            return;
          }
          const size = parseInt(buf.toString('latin1', at, eol).split(';', 1)[0]!.trim(), 16);
          if (!Number.isFinite(size) || size < 0) throw protoError('bad chunk size');
          at = eol + 2;
          this.state = size === 0 ? { kind: 'trailer' } : { kind: 'chunk-data', left: size };
          break;
        }
        case 'chunk-data': {
          const take = Math.min(s.left, buf.length - at);
          at += take;
          s.left -= take;
          if (s.left === 0) this.state = { kind: 'chunk-end' };
          break;
        }
        case 'chunk-end': {
          if (buf.length - at < 2) {
            this.pending = buf.subarray(at);
            return;
          }
          if (buf[at] !== 13 || buf[at + 1] !== 10) throw protoError('chunk not followed by CRLF');
          at += 2;
          this.state = { kind: 'chunk-size' };
          break;
        }
        case 'trailer': {
          const eol = buf.indexOf(CRLF, at);
          if (eol < 0) {
            this.pending = buf.subarray(at);
            return;
          }
          // An empty line ends the trailer section.
          const empty = eol === at;
          at = eol + 2;
          if (empty) this.done();
          break;
        }
        case 'until-close':
          at = buf.length;
          break;
      }
    }
  }

  /** The connection ended: completes a response delimited by the close; false if one was cut short. */
  end(): boolean {
    if (this.state.kind === 'until-close') {
      this.done();
      return true;
    }
    return !this.midResponse;
  }

  private readHead(head: string): void {
    const lines = head.split('\r\n');
    const m = /^HTTP\/1\.([01]) (\d{3})/.exec(lines[0] ?? '');
    if (!m) throw protoError(`not an HTTP/1.x status line: ${JSON.stringify((lines[0] ?? '').slice(0, 60))}`);
    const status = Number(m[2]);
    let length: number | undefined;
    let chunked = false;
    let connection = '';
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!;
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      if (name === 'content-length') length = Number(value);
      else if (name === 'transfer-encoding') chunked = value.toLowerCase().split(',').map((v) => v.trim()).includes('chunked');
      else if (name === 'connection') connection = value.toLowerCase();
    }
    // Interim responses (100 Continue...) come before the real one.
    if (status >= 100 && status < 200) return;
    this.status = status;
    this.close = connection.includes('close') || (m[1] === '0' && !connection.includes('keep-alive'));
    if (status === 204 || status === 304) this.done();
    else if (chunked) this.state = { kind: 'chunk-size' };
    else if (length !== undefined) {
      if (!Number.isSafeInteger(length) || length < 0) throw protoError('bad content-length');
      if (length === 0) this.done();
      else this.state = { kind: 'length', left: length };
    } else this.state = { kind: 'until-close' };
  }

  private done(): void {
    this.state = { kind: 'head' };
    this.onResponse({ status: this.status, close: this.close });
  }
}

function protoError(what: string): LabError {
  return new LabError('EPROTO', `malformed HTTP response: ${what}`);
}
