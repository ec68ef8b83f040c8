// Security end to end, as a user runs it: a two-node lab whose destination `api` (node-b) is guarded by its own
// agent, which enforces AuthorizationPolicy and PeerAuthentication on whatever the callers of node-a send: over
// HBONE (mTLS, the caller's identity verified) or in plaintext from a namespace outside the mesh. Checked here:
// identity headers, the path bypass corpus, STRICT and PERMISSIVE, gRPC denials, open opaque connections cut by a
// new DENY, the audit trail one to one with the requests sent, the policy matrix against Istio's semantics, and
// policy changes on the HTTP connections the source agent keeps open. Tests that make connections a policy denies
// as a whole come last, since the source agent may keep those open for the tests after them. Needs root.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { METRICS_PORT } from '../../agent/constants.js';
import { Lab } from '../../lab/cluster/lab.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import { connectInNetns } from '../../agent/native/index.js';
import type { KubeObject } from '../../agent/model/objects.js';
import { parsePrometheus, sumOf, type Sample } from '../../lab/load/promtext.js';
import type { GrpcClientSummary } from '../../lab/tools/grpc-client.js';
import type { HttpClientSummary } from '../../lab/tools/http-client.js';
import type { EchoReply } from '../../lab/tools/l7-echo.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const run = promisify(execFile);
const fixtures = path.join(import.meta.dirname, 'fixtures', 'security.yaml');
const labBase = `es${Math.random().toString(36).slice(2, 5)}`;
/** The lab of the capture mode running now (each mode's block runs in turn, with a lab of its own). */
let labName = labBase;
const WEB = 'shop/web';
const OTHER = 'shop/other';
const CALLER = 'elsewhere/caller';
const OUTSIDER = 'plain/outsider';
/** Used by one test only (see there). */
const FRESH = 'shop/fresh';
const API = 'shop/api';
const spiffe = (ns: string, sa: string) => `spiffe://cluster.local/ns/${ns}/sa/${sa}`;
/** How long a policy change may take to reach the destination agent before a test gives up on it. */
const SETTLE_MS = 5000;

let lab: Lab;
let vip: string;
let podIp: string;
const id = (what: string) => `${what}-${randomBytes(4).toString('hex')}`;

async function metrics(node = 'node-b'): Promise<Sample[]> {
  return parsePrometheus(await lab.metrics(node));
}

/** Runs `trellis tool ...` in a pod and returns its one JSON line. */
async function tool<T>(pod: string, args: string[], timeoutMs = 60_000): Promise<T> {
  const r = await lab.exec(pod, ['trellis', 'tool', ...args], { timeoutMs });
  const line = r.stdout.trim().split('\n').at(-1) ?? '';
  try {
    return JSON.parse(line) as T;
  } catch {
    throw new Error(`trellis tool ${args.join(' ')} in ${pod} printed no JSON (exit ${r.code}): ${r.stdout.slice(0, 500)} ${r.stderr.slice(0, 500)}`);
  }
}

// --- Talking from inside a pod: this process opens the socket in the pod's netns, so the pod's capture rules
// apply to it exactly as to the pod's own programs, and no process has to start per request.

interface Exchange {
  connected: boolean;
  /** What came back, as latin1 text (one char per byte). */
  received: string;
  /** How it ended: the server closed in order, reset, or went quiet for idleMs. */
  end: 'eof' | 'reset' | 'idle' | 'error';
}

/** Writes `data` on a new connection from `from` and collects the answer until the server ends it or goes quiet. */
function exchange(from: string, host: string, port: number, data: string, idleMs = 1500): Promise<Exchange> {
  return new Promise((resolve) => {
    const s = connectInNetns(lab.pod(from).netnsPath, { host, port, timeoutMs: 3000 });
    const out: Exchange = { connected: false, received: '', end: 'idle' };
    let timer: NodeJS.Timeout | undefined;
    const finish = (end: Exchange['end']) => {
      clearTimeout(timer);
      s.destroy();
      resolve({ ...out, end });
    };
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => finish('idle'), idleMs);
    };
    s.on('connect', () => {
      out.connected = true;
      arm();
      s.write(data, 'latin1');
    });
    s.on('data', (d: Buffer) => {
      out.received += d.toString('latin1');
      arm();
    });
    s.on('end', () => finish('eof'));
    s.on('error', (err: NodeJS.ErrnoException) => finish(err.code === 'ECONNRESET' || err.code === 'EPIPE' ? 'reset' : 'error'));
  });
}

interface Answer {
  /** HTTP status, or how the connection ended without one. */
  status: number | Exchange['end'];
  headers: Record<string, string>;
  body: string;
  /** l7-echo's reply, when it answered. */
  echo?: EchoReply;
}

function parseAnswer(x: Exchange): Answer {
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(x.received);
  if (!m) return { status: x.end, headers: {}, body: x.received };
  const split = x.received.indexOf('\r\n\r\n');
  const headers: Record<string, string> = {};
  for (const line of x.received.slice(0, split).split('\r\n').slice(1)) {
    const c = line.indexOf(':');
    headers[line.slice(0, c).trim().toLowerCase()] = line.slice(c + 1).trim();
  }
  let body = split === -1 ? '' : x.received.slice(split + 4);
  if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
    let plain = '';
    for (let at = 0; ; ) {
      const eol = body.indexOf('\r\n', at);
      const size = parseInt(body.slice(at, eol), 16);
      if (!(size > 0)) break;
      plain += body.slice(eol + 2, eol + 2 + size);
      at = eol + 2 + size + 2;
    }
    body = plain;
  }
  let echo: EchoReply | undefined;
  try {
    const parsed = JSON.parse(body) as EchoReply;
    if (typeof parsed.path === 'string') echo = parsed;
  } catch {
    // An answer of the mesh (403, 400): its text is the body.
  }
  return { status: Number(m[1]), headers, body, ...(echo && { echo }) };
}

/** One HTTP/1.1 request, written as given (the target is sent byte for byte). */
async function request(from: string, host: string, port: number, target: string, headers: Record<string, string> = {}): Promise<Answer> {
  const lines = Object.entries({ host: 'api', connection: 'close', ...headers }).map(([k, v]) => `${k}: ${v}\r\n`);
  return parseAnswer(await exchange(from, host, port, `GET ${target} HTTP/1.1\r\n${lines.join('')}\r\n`));
}

/** An opaque TCP round trip through tcp-echo: 'allow' when the bytes came back, else how it ended. */
async function tcpEcho(from: string, host: string, port = 7000): Promise<string> {
  const marker = id('tcp');
  const x = await exchange(from, host, port, marker, 1000);
  return x.received === marker ? 'allow' : x.received === '' && (x.end === 'reset' || x.end === 'eof') ? 'deny' : `${x.end} ${JSON.stringify(x.received)}`;
}

/**
 * A TCP connection held open through tcp-echo. `cut()` says when and how the other side ended it (a reset, or a
 * FIN that ends what the client can read); `alive()` round-trips a few bytes on it.
 */
async function hold(from: string, port = 7000): Promise<{ cut: () => { ms: number; how: 'reset' | 'fin' } | undefined; alive: () => Promise<boolean>; close: () => void }> {
  const s = connectInNetns(lab.pod(from).netnsPath, { host: vip, port, timeoutMs: 3000 });
  let cut: { ms: number; how: 'reset' | 'fin' } | undefined;
  let got = '';
  s.on('data', (d: Buffer) => (got += d.toString('latin1')));
  s.on('error', (err: NodeJS.ErrnoException) => (cut ??= { ms: performance.now(), how: err.code === 'ECONNRESET' ? 'reset' : 'fin' }));
  s.on('end', () => (cut ??= { ms: performance.now(), how: 'fin' }));
  s.on('close', () => (cut ??= { ms: performance.now(), how: 'fin' }));
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  const alive = async () => {
    if (cut !== undefined) return false;
    const marker = id('ping');
    s.write(marker);
    try {
      await until('the echo', async () => got.includes(marker) || cut !== undefined, 2000);
    } catch {
      return false;
    }
    return got.includes(marker);
  };
  if (!(await alive())) throw new Error(`a TCP connection from ${from} to ${vip}:${port} does not echo`);
  return { cut: () => cut, alive, close: () => s.destroy() };
}

// --- What the destination agent wrote: one JSON line per connection ("connection") and per request ("request").

interface AuditLine {
  msg: string;
  request_id?: string;
  path?: string;
  status?: number;
  grpc_status?: string;
  security?: string;
  src: { ip?: string; principal?: string; workload?: string };
  dst: { port: number; principal?: string };
  authz?: { decision: 'allow' | 'deny'; code: string; action: string; policy?: string; rule?: number; fail_safe?: boolean; reason?: string };
}

function auditLines(node = 'node-b', from = 0): AuditLine[] {
  return lab
    .agentLog(node)
    .slice(from)
    .split('\n')
    .filter((l) => l.includes('"log":"access"'))
    .map((l) => JSON.parse(l) as AuditLine);
}

/** Where the agent's log ends now: lines after it are the ones a test caused. */
const logMark = (node = 'node-b') => lab.agentLog(node).length;

/** A decision as the matrix prints it: "allow", "allow shop/allow-web#1", "deny shop/deny-admin#0", "deny (no ALLOW match)". */
function describeDecision(a: AuditLine['authz']): string {
  if (!a) return 'no authz';
  const by = a.policy ? ` ${a.policy}#${a.rule}` : a.code === 'denied_no_allow_match' ? ' (no ALLOW match)' : a.code === 'allowed_no_policy' ? '' : ` (${a.code})`;
  return `${a.decision}${by}${a.fail_safe ? ' fail-safe' : ''}`;
}

/** What l7-echo in `api` logged (one JSON line per request and WebSocket it got). */
function backendSaw(): { event: string; name: string; path: string; headers: Record<string, string | string[]> }[] {
  return lab
    .podLog(API)
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { event: string; name: string; path: string; headers: Record<string, string | string[]> });
}

// --- Policies: applied by a test, removed after it; the next test starts only once the destination agent shows
// none in force (/debug/policies reads the same policy set the inbound path checks).

let applied: KubeObject[] = [];

async function apply(yamlText: string): Promise<void> {
  const objects = parseAllDocuments(yamlText).map((d) => d.toJS() as KubeObject);
  await lab.apply(objects);
  for (const o of objects) {
    if (!applied.some((a) => a.kind === o.kind && a.metadata.name === o.metadata.name && a.metadata.namespace === o.metadata.namespace)) applied.push(o);
  }
}

async function remove(kind: string, name: string, ns = 'shop'): Promise<void> {
  await lab.remove(kind, ns, name);
  applied = applied.filter((a) => !(a.kind === kind && a.metadata.name === name && a.metadata.namespace === ns));
}

interface PoliciesView {
  authorization: { policy: string }[];
  peerAuthentication: { mode: string };
}

/** Waits until the destination agent has exactly these AuthorizationPolicies for `api`, and this mTLS mode. */
async function inForce(policies: string[], mode = 'PERMISSIVE'): Promise<void> {
  const want = JSON.stringify([[...policies].sort(), mode]);
  let seen = '';
  await until(`policies ${want} in force on node-b`, async () => {
    const r = await lab.httpGetFromNode('node-b', METRICS_PORT, `/debug/policies?workload=${API}`);
    const v = JSON.parse(r.body) as PoliciesView;
    seen = JSON.stringify([v.authorization.map((p) => p.policy).sort(), v.peerAuthentication.mode]);
    return seen === want;
  }, SETTLE_MS).catch((err: Error) => {
    throw new Error(`${err.message}; last seen ${seen}`);
  });
}

const authz = (name: string, action: 'ALLOW' | 'DENY', rules: string) => `apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ${name}, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  action: ${action}
  rules:
${rules}`;

const peerAuth = (mode: string) => `apiVersion: security.trellis.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: mtls, namespace: shop}
spec:
  mtls: {mode: ${mode}}
`;

describe.each(['auto', 'nft'] as const)('security on the inbound path (two-node lab, --capture %s)', (capture) => {
  beforeAll(async () => {
    requireRoot('end-to-end security tests');
    labName = `${labBase}${capture[0]}`;
    lab = await Lab.up(fixtures, { name: labName, agentArgs: ['--capture', capture] });
    vip = lab.services.find((s) => s.namespace === 'shop' && s.name === 'api')!.clusterIP;
    podIp = lab.pod(API).ip;
    // The backends are up when their ports accept; probed from node-b, which bypasses the mesh.
    const node = lab.node('node-b');
    await Promise.all(
      [8080, 9090, 7000, 7070].map((port) =>
        until(`api to listen on ${port}`, () =>
          new Promise<boolean>((resolve) => {
            const s = connectInNetns(node.netnsPath, { host: podIp, port, timeoutMs: 1000 });
            s.once('connect', () => (s.destroy(), resolve(true)));
            s.once('error', () => resolve(false));
          }), 20_000),
      ),
    );
  });

  afterEach(async ({ task }) => {
    for (const o of [...applied].reverse()) await lab.remove(o.kind, o.metadata.namespace ?? 'default', o.metadata.name);
    applied = [];
    // Also after a failure, so that one failed test does not leave its policies to the next; its own failure is
    // the one to report, though.
    await inForce([]).catch((err: Error) => {
      if (task.result?.state === 'pass') throw err;
    });
  });

  afterAll(async () => {
    await lab?.down();
    const { stdout } = await run('ip', ['netns', 'list']);
    expect(stdout).not.toContain(`trl-${labName}-`);
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  // --- Identity: only the destination agent says who called.

  it("drops identity headers a client forged: the app sees the agent's x-forwarded-client-cert with the verified caller", async () => {
    const FORGED = [
      `x-forwarded-client-cert: By=${spiffe('shop', 'api')};URI=${spiffe('shop', 'admin')}`,
      `X-Forwarded-Client-Cert: URI=${spiffe('kube-system', 'root')}`,
      `x-trellis-peer-identity: ${spiffe('shop', 'admin')}`,
      `X-TRELLIS-PEER-IDENTITY: ${spiffe('kube-system', 'root')}`,
    ].join('\r\n');
    const xfcc = (caller: string) => `By=${spiffe('shop', 'api')};URI=${caller}`;
    const cases: [string, string, string, number, string | undefined][] = [
      ['web -> Service VIP :8080', WEB, vip, 8080, xfcc(spiffe('shop', 'web'))],
      ['web -> pod IP :9090', WEB, podIp, 9090, xfcc(spiffe('shop', 'web'))],
      ['caller -> Service VIP :9090', CALLER, vip, 9090, xfcc(spiffe('elsewhere', 'caller'))],
      // Plaintext: no verified identity, so no header at all.
      ['outsider -> Service VIP :8080', OUTSIDER, vip, 8080, undefined],
      ['outsider -> pod IP :8080', OUTSIDER, podIp, 8080, undefined],
    ];
    for (const [what, from, host, port, want] of cases) {
      const x = parseAnswer(await exchange(from, host, port, `GET /api/whoami HTTP/1.1\r\nHost: api\r\nConnection: close\r\n${FORGED}\r\n\r\n`));
      expect(x.status, `${what}: ${x.body.slice(0, 200)}`).toBe(200);
      expect([x.echo!.headers['x-forwarded-client-cert'], x.echo!.headers['x-trellis-peer-identity']], what).toEqual([want, undefined]);
    }

    // HTTP/2 (h2c with prior knowledge) from a program in the pod, and WebSocket handshakes, which are replayed to
    // the app from their raw headers: the same.
    const ws = (from: string, marker: string) =>
      exchange(from, vip, 8080, `GET /ws/${marker} HTTP/1.1\r\nHost: api\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${FORGED}\r\n\r\n`, 500);
    const wsWeb = id('ws');
    const wsOutsider = id('ws');
    const [h2, upgradedWeb, upgradedOutsider] = await Promise.all([
      tool<HttpClientSummary>(WEB, [
        'http-client', '--url', `http://${vip}:8080/api/whoami-h2`, '--http2', '--replies', '1',
        '--header', `x-forwarded-client-cert: URI=${spiffe('shop', 'admin')}`, '--header', `x-trellis-peer-identity: ${spiffe('shop', 'admin')}`,
      ]),
      ws(WEB, wsWeb),
      ws(OUTSIDER, wsOutsider),
    ]);
    const h2echo = h2.replies![0]!.body as EchoReply;
    // The port is declared http (by its name): the app is spoken to in HTTP/1.1, whatever the client spoke.
    expect([h2.replies![0]!.status, h2echo.protocol, h2echo.headers['x-forwarded-client-cert'], h2echo.headers['x-trellis-peer-identity']]).toEqual([
      200, 'http/1.1', xfcc(spiffe('shop', 'web')), undefined,
    ]);

    expect(upgradedWeb.received).toMatch(/^HTTP\/1\.1 101 /);
    expect(upgradedOutsider.received).toMatch(/^HTTP\/1\.1 101 /);
    const upgrades = await until('the backend to log both WebSockets', async () => {
      const seen = backendSaw().filter((l) => l.event === 'websocket' && (l.path.includes(wsWeb) || l.path.includes(wsOutsider)));
      return seen.length === 2 && seen;
    }, 2000);
    const headersOf = (marker: string) => upgrades.find((l) => l.path.includes(marker))!.headers;
    expect([headersOf(wsWeb)['x-forwarded-client-cert'], headersOf(wsWeb)['x-trellis-peer-identity']]).toEqual([xfcc(spiffe('shop', 'web')), undefined]);
    expect([headersOf(wsOutsider)['x-forwarded-client-cert'], headersOf(wsOutsider)['x-trellis-peer-identity']]).toEqual([undefined, undefined]);
  });

  // A `when` on the identity header is judged on the value the agent set, never on one the client sent: the headers
  // a client forged are dropped and the agent's own set before the policy runs.
  it('authorizes on the x-forwarded-client-cert the agent set, never on one a client forged', async () => {
    const forged = `x-forwarded-client-cert: By=${spiffe('shop', 'api')};URI=${spiffe('shop', 'admin')}`;
    const ask = async (from: string, port: number) =>
      parseAnswer(await exchange(from, vip, port, `GET /api/admin-only HTTP/1.1\r\nHost: api\r\nConnection: close\r\n${forged}\r\n\r\n`));
    await apply(authz('allow-admin-xfcc', 'ALLOW', `  - when: [{key: "request.headers[x-forwarded-client-cert]", values: ["*sa/admin"]}]
`));
    await inForce(['shop/allow-admin-xfcc']);
    for (const [from, port] of [[WEB, 8080], [CALLER, 9090], [OUTSIDER, 8080]] as const) {
      const x = await ask(from, port);
      expect(x.status, `${from} forging sa/admin: ${x.body.slice(0, 200)}`).toBe(403);
    }
    // The same policy shape matching the caller's real identity lets it in, forged header or not.
    await remove('AuthorizationPolicy', 'allow-admin-xfcc');
    await apply(authz('allow-web-xfcc', 'ALLOW', `  - when: [{key: "request.headers[x-forwarded-client-cert]", values: ["*sa/web"]}]
`));
    await inForce(['shop/allow-web-xfcc']);
    const web = await ask(WEB, 8080);
    expect(web.status, web.body.slice(0, 200)).toBe(200);
    expect(web.echo!.headers['x-forwarded-client-cert']).toBe(`By=${spiffe('shop', 'api')};URI=${spiffe('shop', 'web')}`);
    expect((await ask(CALLER, 9090)).status).toBe(403);
  });

  // --- The path bypass corpus: every spelling of /admin is refused (400), or normalized to /admin and denied, or is
  // another path that the app receives as such (documented in agent/model/normalize.ts). Never does the app
  // see /admin.

  const DENY_ADMIN_PATH = authz('deny-admin', 'DENY', `  - to: [{operation: {paths: ["/admin"]}}]
`);
  const ALLOW_API = authz('allow-api', 'ALLOW', `  - to: [{operation: {paths: ["/api/*"]}}]
`);
  const DENIED = '403 deny shop/deny-admin#0 at /admin';
  /** A request as written on the wire: target, version and Host given exactly (null: no Host line). */
  const wire = (target: string, opts: { version?: string; host?: string | null } = {}) => (headers: string) =>
    `GET ${target} HTTP/${opts.version ?? '1.1'}\r\n${opts.host === null ? '' : `Host: ${opts.host ?? 'api'}\r\n`}Connection: close\r\n${headers}\r\n`;
  // [spelling, request, with DENY /admin + ALLOW /api/*, with DENY /admin alone]
  const CORPUS: [string, (headers: string) => string, string, string][] = [
    ['//admin', wire('//admin'), DENIED, DENIED],
    ['/./admin', wire('/./admin'), DENIED, DENIED],
    ['/api/../admin', wire('/api/../admin'), DENIED, DENIED],
    ['/%61dmin', wire('/%61dmin'), DENIED, DENIED],
    ['/\\admin', wire('/\\admin'), DENIED, DENIED],
    ['/api/..\\admin', wire('/api/..\\admin'), DENIED, DENIED],
    // A target that does not start with "/" is refused by the HTTP/1.1 parser (llhttp) before normalization: a
    // leading "\" never gets to be read as "/".
    ['\\admin', wire('\\admin'), '400', '400'],
    ['/admin%2F', wire('/admin%2F'), '400', '400'],
    ['/admin%00', wire('/admin%00'), '400', '400'],
    ['/admin#x', wire('/admin#x'), '400', '400'],
    ['/api/..;/admin', wire('/api/..;/admin'), '400', '400'],
    // Other paths than /admin, as in Istio: the ALLOW on /api/* does not cover them, and alone the DENY does not
    // either, so the app gets them, exactly as they are (never as /admin).
    ['/admin;x', wire('/admin;x'), '403 deny (no ALLOW match) at /admin;x', '200 /admin;x'],
    ['/admin/', wire('/admin/'), '403 deny (no ALLOW match) at /admin/', '200 /admin/'],
    ['/ADMIN (case-sensitive)', wire('/ADMIN'), '403 deny (no ALLOW match) at /ADMIN', '200 /ADMIN'],
    // The Host does not take part: /admin is /admin whatever the request names.
    ['HTTP/1.0, no Host', wire('/admin', { version: '1.0', host: null }), DENIED, DENIED],
    ['Host with port', wire('/admin', { host: 'api.shop.svc.cluster.local:8080' }), DENIED, DENIED],
    ['uppercase Host', wire('/admin', { host: 'API.SHOP.SVC.CLUSTER.LOCAL' }), DENIED, DENIED],
    // Absolute-form is refused (normalize.ts reads origin-form only); were it accepted, it would have to be denied.
    ['absolute-form target', wire('http://api.shop.svc.cluster.local:8080/admin'), '400', '400'],
    // Controls: allowed, and the app receives the normalized path.
    ['/api/x (control)', wire('/api/x'), '200 /api/x', '200 /api/x'],
    ['/api//x/./y/../z (control)', wire('/api//x/./y/../z'), '200 /api/x/z', '200 /api/x/z'],
  ];
  const ROUTES: [string, string, () => string][] = [
    ['web -> VIP', WEB, () => vip],
    ['web -> pod IP', WEB, () => podIp],
    ['outsider -> VIP', OUTSIDER, () => vip],
    ['outsider -> pod IP', OUTSIDER, () => podIp],
  ];

  /** One corpus answer: "400", "200 <path the app got>", or "403 <decision> at <path the policy saw>". */
  async function outcome(status: number | string, echo: EchoReply | undefined, rid: string, mark: number): Promise<string> {
    if (status === 200) return `200 ${echo?.path}`;
    if (status !== 403) return String(status);
    const line = await until(`the audit line of ${rid}`, async () => auditLines('node-b', mark).find((l) => l.request_id === rid), 2000).catch(() => undefined);
    return line ? `403 ${describeDecision(line.authz)} at ${line.path}` : '403 (no audit line on node-b)';
  }

  async function attempt(from: string, host: string, make: (headers: string) => string, run: string, mark: number): Promise<string> {
    const rid = id(run);
    const a = parseAnswer(await exchange(from, host, 8080, make(`x-request-id: ${rid}\r\nx-corpus: ${run}\r\n`)));
    return outcome(a.status, a.echo, rid, mark);
  }

  // The spellings that HTTP/2 can carry in :path (h2c with prior knowledge), with the DENY alone.
  const CORPUS_H2: [string, string][] = [
    ['//admin', DENIED], ['/./admin', DENIED], ['/api/../admin', DENIED], ['/%61dmin', DENIED], ['/\\admin', DENIED],
    ['/admin%2F', '400'], ['/admin%00', '400'], ['/admin#x', '400'], ['/api/..;/admin', '400'],
    ['/admin;x', '200 /admin;x'], ['/admin/', '200 /admin/'], ['/ADMIN', '200 /ADMIN'], ['/api/x', '200 /api/x'],
  ];

  it('lets no spelling of /admin reach the app, through the Service VIP or straight to the pod IP, mTLS or plaintext', async () => {
    const run = id('corpus');
    const failures: string[] = [];
    const tables: string[] = [];
    for (const [phase, policies, column] of [['DENY /admin + ALLOW /api/*', `${DENY_ADMIN_PATH}---\n${ALLOW_API}`, 2], ['DENY /admin alone', DENY_ADMIN_PATH, 3]] as const) {
      if (column === 3) await remove('AuthorizationPolicy', 'allow-api');
      await apply(policies);
      await inForce(phase.includes('ALLOW') ? ['shop/deny-admin', 'shop/allow-api'] : ['shop/deny-admin']);
      const mark = logMark();
      // Each route sends the corpus in order; the routes run side by side.
      const got = await Promise.all(ROUTES.map(async ([, from, host]) => {
        const out: string[] = [];
        for (const [, make] of CORPUS) out.push(await attempt(from, host(), make, run, mark));
        return out;
      }));
      const rows = CORPUS.map((c, k) => [c[0], ...ROUTES.map((_, r) => (got[r]![k] === c[column] ? got[r]![k]! : `GOT ${got[r]![k]} WANT ${c[column]}`))]);
      tables.push(`${phase}\n${table(['request', ...ROUTES.map((r) => r[0])], rows)}`);
      for (const [r, results] of got.entries()) for (const [k, v] of results.entries()) if (v !== CORPUS[k]![column]) failures.push(`${phase}: ${ROUTES[r]![0]} ${CORPUS[k]![0]}: got "${v}", want "${CORPUS[k]![column]}"`);
    }
    const mark = logMark();
    const h2 = await Promise.all(([['web -> VIP (h2c)', WEB, vip], ['outsider -> pod IP (h2c)', OUTSIDER, podIp]] as const).map(async ([, from, host]) => {
      const prefix = `${run}-${from.split('/')[1]}-h2-`;
      const r = await tool<HttpClientSummary>(from, [
        'http-client', '--url', `http://${host}:8080/`, '--http2', '--count', String(CORPUS_H2.length), '--replies', String(CORPUS_H2.length),
        '--header', `x-corpus: ${run}`, '--request-id-prefix', prefix, '--requests', JSON.stringify(CORPUS_H2.map(([p]) => ({ path: p }))),
      ]);
      return Promise.all(r.replies!.map((x) => outcome(x.status, x.body as EchoReply, `${prefix}${x.i}`, mark)));
    }));
    const h2rows = CORPUS_H2.map(([p, want], k) => [p, ...h2.map((col) => (col[k] === want ? want : `GOT ${col[k]} WANT ${want}`))]);
    tables.push(`DENY /admin alone, HTTP/2\n${table(['request', 'web -> VIP (h2c)', 'outsider -> pod IP (h2c)'], h2rows)}`);
    for (const [c, col] of h2.entries()) for (const [k, v] of col.entries()) if (v !== CORPUS_H2[k]![1]) failures.push(`HTTP/2 ${c === 0 ? 'web -> VIP' : 'outsider -> pod IP'} ${CORPUS_H2[k]![0]}: got "${v}", want "${CORPUS_H2[k]![1]}"`);
    expect(failures, `\n${tables.join('\n\n')}\n`).toEqual([]);
    // What the app saw of this run: the controls, and the three other paths with the DENY alone; never /admin.
    const seen = backendSaw().filter((l) => l.event === 'request' && l.headers['x-corpus'] === run).map((l) => l.path);
    expect(seen).not.toContain('/admin');
    const count = (p: string) => seen.filter((x) => x === p).length;
    expect(['/api/x', '/api/x/z', '/admin;x', '/admin/', '/ADMIN'].map(count)).toEqual([10, 8, 6, 6, 6]);
    expect(seen).toHaveLength(36);
  });

  it('writes an audit line for a request it refuses as malformed (400), as for any other request', async () => {
    // Straight from a pod outside the mesh to the pod IP: the destination agent is the only one on the way.
    const refused = ['/admin%2F', '/admin%00', '/admin#x', 'http://api/admin'];
    const mark = logMark();
    const rids: string[] = [];
    for (const target of refused) {
      const rid = id('refused');
      rids.push(rid);
      const a = parseAnswer(await exchange(OUTSIDER, podIp, 8080, wire(target)(`x-request-id: ${rid}\r\n`)));
      expect(a.status, target).toBe(400);
    }
    // And one that is not refused, to show the trail works.
    const okRid = id('refused-control');
    expect(parseAnswer(await exchange(OUTSIDER, podIp, 8080, wire('/api/x')(`x-request-id: ${okRid}\r\n`))).status).toBe(200);
    // The trail is written in order: once the control's line is there, the lines of the requests answered before it
    // would be too.
    await until('the control request to be audited', async () => auditLines('node-b', mark).some((l) => l.request_id === okRid), 2000);
    const lines = auditLines('node-b', mark);
    expect(rids.map((rid, k) => `${refused[k]}: ${lines.filter((l) => l.request_id === rid).map((l) => l.status).join(',') || 'no line'}`)).toEqual(refused.map((t) => `${t}: 400`));
  });

  // --- PeerAuthentication.

  it('STRICT refuses plaintext before any byte reaches the app; PERMISSIVE accepts and labels it; both flip without a restart', async () => {
    const agentPid = async () => (await lab.status()).nodes.find((n) => n.name === 'node-b')!.agent!.pid;
    const pid = await agentPid();
    const plain = { reporter: 'destination', source_workload: 'outsider', destination_workload: 'api', connection_security_policy: 'none' };
    const plainRequests = async () => sumOf(await metrics(), 'trellis_requests_total', plain);
    const plainTcp = async () => sumOf(await metrics(), 'trellis_tcp_connections_opened_total', plain);

    // No PeerAuthentication: PERMISSIVE, plaintext served and labelled "none".
    let requests = await plainRequests();
    let tcp = await plainTcp();
    expect((await request(OUTSIDER, vip, 8080, '/api/permissive')).status).toBe(200);
    expect(await tcpEcho(OUTSIDER, vip)).toBe('allow');
    await until('plaintext to be counted as connection_security_policy="none"', async () => (await plainRequests()) === requests + 1 && (await plainTcp()) === tcp + 1, 2000);
    const plainHeld = await hold(OUTSIDER);
    const meshHeld = await hold(WEB);

    try {
      // STRICT, namespace-wide.
      const mark = logMark();
      const denials = async () => sumOf(await metrics(), 'trellis_authz_decisions_total', { decision: 'deny', reason: 'denied_plaintext' });
      const denialsBefore = await denials();
      let started = performance.now();
      await apply(peerAuth('STRICT'));
      await until('STRICT to refuse plaintext', async () => (await request(OUTSIDER, vip, 8080, '/api/poll')).status !== 200, SETTLE_MS);
      const strictMs = performance.now() - started;
      const marker = id('strict');
      const refusedHttp = await exchange(OUTSIDER, vip, 8080, `GET /api/${marker} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n`);
      // Reset as soon as accepted (the client may see it before it sees itself connected): nothing came back.
      expect([refusedHttp.received, refusedHttp.end]).toEqual(['', 'reset']);
      const refusedPod = await exchange(OUTSIDER, podIp, 9090, `GET /api/${marker} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n`);
      expect([refusedPod.received, refusedPod.end]).toEqual(['', 'reset']);
      expect(await tcpEcho(OUTSIDER, vip)).toBe('deny');
      // The open plaintext connection is cut too; the mTLS one goes on, and mTLS callers are served.
      await until('the open plaintext connection to be cut', async () => plainHeld.cut() !== undefined, SETTLE_MS);
      expect(await meshHeld.alive()).toBe(true);
      expect((await request(WEB, vip, 8080, '/api/mtls')).status).toBe(200);
      // Nothing of the refused requests reached the app; each refusal is counted and audited.
      expect(backendSaw().filter((l) => l.path.includes(marker))).toEqual([]);
      expect((await denials()) - denialsBefore).toBeGreaterThanOrEqual(4);
      const refusals = auditLines('node-b', mark).filter((l) => l.msg === 'connection' && l.src.ip === lab.pod(OUTSIDER).ip && l.authz?.code === 'denied_plaintext');
      expect(refusals.length).toBeGreaterThanOrEqual(3);

      // PERMISSIVE: plaintext served again, counted as "none".
      requests = await plainRequests();
      started = performance.now();
      await apply(peerAuth('PERMISSIVE'));
      await until('PERMISSIVE to accept plaintext', async () => (await request(OUTSIDER, vip, 8080, '/api/poll')).status === 200, SETTLE_MS);
      const permissiveMs = performance.now() - started;
      const back = await request(OUTSIDER, vip, 8080, `/api/${marker}-back`);
      expect([back.status, back.echo?.path, back.echo?.headers['x-forwarded-client-cert']]).toEqual([200, `/api/${marker}-back`, undefined]);
      await until('plaintext to be counted as "none" again', async () => (await plainRequests()) >= requests + 2, 2000);

      // No PeerAuthentication at all: PERMISSIVE, the default.
      await remove('PeerAuthentication', 'mtls');
      await inForce([]);
      expect((await request(OUTSIDER, podIp, 8080, '/api/default')).status).toBe(200);
      expect(await agentPid()).toBe(pid);
      console.log(`STRICT in force after ${strictMs.toFixed(0)} ms, PERMISSIVE again after ${permissiveMs.toFixed(0)} ms`);
    } finally {
      plainHeld.close();
      meshHeld.close();
    }
  });

  // --- gRPC.

  it('answers a denied gRPC call PERMISSION_DENIED (7) and lets the other methods through', async () => {
    await apply(authz('deny-hello', 'DENY', `  - to: [{operation: {paths: ["/trellis.test.Echo/Hello"]}}]
`));
    await inForce(['shop/deny-hello']);
    const mark = logMark();
    for (const from of [WEB, OUTSIDER]) {
      const denied = await tool<GrpcClientSummary>(from, ['grpc-client', '--to', `${vip}:7070`, '--method', '/trellis.test.Echo/Hello', '--count', '3']);
      expect(denied, denied.details.join('; ')).toMatchObject({ sent: 3, ok: 0, statusCounts: { '7': 3 }, names: {} });
      // grpc-message is percent-encoded only outside printable ASCII and for "%" (gRPC over HTTP/2): a client
      // shows it as sent.
      expect(denied.details[0], 'grpc-message as the client decodes it').toBe('RBAC: access denied');
      const ok = await tool<GrpcClientSummary>(from, ['grpc-client', '--to', `${vip}:7070`, '--count', '3']);
      expect(ok, ok.details.join('; ')).toMatchObject({ ok: 3, statusCounts: { '0': 3 } });
    }
    const lines = await until('6 denied calls to be audited', async () => {
      const l = auditLines('node-b', mark).filter((x) => x.msg === 'request' && x.path === '/trellis.test.Echo/Hello');
      return l.length >= 6 && l;
    }, 2000);
    expect(lines.map((l) => [l.status, l.grpc_status, describeDecision(l.authz)])).toEqual(Array(6).fill([200, '7', 'deny shop/deny-hello#0']));
  });

  // --- Re-authorization of open opaque connections.

  it('cuts an open opaque TCP connection that a new DENY forbids, within a bounded time, and no other', async () => {
    const web = await hold(WEB);
    const caller = await hold(CALLER);
    const outsider = await hold(OUTSIDER);
    try {
      const mark = logMark();
      const cuts = async () => sumOf(await metrics(), 'trellis_authz_decisions_total', { level: 'connection', decision: 'deny', policy: 'shop/deny-web-tcp' });
      const before = await cuts();
      const started = performance.now();
      await apply(authz('deny-web-tcp', 'DENY', `  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
    to: [{operation: {ports: ["7000"]}}]
`));
      await until('the connection from web to be cut', async () => web.cut() !== undefined, SETTLE_MS);
      const cut = web.cut()!;
      console.log(`open connection cut (${cut.how}) ${(cut.ms - started).toFixed(0)} ms after the DENY was written`);
      expect(cut.ms - started).toBeLessThan(3000);
      expect([await caller.alive(), await outsider.alive()]).toEqual([true, true]);
      // New connections from web are refused too; the others still pass.
      expect([await tcpEcho(WEB, vip), await tcpEcho(CALLER, vip), await tcpEcho(OUTSIDER, podIp)]).toEqual(['deny', 'allow', 'allow']);
      expect(lab.agentLog('node-b').slice(mark)).toMatch(new RegExp(`"principal":"${spiffe('shop', 'web')}".*open connection cut: the policies now deny it`));
      expect((await cuts()) - before).toBe(2);
      // The cut connection's one audit line says it was cut, and by which policy.
      const webIp = lab.pod(WEB).ip;
      const line = await until('the audit line of the cut connection', async () =>
        auditLines('node-b', mark).find((l) => l.msg === 'connection' && l.src.ip === webIp && l.dst.port === 7000 && (l as { bytes_received?: number }).bytes_received! > 0), 2000);
      expect(describeDecision(line.authz), `audit line of the cut connection: ${JSON.stringify(line)}`).toBe('deny shop/deny-web-tcp#0');
    } finally {
      web.close();
      caller.close();
      outsider.close();
    }
  });

  // A WebSocket (any Upgrade) is checked again as the request that upgraded it whenever the policies change.
  it('cuts an open WebSocket that a new DENY forbids, and no other', async () => {
    const open = async (from: string) => {
      const s = connectInNetns(lab.pod(from).netnsPath, { host: vip, port: 8080, timeoutMs: 3000 });
      let got = '';
      let cut: number | undefined;
      s.on('data', (d: Buffer) => (got += d.toString('latin1')));
      for (const e of ['error', 'end', 'close']) s.on(e, () => (cut ??= performance.now()));
      await new Promise<void>((resolve, reject) => {
        s.once('connect', resolve);
        s.once('error', reject);
      });
      s.write(`GET /ws/${id('cut')} HTTP/1.1\r\nHost: api\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
      await until(`the 101 for ${from}`, async () => got.includes('\r\n\r\n'), 3000);
      expect(got, from).toMatch(/^HTTP\/1\.1 101 /);
      // A masked text frame (mask key 0) and its echo: the connection still carries bytes both ways.
      const alive = async () => {
        if (cut !== undefined) return false;
        const text = id('frame');
        s.write(Buffer.concat([Buffer.from([0x81, 0x80 | text.length, 0, 0, 0, 0]), Buffer.from(text)]));
        return until('the echo', async () => got.includes(text) || cut !== undefined, 2000).then(() => got.includes(text), () => false);
      };
      expect(await alive(), `${from}: the WebSocket echoes`).toBe(true);
      return { alive, cut: () => cut, close: () => s.destroy() };
    };
    const web = await open(WEB);
    const caller = await open(CALLER);
    try {
      const mark = logMark();
      const started = performance.now();
      await apply(authz('deny-web-ws', 'DENY', `  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
    to: [{operation: {paths: ["/ws/*"]}}]
`));
      await until('the WebSocket from web to be cut', async () => web.cut() !== undefined, SETTLE_MS);
      console.log(`open WebSocket cut ${(web.cut()! - started).toFixed(0)} ms after the DENY was written`);
      expect(web.cut()! - started).toBeLessThan(3000);
      expect(await caller.alive(), 'the caller’s WebSocket, which the DENY does not match').toBe(true);
      expect(lab.agentLog('node-b').slice(mark)).toMatch(new RegExp(`"principal":"${spiffe('shop', 'web')}".*upgraded connection cut: the policies now deny it`));
    } finally {
      web.close();
      caller.close();
    }
  });

  // --- The audit trail.

  it('gives a request without x-request-id one, the same in the app and in the audit lines of both agents', async () => {
    const marker = id('noid');
    const marks = { a: logMark('node-a'), b: logMark('node-b') };
    // Meshed: the source agent makes the id, the destination keeps it. Plaintext: the destination makes it.
    for (const from of [WEB, OUTSIDER]) expect((await request(from, vip, 8080, `/api/${marker}`)).status).toBe(200);
    const app = await until('the app to log both requests', async () => {
      const seen = backendSaw().filter((l) => l.event === 'request' && l.path === `/api/${marker}`);
      return seen.length === 2 && seen;
    }, 2000);
    const ids = app.map((l) => l.headers['x-request-id'] as string);
    expect(ids.every((x) => /^[0-9a-f-]{36}$/.test(x)) && ids[0] !== ids[1], ids.join()).toBe(true);
    const logged = (node: 'a' | 'b') => auditLines(`node-${node}`, marks[node]).filter((l) => l.msg === 'request' && l.path === `/api/${marker}`).map((l) => l.request_id);
    await until('the audit lines of both requests', async () => logged('a').length >= 1 && logged('b').length >= 2, 2000);
    // node-a saw only the meshed request (the plaintext caller has no agent on its way out).
    expect({ a: logged('a'), b: logged('b').sort() }).toEqual({ a: [ids[0]], b: [...ids].sort() });
  });

  it('writes one audit line per request, with the request ids the client sent, over 10 000 requests', async () => {
    await apply(DENY_ADMIN_PATH);
    await inForce(['shop/deny-admin']);
    const N = 10_000;
    const prefix = `${id('audit')}-`;
    const marks = { a: logMark('node-a'), b: logMark('node-b') };
    const before = await metrics();
    const started = performance.now();
    // Every other request is denied: denials are audited like the rest.
    const r = await tool<HttpClientSummary>(WEB, [
      'http-client', '--url', `http://${vip}:8080/`, '--count', String(N), '--concurrency', '16', '--request-id-prefix', prefix,
      '--requests', JSON.stringify([{ path: '/api/audit' }, { path: '/admin' }]),
    ], 120_000);
    const seconds = (performance.now() - started) / 1000;
    console.log(`${N} requests through the mesh in ${seconds.toFixed(1)} s (${(N / seconds).toFixed(0)}/s, including process start)`);
    expect(r).toMatchObject({ sent: N, statusCounts: { '200': N / 2, '403': N / 2 } });
    const trail = (node: 'a' | 'b') => {
      const text = lab.agentLog(`node-${node}`).slice(marks[node]);
      return text.split('\n').filter((l) => l.includes(prefix)).map((l) => JSON.parse(l) as AuditLine).filter((l) => l.msg === 'request');
    };
    await until(`${N} audit lines on node-b`, async () => trail('b').length >= N, 10_000);
    const sent = new Set(Array.from({ length: N }, (_, i) => `${prefix}${i}`));
    for (const node of ['b', 'a'] as const) {
      const lines = trail(node);
      const ids = lines.map((l) => l.request_id!);
      const logged = new Set(ids);
      const missing = [...sent].filter((x) => !logged.has(x));
      const unknown = ids.filter((x) => !sent.has(x));
      const seen = new Set<string>();
      const twice = ids.filter((x) => (seen.has(x) ? true : (seen.add(x), false)));
      expect({ node, lines: lines.length, missing: missing.slice(0, 5), unknown: unknown.slice(0, 5), twice: twice.slice(0, 5) }).toEqual({ node, lines: N, missing: [], unknown: [], twice: [] });
    }
    // The destination's lines carry the decision of each request: even numbers /api/audit, odd ones /admin.
    const wrong = trail('b').filter((l) => {
      const even = Number(l.request_id!.slice(prefix.length)) % 2 === 0;
      return even ? !(l.status === 200 && l.authz?.decision === 'allow') : !(l.status === 403 && describeDecision(l.authz) === 'deny shop/deny-admin#0');
    });
    expect(wrong.slice(0, 3)).toEqual([]);
    const after = await metrics();
    const delta = (name: string, match: Record<string, string> = {}) => sumOf(after, name, match) - sumOf(before, name, match);
    expect(delta('trellis_authz_decisions_total', { level: 'request' })).toBe(N);
    expect(delta('trellis_authz_decisions_total', { level: 'request', decision: 'deny', policy: 'shop/deny-admin' })).toBe(N / 2);
    expect(delta('trellis_audit_dropped_total')).toBe(0);
  });

  // --- The policy matrix: four callers, four targets, three policy sets.

  // allow-web: rule 0 lets web call /api/* on 8080; rule 1 lets namespace elsewhere open port 7000 (L4 fields
  // only, so it can match an opaque connection); rule 2 would let web open 7000 but names a method, an HTTP field
  // that an opaque connection cannot have: as in Istio, an ALLOW rule with HTTP fields never matches opaque TCP.
  const ALLOW_WEB = authz('allow-web', 'ALLOW', `  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
    to: [{operation: {ports: ["8080"], paths: ["/api/*"]}}]
  - from: [{source: {namespaces: ["elsewhere"]}}]
    to: [{operation: {ports: ["7000"]}}]
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
    to: [{operation: {ports: ["7000"], methods: ["GET"]}}]
`);
  // deny-admin: /admin on ports 8080 and 7000, from anyone. On the opaque port its paths cannot be checked: as in
  // Istio, a DENY rule is then read without its HTTP fields, so it denies every connection to 7000. Port 9090 is
  // not named, so the rule does not apply there at all.
  const DENY_ADMIN = authz('deny-admin', 'DENY', `  - to: [{operation: {ports: ["8080", "7000"], paths: ["/admin", "/admin/*"]}}]
`);

  const CALLERS: [string, string][] = [
    ['web (allowed principal)', WEB],
    ['other (other principal)', OTHER],
    ['caller (other namespace)', CALLER],
    ['outsider (plaintext)', OUTSIDER],
  ];
  const TARGETS: { name: string; port: number; path?: string }[] = [
    { name: 'GET /api/x :8080', port: 8080, path: '/api/x' },
    { name: 'GET /admin :8080', port: 8080, path: '/admin' },
    { name: 'GET /admin :9090', port: 9090, path: '/admin' },
    { name: 'TCP :7000 (opaque)', port: 7000 },
  ];
  const A = 'allow';
  const NO_ALLOW = 'deny (no ALLOW match)';
  // Expected, row by row (CALLERS) and column by column (TARGETS), from Istio's documented semantics: DENY first,
  // any match denies; then, if an ALLOW policy selects the workload, one must match, else deny; no ALLOW policy:
  // allow. A plaintext caller has no principal and no namespace, so source rules naming them never match it.
  // Each cell is the decision and the policy#rule that took it, as the destination's audit line says.
  const MATRIX: [string, string, string[][]][] = [
    ['DENY only', DENY_ADMIN, [
      [A, 'deny shop/deny-admin#0', A, 'deny shop/deny-admin#0 fail-safe'],
      [A, 'deny shop/deny-admin#0', A, 'deny shop/deny-admin#0 fail-safe'],
      [A, 'deny shop/deny-admin#0', A, 'deny shop/deny-admin#0 fail-safe'],
      [A, 'deny shop/deny-admin#0', A, 'deny shop/deny-admin#0 fail-safe'],
    ]],
    ['ALLOW only', ALLOW_WEB, [
      ['allow shop/allow-web#0', NO_ALLOW, NO_ALLOW, `${NO_ALLOW} fail-safe`],
      [NO_ALLOW, NO_ALLOW, NO_ALLOW, NO_ALLOW],
      [NO_ALLOW, NO_ALLOW, NO_ALLOW, 'allow shop/allow-web#1'],
      [NO_ALLOW, NO_ALLOW, NO_ALLOW, NO_ALLOW],
    ]],
    ['ALLOW and DENY', `${ALLOW_WEB}---\n${DENY_ADMIN}`, [
      ['allow shop/allow-web#0', 'deny shop/deny-admin#0', NO_ALLOW, 'deny shop/deny-admin#0 fail-safe'],
      [NO_ALLOW, 'deny shop/deny-admin#0', NO_ALLOW, 'deny shop/deny-admin#0 fail-safe'],
      [NO_ALLOW, 'deny shop/deny-admin#0', NO_ALLOW, 'deny shop/deny-admin#0 fail-safe'],
      [NO_ALLOW, 'deny shop/deny-admin#0', NO_ALLOW, 'deny shop/deny-admin#0 fail-safe'],
    ]],
  ];

  /**
   * One cell: what the caller saw (HTTP 200 or 403; TCP echoed or cut) and the decision in the destination's
   * audit line for it. A cell where the two disagree shows both.
   */
  async function cell(from: string, t: (typeof TARGETS)[number], mark: number): Promise<string> {
    if (t.path) {
      const rid = id('matrix');
      const a = await request(from, vip, t.port, t.path, { 'x-request-id': rid });
      const seen = a.status === 200 ? 'allow' : a.status === 403 ? 'deny' : `status ${a.status}`;
      const line = await until(`the audit line of ${rid}`, async () => auditLines('node-b', mark).find((l) => l.request_id === rid), 2000).catch(() => undefined);
      const decided = line ? describeDecision(line.authz) : 'no audit line';
      return decided.startsWith(seen) ? decided : `client ${seen}, audit ${decided}`;
    }
    const seen = await tcpEcho(from, vip, t.port);
    const ip = lab.pod(from).ip;
    // One connection per caller to this port in this round: its line names the caller.
    const line = await until(`the audit line of ${from} -> ${t.port}`, async () =>
      auditLines('node-b', mark).find((l) => l.msg === 'connection' && l.dst.port === t.port && l.src.ip === ip), 3000).catch(() => undefined);
    const decided = line ? describeDecision(line.authz) : 'no audit line';
    return decided.startsWith(seen) ? decided : `client ${seen}, audit ${decided}`;
  }

  it('enforces the policy matrix (DENY only, ALLOW only, both) as Istio does, for mTLS and plaintext callers', async () => {
    // Two kinds of failure, told apart: a wrong outcome (allowed instead of denied, or the reverse, or the client and
    // the audit line disagreeing) and a right outcome credited to the wrong policy in the audit trail.
    const wrongOutcome: string[] = [];
    const wrongPolicy: string[] = [];
    const tables: string[] = [];
    for (const [mode, policies, want] of MATRIX) {
      await apply(policies);
      await inForce(parseAllDocuments(policies).map((d) => `shop/${(d.toJS() as KubeObject).metadata.name}`));
      const mark = logMark();
      const got = await Promise.all(CALLERS.map(([, from]) => Promise.all(TARGETS.map((t) => cell(from, t, mark)))));
      const rows = CALLERS.map(([who], r) => [who, ...TARGETS.map((_, c) => (got[r]![c] === want[r]![c] ? got[r]![c]! : `GOT ${got[r]![c]} WANT ${want[r]![c]}`))]);
      tables.push(`${mode}\n${table(['caller', ...TARGETS.map((t) => t.name)], rows)}`);
      for (const [r, row] of got.entries()) {
        for (const [c, v] of row.entries()) {
          const w = want[r]![c]!;
          if (v === w) continue;
          const where = `${mode}: ${CALLERS[r]![0]} x ${TARGETS[c]!.name}: got "${v}", want "${w}"`;
          (v.split(' ')[0] === w.split(' ')[0] ? wrongPolicy : wrongOutcome).push(where);
        }
      }
      for (const o of [...applied].reverse()) await remove(o.kind, o.metadata.name);
      await inForce([]);
    }
    const printed = `\n${tables.join('\n\n')}\n`;
    expect(wrongOutcome, printed).toEqual([]);
    expect(wrongPolicy, `the right outcome, credited to the wrong policy in the audit line:${printed}`).toEqual([]);
  });

  // --- Policy changes and the HTTP connections the source agent keeps open to the destination (it reuses them
  // across its clients' requests): a change applies to the next request on them, in both directions.

  it('applies a new DENY to the next request of a kept HTTP connection', async () => {
    expect((await request(WEB, vip, 8080, '/api/before')).status).toBe(200);
    await apply(authz('deny-web', 'DENY', `  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
    to: [{operation: {ports: ["8080"]}}]
`));
    await inForce(['shop/deny-web']);
    const a = await request(WEB, vip, 8080, '/api/after', { 'x-request-id': id('kept') });
    expect(a.status).toBe(403);
  });

  it('lifts a denial on the next request of a kept HTTP connection once the policy that denied it is gone', async () => {
    // `fresh` calls nothing before this test: the connection the source agent opens for it now is its first.
    await apply(ALLOW_WEB);
    await inForce(['shop/allow-web']);
    // No rule of allow-web can match `fresh`: its connection is denied as a whole, each request answered 403.
    expect((await request(FRESH, vip, 8080, '/api/x')).status).toBe(403);
    await remove('AuthorizationPolicy', 'allow-web');
    await inForce([]);
    // No AuthorizationPolicy at all: everything is allowed, as a plaintext caller (a new connection each time) sees.
    expect((await request(OUTSIDER, vip, 8080, '/api/x')).status).toBe(200);
    let last = '';
    await until('`fresh` to be allowed again', async () => {
      const rid = id('lifted');
      const mark = logMark();
      const a = await request(FRESH, vip, 8080, '/api/x', { 'x-request-id': rid });
      const line = auditLines('node-b', mark).find((l) => l.request_id === rid);
      last = `${a.status} ${line ? describeDecision(line.authz) : ''}`;
      return a.status === 200;
    }, SETTLE_MS).catch((err: Error) => {
      throw new Error(`${err.message}: with no policy in force, still answered "${last}"`);
    });
  });

  function table(head: string[], rows: string[][]): string {
    const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
    const line = (cells: string[]) => cells.map((v, c) => v.padEnd(widths[c]!)).join(' | ');
    return [line(head), widths.map((w) => '-'.repeat(w)).join('-+-'), ...rows.map(line)].join('\n');
  }
});
