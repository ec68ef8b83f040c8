// The in-memory byte pair of same-node L7 tunnels behaves as a TCP connection toward both ends: bytes in order with
// backpressure, end() as a FIN the other end reads while it may still write, and a destroy before both directions
// ended as a reset the other end sees as ECONNRESET.
import { createHash, randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { bytePair } from '../../agent/io/pair.js';
import { splice } from '../../agent/io/splice.js';

function readAll(s: Duplex): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.once('end', () => resolve(Buffer.concat(chunks)));
    s.once('error', reject);
  });
}

describe('bytePair', () => {
  it('carries 8 MB each way, in order, with a slow reader holding the writer back', async () => {
    const [a, b] = bytePair();
    const payload = randomBytes(8 * 1024 * 1024);
    // b reads slowly: a's writes must wait (write() returns false) rather than pile up without bound.
    let sawBackpressure = false;
    const got: Buffer[] = [];
    b.pause();
    const reader = (async () => {
      for await (const c of b) {
        got.push(c as Buffer);
        if (got.length % 16 === 0) await new Promise((r) => setImmediate(r));
      }
    })();
    for (let off = 0; off < payload.length; off += 64 * 1024) {
      if (!a.write(payload.subarray(off, off + 64 * 1024))) {
        sawBackpressure = true;
        await new Promise((r) => a.once('drain', r));
      }
      expect(a.writableLength + b.readableLength).toBeLessThanOrEqual(4 * 64 * 1024);
    }
    a.end();
    await reader;
    expect(sawBackpressure).toBe(true);
    expect(createHash('sha256').update(Buffer.concat(got)).digest('hex')).toBe(createHash('sha256').update(payload).digest('hex'));
  });

  it('passes a half-close: the other end reads to its end and still answers; both close without an error', async () => {
    const [a, b] = bytePair();
    const closed = (s: Duplex) => new Promise<Error | undefined>((r) => { s.once('error', r); s.once('close', () => r(undefined)); });
    const closes = Promise.all([closed(a), closed(b)]);
    const answer = readAll(a);
    const request = readAll(b);
    a.end('question');
    expect((await request).toString()).toBe('question');
    b.end('answer');
    expect((await answer).toString()).toBe('answer');
    expect(await closes).toEqual([undefined, undefined]);
  });

  it('turns a destroy before the end into a reset of the other end (ECONNRESET), through a splice too', async () => {
    const [a, b] = bytePair();
    const failed = new Promise<NodeJS.ErrnoException>((r) => b.once('error', r));
    a.write('partial');
    a.destroy();
    expect((await failed).code).toBe('ECONNRESET');

    // A splice between two pairs: a reset at one far end reaches the other far end as a reset, not a FIN.
    const [clientEnd, near] = bytePair();
    const [far, serverEnd] = bytePair();
    const outcome = splice(near, far, { downToUp: () => undefined, upToDown: () => undefined });
    const clientError = new Promise<NodeJS.ErrnoException>((r) => clientEnd.once('error', r));
    serverEnd.destroy();
    expect((await clientError).code).toBe('ECONNRESET');
    expect((await outcome).error).toBeDefined();
  });
});
