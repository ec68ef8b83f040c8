// `trellis tap` without a mesh (viz/tap/): the match tree its arguments make, the lines it prints, which agents it
// finds in a lab, and the loop that merges their streams (stand-in streams here; a real agent's socket in
// test/tap/server.test.ts, a lab in test/e2e/tap.test.ts).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { TapEvent } from '../../agent/tap/events.js';
import { compileMatch } from '../../agent/tap/match.js';
import type { Workload } from '../../agent/state/workload.js';
import { ENDPOINTS_FILE, LAB_STATE_FILE } from '../../viz/endpoints.js';
import type { TapStreamHandlers } from '../../viz/tap/client.js';
import { formatEvent } from '../../viz/tap/format.js';
import { locateAgents } from '../../viz/tap/locate.js';
import { observeRequest, parseTapTarget, tapMatch } from '../../viz/tap/request.js';
import { runTap } from '../../viz/tap/tap.js';

const wl = (ns: string, pod: string, name: string) => ({ workload: { namespace: ns, pod, name } as unknown as Workload });

describe('trellis tap: what it asks', () => {
  it('NS/NAME, or NAME with -n; anything else says the form', () => {
    expect(parseTapTarget('demo/server', undefined)).toEqual({ namespace: 'demo', name: 'server' });
    expect(parseTapTarget('server', 'demo')).toEqual({ namespace: 'demo', name: 'server' });
    expect(() => parseTapTarget('server', undefined)).toThrow(/name it NAMESPACE\/WORKLOAD or NAMESPACE\/POD/);
    expect(() => parseTapTarget('deploy/demo/server', 'demo', '--to')).toThrow(/^--to "deploy\/demo\/server"/);
  });

  it('the target either side by workload or pod name; --to, --method and --path narrow it', () => {
    const m = compileMatch(tapMatch({ target: { namespace: 'demo', name: 'client' } }));
    const client = wl('demo', 'client-7f', 'client');
    const server = wl('demo', 'server-0', 'server');
    const get = { method: 'GET', authority: 'server', path: '/api/x' };
    expect(m(client, server, get, undefined)).toBe(true);
    expect(m(server, client, get, undefined)).toBe(true);
    expect(m(server, wl('demo', 'db-0', 'db'), get, undefined)).toBe(false);
    // A pod name works as well as the workload's.
    expect(compileMatch(tapMatch({ target: { namespace: 'demo', name: 'client-7f' } }))(client, server, undefined, undefined)).toBe(true);
    const narrow = compileMatch(tapMatch({ target: { namespace: 'demo', name: 'client' }, to: { namespace: 'demo', name: 'server' }, method: 'get', path: '/api' }));
    expect(narrow(client, server, get, undefined)).toBe(true);
    expect(narrow(server, client, get, undefined)).toBe(false);
    expect(narrow(client, server, { ...get, method: 'POST' }, undefined)).toBe(false);
    expect(narrow(client, server, { ...get, path: '/web' }, undefined)).toBe(false);
    // An opaque connection has no method: --method leaves it out.
    expect(narrow(client, server, undefined, undefined)).toBe(false);
    expect(() => tapMatch({ target: { namespace: 'demo', name: 'c' }, path: 'api' })).toThrow(/starts with \//);
    expect(observeRequest({ target: { namespace: 'demo', name: 'c' }, maxRps: 5, limit: 10, durationMs: 2000 })).toMatchObject({ limit: 10, durationMs: 2000, maxRps: 5 });
  });
});

const base = {
  node: 'node-a',
  reporter: 'source' as const,
  timestampMs: 0,
  id: 7,
  source: { ip: '10.244.1.2', port: 40000, workload: 'client', namespace: 'demo', pod: 'client-0', identity: 'spiffe://cluster.local/ns/demo/sa/client' },
  destination: { ip: '10.244.2.2', port: 8080, workload: 'server', namespace: 'demo', identity: 'spiffe://cluster.local/ns/demo/sa/server', service: 'server.demo.svc.cluster.local' },
  security: 'mutual_tls',
  route: 'demo/split',
  rule: 'canary',
};

describe('trellis tap: lines', () => {
  it('req, rsp, end as linkerd viz tap prints them, with the workloads', () => {
    const common = 'id=node-a:7 proxy=out src=10.244.1.2:40000 dst=10.244.2.2:8080 src_wl=demo/client dst_wl=demo/server tls=true';
    expect(formatEvent({ ...base, requestInit: { method: 'GET', authority: 'server.demo:80', path: '/a b', headers: [{ name: 'authorization', value: '[REDACTED]' }], requestId: 'r1', protocol: 'http1' } }, 'line')).toEqual([
      `req ${common} :method=GET :authority=server.demo:80 :path="/a b"`,
    ]);
    expect(formatEvent({ ...base, responseInit: { sinceRequestInitMs: 1.25, httpStatus: 200, headers: [] } }, 'line')).toEqual([`rsp ${common} :status=200 latency=1.25ms`]);
    expect(formatEvent({ ...base, reporter: 'destination', dropped: 4, responseEnd: { sinceRequestInitMs: 0.4, httpStatus: 403, requestBytes: 0, responseBytes: 19, error: 'RBAC: access denied' }, authz: { decision: 'deny', code: 'denied', policy: 'demo/no-admin' } }, 'line')).toEqual([
      'drop node=node-a dropped=4',
      'end id=node-a:7 proxy=in src=10.244.1.2:40000 dst=10.244.2.2:8080 src_wl=demo/client dst_wl=demo/server tls=true :status=403 duration=400µs request-length=0B response-length=19B authz=deny policy=demo/no-admin reason=denied error="RBAC: access denied"',
    ]);
  });

  it('-o wide: identities, Service, route, request id and the headers as the agent redacted them', () => {
    const [line] = formatEvent({ ...base, requestInit: { method: 'GET', authority: 'a', path: '/', headers: [{ name: 'authorization', value: '[REDACTED]' }, { name: 'accept', value: '*/*' }], requestId: 'r1', protocol: 'h2' } }, 'wide');
    expect(line).toBe(
      'req id=node-a:7 proxy=out src=10.244.1.2:40000 dst=10.244.2.2:8080 src_wl=demo/client dst_wl=demo/server tls=true ' +
        'src_id=spiffe://cluster.local/ns/demo/sa/client dst_id=spiffe://cluster.local/ns/demo/sa/server svc=server.demo.svc.cluster.local route=demo/split rule=canary ' +
        ':method=GET :authority=a :path=/ protocol=h2 request_id=r1 h:authorization=[REDACTED] h:accept=*/*',
    );
  });

  it('tcp: open, close with bytes both ways; a denied one with its policy; a summary prints only its drops', () => {
    const tcp = { ...base, route: undefined, rule: undefined, reporter: 'destination' as const };
    expect(formatEvent({ ...tcp, tcpOpen: {} }, 'line')[0]).toMatch(/^tcp id=node-a:7 proxy=in .* tls=true open$/);
    expect(formatEvent({ ...tcp, tcpClose: { bytesReceived: 11, bytesSent: 2048, durationMs: 12.5 } }, 'line')[0]).toMatch(/ close duration=12.50ms bytes-received=11B bytes-sent=2048B$/);
    expect(formatEvent({ ...tcp, tcpClose: { bytesReceived: 0, bytesSent: 0, durationMs: 0, error: 'denied by policy' }, authz: { decision: 'deny', code: 'denied', policy: 'demo/no-redis' } }, 'line')[0]).toMatch(
      / close duration=0µs bytes-received=0B bytes-sent=0B authz=deny policy=demo\/no-redis reason=denied error="denied by policy"$/,
    );
    expect(formatEvent({ node: 'node-b', reporter: '', timestampMs: 0, summary: { delivered: 1, droppedTotal: 0 } }, 'line')).toEqual([]);
    expect(formatEvent({ node: 'node-b', reporter: '', timestampMs: 0, dropped: 9, summary: { delivered: 1, droppedTotal: 9 } }, 'line')).toEqual(['drop node=node-b dropped=9']);
  });
});

describe('trellis tap: which agents', () => {
  let root: string;
  beforeEach(() => (root = mkdtempSync(path.join(tmpdir(), 'trellis-labs-'))));
  afterEach(() => rmSync(root, { recursive: true, force: true }));
  const lab = (name: string, tap?: { node: string; socket: string }[]) => {
    mkdirSync(path.join(root, name));
    writeFileSync(path.join(root, name, LAB_STATE_FILE), '{}');
    writeFileSync(path.join(root, name, ENDPOINTS_FILE), JSON.stringify({ lab: name, objectsDir: '/x', ...(tap && { tap }) }));
  };

  it("every node's agent of the only lab with agents, --lab NAME, or --socket", () => {
    expect(() => locateAgents({}, root)).toThrow(/no lab with agents is up/);
    lab('a', [{ node: 'node-a', socket: '/run/a-a.sock' }, { node: 'node-b', socket: '/run/a-b.sock' }]);
    lab('bare');
    expect(locateAgents({}, root)).toEqual({ lab: 'a', agents: [{ node: 'node-a', socket: '/run/a-a.sock' }, { node: 'node-b', socket: '/run/a-b.sock' }] });
    expect(() => locateAgents({ lab: 'bare' }, root)).toThrow(/lab 'bare' lists no agent tap socket/);
    expect(() => locateAgents({ lab: 'zz' }, root)).toThrow(/lab 'zz' is not up \(labs up: a, bare\)/);
    lab('b', [{ node: 'n1', socket: '/run/b.sock' }]);
    expect(() => locateAgents({}, root)).toThrow(/several labs are up \(a, b\): choose one with --lab NAME/);
    expect(locateAgents({ lab: 'b' }, root).agents).toEqual([{ node: 'n1', socket: '/run/b.sock' }]);
    expect(locateAgents({ socket: ['/run/trellis/tap.sock'] }, root)).toEqual({ agents: [{ node: '/run/trellis/tap.sock', socket: '/run/trellis/tap.sock' }] });
    expect(() => locateAgents({ socket: ['/s'], lab: 'a' }, root)).toThrow(/give one of them/);
  });
});

describe('trellis tap: merging the agents', () => {
  /** Stand-in agents: each stream gets its handlers; the test sends events through them. */
  function agents() {
    const open = new Map<string, TapStreamHandlers>();
    const cancelled: string[] = [];
    const observe = (socket: string, _req: unknown, h: TapStreamHandlers) => {
      open.set(socket, h);
      h.accepted(100);
      return { cancel: () => void cancelled.push(socket) };
    };
    return { open, cancelled, observe };
  }
  const req = (node: string, id: number): TapEvent[] => [
    { ...base, node, id, requestInit: { method: 'GET', authority: 'a', path: '/', headers: [], requestId: 'r', protocol: 'http1' } },
    { ...base, node, id, responseEnd: { sinceRequestInitMs: 1, httpStatus: 200, requestBytes: 0, responseBytes: 1 } },
  ];

  it('prints both agents in arrival order, stops at --limit over all of them, adds up the drops', async () => {
    const a = agents();
    const out: string[] = [];
    const run = runTap({
      agents: [{ node: 'node-a', socket: 'A' }, { node: 'node-b', socket: 'B' }],
      request: { limit: 3 },
      output: 'json',
      out: (t) => out.push(t),
      err: () => undefined,
      observe: a.observe,
    });
    const [A, B] = [a.open.get('A')!, a.open.get('B')!];
    for (const e of req('node-a', 1)) A.event(e);
    for (const e of req('node-b', 1)) B.event({ ...e, dropped: e.requestInit ? 5 : undefined });
    B.event({ node: 'node-b', reporter: '', timestampMs: 0, dropped: 2, summary: { delivered: 1, droppedTotal: 7 } });
    for (const e of req('node-a', 2)) A.event(e);
    for (const e of req('node-b', 2)) B.event(e);
    const result = await run;
    expect(result).toMatchObject({ observations: 3, dropped: 7, failed: [], accepted: [{ node: 'node-a', maxRps: 100 }, { node: 'node-b', maxRps: 100 }] });
    const seen = out.map((l) => JSON.parse(l) as TapEvent).filter((e) => !e.summary).map((e) => `${e.node}:${e.id}`);
    expect(seen).toEqual(['node-a:1', 'node-a:1', 'node-b:1', 'node-b:1', 'node-a:2', 'node-a:2']);
    expect(a.cancelled.sort()).toEqual(['A', 'B']);
  });

  it('goes on with the agents it reaches; ends when every stream ended', async () => {
    const a = agents();
    const errors: string[] = [];
    const run = runTap({ agents: [{ node: 'node-a', socket: 'A' }, { node: 'node-b', socket: 'B' }], request: {}, output: 'line', out: () => undefined, err: (t) => errors.push(t), observe: a.observe });
    a.open.get('B')!.end(new Error('cannot reach the tap socket B'));
    a.open.get('A')!.event({ node: 'node-a', reporter: '', timestampMs: 0, summary: { delivered: 0, droppedTotal: 0, end: 'duration' } });
    a.open.get('A')!.end(undefined);
    const result = await run;
    expect(result.failed).toEqual([{ node: 'node-b', error: 'cannot reach the tap socket B' }]);
    expect(errors.join('')).toMatch(/node-b: cannot reach.*\nnode-a: stream ended \(duration\): 0 observations, 0 dropped/s);
  });
});
