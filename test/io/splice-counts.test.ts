// Splice byte counts: told in batches while bytes flow, exact once the splice has resolved.
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { COUNT_FLUSH_MS, splice } from '../../agent/io/splice.js';

/** A connected pair of loopback sockets. */
async function pair(): Promise<{ a: net.Socket; b: net.Socket; server: net.Server }> {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const a = net.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port, allowHalfOpen: true });
  const b = await accepted;
  return { a, b, server };
}

describe('splice byte counts', () => {
  const servers: net.Server[] = [];
  afterEach(() => {
    for (const s of servers.splice(0)) s.close();
  });

  it('reports many chunks in a few calls, exactly by the time the splice resolves', async () => {
    // client -> [down | splice | up] -> sink: the sink echoes nothing back but a short reply at the end.
    const front = await pair();
    const back = await pair();
    servers.push(front.server, back.server);
    const calls = { down: 0, up: 0 };
    const bytes = { down: 0, up: 0 };
    const done = splice(front.b, back.a, {
      downToUp: (n) => {
        calls.down++;
        bytes.down += n;
      },
      upToDown: (n) => {
        calls.up++;
        bytes.up += n;
      },
    });
    back.b.on('data', () => undefined);
    back.b.on('end', () => back.b.end('bye'));
    front.a.on('data', () => undefined);
    let sent = 0;
    for (let i = 0; i < 400; i++) {
      const chunk = Buffer.alloc(100 + i);
      sent += chunk.length;
      front.a.write(chunk);
      // Separate reads on the splice's side, most of the time.
      if (i % 20 === 0) await new Promise((r) => setImmediate(r));
    }
    front.a.end();
    const outcome = await done;
    expect(outcome.error).toBeUndefined();
    expect(bytes).toEqual({ down: sent, up: 3 });
    expect(calls.down).toBeLessThan(5);
    expect(calls.up).toBe(1);
  });

  it('reports the bytes of a connection that stays open, within the flush interval', async () => {
    const front = await pair();
    const back = await pair();
    servers.push(front.server, back.server);
    let counted = 0;
    const done = splice(front.b, back.a, { downToUp: (n) => (counted += n), upToDown: () => undefined });
    back.b.on('data', () => undefined);
    front.a.write(Buffer.alloc(5000));
    const deadline = Date.now() + COUNT_FLUSH_MS * 8;
    while (counted < 5000 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(counted).toBe(5000);
    front.a.destroy();
    back.b.destroy();
    await done;
  });
});
