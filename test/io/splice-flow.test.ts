// Splice flow: DATA from an HTTP/2 stream reaches a socket in few writes, a side that cannot take more stops
// the other from reading with no more than a few high-water marks held between them, and an idle splice is small.
import { createHash, randomBytes } from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';
import v8 from 'node:v8';
import vm from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import { splice } from '../../agent/io/splice.js';

const noCounts = { downToUp: () => undefined, upToDown: () => undefined };

function listen(server: net.Server | http2.Http2Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)));
}

/** A server that digests everything it receives and answers the digest after the peer's FIN. */
function sink(): net.Server {
  return net.createServer({ allowHalfOpen: true }, (s) => {
    const h = createHash('sha256');
    let n = 0;
    s.on('data', (d: Buffer) => {
      h.update(d);
      n += d.length;
    });
    s.on('end', () => s.end(`${h.digest('hex')} ${n}`));
  });
}

describe('splice flow', () => {
  const servers: Array<net.Server | http2.Http2Server> = [];
  afterEach(() => {
    for (const s of servers.splice(0)) s.close();
  });

  it('writes the DATA an HTTP/2 stream delivers in one turn of the loop to a socket in one write', async () => {
    const app = sink();
    servers.push(app);
    const appPort = await listen(app);
    // What the socket was asked to write, in calls (each is one write(2) or writev(2)), and the chunks the stream delivered.
    const seen = { writes: 0, chunks: 0 };
    const h2 = http2.createServer({ settings: { initialWindowSize: 1 << 20 } });
    servers.push(h2);
    h2.on('stream', (stream) => {
      const up = net.connect({ host: '127.0.0.1', port: appPort, allowHalfOpen: true });
      const writev = up._writev!.bind(up);
      const write = up._write.bind(up);
      up._writev = (chunks, cb) => {
        seen.writes++;
        writev(chunks, cb);
      };
      up._write = (chunk, encoding, cb) => {
        seen.writes++;
        write(chunk, encoding, cb);
      };
      stream.on('data', () => seen.chunks++);
      stream.respond({ ':status': 200 });
      void splice(stream, up, noCounts);
    });
    const port = await listen(h2);
    const session = http2.connect(`http://127.0.0.1:${port}`);
    try {
      const req = session.request({ ':method': 'POST', ':path': '/' });
      const payload = randomBytes(4 << 20);
      let reply = '';
      req.setEncoding('utf8');
      req.on('data', (d: string) => (reply += d));
      const ended = new Promise((resolve) => req.on('end', resolve));
      // Small writes, as an app would make them: the session packs them into 16 KB DATA frames.
      for (let off = 0; off < payload.length; off += 4096) req.write(payload.subarray(off, off + 4096));
      req.end();
      await ended;
      expect(reply).toBe(`${createHash('sha256').update(payload).digest('hex')} ${payload.length}`);
      // 4 MB in 16 KB frames is 256 chunks at least; a write per chunk would be as many system calls.
      expect(seen.chunks).toBeGreaterThanOrEqual(256);
      expect(seen.writes).toBeLessThan(seen.chunks / 3);
    } finally {
      session.destroy();
    }
  });

  it('stops reading a side whose peer cannot take more, holds a few high-water marks at most, and loses nothing', async () => {
    const front = net.createServer({ allowHalfOpen: true });
    const back = net.createServer({ allowHalfOpen: true });
    servers.push(front, back);
    const [frontPort, backPort] = await Promise.all([listen(front), listen(back)]);
    const accepted = {
      front: new Promise<net.Socket>((resolve) => front.once('connection', resolve)),
      back: new Promise<net.Socket>((resolve) => back.once('connection', resolve)),
    };
    const client = net.connect({ host: '127.0.0.1', port: frontPort, allowHalfOpen: true });
    const down = await accepted.front;
    const up = net.connect({ host: '127.0.0.1', port: backPort, allowHalfOpen: true });
    const server = await accepted.back;
    // The server reads nothing for now: everything piles up between the client and it.
    server.pause();
    const done = splice(down, up, noCounts);
    const payload = randomBytes(48 << 20);
    client.end(payload);
    // Wait until the proxy has stopped reading: its read side stays paused and the client still has bytes to send.
    let held = 0;
    for (let i = 0; i < 100; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      held = Math.max(held, up.writableLength);
      if (down.isPaused() && client.writableLength > 0) break;
    }
    expect(down.isPaused()).toBe(true);
    expect(client.writableLength).toBeGreaterThan(0);
    // Bounded: four high-water marks and the chunk that crossed them.
    expect(held).toBeLessThanOrEqual(4 * up.writableHighWaterMark + 64 * 1024);
    const digest = createHash('sha256');
    let received = 0;
    server.on('data', (d: Buffer) => {
      digest.update(d);
      received += d.length;
    });
    const ended = new Promise((resolve) => server.on('end', resolve));
    server.resume();
    await ended;
    expect(received).toBe(payload.length);
    expect(digest.digest('hex')).toBe(createHash('sha256').update(payload).digest('hex'));
    server.end();
    client.on('data', () => undefined);
    await done;
    client.destroy();
  });

  it('holds about a kilobyte of heap per idle splice (no closure per listener)', async () => {
    const server = net.createServer({ allowHalfOpen: true });
    servers.push(server);
    const port = await listen(server);
    const accepted: net.Socket[] = [];
    server.on('connection', (s) => accepted.push(s));
    const n = 500;
    // A few splices first, so that compiling the code they run (bytecode, feedback, optimized code: all on the
    // heap, and when it lands depends on the machine's load) is not counted per splice.
    const warm = 50;
    const clients: net.Socket[] = [];
    for (let i = 0; i < 2 * (n + warm); i++) {
      const c = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
      await new Promise((resolve) => c.once('connect', resolve));
      clients.push(c);
    }
    while (accepted.length < 2 * (n + warm)) await new Promise((resolve) => setTimeout(resolve, 10));
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const heap = () => {
      gc();
      gc();
      return process.memoryUsage().heapUsed;
    };
    const done: Promise<unknown>[] = [];
    const pair = (i: number) => done.push(splice(accepted[2 * i]!, accepted[2 * i + 1]!, noCounts));
    for (let i = 0; i < warm; i++) pair(i);
    const before = heap();
    for (let i = warm; i < warm + n; i++) pair(i);
    const perSplice = (heap() - before) / n;
    // Closures per listener and per side made this ~2.1 KB.
    expect(perSplice).toBeLessThan(1400);
    for (const c of clients) c.destroy();
    await Promise.all(done);
  });
});
