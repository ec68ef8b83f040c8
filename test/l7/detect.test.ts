// Protocol sniffing (agent/l7/detect.ts) in process: classify() on a table of first bytes, split at every offset;
// seeded properties (any token method makes a request line; whatever the agent's own HTTP/1.1 parser takes as a
// request is never carried as opaque TCP); sniff() on real loopback sockets, byte by byte, past the bound, and at
// the timeout.
import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import fc from 'fast-check';
import { fuzz } from '../support/fuzz.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { classify, H2_PREFACE, SNIFF_LIMIT, selectProtocol, sniff, type SniffResult } from '../../agent/l7/detect.js';
import { PassThrough } from 'node:stream';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { Parser } from '../../agent/l7/h1/parser.js';

const line = (method: string, target = '/x', version = 'HTTP/1.1') => `${method} ${target} ${version}\r\n`;

// [what, first bytes (latin1), verdict]
const CASES: [string, string, 'http1' | 'h2' | 'tcp'][] = [
  // RFC 9110's methods, and PATCH.
  ...['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'].map((m): [string, string, 'http1'] => [m, line(m), 'http1']),
  // Other registered methods, and extension methods: any token.
  ...['PROPFIND', 'PROPPATCH', 'MKCOL', 'COPY', 'MOVE', 'LOCK', 'UNLOCK', 'REPORT', 'SEARCH', 'QUERY', 'PURGE', 'M-SEARCH'].map(
    (m): [string, string, 'http1'] => [m, line(m), 'http1'],
  ),
  ['extension method FOO', line('FOO'), 'http1'],
  ['extension method of every tchar', line("!#$%&'*+-.^_`|~09AZaz"), 'http1'],
  // Methods are case-sensitive, but "get" is still a token: another method, which an app's parser (Go's) takes.
  ['lowercase method', line('get'), 'http1'],
  ['asterisk form', line('OPTIONS', '*'), 'http1'],
  ['absolute form', line('GET', 'http://api.shop/x?y=1'), 'http1'],
  ['HTTP/1.0', line('GET', '/', 'HTTP/1.0'), 'http1'],
  ['HTTP/1.9 (the parser answers 400)', line('PROPFIND', '/', 'HTTP/1.9'), 'http1'],
  ['HTTP/2.0 in a request line (llhttp takes it)', line('GET', '/', 'HTTP/2.0'), 'http1'],
  ['HTTP/0.9 in a request line (llhttp takes it)', line('GET', '/', 'HTTP/0.9'), 'http1'],
  ['a bare LF ends the line', 'PROPFIND /x HTTP/1.1\n', 'http1'],
  ['a CR ends it as far as a sniff looks', 'PROPFIND /x HTTP/1.1\rX', 'http1'],
  ['empty lines before the request line', '\r\n\r\n\nPROPFIND /x HTTP/1.1\r\n', 'http1'],
  ['several SP between the parts', 'PROPFIND   /x   HTTP/1.1\r\n', 'http1'],
  ['HTAB between the parts', 'PROPFIND\t/x\tHTTP/1.1\r\n', 'http1'],
  ['obs-text in the target (the HTTP layer answers 400)', 'GET /caf\xe9 HTTP/1.1\r\n', 'http1'],
  // No version (HTTP/0.9's form, headers still follow in llhttp): only for methods llhttp knows.
  ['no version, a known method', 'GET /x\r\nx-forwarded-client-cert: forged\r\n\r\n', 'http1'],
  ['no version, PROPFIND', 'PROPFIND /x\n', 'http1'],
  ['no version, an unknown method', 'FOO /x\r\n', 'tcp'],
  ['memcached get (no version, not a method llhttp knows)', 'get user:1\r\n', 'tcp'],
  ['no version, an RTSP method (llhttp knows them all)', 'SETUP /x\r\n', 'http1'],
  ['no version, PRI', 'PRI /x\r\n', 'http1'],
  ['RTSP version, an HTTP method', 'OPTIONS rtsp://cam/1 RTSP/1.0\r\n', 'http1'],
  ['RTSP version, an RTSP method', 'DESCRIBE rtsp://cam/1 RTSP/1.0\r\n', 'http1'],
  ['RTSP version, a method llhttp does not know', 'FOO rtsp://cam/1 RTSP/1.0\r\n', 'tcp'],
  ['ICE version', 'SOURCE /live ICE/1.0\r\n', 'http1'],
  ['SIP', 'INVITE sip:bob@example.com SIP/2.0\r\n', 'tcp'],
  ['HTTP/2 preface', H2_PREFACE.toString('latin1'), 'h2'],
  ['preface then not', 'PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n', 'http1'],
  // Not a request line.
  ['CTL in the method', 'GE\x01T /x HTTP/1.1\r\n', 'tcp'],
  ['NUL in the method', 'G\x00ET /x HTTP/1.1\r\n', 'tcp'],
  ['DEL in the method', 'GE\x7fT /x HTTP/1.1\r\n', 'tcp'],
  ['a separator first', ' GET /x HTTP/1.1\r\n', 'tcp'],
  ['no target, a method llhttp knows (it takes "CONNECT \\r\\n")', 'GET \r\n', 'http1'],
  ['no target, another method', 'stats \r\n', 'tcp'],
  ['CTL in the target', 'GET /a\x01b HTTP/1.1\r\n', 'tcp'],
  ['a third word that is no version', 'GET /a b HTTP/1.1\r\n', 'tcp'],
  ['lowercase protocol name', 'GET /x http/1.1\r\n', 'tcp'],
  ['two-digit minor version', 'GET /x HTTP/1.10\r\n', 'tcp'],
  ['no dot in the version', 'GET /x HTTP/11\r\n', 'tcp'],
  ['SP after the version', 'GET /x HTTP/1.1 \r\n', 'tcp'],
  ['TLS ClientHello', '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03', 'tcp'],
  ['redis RESP', '*1\r\n$4\r\nPING\r\n', 'tcp'],
  ['redis inline command', 'SET key value\r\n', 'tcp'],
  ['memcached set', 'set k 0 0 5\r\nhello\r\n', 'tcp'],
  ['postgres SSLRequest', '\x00\x00\x00\x08\x04\xd2\x16\x2f', 'tcp'],
  ['postgres StartupMessage', '\x00\x00\x00\x29\x00\x03\x00\x00user\x00app\x00', 'tcp'],
  ['SSH client banner', 'SSH-2.0-OpenSSH_9.6\r\n', 'tcp'],
  ['SSH client banner with comments', 'SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n', 'tcp'],
  ['STOMP', 'CONNECT\naccept-version:1.2\nhost:mq\n\n\x00', 'tcp'],
  ['MongoDB OP_MSG', '\x3a\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00', 'tcp'],
];

const bytes = (s: string) => Buffer.from(s, 'latin1');

describe('classify', () => {
  it('says nothing about no bytes', () => {
    expect(classify(Buffer.alloc(0))).toBe('more');
  });

  it.each(CASES)('%s', (_what, head, verdict) => {
    expect(classify(bytes(head))).toBe(verdict);
  });

  it("split at every offset: 'more' until the bytes decide, then the same answer for every longer prefix", () => {
    for (const [what, head, verdict] of CASES) {
      const b = bytes(head);
      const seen = Array.from({ length: b.length }, (_, k) => classify(b.subarray(0, k + 1)));
      const first = seen.findIndex((v) => v !== 'more');
      expect(first, what).toBeGreaterThanOrEqual(0);
      expect(seen.slice(first), `${what}: ${JSON.stringify(seen)}`).toEqual(seen.slice(first).map(() => verdict));
    }
  });

  it('decides binary protocols within their first bytes', () => {
    for (const [what, head] of CASES.filter(([what, , verdict]) => verdict === 'tcp' && /TLS|postgres|Mongo/.test(what))) {
      expect(classify(bytes(head).subarray(0, 1)), what).toBe('tcp');
    }
  });

  it(`looks ${SNIFF_LIMIT} bytes far: a possible request line that long is HTTP/1, so a long target never makes it opaque`, () => {
    const long = bytes(`PROPFIND /${'a'.repeat(2 * SNIFF_LIMIT)} HTTP/1.1\r\n`);
    expect(classify(long.subarray(0, SNIFF_LIMIT - 1))).toBe('more');
    expect(classify(long.subarray(0, SNIFF_LIMIT))).toBe('http1');
    expect(classify(long)).toBe('http1');
    // What comes after the bound is for the HTTP parser to judge (it answers 400 or 431).
    expect(classify(Buffer.concat([long.subarray(0, SNIFF_LIMIT), bytes('\x00\x01')]))).toBe('http1');
    // A method token, or empty lines, as long.
    expect(classify(bytes('A'.repeat(SNIFF_LIMIT)))).toBe('http1');
    expect(classify(bytes('\r\n'.repeat(SNIFF_LIMIT / 2)))).toBe('http1');
    // Bytes that are no request line are opaque however many come.
    expect(classify(bytes(`SET key ${'v'.repeat(2 * SNIFF_LIMIT)}\r\n`))).toBe('tcp');
  });

  const TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  const token = fc.string({ unit: fc.constantFrom(...TCHARS), minLength: 1, maxLength: 24 });
  /** Request-target bytes: visible ASCII and obs-text, no SP or controls. */
  const target = fc.string({ unit: fc.integer({ min: 0x21, max: 0xff }).filter((c) => c !== 0x7f).map((c) => String.fromCharCode(c)), minLength: 1, maxLength: 64 });
  const sep = fc.string({ unit: fc.constantFrom(' ', '\t'), minLength: 1, maxLength: 3 });
  const digit = fc.integer({ min: 0, max: 9 });
  const eol = fc.constantFrom('\r\n', '\n');
  const leading = fc.constantFrom('', '', '\r\n', '\n', '\r\n\r\n');

  it('any token method, target and HTTP version make a request line, and every prefix of one waits or agrees (property, seeded)', () => {
    fc.assert(
      fc.property(leading, token, sep, target, sep, digit, digit, eol, (lead, m, s1, t, s2, major, minor, end) => {
        const head = bytes(`${lead}${m}${s1}${t}${s2}HTTP/${major}.${minor}${end}`);
        // "PRI * HTTP/2.0\r\n" is where the HTTP/2 preface starts: that one waits for the rest.
        fc.pre(!H2_PREFACE.subarray(0, head.length).equals(head));
        expect(classify(head)).toBe('http1');
        for (let k = 1; k < head.length; k++) expect(['more', 'http1']).toContain(classify(head.subarray(0, k)));
      }),
      fuzz(500, 9110),
    );
  });

  it('takes a request line without a version exactly for the methods llhttp takes one for', () => {
    for (const m of [...http.METHODS, ...RTSP_METHODS, 'PRI', ...NOT_METHODS]) {
      const text = `${m} /x\r\nHost: a\r\n\r\n`;
      expect([m, classify(bytes(text))]).toEqual([m, parserTakesRequest(text) ? 'http1' : 'tcp']);
    }
  });

  it('whatever the agent’s HTTP/1.1 parser (llhttp) takes as a request, a sniff never carries as opaque TCP (property, seeded)', () => {
    // Near-request lines: each part mostly well formed, sometimes not (llhttp judges which are requests), and
    // free-form ones.
    const mostly = (good: string[], bad: string[]) =>
      fc.oneof({ arbitrary: fc.constantFrom(...good), weight: 4 }, { arbitrary: fc.constantFrom(...bad), weight: 1 });
    const method = fc.oneof(
      fc.constantFrom(...http.METHODS, ...RTSP_METHODS, 'PRI'),
      fc.oneof(token, fc.constantFrom('PRI', 'get', 'G\x01T', '')),
    );
    const sep = mostly([' ', ' ', '  '], ['\t', ' \t', '', '\x0b', '\x0c', '\r']);
    const target = mostly(['/', '/x', '*', 'rtsp://a/b', 'http://h/p?q=1', '/a#b', '/a{b}"c'], ['/a\x01', '/a\x7f', '/caf\xe9', '/a\tb', '']);
    const version = mostly(
      ['HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/0.9', 'RTSP/1.0', 'ICE/1.0'],
      ['', 'HTTP/1.2', 'HTTP/3.0', 'http/1.1', 'HTTP/1.1 ', 'HTTP/11', 'HTTP/1.10', 'SIP/2.0'],
    );
    const end = mostly(['\r\n'], ['\n', '\r', '']);
    const lead = mostly([''], ['\r\n', '\n', '\r', '\r\n\n']);
    // A request line without a version is HTTP/0.9's form, which llhttp takes too.
    const shaped = fc
      .tuple(lead, method, sep, target, fc.boolean(), sep, version, end)
      .map(([l, m, s1, t, versioned, s2, v, e]) => `${l}${m}${s1}${t}${versioned ? `${s2}${v}` : ''}${e}`);
    const piece = fc.constantFrom(' ', '\t', '/', '/x', '*', '\x01', 'HTTP/', 'RTSP/', 'ICE/', 'HTTP/1.1', '1', '.', '\r', '\n', '\r\n');
    const loose = fc.tuple(lead, method, fc.array(piece, { maxLength: 8 })).map(([l, m, ps]) => `${l}${m}${ps.join('')}`);
    let accepted = 0;
    fc.assert(
      fc.property(fc.oneof(shaped, loose), (requestLine) => {
        const text = `${requestLine}Host: a\r\nx-forwarded-client-cert: forged\r\n\r\n`;
        if (!parserTakesRequest(text)) return;
        accepted++;
        expect(classify(bytes(text)), JSON.stringify(text)).not.toBe('tcp');
      }),
      fuzz(3000, 9112),
    );
    // The property said something: a fair share of the candidates were requests.
    expect(accepted).toBeGreaterThan(100);
  });
});

/** Methods llhttp knows beyond Node's http.METHODS, and words that are no method of it. */
const RTSP_METHODS = ['DESCRIBE', 'ANNOUNCE', 'SETUP', 'PLAY', 'PAUSE', 'TEARDOWN', 'GET_PARAMETER', 'SET_PARAMETER', 'REDIRECT', 'RECORD', 'FLUSH'];
const NOT_METHODS = ['FOO', 'get', 'Get', 'SET', 'INVITE', 'REGISTER', 'BREW', 'HELLO', 'AUTH', 'PING', 'PRIX', 'GETS'];

/** Whether the agent's HTTP/1.1 parser gets to the end of a request head in `text` without an error. */
function parserTakesRequest(text: string): boolean {
  let heads = 0;
  const parser = new Parser('request', { head: () => (heads++, 0), body: () => undefined, complete: () => undefined }, 8192);
  try {
    const n = parser.execute(bytes(text));
    return typeof n === 'number' && heads > 0;
  } finally {
    parser.release();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('sniff (loopback sockets)', () => {
  let server: net.Server;
  let port: number;
  /** The next accepted connection's sniff, and everything the connection carried after it. */
  let next: (r: { result: SniffResult; ms: number; rest: Promise<string> }) => void;
  const TIMEOUT_MS = 150;
  /** How long the server waits before it sniffs: what the client sent (and its FIN) is buffered by then. */
  let lateMs = 0;

  beforeAll(async () => {
    server = net.createServer({ allowHalfOpen: true }, async (socket) => {
      if (lateMs > 0) await sleep(lateMs);
      const t0 = performance.now();
      void sniff(socket, TIMEOUT_MS).then((result) => {
        const ms = performance.now() - t0;
        const rest = new Promise<string>((resolve) => {
          let text = '';
          socket.on('data', (c: Buffer) => (text += c.toString('latin1')));
          socket.on('end', () => {
            resolve(text);
            socket.end();
          });
        });
        next({ result, ms, rest });
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as net.AddressInfo).port;
  });

  afterAll(() => server.close());

  /** Connects, lets `talk` write, and returns the server's sniff and what it read afterwards. */
  async function run(talk: (s: net.Socket) => Promise<void>) {
    const sniffed = new Promise<{ result: SniffResult; ms: number; rest: Promise<string> }>((r) => (next = r));
    const s = net.connect(port, '127.0.0.1');
    s.setNoDelay(true);
    await new Promise<void>((r) => s.once('connect', r));
    await talk(s);
    const got = await sniffed;
    s.end();
    return { ...got, rest: await got.rest };
  }

  it('finds a request line written a byte at a time, before the timeout, and consumes nothing', async () => {
    const text = 'PROPFIND /x HTTP/1.1\r\nHost: a\r\n\r\n';
    const r = await run(async (s) => {
      for (const c of text) {
        s.write(c);
        await sleep(2);
      }
    });
    expect(r.result).toEqual({ protocol: 'http1', timedOut: false });
    expect(r.rest).toBe(text);
  });

  it('finds a request line longer than the bound', async () => {
    const text = `GET /${'a'.repeat(3 * SNIFF_LIMIT)} HTTP/1.1\r\n\r\n`;
    const r = await run(async (s) => void s.write(text));
    expect(r.result).toEqual({ protocol: 'http1', timedOut: false });
    expect(r.rest).toBe(text);
  });

  it('carries binary at once, and a client that sends nothing after the timeout', async () => {
    const tls = await run(async (s) => void s.write(bytes('\x16\x03\x01\x02\x00')));
    expect([tls.result, tls.ms < TIMEOUT_MS]).toEqual([{ protocol: 'tcp', timedOut: false }, true]);
    expect(tls.rest).toBe('\x16\x03\x01\x02\x00');
    const silent = await run(async () => undefined);
    expect(silent.result).toEqual({ protocol: 'tcp', timedOut: true });
  });

  it('carries the start of a request line that the client ends (FIN) as opaque, its bytes before the FIN', async () => {
    const r = await run(async (s) => void s.end('PROPF'));
    expect([r.result, r.ms < TIMEOUT_MS]).toEqual([{ protocol: 'tcp', timedOut: false }, true]);
    expect(r.rest).toBe('PROPF');
  });

  it('the same when the bytes and the FIN were both buffered before the sniff began', async () => {
    lateMs = 50;
    try {
      const partial = await run(async (s) => void s.end('PROPF'));
      expect([partial.result, partial.ms < TIMEOUT_MS]).toEqual([{ protocol: 'tcp', timedOut: false }, true]);
      expect(partial.rest).toBe('PROPF');
      const whole = await run(async (s) => void s.end('PROPFIND /x HTTP/1.1\r\n\r\n'));
      expect(whole.result).toEqual({ protocol: 'http1', timedOut: false });
      expect(whole.rest).toBe('PROPFIND /x HTTP/1.1\r\n\r\n');
    } finally {
      lateMs = 0;
    }
  });

  it('the same when the agent itself stalled past the timeout while the FIN arrived: the silence is the client’s to show', async () => {
    // The client (another process) sends a short word, then its FIN 20 ms later; this process reads the word, then
    // is busy past the timeout (as an agent starting up can be) while the FIN comes in, unread when the timer is due.
    const stalled = net.createServer({ allowHalfOpen: true }, (socket) => {
      // Busy in the event loop's check phase: when it turns again, due timers run before sockets are read.
      setTimeout(
        () =>
          setImmediate(() => {
            const busyUntil = performance.now() + TIMEOUT_MS + 150;
            while (performance.now() < busyUntil);
          }),
        5,
      );
      void sniff(socket, TIMEOUT_MS).then((result) => {
        socket.destroy();
        done(result);
      });
    });
    let done!: (r: SniffResult) => void;
    const result = new Promise<SniffResult>((resolve) => (done = resolve));
    await new Promise<void>((resolve) => stalled.listen(0, '127.0.0.1', resolve));
    try {
      const client = `const s = require('net').connect(${(stalled.address() as net.AddressInfo).port}, '127.0.0.1', () => { s.write('back'); setTimeout(() => s.end(), 20); }); s.on('error', () => {}); s.resume(); setTimeout(() => process.exit(0), 2000);`;
      const child = spawn(process.execPath, ['-e', client], { stdio: 'ignore' });
      try {
        expect(await result).toEqual({ protocol: 'tcp', timedOut: false });
      } finally {
        child.kill();
      }
    } finally {
      stalled.close();
    }
  });

  it('takes a request paused past the timeout as HTTP/1, not opaque', async () => {
    const r = await run(async (s) => {
      s.write('PROPFI');
      await sleep(TIMEOUT_MS + 100);
      s.write('ND /x HTTP/1.1\r\n\r\n');
    });
    expect(r.result).toEqual({ protocol: 'http1', timedOut: true });
    expect(r.rest).toBe('PROPFIND /x HTTP/1.1\r\n\r\n');
  });
});

describe('selectProtocol and --opaque-ports', () => {
  const options = { detectTimeoutMs: 5_000, opaquePorts: new Set([3306]) };
  it('an undeclared connection is opaque at once when any of its ports is (a Service port 80 in front of MySQL on 3306)', async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    // Nothing is ever written: a sniff would wait out the 5 s timeout and then say it sniffed.
    expect(await selectProtocol(new PassThrough(), [80, 3306], undefined, options, metrics)).toEqual({ protocol: 'tcp', sniffed: false });
    expect(await selectProtocol(new PassThrough(), 3306, undefined, options, metrics)).toEqual({ protocol: 'tcp', sniffed: false });
  });

  it('a port not in the list is sniffed', async () => {
    const socket = new PassThrough();
    socket.write('GET / HTTP/1.1\r\n\r\n');
    expect(await selectProtocol(socket, [80, 8080], undefined, options, new Metrics({ defaultMetrics: false }))).toEqual({ protocol: 'http1', sniffed: true });
  });
});
