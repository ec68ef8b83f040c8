// The load tools' HTTP/1.1 response reader: framing by content-length, chunked and close, fed in any pieces.
import { describe, expect, it } from 'vitest';
import { ResponseParser, type ResponseDone } from '../../../lab/load/http-response.js';

function parseAll(pieces: (string | Buffer)[], end = false): { done: ResponseDone[]; cut: boolean } {
  const done: ResponseDone[] = [];
  const p = new ResponseParser((r) => done.push(r));
  for (const piece of pieces) p.feed(Buffer.isBuffer(piece) ? piece : Buffer.from(piece, 'latin1'));
  const cut = end ? !p.end() : p.midResponse;
  return { done, cut };
}

const body = 'x'.repeat(1024);
const fixed = `HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nContent-Length: 1024\r\nKeep-Alive: timeout=65\r\n\r\n${body}`;
const chunked = 'HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n';

describe('ResponseParser', () => {
  it('reads back-to-back keep-alive responses in one chunk', () => {
    const { done, cut } = parseAll([fixed + fixed + chunked]);
    expect(done).toEqual([
      { status: 200, close: false },
      { status: 200, close: false },
      { status: 201, close: false },
    ]);
    expect(cut).toBe(false);
  });

  it('gives the same answer when fed one byte at a time', () => {
    const all = Buffer.from(fixed + chunked, 'latin1');
    const pieces = Array.from({ length: all.length }, (_, i) => all.subarray(i, i + 1));
    expect(parseAll(pieces).done.map((d) => d.status)).toEqual([200, 201]);
  });

  it('notices Connection: close and HTTP/1.0', () => {
    expect(parseAll(['HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n']).done).toEqual([{ status: 200, close: true }]);
    expect(parseAll(['HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n']).done).toEqual([{ status: 200, close: true }]);
    expect(parseAll(['HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n']).done).toEqual([{ status: 200, close: false }]);
  });

  it('skips interim responses and knows bodiless statuses', () => {
    const { done } = parseAll(['HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n']);
    expect(done.map((d) => d.status)).toEqual([204, 304]);
  });

  it('reads a body delimited by the close, and says when a close cuts a response', () => {
    expect(parseAll(['HTTP/1.1 200 OK\r\n\r\nsome bytes'], true)).toEqual({ done: [{ status: 200, close: false }], cut: false });
    expect(parseAll([fixed.slice(0, 200)], true)).toEqual({ done: [], cut: true });
    expect(parseAll(['HTTP/1.1 200'], true).cut).toBe(true);
  });

  it('rejects what is not an HTTP/1.x response', () => {
    expect(() => parseAll(['SSH-2.0-OpenSSH\r\n\r\n'])).toThrow(/not an HTTP\/1.x status line/);
    expect(() => parseAll(['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'])).toThrow(/bad chunk size/);
    expect(() => parseAll(['HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n'])).toThrow(/bad content-length/);
    expect(() => parseAll([`HTTP/1.1 200 OK\r\nX: ${'a'.repeat(70_000)}`])).toThrow(/longer than/);
  });
});
