// The destination agent's HTTP/2 client to apps (H2Sessions): one session per (source pod, endpoint), and a stream the
// app refuses unprocessed sent once more on a session of its own. Real node:http2 on loopback.
import http2 from 'node:http2';
import net, { type AddressInfo } from 'node:net';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { H2Sessions } from '../../agent/l7/h2/client.js';
import { Body } from '../../agent/l7/body.js';
import type { Workload } from '../../agent/state/workload.js';

const pod = { key: 'shop/web' } as Workload;
const servers: http2.Http2Server[] = [];
const clients: H2Sessions[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
});

/** An app whose first session refuses every stream with `code`; later sessions answer 200 with the session's number. */
async function app(code: number) {
  const server = http2.createServer();
  let sessions = 0;
  const seen: string[] = [];
  server.on('session', (session) => {
    const n = ++sessions;
    session.on('stream', (stream, headers) => {
      stream.on('error', () => undefined);
      seen.push(`${n} ${headers[':method']} ${headers[':path']}`);
      if (n === 1) return void stream.close(code);
      stream.respond({ ':status': 200 });
      stream.end(`session ${n}`);
    });
  });
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as AddressInfo).port, seen };
}

async function text(body: Body): Promise<string> {
  return (await body.collect(1 << 20))!.toString();
}

describe('H2Sessions', () => {
  for (const [name, code] of [['REFUSED_STREAM', http2.constants.NGHTTP2_REFUSED_STREAM], ['ENHANCE_YOUR_CALM', http2.constants.NGHTTP2_ENHANCE_YOUR_CALM]] as const) {
    it(`sends a request the app refused with ${name} once more, on a new session, and leaves the refusing one`, async () => {
      const { port, seen } = await app(code);
      const sessions = new H2Sessions({ open: async () => net.connect(port, '127.0.0.1'), maxHeaderListSize: 65536 });
      clients.push(sessions);
      const ep = { ip: '127.0.0.1', port };
      const first = await sessions.send(pod, ep, { method: 'POST', path: '/a', authority: 'app', headers: {}, body: Buffer.from('hello') });
      expect(first.status).toBe(200);
      expect(await text(first.body)).toBe('session 2');
      const second = await sessions.send(pod, ep, { method: 'GET', path: '/b', authority: 'app', headers: {}, body: Buffer.alloc(0) });
      expect(await text(second.body)).toBe('session 2');
      expect(seen).toEqual(['1 POST /a', '2 POST /a', '2 GET /b']);
    });
  }

  it('does not send again a request whose streamed body it no longer holds: the refusal is the answer', async () => {
    const { port, seen } = await app(http2.constants.NGHTTP2_REFUSED_STREAM);
    const sessions = new H2Sessions({ open: async () => net.connect(port, '127.0.0.1'), maxHeaderListSize: 65536 });
    clients.push(sessions);
    const body = new Body({ resume: () => undefined, cancel: () => undefined }, undefined);
    body.push(Buffer.from('part'));
    await expect(sessions.send(pod, { ip: '127.0.0.1', port }, { method: 'POST', path: '/c', authority: 'app', headers: {}, body })).rejects.toMatchObject({ kind: 'reset' });
    expect(seen).toEqual(['1 POST /c']);
  });
});
