// The HTTP/1.1 parser names every method llhttp parses by its own id: Node's list holds HTTP's methods only, so
// QUERY (id 46), PRI and RTSP's methods (34-45) would otherwise come out wrong or empty, and a policy on methods
// or the request forwarded would see another method than the client sent.
import { describe, expect, it } from 'vitest';
import { METHODS, Parser, type Head } from '../../agent/l7/h1/parser.js';

function methodOf(line: string): string | undefined {
  let head: Head | undefined;
  const parser = new Parser('request', { head: (h) => ((head = h), 0), body: () => undefined, complete: () => undefined }, 8192);
  parser.execute(Buffer.from(`${line}\r\nhost: a\r\ncontent-length: 0\r\n\r\n`, 'latin1'));
  parser.release();
  return head?.method;
}

describe('h1 parser: method names', () => {
  it.each(['GET', 'DELETE', 'PROPFIND', 'MKCOL', 'PATCH', 'SOURCE', 'QUERY'])('%s', (m) => {
    expect(methodOf(`${m} /x HTTP/1.1`)).toBe(m);
  });

  // llhttp takes RTSP's methods with an RTSP version only; named as sent, never empty.
  it.each(['DESCRIBE', 'SET_PARAMETER', 'FLUSH'])('%s', (m) => {
    expect(methodOf(`${m} /x HTTP/1.1`)).toBeUndefined();
    expect(methodOf(`${m} /x RTSP/1.0`)).toBe(m);
  });

  it('has one name per llhttp id, QUERY at 46', () => {
    expect(METHODS).toHaveLength(47);
    expect(METHODS[34]).toBe('PRI');
    expect(METHODS[46]).toBe('QUERY');
    expect(new Set(METHODS).size).toBe(47);
  });
});
