// The ClientHello SNI reader (agent/l7/sni.ts) and the egress name peek (agent/l7/destination-name.ts): real
// ClientHellos from Node's TLS client give their server name, whole, cut anywhere, in several TLS records or TCP
// segments; truncated, oversized, garbled and random bytes give no name and never throw (properties, fast-check);
// the peek over real loopback sockets reads a hello sent in pieces, gives up on a silent client at its timeout,
// and consumes nothing.
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nameFromHead, peekDestinationName, type DestinationName } from '../../agent/l7/destination-name.js';
import { MAX_HELLO_BYTES, normalizeHostName, readClientHello } from '../../agent/l7/sni.js';
import { fuzz, fuzzTimeout } from '../support/fuzz.js';

/** The first flight of Node's TLS client (its ClientHello record), captured from a socket that never answers. */
async function clientHello(opts: tls.ConnectionOptions): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let done!: () => void;
  const written = new Promise<void>((r) => (done = r));
  const wire = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      done();
      cb();
    },
  });
  const client = tls.connect({ socket: wire, rejectUnauthorized: false, ...opts });
  client.on('error', () => undefined);
  await written;
  client.destroy();
  return Buffer.concat(chunks);
}

/** The handshake message of a one-record hello, re-framed as TLS records of the given payload sizes. */
function reframe(hello: Buffer, sizes: readonly number[]): Buffer {
  const msg = hello.subarray(5, 5 + hello.readUInt16BE(3));
  const out: Buffer[] = [];
  let i = 0;
  for (let k = 0; i < msg.length; k++) {
    const size = Math.max(1, Math.min(sizes[k % sizes.length]!, msg.length - i));
    const header = Buffer.from([0x16, 0x03, 0x01, size >> 8, size & 0xff]);
    out.push(header, msg.subarray(i, i + size));
    i += size;
  }
  return Buffer.concat(out);
}

const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$/);
const hostName = fc.array(label, { minLength: 2, maxLength: 4 }).map((l) => l.join('.')).filter((n) => normalizeHostName(n) === n);

let hello: Buffer;
let noSni: Buffer;

beforeAll(async () => {
  hello = await clientHello({ host: '127.0.0.1', servername: 'api.example.com' });
  noSni = await clientHello({ host: '127.0.0.1' });
});

describe('readClientHello', () => {
  it('reads the server name of a real ClientHello, and none from one without SNI', () => {
    expect(readClientHello(hello)).toEqual({ kind: 'sni', name: 'api.example.com' });
    expect(readClientHello(noSni)).toEqual({ kind: 'none', reason: 'the ClientHello names no server' });
  });

  it('asks for more on every cut of the hello, and gives no name once the client has ended', () => {
    for (let n = 0; n < hello.length; n++) {
      expect(readClientHello(hello.subarray(0, n))).toEqual({ kind: 'more' });
      expect(readClientHello(hello.subarray(0, n), true).kind).toBe('none');
    }
  });

  it('reads a hello spread over several TLS records', () => {
    expect(readClientHello(reframe(hello, [1]))).toEqual({ kind: 'sni', name: 'api.example.com' });
    expect(readClientHello(reframe(hello, [3, 100, 7]))).toEqual({ kind: 'sni', name: 'api.example.com' });
  });

  it('says bytes that are not a handshake record are not TLS', () => {
    expect(readClientHello(Buffer.from('GET / HTTP/1.1\r\n'))).toEqual({ kind: 'not-tls' });
    expect(readClientHello(Buffer.from([0x17, 0x03, 0x03, 0, 5]))).toEqual({ kind: 'not-tls' });
  });

  it('gives no name for a hello larger than its bound, however it is framed', async () => {
    // A server name of 200 characters (valid) padded by a long session of ALPN names past 16 KiB.
    const alpn = Array.from({ length: 700 }, (_, i) => `proto-${String(i).padStart(16, '0')}`);
    const big = await clientHello({ host: '127.0.0.1', servername: 'big.example.com', ALPNProtocols: alpn });
    expect(big.length).toBeGreaterThan(MAX_HELLO_BYTES);
    const r = readClientHello(big);
    expect(r.kind).toBe('none');
    expect(readClientHello(big.subarray(0, MAX_HELLO_BYTES)).kind).toBe('none');
  });

  it('gives no name for two host names, two server_name extensions, a name that is an address or not a DNS name', () => {
    const at = hello.indexOf(Buffer.from('api.example.com'));
    const swap = (name: string) => {
      const b = Buffer.from(hello);
      b.write(name, at, 'latin1');
      return b;
    };
    // Same length as api.example.com (15 bytes), so every length field stays right.
    expect(readClientHello(swap('10.1.2.3.4.5.67'))).toMatchObject({ kind: 'none' });
    expect(readClientHello(swap('api.exam\0le.com'))).toMatchObject({ kind: 'none' });
    expect(readClientHello(swap('api.exam le.com'))).toMatchObject({ kind: 'none' });
    expect(readClientHello(swap('API.EXAMPLE.COM'))).toEqual({ kind: 'sni', name: 'api.example.com' });
  });

  it('reads any valid host name from a real hello, cut into any records', async () => {
    const names = fc.sample(hostName, { numRuns: 20, seed: 7 });
    const hellos = await Promise.all(names.map((n) => clientHello({ host: '127.0.0.1', servername: n })));
    fc.assert(
      fc.property(fc.integer({ min: 0, max: names.length - 1 }), fc.array(fc.integer({ min: 1, max: 400 }), { minLength: 1, maxLength: 5 }), (i, sizes) => {
        expect(readClientHello(reframe(hellos[i]!, sizes))).toEqual({ kind: 'sni', name: names[i] });
      }),
      fuzz(200, 11),
    );
  });

  it('never throws and never names a server on truncated, garbled or random bytes (property)', () => {
    const check = (b: Buffer, ended: boolean) => {
      const r = readClientHello(b, ended);
      if (r.kind === 'sni') expect(normalizeHostName(r.name)).toBe(r.name);
      return r;
    };
    fc.assert(
      fc.property(
        fc.array(fc.record({ at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 8 }),
        fc.nat(),
        fc.boolean(),
        (flips, cut, ended) => {
          const b = Buffer.from(hello);
          for (const f of flips) b[f.at % b.length] = f.byte;
          check(b, ended);
          check(b.subarray(0, cut % (b.length + 1)), ended);
          // Truncated and ended: never a name, whatever was cut.
          if (cut % hello.length < hello.length - 1) expect(check(hello.subarray(0, cut % hello.length), true).kind).toBe('none');
        },
      ),
      fuzz(2000, 12),
    );
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 600 }), fc.boolean(), (bytes, ended) => {
        const b = Buffer.from(bytes);
        check(b, ended);
        // The same random tail behind a handshake record header.
        const framed = Buffer.concat([Buffer.from([0x16, 0x03, 0x01, bytes.length >> 8, bytes.length & 0xff]), b]);
        expect(['more', 'none', 'sni']).toContain(check(framed, ended).kind);
      }),
      fuzz(2000, 13),
    );
  }, fuzzTimeout());
});

describe('nameFromHead (what egress is named by)', () => {
  const http = (s: string) => Buffer.from(s, 'latin1');
  it('takes the HTTP Host without its port, or the absolute target when Host agrees', () => {
    expect(nameFromHead(http('GET / HTTP/1.1\r\nHost: Api.Example.com:8080\r\n\r\n'), false)).toEqual({ name: 'api.example.com', by: 'host', protocol: 'http1' });
    expect(nameFromHead(http('GET http://a.example.com/x HTTP/1.1\r\nhost: a.example.com\r\n\r\n'), false)).toEqual({ name: 'a.example.com', by: 'host', protocol: 'http1' });
  });

  it('waits for the whole head, then gives no name for a missing, doubled, disagreeing or address Host', () => {
    expect(nameFromHead(http('GET / HTTP/1.1\r\nHost: a.exa'), false)).toBeUndefined();
    expect(nameFromHead(http('GET / HTTP/1.1\r\nHost: a.exa'), 'timeout')).toMatchObject({ protocol: 'http1', problem: expect.stringContaining('no complete request head') });
    const none = (s: string) => nameFromHead(http(s), false) as DestinationName;
    expect(none('GET / HTTP/1.1\r\nAccept: */*\r\n\r\n')).toEqual({ protocol: 'http1', problem: 'no Host header' });
    expect(none('GET / HTTP/1.1\r\nHost: a.example.com\r\nHost: b.example.com\r\n\r\n').problem).toBe('two Host headers');
    expect(none('GET http://b.example.com/ HTTP/1.1\r\nHost: a.example.com\r\n\r\n').problem).toMatch(/different hosts/);
    expect(none('GET / HTTP/1.1\r\nHost: 198.18.0.10\r\n\r\n').name).toBeUndefined();
    expect(none('GET / HTTP/1.1\r\nHost: user@a.example.com\r\n\r\n').name).toBeUndefined();
  });

  it('names nothing for opaque bytes, the HTTP/2 preface, or a client that ended silent', () => {
    expect(nameFromHead(http('SSH-2.0-OpenSSH\r\n'), false)).toEqual({ protocol: 'tcp' });
    expect(nameFromHead(http('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), false)).toEqual({ protocol: 'h2' });
    expect(nameFromHead(Buffer.alloc(0), 'end')).toEqual({ protocol: 'tcp' });
    expect(nameFromHead(Buffer.alloc(0), false)).toBeUndefined();
  });
});

describe('peekDestinationName (loopback sockets)', () => {
  let server: net.Server;
  let port: number;
  let next: (r: { found: DestinationName & { timedOut: boolean }; ms: number; rest: Promise<Buffer> }) => void;
  const TIMEOUT_MS = 200;

  beforeAll(async () => {
    server = net.createServer({ allowHalfOpen: true }, (socket) => {
      const t0 = performance.now();
      void peekDestinationName(socket, TIMEOUT_MS).then((found) => {
        const ms = performance.now() - t0;
        const rest = new Promise<Buffer>((resolve) => {
          const chunks: Buffer[] = [];
          socket.on('data', (c: Buffer) => chunks.push(c));
          socket.on('end', () => (resolve(Buffer.concat(chunks)), socket.end()));
        });
        next({ found, ms, rest });
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as net.AddressInfo).port;
  });
  afterAll(() => server.close());

  async function run(talk: (s: net.Socket) => Promise<void>) {
    const peeked = new Promise<{ found: DestinationName & { timedOut: boolean }; ms: number; rest: Promise<Buffer> }>((r) => (next = r));
    const s = net.connect(port, '127.0.0.1');
    s.setNoDelay(true);
    await new Promise<void>((r) => s.once('connect', r));
    await talk(s);
    const got = await peeked;
    s.end();
    return { ...got, rest: await got.rest };
  }
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it('reads a ClientHello sent in several TCP segments, and consumes none of it', async () => {
    const r = await run(async (s) => {
      for (const cut of [[0, 3], [3, 60], [60, 200], [200, hello.length]] as const) {
        s.write(hello.subarray(cut[0], cut[1]));
        await sleep(15);
      }
    });
    expect(r.found).toEqual({ name: 'api.example.com', by: 'sni', protocol: 'tls', timedOut: false });
    expect(r.rest.equals(hello)).toBe(true);
  });

  it('gives up on a silent client at its timeout, and on a hello cut short when the client ends', async () => {
    const silent = await run(async () => undefined);
    expect(silent.found).toEqual({ protocol: 'tcp', timedOut: true });
    expect(silent.ms).toBeGreaterThanOrEqual(TIMEOUT_MS - 5);
    const cut = await run(async (s) => {
      s.end(hello.subarray(0, 40));
    });
    expect(cut.found).toMatchObject({ protocol: 'tls', timedOut: false, problem: 'the ClientHello is cut short' });
    expect(cut.found.name).toBeUndefined();
    expect(cut.rest.equals(hello.subarray(0, 40))).toBe(true);
  });
});
