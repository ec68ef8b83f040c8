// The lean HTTP/1.1 client (agent/l7/h1/client.ts) against raw upstream bytes: a response whose framing llhttp
// refuses (smuggling shapes) is never handed on, not even its head; a valid one is, body and all.
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { H1Client } from '../../agent/l7/h1/client.js';

const servers: net.Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

/** An upstream that answers every request with `reply`, then closes. */
async function upstream(reply: string): Promise<number> {
  const server = net.createServer((s) => {
    s.once('data', () => s.end(Buffer.from(reply, 'latin1')));
    s.on('error', () => undefined);
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as net.AddressInfo).port;
}

/** The response, or where it failed: `refused` before its head was handed on, `broken` after. */
async function fetchVia(reply: string): Promise<{ status: number; body: string } | { refused: string } | { broken: string }> {
  const port = await upstream(reply);
  const socket = net.connect(port, '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  const client = new H1Client('k', socket, { released: () => undefined, lost: () => undefined }, 8192);
  try {
    const sent = client.send({ method: 'GET', path: '/', authority: 'a', headers: {}, body: Buffer.alloc(0) });
    const res = await sent.catch((err: Error) => err);
    if (res instanceof Error) return { refused: res.message };
    const body = await res.body.collect(1 << 20).catch((err: Error) => err);
    if (body instanceof Error || body === undefined) return { broken: String(body) };
    return { status: res.status, body: body.toString() };
  } finally {
    client.destroy();
  }
}

describe('lean HTTP/1.1 client: responses', () => {
  it('hands on a valid chunked response', async () => {
    expect(await fetchVia('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n')).toEqual({ status: 200, body: 'ok' });
  });

  const refused: [string, string][] = [
    ['obfuscated TE', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\nContent-Length: 2\r\n\r\nok'],
    ['CL and TE', 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n'],
    ['two Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok'],
    ['chunk size not hex, in the head\'s read', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n'],
  ];
  for (const [name, reply] of refused) {
    it(`never hands on the head of a response it refuses: ${name}`, async () => {
      const out = await fetchVia(reply);
      expect(out).toHaveProperty('refused');
      expect((out as { refused: string }).refused).toMatch(/malformed response/);
    });
  }
});
