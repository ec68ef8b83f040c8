// The lean HTTP/1.1 server (agent/l7/h1/server.ts) against Node's own http.Server, on the same bytes: whatever
// Node's server refuses, the lean path refuses too (strictness never drops below llhttp's strict mode, which both
// run), checked on a corpus of malformed and smuggling requests and on random variations of request heads
// (fast-check). The lean path refuses more on purpose: absolute-form targets, unsafe paths (normalize.ts), CONNECT.
import http from 'node:http';
import net from 'node:net';
import fc from 'fast-check';
import { fuzz, fuzzTimeout } from '../support/fuzz.js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { H1Server } from '../../agent/l7/h1/server.js';
import { Metrics } from '../../agent/telemetry/metrics.js';

const MAX_HEADER_BYTES = 8192;

interface Verdict {
  /** The first status line's code, or 0 when the connection closed without one. */
  status: number;
  /** How many responses came back (pipelined requests). */
  responses: number;
}

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)));
}

/** Sends raw bytes, half-closes, and reads what comes back until the server closes or 400 ms pass. */
function exchange(port: number, bytes: Buffer): Promise<Verdict> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let out = '';
    const done = () => {
      s.destroy();
      const codes = [...out.matchAll(/HTTP\/1\.[01] (\d{3})/g)].map((m) => Number(m[1]));
      resolve({ status: codes[0] ?? 0, responses: codes.length });
    };
    const timer = setTimeout(done, 400);
    s.on('data', (c) => (out += c.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      done();
    });
    s.end(bytes);
  });
}

/** Sends raw bytes and returns everything read back until the server closes (or 400 ms). */
function rawExchange(port: number, bytes: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let out = '';
    const timer = setTimeout(() => s.destroy(), 400);
    s.on('data', (c) => (out += c.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
    s.end(bytes);
  });
}

describe('lean HTTP/1.1 server: never less strict than Node’s', () => {
  let nodePort: number;
  let leanPort: number;
  const servers: net.Server[] = [];
  const seen: string[] = [];

  beforeAll(async () => {
    const node = http.createServer({ maxHeaderSize: MAX_HEADER_BYTES, requireHostHeader: true }, (req, res) => {
      req.resume();
      req.on('end', () => res.end('ok'));
    });
    servers.push(node);
    nodePort = await listen(node);
    const lean = new H1Server<string>({
      limits: { maxHeaderBytes: MAX_HEADER_BYTES, maxHeaderCount: 100, headerTimeoutMs: 0, idleTimeoutMs: 0 },
      metrics: new Metrics({ defaultMetrics: false }),
      logger: pino({ level: 'silent' }),
      authorityOf: () => 'lean',
      onRequest: async (_ctx, req, res) => {
        seen.push(`${req.method} ${req.path}`);
        await req.body.collect(1 << 20);
        res.head(200, { 'content-length': '2' }, false);
        res.write(Buffer.from('ok'));
        res.end();
      },
      onUpgrade: async (_ctx, _req, _raw, socket) => void socket.destroy(),
    });
    const front = net.createServer({ allowHalfOpen: true }, (s) => lean.serve(s, 'ctx'));
    servers.push(front);
    leanPort = await listen(front);
  });

  afterAll(() => {
    for (const s of servers) s.close();
  });

  const refused = (v: Verdict) => v.status >= 400 || v.responses === 0;

  const corpus: [string, string][] = [
    ['CL and TE', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'],
    ['two Content-Length', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab'],
    ['Content-Length with a sign', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc'],
    ['bare CR in a header', 'GET / HTTP/1.1\r\nHost: a\rX-Bad: 1\r\n\r\n'],
    ['space before the colon', 'GET / HTTP/1.1\r\nHost : a\r\n\r\n'],
    ['obs-fold', 'GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n'],
    ['LF line endings', 'GET / HTTP/1.1\nHost: a\n\n'],
    ['TE: chunked, then gzip (TE.CL)', 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n'],
    ['obfuscated TE (xchunked)', 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n'],
    ['TE with a tab before the value', 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n'],
    ['chunk size overflow', 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\nab\r\n0\r\n\r\n'],
    ['chunk size not hex', 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n'],
    ['no Host in HTTP/1.1', 'GET / HTTP/1.1\r\nX-A: 1\r\n\r\n'],
    // Found by `npm run fuzz`: RFC 9112 section 6.1 makes it faulty framing.
    ['Transfer-Encoding in HTTP/1.0', 'GET / HTTP/1.0\r\nTransfer-Encoding:  chunked\r\n\r\n'],
    ['an expectation other than 100-continue', 'GET / HTTP/1.1\r\nExpect: a\r\nHost: a\r\n\r\n'],
    ['unknown version', 'GET / HTTP/1.7\r\nHost: a\r\n\r\n'],
    ['NUL in the target', 'GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n'],
    ['control char in a value', 'GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n'],
    ['header name with a slash', 'GET / HTTP/1.1\r\nHost: a\r\nX/A: 1\r\n\r\n'],
    ['oversized head', `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${'a'.repeat(MAX_HEADER_BYTES)}\r\n\r\n`],
    ['a valid request', 'GET /ok HTTP/1.1\r\nHost: a\r\n\r\n'],
    ['a valid chunked POST', 'POST /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'],
  ];

  for (const [name, text] of corpus) {
    it(`refuses what Node's server refuses: ${name}`, async () => {
      const bytes = Buffer.from(text, 'latin1');
      const [node, lean] = await Promise.all([exchange(nodePort, bytes), exchange(leanPort, bytes)]);
      if (refused(node)) expect(refused(lean), `Node: ${node.status}, lean: ${lean.status}`).toBe(true);
      if (node.status === 431) expect(lean.status).toBe(431);
      // The valid ones pass both.
      if (name.startsWith('a valid')) expect([node.status, lean.status]).toEqual([200, 200]);
    });
  }

  it('never hands a refused request to the handler; the valid one pipelined before it is served first', async () => {
    seen.length = 0;
    const smuggled = 'POST /bad HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n';
    const alone = await exchange(leanPort, Buffer.from(smuggled, 'latin1'));
    expect(alone).toEqual({ status: 400, responses: 1 });
    expect(seen).toEqual([]);
    const text = `GET /first HTTP/1.1\r\nHost: a\r\n\r\n${smuggled}GET /after HTTP/1.1\r\nHost: a\r\n\r\n`;
    const out = await rawExchange(leanPort, Buffer.from(text, 'latin1'));
    expect([...out.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => m[1])).toEqual(['200', '400']);
    expect(seen).toEqual(['GET /first']);
  });

  it('never accepts a random request head Node’s server refuses (property, seeded)', async () => {
    const token = fc.constantFrom('GET', 'POST', 'PUT', 'PROPFIND', 'FOO', 'G ET', 'get', '');
    const target = fc.constantFrom('/', '/a/b', '/a?b=c', '*', 'http://x/', '/a b', '/%41', '/a\tb', '');
    const version = fc.constantFrom('HTTP/1.1', 'HTTP/1.0', 'HTTP/1.2', 'HTTP/2.0', 'http/1.1', 'HTTP/1.1 ');
    const headerName = fc.constantFrom('Host', 'Content-Length', 'Transfer-Encoding', 'X-A', 'X A', 'X:A', 'Connection', 'Expect', '');
    const headerValue = fc.constantFrom('a', '0', '3', '-1', '1,1', 'chunked', 'gzip', 'chunked, gzip', ' chunked', 'close', 'keep-alive', 'a\rb', 'a\nb', '100-continue', '');
    const eol = fc.constantFrom('\r\n', '\r\n', '\r\n', '\n', '\r');
    const request = fc.record({
      method: token,
      target,
      version,
      headers: fc.array(fc.tuple(headerName, headerValue, eol), { maxLength: 6 }),
      end: eol,
      body: fc.constantFrom('', 'abc', '0\r\n\r\n', '3\r\nabc\r\n0\r\n\r\n'),
    });
    await fc.assert(
      fc.asyncProperty(request, async (r) => {
        const text = `${r.method} ${r.target} ${r.version}\r\n${r.headers.map(([n, v, e]) => `${n}: ${v}${e}`).join('')}${r.end}${r.body}`;
        const bytes = Buffer.from(text, 'latin1');
        const [node, lean] = await Promise.all([exchange(nodePort, bytes), exchange(leanPort, bytes)]);
        if (refused(node) && !refused(lean)) throw new Error(`Node refused (${node.status}) what the lean path accepted (${lean.status}): ${JSON.stringify(text)}`);
      }),
      fuzz(150, 4242),
    );
  }, fuzzTimeout());
});
