// Protocol sniffing and the identity header, end to end: on a Service port that declares no protocol, a request
// whatever its method (PROPFIND, an extension method) is parsed as HTTP by the agents, so the app receives the
// destination agent's own x-forwarded-client-cert (a meshed caller's verified identity) or none (a plaintext caller
// outside the mesh), never one the client forged. A two-node lab of its own; needs root.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectInNetns } from '../../agent/native/index.js';
import type { KubeObject } from '../../agent/model/objects.js';
import { Lab } from '../../lab/cluster/lab.js';
import { labEnvPids } from '../../lab/cluster/procs.js';
import type { EchoReply } from '../../lab/tools/l7-echo.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const run = promisify(execFile);
const labName = `st${Math.random().toString(36).slice(2, 5)}`;
const WEB = 'shop/web';
const OUTSIDER = 'plain/outsider';
const API = 'shop/api';
/** The Service port: named "web", no appProtocol, so neither agent knows what it carries until it sniffs. */
const SERVICE_PORT = 8000;
const APP_PORT = 8080;
const spiffe = (ns: string, sa: string) => `spiffe://cluster.local/ns/${ns}/sa/${sa}`;

// The destination `api` (l7-echo, logging every request and every request it could not parse) on node-b; a meshed
// caller (web) and a caller outside the mesh (outsider, plaintext) on node-a.
const MANIFESTS = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, annotations: {trellis.dev/mesh: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{name: c, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: plain, labels: {app: outsider}}
spec:
  nodeName: node-a
  containers: [{name: c, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec:
  nodeName: node-b
  serviceAccountName: api
  containers:
    - name: http
      command: [trellis, tool, l7-echo, --port, "${APP_PORT}", --name, api, --log-requests]
      ports: [{containerPort: ${APP_PORT}}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: web, port: ${SERVICE_PORT}, targetPort: ${APP_PORT}}]
`;

let lab: Lab;
let vip: string;
let podIp: string;

interface Exchange {
  /** What came back, as latin1 text (one char per byte). */
  received: string;
  end: 'eof' | 'reset' | 'idle' | 'error';
}

/** Writes `data` on a new connection from pod `from` (its capture rules apply) and collects the answer. */
function exchange(from: string, host: string, port: number, data: string, idleMs = 1500): Promise<Exchange> {
  return new Promise((resolve) => {
    const s = connectInNetns(lab.pod(from).netnsPath, { host, port, timeoutMs: 3000 });
    let received = '';
    let timer: NodeJS.Timeout | undefined;
    const finish = (end: Exchange['end']) => {
      clearTimeout(timer);
      s.destroy();
      resolve({ received, end });
    };
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => finish('idle'), idleMs);
    };
    s.on('connect', () => {
      arm();
      s.write(data, 'latin1');
    });
    s.on('data', (d: Buffer) => {
      received += d.toString('latin1');
      arm();
    });
    s.on('end', () => finish('eof'));
    s.on('error', (err: NodeJS.ErrnoException) => finish(err.code === 'ECONNRESET' || err.code === 'EPIPE' ? 'reset' : 'error'));
  });
}

interface Answer {
  /** HTTP status, or how the connection ended without one. */
  status: number | Exchange['end'];
  body: string;
  /** l7-echo's reply, when it answered. */
  echo?: EchoReply;
}

/** The first response (l7-echo answers with content-length, the agents' refusals too). */
function parseAnswer(x: Exchange): Answer {
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(x.received);
  if (!m) return { status: x.end, body: x.received };
  const split = x.received.indexOf('\r\n\r\n');
  const body = split === -1 ? '' : x.received.slice(split + 4);
  let echo: EchoReply | undefined;
  try {
    const parsed = JSON.parse(body) as EchoReply;
    if (typeof parsed.path === 'string') echo = parsed;
  } catch {
    // A refusal of an agent (400): its text is the body.
  }
  return { status: Number(m[1]), body, ...(echo && { echo }) };
}

describe('a forged x-forwarded-client-cert on a sniffed port (two-node lab)', () => {
  beforeAll(async () => {
    requireRoot('end-to-end protocol sniffing tests');
    lab = await Lab.up(parseAllDocuments(MANIFESTS).map((d) => d.toJS() as KubeObject), { name: labName });
    vip = lab.services.find((s) => s.namespace === 'shop' && s.name === 'api')!.clusterIP;
    podIp = lab.pod(API).ip;
    // The backend is up when its port accepts; probed from node-b, which bypasses the mesh.
    const node = lab.node('node-b');
    await until(`api to listen on ${APP_PORT}`, () =>
      new Promise<boolean>((resolve) => {
        const s = connectInNetns(node.netnsPath, { host: podIp, port: APP_PORT, timeoutMs: 1000 });
        s.once('connect', () => (s.destroy(), resolve(true)));
        s.once('error', () => resolve(false));
      }), 20_000);
  });

  afterAll(async () => {
    await lab?.down();
    const { stdout } = await run('ip', ['netns', 'list']);
    expect(stdout).not.toContain(`trl-${labName}-`);
    expect(labEnvPids((l) => l === labName)).toEqual([]);
  });

  const FORGED = `By=${spiffe('shop', 'api')};URI=${spiffe('shop', 'admin')}`;
  const AGENT_XFCC = `By=${spiffe('shop', 'api')};URI=${spiffe('shop', 'web')}`;
  // [what was sent, method and how it is written, what the caller gets: the app's answer or the agent's refusal]
  const REQUESTS: [string, string, string, 'app' | 'refused'][] = [
    // Standard methods beyond the nine the sniffer used to know; l7-echo (Node's parser) serves them.
    ['PROPFIND', 'PROPFIND', '', 'app'],
    ['MKCOL', 'MKCOL', '', 'app'],
    // An empty line before the request line, which Node's parser (and RFC 9112 section 2.2) skips.
    ['CRLF, then GET', 'GET', '\r\n', 'app'],
    // An extension method: a valid token, which the agent's parser (llhttp) does not know, so the agent answers 400
    // itself; carried opaquely instead, it would reach an app whose parser takes any token.
    ['FOO', 'FOO', '', 'refused'],
  ];

  /**
   * Sends every request of REQUESTS, with a forged x-forwarded-client-cert, from each caller [who, pod, host, port,
   * the header the app should get]; returns what happened and what should have, one line per request, and the
   * lines of the app's log that hold the forged value (in a request it served or one it could not parse).
   */
  async function forge(callers: [string, string, string, number, string | undefined][]) {
    const marker = randomBytes(4).toString('hex');
    const seen: string[] = [];
    const want: string[] = [];
    for (const [who, from, host, port, xfcc] of callers) {
      for (const [what, method, before, outcome] of REQUESTS) {
        const path = `/${marker}/${from.replace('/', '-')}-${port}-${what.replace(/\W/g, '')}`;
        const raw = `${before}${method} ${path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\nx-forwarded-client-cert: ${FORGED}\r\n\r\n`;
        const a = parseAnswer(await exchange(from, host, port, raw));
        const label = `${who}, ${what}`;
        if (a.echo) seen.push(`${label}: app got ${a.echo.method} ${a.echo.path} with xfcc ${String(a.echo.headers['x-forwarded-client-cert'])}`);
        else seen.push(`${label}: ${a.status} ${a.body.trim().slice(0, 120)}`);
        want.push(
          outcome === 'app'
            ? `${label}: app got ${method} ${path} with xfcc ${String(xfcc)}`
            : `${label}: 400 HPE_INVALID_METHOD: Invalid method encountered`,
        );
      }
    }
    const leaked = lab.podLog(API).split('\n').filter((l) => l.includes(marker) && l.includes('sa/admin'));
    return { seen, want, leaked };
  }

  it('the app gets the agent’s header or none, whatever the method: never the forged one', async () => {
    const { seen, want, leaked } = await forge([
      ['web (meshed) -> Service VIP', WEB, vip, SERVICE_PORT, AGENT_XFCC],
      ['outsider (plaintext) -> Service VIP', OUTSIDER, vip, SERVICE_PORT, undefined],
      ['outsider (plaintext) -> pod IP', OUTSIDER, podIp, APP_PORT, undefined],
    ]);
    expect(seen).toEqual(want);
    expect(leaked).toEqual([]);
  });

  // A meshed call to a pod IP is not routed, so the source agent tunnels it without a protocol hint; the destination
  // agent sniffs such a tunnel to a port no Service declares (agent/proxy/inbound-hbone.ts), whatever the method.
  it('a meshed call to the pod IP of an undeclared port gets the agent’s header too', async () => {
    const { seen, want, leaked } = await forge([['web (meshed) -> pod IP', WEB, podIp, APP_PORT, AGENT_XFCC]]);
    expect(seen).toEqual(want);
    expect(leaked).toEqual([]);
  });
});
