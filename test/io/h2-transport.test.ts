// An HTTP/2 session over a half-open transport, as the agent's are: the peer's FIN ends it (endWithTransport), where
// Node alone would keep it open and its new streams unanswered.
import http2 from 'node:http2';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { endWithTransport } from '../../agent/io/h2-transport.js';

describe('an HTTP/2 session over a half-open transport', () => {
  const server = http2.createServer((_req, res) => res.end('ok'));
  /** The client-facing side of each connection, piped to the server: ending it is a FIN from a peer gone without GOAWAY. */
  const fronts: net.Socket[] = [];
  const relay = net.createServer((front) => {
    fronts.push(front);
    const back = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    for (const s of [front, back]) s.on('error', () => undefined);
    front.pipe(back);
    back.pipe(front);
  });

  beforeAll(async () => {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  });
  afterAll(() => {
    for (const s of fronts) s.destroy();
    relay.close();
    server.close();
  });

  /** A session on a half-open socket through the relay, one request answered; its relay side is the last front. */
  const connected = async (watch: boolean) => {
    const socket = net.connect({ port: (relay.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
    const session = http2.connect('http://relay', { createConnection: () => socket });
    session.on('error', () => undefined);
    if (watch) endWithTransport(session, socket);
    await new Promise((resolve) => session.once('connect', resolve));
    const req = session.request({ ':path': '/' });
    req.resume();
    await new Promise((resolve) => req.once('end', resolve));
    return { session, socket, front: fronts.at(-1)! };
  };
  const peerEnds = (front: net.Socket) => {
    front.unpipe();
    front.end();
  };

  it('is destroyed, with its socket, when the peer ends the transport', async () => {
    const { session, socket, front } = await connected(true);
    const closed = new Promise((resolve) => session.once('close', resolve));
    peerEnds(front);
    await closed;
    expect(session.destroyed).toBe(true);
    expect(socket.destroyed).toBe(true);
  });

  it('without it, stays open after the peer ended (what the helper is for)', async () => {
    const { session, socket, front } = await connected(false);
    const ended = new Promise((resolve) => socket.once('end', resolve));
    peerEnds(front);
    await ended;
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(session.destroyed).toBe(false);
    session.destroy();
  });
});
