// The PING bound of HTTP/2 sessions the agent serves (HBONE on 15008, h2c from apps): real node:http2 on loopback.
import http2 from 'node:http2';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { limitPings } from '../../agent/io/ping-limit.js';

const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

/** A server whose sessions are bounded to a burst of 20 and 5/s; resolves with its port and what it saw. */
async function server() {
  const floods: number[] = [];
  const s = http2.createServer();
  s.on('session', (session) => limitPings(session, () => floods.push(Date.now()), { burst: 20, perSecond: 5 }));
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  closers.push(() => s.close());
  return { port: (s.address() as AddressInfo).port, floods };
}

function ping(client: http2.ClientHttp2Session): Promise<boolean> {
  return new Promise((resolve) => {
    try {
      client.ping((err) => resolve(!err));
    } catch {
      resolve(false);
    }
  });
}

describe('limitPings', () => {
  it('a client within the burst keeps its session; one far past it gets GOAWAY ENHANCE_YOUR_CALM, once', async () => {
    const { port, floods } = await server();
    const calm = http2.connect(`http://127.0.0.1:${port}`);
    closers.push(() => calm.destroy());
    await once(calm, 'connect');
    for (let i = 0; i < 15; i++) expect(await ping(calm)).toBe(true);
    expect(calm.closed || calm.destroyed).toBe(false);

    const flood = http2.connect(`http://127.0.0.1:${port}`);
    closers.push(() => flood.destroy());
    flood.on('error', () => undefined);
    await once(flood, 'connect');
    const goaway = new Promise<number>((resolve) => flood.once('goaway', (code) => resolve(code)));
    // Many more than the burst at once (Node allows 10 outstanding pings per session: several rounds).
    for (let round = 0; round < 10 && !flood.destroyed; round++) await Promise.all(Array.from({ length: 10 }, () => ping(flood)));
    expect(await goaway).toBe(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
    expect(floods).toHaveLength(1);
    expect(calm.closed || calm.destroyed).toBe(false);
  });
});
