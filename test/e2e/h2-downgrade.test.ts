// HTTP/2 to HTTP/1.1 downgrade smuggling: an h2c client of a meshed app sends requests that would smuggle a second
// request, or desync the pooled HTTP/1.1 connection between the agents, if the source agent wrote their fields into
// HTTP/1.1 as they came: Transfer-Encoding, a Content-Length that disagrees with the DATA, CR/LF/NUL in a field
// value, name or pseudo-header, a :path with a space or "#", connection-specific fields, a TE other than
// "trailers". Each is malformed (RFC 9113 8.1.1, 8.2.1, 8.2.2, 8.3) and refused (RST_STREAM, 400 or GOAWAY), with
// one exception that smuggles nothing either: a regular field whose name or value has a byte RFC 9113 8.2.1 forbids
// (CR, LF, NUL, whitespace at either end of a value; a colon or space in a name) is dropped by
// nghttp2, which Node's HTTP/2 runs, and the request goes on without it (neither the policy nor the app ever sees the
// field). A malformed DATA that comes after a well-formed head went on (a Content-Length the DATA then contradicts)
// ends the client's stream and cancels the one to the app; what the DATA carries goes nowhere. The app, which logs every request it receives,
// must see no smuggled request, no refused one, and no forbidden field; well-formed requests sent the same way are
// served.
import path from 'node:path';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectInNetns } from '../../agent/native/index.js';
import { Lab } from '../../lab/cluster/lab.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';
import { ACK, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PREFACE, RST_STREAM, SETTINGS, frame, hpackInt } from '../support/h2-wire.js';

const fixtures = path.join(import.meta.dirname, 'fixtures', 'downgrade.yaml');

/** Literal fields without indexing, new names (RFC 7541 6.2.2): any bytes go on the wire as given. */
function block(fields: readonly (readonly [string, string])[]): Buffer {
  return Buffer.concat(
    fields.flatMap(([n, v]) => {
      const name = Buffer.from(n, 'latin1');
      const value = Buffer.from(v, 'latin1');
      return [Buffer.from([0x00]), hpackInt(name.length, 7, 0), name, hpackInt(value.length, 7, 0), value];
    }),
  );
}

interface Case {
  readonly name: string;
  /** nghttp2 drops this field and passes the request on: refused, or served without the field, are both safe. */
  readonly dropped?: readonly string[];
  /** Fields after the pseudo-headers; `path`, `method`, `authority` replace the defaults. */
  readonly fields?: readonly (readonly [string, string])[];
  readonly method?: string;
  readonly path?: (id: string) => string;
  readonly authority?: string;
  /** DATA sent after the HEADERS, with END_STREAM. */
  readonly data?: (id: string) => string;
  /**
   * The DATA comes this much later, once the head went on: the request may have reached the app as its head
   * announced it (Content-Length: 0, complete), but what the DATA carries must not follow.
   */
  readonly dataAfterMs?: number;
}

const smuggle = (id: string) => `GET /smuggled-${id} HTTP/1.1\r\nhost: web\r\n\r\n`;

const CASES: readonly Case[] = [
  { name: 'transfer-encoding: chunked, a body that ends early and a request after it', fields: [['transfer-encoding', 'chunked']], data: (id) => `0\r\n\r\n${smuggle(id)}` },
  { name: 'content-length: 0 with a request in the DATA', fields: [['content-length', '0']], data: smuggle },
  { name: 'content-length: 0, then 300 ms later a request in the DATA', fields: [['content-length', '0']], data: smuggle, dataAfterMs: 300 },
  { name: 'content-length larger than the DATA', fields: [['content-length', '200']], data: () => 'abc' },
  { name: 'content-length larger than the DATA, sent 300 ms later', fields: [['content-length', '200']], data: () => 'abc', dataAfterMs: 300 },
  { name: 'two content-length fields that disagree', fields: [['content-length', '3'], ['content-length', '40']], data: () => 'abc' },
  { name: 'CR LF in a field value', fields: [['x-a', `1\r\ncontent-length: 0\r\n\r\n${smuggle('v').trimEnd()}`]], dropped: ['x-a'] },
  { name: 'a bare LF in a field value', fields: [['x-a', '1\nx-injected: yes']], dropped: ['x-a', 'x-injected'] },
  { name: 'NUL in a field value', fields: [['x-a', '1\u0000x']], dropped: ['x-a'] },
  { name: 'whitespace around a field value', fields: [['x-a', ' 1 ']], dropped: ['x-a'] },
  { name: 'CR LF in a field name', fields: [['x-a\r\ntransfer-encoding', 'chunked']], dropped: ['x-a', 'transfer-encoding'] },
  { name: 'a colon in a field name', fields: [['x-a:b', '1']], dropped: ['x-a', 'x-a:b'] },
  { name: 'a space in a field name', fields: [['x-a b', '1']], dropped: ['x-a', 'x-a b'] },
  { name: 'an uppercase field name', fields: [['X-Upper', '1']] },
  { name: 'CR LF in :path', path: (id) => `/case HTTP/1.1\r\nhost: web\r\n\r\nGET /smuggled-${id}` },
  { name: 'a space in :path', path: (id) => `/case-${id} HTTP/1.1` },
  { name: '"#" in :path', path: (id) => `/case-${id}#frag` },
  { name: 'CR LF in :method', method: 'GET /smuggled-m HTTP/1.1\r\nhost: web\r\n\r\nGET' },
  { name: 'a space in :method', method: 'GET /x' },
  { name: 'CR LF in :authority', authority: 'web\r\nx-injected: yes' },
  { name: 'connection: keep-alive', fields: [['connection', 'keep-alive']] },
  { name: 'keep-alive', fields: [['keep-alive', 'timeout=5']] },
  { name: 'proxy-connection', fields: [['proxy-connection', 'keep-alive']] },
  { name: 'upgrade: websocket', fields: [['upgrade', 'websocket']] },
  { name: 'te: gzip', fields: [['te', 'gzip']] },
  { name: 'te: trailers, gzip', fields: [['te', 'trailers, gzip']] },
];

interface Outcome {
  status?: number;
  reset?: number;
  goaway?: number;
  closed: boolean;
}

describe('HTTP/2 to HTTP/1.1 downgrade smuggling (two-node lab)', () => {
  const name = `dg${Math.random().toString(36).slice(2, 5)}`;
  let lab: Lab;

  beforeAll(async () => {
    requireRoot('downgrade smuggling tests');
    lab = await Lab.up(fixtures, { name });
  });

  afterAll(async () => {
    await lab?.down();
  });

  /** One request on a connection of its own: the HEADERS (and DATA) as given, and what came back within 3 s. */
  function send(id: string, c: Case): Promise<Outcome> {
    const vip = lab.services.find((s) => s.name === 'web')!.clusterIP;
    return new Promise((resolve) => {
      const s: net.Socket = connectInNetns(lab.pod('mesh/client').netnsPath, { host: vip, port: 80, timeoutMs: 3000 });
      const out: Outcome = { closed: false };
      let buf = Buffer.alloc(0);
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        s.destroy();
        resolve(out);
      };
      const timer = setTimeout(finish, 3000 + (c.dataAfterMs ?? 0));
      s.on('error', () => ((out.closed = true), finish()));
      s.on('close', () => ((out.closed = true), finish()));
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        while (buf.length >= 9) {
          const len = buf.readUIntBE(0, 3);
          if (buf.length < 9 + len) break;
          const type = buf[3]!;
          const flags = buf[4]!;
          const payload = buf.subarray(9, 9 + len);
          if (type === SETTINGS && !(flags & ACK)) s.write(frame(SETTINGS, ACK, 0));
          // The first field of a response is :status, from the static table (0x88 is 200) or a literal.
          if (type === HEADERS) out.status = decodeStatus(payload);
          if (type === RST_STREAM) out.reset = payload.readUInt32BE(0);
          if (type === GOAWAY) out.goaway = payload.readUInt32BE(4);
          buf = buf.subarray(9 + len);
          // A delayed DATA is the point of its case: wait for what the agent does with it.
          const answered = (type === HEADERS && flags & END_STREAM) || (type === DATA && flags & END_STREAM);
          if (type === RST_STREAM || type === GOAWAY || (answered && c.dataAfterMs === undefined)) return finish();
        }
      });
      s.once('connect', () => {
        const fields: (readonly [string, string])[] = [
          [':method', c.method ?? (c.data ? 'POST' : 'GET')],
          [':scheme', 'http'],
          [':path', c.path ? c.path(id) : `/case-${id}`],
          [':authority', c.authority ?? 'web'],
          ...(c.fields ?? []),
        ];
        const frames = [PREFACE, frame(SETTINGS, 0, 0), frame(HEADERS, END_HEADERS | (c.data ? 0 : END_STREAM), 1, block(fields))];
        const data = c.data && frame(DATA, END_STREAM, 1, Buffer.from(c.data(id), 'latin1'));
        if (data && c.dataAfterMs === undefined) frames.push(data);
        s.write(Buffer.concat(frames));
        if (data && c.dataAfterMs !== undefined) setTimeout(() => s.destroyed || s.write(data), c.dataAfterMs);
      });
    });
  }

  it('refuses every malformed request at the source agent; the app sees neither it nor a smuggled one', async () => {
    const vip = lab.services.find((s) => s.name === 'web')!.clusterIP;
    await until('the mesh to answer', async () => {
      const r = await lab.exec('mesh/client', ['trellis', 'tool', 'http-client', '--http2', '--url', `http://${vip}/warm`]);
      return (JSON.parse(r.stdout.trim().split('\n').at(-1) || '{}') as { ok?: number }).ok === 1;
    }, 20_000);

    const results: { c: Case; id: string; o: Outcome }[] = [];
    for (const [i, c] of CASES.entries()) results.push({ c, id: String(i), o: await send(String(i), c) });
    // Well-formed requests the same way, before and after: the harness reaches the app, and the pooled connection
    // between the agents was left clean by what came before.
    const control = await send('control', { name: 'a well-formed POST', fields: [['content-length', '3'], ['x-a', 'fine']], data: () => 'abc' });
    const controlGet = await send('control-get', { name: 'a well-formed GET' });

    // What the app received: one JSON line per request (and per protocol error) it saw.
    await new Promise((r) => setTimeout(r, 500));
    const seen = lab
      .podLog('mesh/web')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { event?: string; path?: string; method?: string; headers?: Record<string, string>; raw?: string; code?: string })
      .filter((e) => e.event !== undefined);
    const told = (o: Outcome) =>
      [o.status !== undefined && `status ${o.status}`, o.reset !== undefined && `RST_STREAM ${o.reset}`, o.goaway !== undefined && `GOAWAY ${o.goaway}`, o.closed && 'closed']
        .filter(Boolean)
        .join(', ') || 'no answer in 3 s';
    const report = [
      ...results.map(({ c, id, o }) => `${id.padStart(2)} ${c.name}: ${told(o)}`),
      `control POST: ${told(control)}; control GET: ${told(controlGet)}`,
      `the app saw: ${seen.filter((e) => e.path !== '/warm').map((e) => `${e.event} ${e.method ?? ''} ${e.path ?? e.raw ?? ''}`).join(' | ')}`,
    ].join('\n');
    console.log(report);

    for (const { c, id, o } of results) {
      // Refused: the stream reset (PROTOCOL_ERROR is RFC 9113's answer to a malformed request), a 400, or the
      // connection ended; never a 2xx.
      const refused = o.reset !== undefined || o.goaway !== undefined || (o.status !== undefined && o.status >= 400 && o.status < 500);
      const arrived = seen.filter((e) => e.path === `/case-${id}`);
      if (c.dataAfterMs !== undefined) {
        // The head was well-formed when it went on; the malformed DATA after it ends the stream (or connection), and
        // nothing of it reaches the app (the smuggled request is checked below).
        expect(o.reset !== undefined || o.goaway !== undefined || o.closed, `${id} ${c.name}\n${report}`).toBe(true);
        expect(arrived.length, `${id} ${c.name}\n${report}`).toBeLessThanOrEqual(1);
        continue;
      }
      if (c.dropped && !refused) {
        // Served without the forbidden field: exactly this request, and none of the names it carried or could inject.
        expect(o.status, `${id} ${c.name}\n${report}`).toBe(200);
        expect(arrived, `${id} ${c.name}\n${report}`).toHaveLength(1);
        for (const h of c.dropped) expect(arrived[0]!.headers?.[h], `${id} ${c.name}: field ${h} at the app\n${report}`).toBeUndefined();
        continue;
      }
      expect(refused, `${id} ${c.name}\n${report}`).toBe(true);
      expect(o.status === undefined || o.status >= 400, `${id} ${c.name}\n${report}`).toBe(true);
      expect(arrived, `${id} ${c.name} reached the app\n${report}`).toEqual([]);
    }
    // Nothing smuggled reached the app, and nothing it could not parse.
    expect(seen.filter((e) => e.path?.includes('smuggled') || e.method !== undefined && !['GET', 'POST'].includes(e.method)), report).toEqual([]);
    expect(seen.filter((e) => e.event === 'request' && !/^\/(warm|case-\d+|case-control(-get)?)$/.test(e.path ?? '')), report).toEqual([]);
    // A request whose DATA turned malformed after its head went on is cancelled. The app's port declares http, so it
    // is spoken to in HTTP/1.1, where a cancel is the connection closed mid-body: its parser reports that end, with
    // nothing of the DATA in it. Anything else it could not parse would be a smuggled fragment.
    const aborted = seen.filter((e) => e.event === 'client-error' && e.code === 'HPE_INVALID_EOF_STATE' && !e.raw);
    expect(aborted.length, report).toBeLessThanOrEqual(CASES.filter((c) => c.dataAfterMs !== undefined).length);
    expect(seen.filter((e) => e.event !== 'request' && !aborted.includes(e)), report).toEqual([]);
    expect(seen.filter((e) => e.path === '/case-control'), report).toHaveLength(1);
    expect(seen.filter((e) => e.path === '/case-control-get'), report).toHaveLength(1);
    expect(control.status, report).toBe(200);
    expect(controlGet.status, report).toBe(200);
    for (const n of (await lab.status()).nodes) expect(n.agent?.alive, `the agent on ${n.name} died\n${report}`).toBe(true);
  });
});

/** :status from a response header block: an indexed static entry (8-14) or a literal with the name index 8. */
function decodeStatus(payload: Buffer): number | undefined {
  const first = payload[0]!;
  const STATIC: Record<number, number> = { 8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500 };
  if (first & 0x80) return STATIC[first & 0x7f];
  // Literal with name index 8 (:status), with or without indexing; the value is 3 ASCII digits, not Huffman-coded
  // when its length byte has no high bit.
  const nameIndex = first & 0x40 ? first & 0x3f : first & 0x0f;
  if (nameIndex !== 8) return undefined;
  const len = payload[1]!;
  if (len & 0x80) return huffmanStatus(payload.subarray(2, 2 + (len & 0x7f)));
  return Number(payload.subarray(2, 2 + len).toString('latin1'));
}

/** Three digits Huffman-coded (RFC 7541 Appendix B: '0'-'2' are 5 bits, '3'-'9' 6 bits). */
function huffmanStatus(b: Buffer): number | undefined {
  const codes: [string, string][] = [
    ['00000', '0'], ['00001', '1'], ['00010', '2'], ['011001', '3'], ['011010', '4'], ['011011', '5'], ['011100', '6'], ['011101', '7'], ['011110', '8'], ['011111', '9'],
  ];
  let bits = [...b].map((x) => x.toString(2).padStart(8, '0')).join('');
  let out = '';
  while (out.length < 3) {
    const hit = codes.find(([code]) => bits.startsWith(code));
    if (!hit) return undefined;
    out += hit[1];
    bits = bits.slice(hit[0].length);
  }
  return Number(out);
}
