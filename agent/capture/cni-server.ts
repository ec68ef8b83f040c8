// The agent's end of trellis-cni: a Unix socket where the plugin reports pod sandboxes (ADD/DEL/CHECK) and, on ADD,
// waits until the pod's capture is in place, so a meshed pod never sends a packet outside the mesh.
import { chmodSync, existsSync, lstatSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { systemClock, type Clock } from '../clock.js';
import { TrellisError } from '../errors.js';
import type { MeshState } from '../state/store.js';
import type { Workload } from '../state/workload.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { Sandbox } from './enrolment.js';

/** One JSON line from the plugin. */
export interface CniRequest {
  cmd: 'ADD' | 'DEL' | 'CHECK';
  containerId: string;
  netns: string;
  ifname: string;
  namespace: string;
  name: string;
  uid: string;
  ips: string[];
  /** How long the plugin waits for the reply; the agent answers before it gives up. */
  timeoutMs?: number;
}

/** One JSON line back. */
export type CniReply =
  | { ok: true; action: 'enrolled' | 'not-meshed' | 'removed' | 'not-a-pod' }
  | { ok: false; error: string };

export interface CniServerInputs {
  socketPath: string;
  state: () => MeshState;
  /** Called with a callback on every state change, so a wait for a pod the informer has not seen ends at once. */
  subscribe?: (fn: () => void) => () => void;
  /** Resolves when the pod's listeners are open and its capture rules are in place (Enrolment.enrolNow). */
  enrol: (pod: Workload, sandbox: Sandbox) => Promise<void>;
  /** Undoes enrol for that sandbox, if it is the one enrolled (Enrolment.unenrolNow). */
  unenrol: (key: string, sandbox: Sandbox) => Promise<unknown>;
  /** Pods enrolled now, by key (Enrolment.pods), for CHECK. */
  enrolled: () => readonly string[];
  /** When the runtime's netns path is not visible to the agent (other mount namespace): find it by the pod's IP. */
  findNetns?: (ip: string) => Promise<string | undefined>;
  /** How long an ADD waits for the pod to appear in the state (the informer may lag behind the kubelet). */
  waitForPodMs: number;
  logger: Logger;
  metrics: Metrics;
  clock?: Clock;
}

const MAX_LINE = 64 * 1024;
const REQUEST_TIMEOUT_MS = 5_000;
const MAX_CONNECTIONS = 256;
const POLL_MS = 200;
// Answer this long before the plugin's own timeout, so it reads our reason instead of timing out.
const REPLY_MARGIN_MS = 500;
const MAX_FIELD = 4096;

export class CniServer {
  private readonly server: net.Server;
  private readonly clock: Clock;
  private readonly sockets = new Set<net.Socket>();
  /** Connections whose request is in: at close, answered (by a successor, in a hand-over) rather than dropped. */
  private readonly inFlight = new Set<net.Socket>();
  private readonly waiters = new Set<() => void>();
  private unsubscribe: (() => void) | undefined;
  private socketId: string | undefined;
  private closed = false;
  /** The ADDs this agent enrolled a pod for, by pod key, until their DEL: what a successor is told at a hand-over. */
  private readonly added = new Map<string, CniRequest>();

  private constructor(private readonly inputs: CniServerInputs) {
    this.clock = inputs.clock ?? systemClock;
    this.server = net.createServer((s) => this.onConnection(s));
    this.server.maxConnections = MAX_CONNECTIONS;
  }

  /** Listens on the socket (mode 0600), replacing a stale socket file left by an agent that died. */
  static async start(inputs: CniServerInputs): Promise<CniServer> {
    const cni = new CniServer(inputs);
    await cni.listen();
    return cni;
  }

  /**
   * Binds a socket beside the path and renames it over the path: a plugin finds the old agent's socket or this
   * one's, never none. An agent still serving the old one (a hand-over: the next agent starts before the old one
   * stops) keeps the requests it has; new ones come here.
   */
  private async listen(): Promise<void> {
    const path = this.inputs.socketPath;
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const previous = await socketState(path);
    const bound = `${path}.${process.pid}.new`;
    rmSync(bound, { force: true });
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(bound, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    chmodSync(bound, 0o600);
    renameSync(bound, path);
    if (previous === 'live') this.inputs.logger.info({ socket: path }, 'took the CNI socket over from the agent serving it (a hand-over)');
    const st = statSync(path);
    this.socketId = `${st.dev}:${st.ino}`;
    this.server.on('error', (err) => this.inputs.logger.error({ err: err.message }, 'CNI socket error'));
    this.unsubscribe = this.inputs.subscribe?.(() => this.wake());
    this.inputs.logger.info({ socket: path }, 'listening for trellis-cni');
  }

  /**
   * Stops accepting. A request in flight is passed to the agent that serves the socket now, if one took it over (a
   * hand-over: the plugin gets that agent's answer), else dropped, as are connections that sent no request yet (their
   * plugins then decide from the opt-in file, as with an agent that is down). The socket file is removed if it is
   * still ours.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe?.();
    this.wake();
    const done = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) if (!this.inFlight.has(s)) s.destroy();
    await done;
    try {
      const st = statSync(this.inputs.socketPath);
      if (`${st.dev}:${st.ino}` === this.socketId) rmSync(this.inputs.socketPath, { force: true });
    } catch {
      // already gone
    }
  }

  /**
   * After close(), when another agent serves the socket now (a hand-over: it renamed its own over ours), tells it of
   * every pod this agent enrolled from a CNI ADD and still holds, with the ADD as the plugin sent it. The state may
   * not have such a pod's IP yet (the kubelet reports it after the pod starts), and without it the successor cannot
   * find the pod's netns: once this agent's listeners close, the pod's connections would be refused until it does.
   * Resolves when the successor has answered each (enrolled: its listeners are open beside ours), or after
   * `timeoutMs`; what failed is logged, and the successor still finds those pods once their IP reaches it.
   */
  async handOver(stillEnrolled: readonly string[], timeoutMs = REQUEST_TIMEOUT_MS): Promise<{ handed: number; failed: number }> {
    const path = this.inputs.socketPath;
    const held = new Set(stillEnrolled);
    const pods = [...this.added.values()].filter((r) => held.has(`${r.namespace}/${r.name}`));
    if (pods.length === 0 || (await socketState(path).catch(() => 'none')) !== 'live') return { handed: 0, failed: 0 };
    const started = this.clock.now();
    const replies = await Promise.all(pods.map((req) => ask(path, { ...req, timeoutMs }, timeoutMs)));
    const failed = replies.map((r, i) => ({ r, pod: `${pods[i]!.namespace}/${pods[i]!.name}` })).filter(({ r }) => !(r.ok && r.action === 'enrolled'));
    for (const { r, pod } of failed) {
      this.inputs.logger.warn({ pod, err: r.ok ? r.action : r.error }, 'the next agent did not take a pod enrolled through CNI; it finds it once the pod\'s IP reaches it');
    }
    this.inputs.logger.info({ handed: pods.length - failed.length, failed: failed.length, ms: this.clock.now() - started }, 'pods enrolled through CNI handed over to the next agent');
    return { handed: pods.length - failed.length, failed: failed.length };
  }

  /** `req` asked again of the agent that took the socket over, within what is left of the plugin's wait. */
  private async passOn(req: CniRequest, started: number): Promise<CniReply | undefined> {
    const path = this.inputs.socketPath;
    try {
      const st = statSync(path);
      if (`${st.dev}:${st.ino}` === this.socketId || (await socketState(path)) !== 'live') return undefined;
    } catch {
      return undefined;
    }
    const left = (req.timeoutMs ?? REQUEST_TIMEOUT_MS) - REPLY_MARGIN_MS - (this.clock.now() - started);
    if (left <= 0) return undefined;
    return ask(path, { ...req, timeoutMs: left }, left);
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  private onConnection(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.setTimeout(REQUEST_TIMEOUT_MS, () => socket.destroy());
    let buf = '';
    const onData = (chunk: Buffer): void => {
      buf += chunk.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0 && buf.length <= MAX_LINE) return;
      socket.off('data', onData);
      // The request is in: from here the plugin waits as long as its own timeout allows.
      socket.setTimeout(0);
      const line = nl < 0 ? undefined : buf.slice(0, nl);
      this.inFlight.add(socket);
      void this.answer(line).then((reply) => {
        this.inFlight.delete(socket);
        if (socket.destroyed) return;
        if (reply) socket.end(`${JSON.stringify(reply)}\n`);
        else socket.destroy();
      });
    };
    socket.on('data', onData);
  }

  /** The reply to the plugin; undefined: the agent is stopping with nobody to pass the request to (dropped). */
  private async answer(line: string | undefined): Promise<CniReply | undefined> {
    const started = this.clock.now();
    const parsed = line === undefined ? invalid(`request longer than ${MAX_LINE} bytes`) : parseRequest(line);
    if ('error' in parsed) {
      this.inputs.metrics.cniRequests.inc({ command: 'invalid', outcome: 'error' });
      this.inputs.logger.warn({ err: parsed.error }, 'invalid request on the CNI socket');
      return { ok: false, error: parsed.error };
    }
    const req = parsed.request;
    let reply: CniReply;
    try {
      reply = await this.handle(req);
    } catch (err) {
      reply = { ok: false, error: (err as Error).message };
    }
    if (this.closed && !reply.ok) {
      // Stopping before an answer: the successor's, when one serves the socket now; else the plugin's own fallback.
      const passed = await this.passOn(req, started);
      if (!passed) return undefined;
      this.inputs.logger.info({ cmd: req.cmd, pod: `${req.namespace}/${req.name}`, ok: passed.ok }, 'CNI request in flight at a hand-over passed to the next agent');
      return passed;
    }
    const outcome = reply.ok ? reply.action : 'error';
    const key = `${req.namespace}/${req.name}`;
    if (req.cmd === 'ADD' && outcome === 'enrolled') this.added.set(key, req);
    else if (req.cmd === 'DEL' && this.added.get(key)?.containerId === req.containerId) this.added.delete(key);
    this.inputs.metrics.cniRequests.inc({ command: req.cmd, outcome });
    const log = { cmd: req.cmd, pod: `${req.namespace}/${req.name}`, containerId: req.containerId, ms: this.clock.now() - started };
    if (reply.ok) this.inputs.logger.info({ ...log, action: reply.action }, 'CNI request');
    else this.inputs.logger.error({ ...log, err: reply.error }, 'CNI request failed');
    return reply;
  }

  private handle(req: CniRequest): Promise<CniReply> {
    if (this.closed) return Promise.resolve({ ok: false, error: 'the trellis agent is stopping; the runtime will retry' });
    if (!req.namespace || !req.name) return Promise.resolve({ ok: true, action: 'not-a-pod' });
    switch (req.cmd) {
      case 'ADD':
        return this.add(req);
      case 'DEL':
        return this.del(req);
      case 'CHECK':
        return this.check(req);
    }
  }

  private async add(req: CniRequest): Promise<CniReply> {
    const key = `${req.namespace}/${req.name}`;
    let waitMs = this.inputs.waitForPodMs;
    if (req.timeoutMs) waitMs = Math.max(0, Math.min(waitMs, req.timeoutMs - REPLY_MARGIN_MS));
    const pod = await this.waitForPod(key, req.uid, waitMs);
    if (this.closed) return { ok: false, error: 'the trellis agent is stopping; the runtime will retry' };
    if (!pod) {
      return {
        ok: false,
        error:
          `pod ${key} (uid ${req.uid || 'unknown'}) is not in the agent's view of the cluster after ${waitMs} ms, so it cannot ` +
          'tell whether the pod is meshed; the runtime retries. If this persists, check that the agent reaches the API server.',
      };
    }
    if (!pod.meshed) return { ok: true, action: 'not-meshed' };

    // The agent opens IPv4 listeners only: enrol by the pod's IPv4 address when it has one.
    const ip = req.ips.find((a) => net.isIPv4(a)) ?? req.ips[0];
    if (!ip) {
      return {
        ok: false,
        error: `the CNI result for pod ${key} has no IP address: trellis-cni must come after the plugin that assigns pod IPs`,
      };
    }
    let netnsPath: string | undefined = req.netns;
    if (!existsSync(netnsPath)) {
      netnsPath = await this.inputs.findNetns?.(ip);
      if (!netnsPath) {
        return {
          ok: false,
          error:
            `network namespace ${req.netns} of pod ${key} is not visible to the agent and no netns owns ${ip}: ` +
            'mount the runtime netns directory (/var/run/netns) into the agent with HostToContainer propagation, and run it with hostPID',
        };
      }
    }
    try {
      await this.inputs.enrol(Object.freeze({ ...pod, ip, netnsPath }), { containerId: req.containerId, netnsPath });
    } catch (err) {
      return { ok: false, error: `enrolling pod ${key} failed: ${(err as Error).message}` };
    }
    return { ok: true, action: 'enrolled' };
  }

  private async del(req: CniRequest): Promise<CniReply> {
    await this.inputs.unenrol(`${req.namespace}/${req.name}`, { containerId: req.containerId, netnsPath: req.netns || undefined });
    return { ok: true, action: 'removed' };
  }

  private async check(req: CniRequest): Promise<CniReply> {
    const key = `${req.namespace}/${req.name}`;
    const pod = this.lookup(key, req.uid);
    if (!pod) return { ok: false, error: `pod ${key} is not in the agent's view of the cluster` };
    if (!pod.meshed) return { ok: true, action: 'not-meshed' };
    if (!this.inputs.enrolled().includes(key)) return { ok: false, error: `pod ${key} is meshed but not enrolled` };
    return { ok: true, action: 'enrolled' };
  }

  /** The pod, once the state has it; the same incarnation (uid) when the state carries uids. */
  private lookup(key: string, uid: string): Workload | undefined {
    const w = this.inputs.state().workloads.get(key);
    if (!w) return undefined;
    if (uid && w.uid && w.uid !== uid) return undefined;
    return w;
  }

  private async waitForPod(key: string, uid: string, waitMs: number): Promise<Workload | undefined> {
    const deadline = this.clock.now() + waitMs;
    for (;;) {
      const found = this.lookup(key, uid);
      if (found || this.closed) return found;
      const left = deadline - this.clock.now();
      if (left <= 0) return undefined;
      // Woken by a state change, or by the poll in case nobody subscribed.
      await new Promise<void>((resolve) => {
        const done = (): void => {
          timer.cancel();
          this.waiters.delete(done);
          resolve();
        };
        const timer = this.clock.after(Math.min(left, POLL_MS), done);
        this.waiters.add(done);
      });
    }
  }
}

/** One request on the socket, as trellis-cni sends it; the reply, or an error reply when none came in time. */
function ask(path: string, req: CniRequest, timeoutMs: number): Promise<CniReply> {
  return new Promise((resolve) => {
    const socket = net.connect(path);
    let buf = '';
    const done = (reply: CniReply): void => {
      socket.destroy();
      resolve(reply);
    };
    socket.setTimeout(timeoutMs, () => done({ ok: false, error: `no answer within ${timeoutMs} ms` }));
    socket.on('error', (err) => done({ ok: false, error: err.message }));
    socket.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      try {
        done(JSON.parse(buf.slice(0, nl)) as CniReply);
      } catch {
        done({ ok: false, error: 'the reply is not JSON' });
      }
    });
    socket.on('end', () => done({ ok: false, error: 'closed without an answer' }));
    socket.write(`${JSON.stringify(req)}\n`);
  });
}

/** A socket file left by a dead agent is removed; a live one (a second agent?) or a non-socket file is an error. */
/** What is at the socket path now: nothing, a socket an agent serves, or one left by an agent that died. */
async function socketState(path: string): Promise<'none' | 'live' | 'stale'> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return 'none';
  }
  if (!isSocket) {
    throw new TrellisError('EEXIST', `${path} exists and is not a socket: remove it, or choose another path with --cni-socket`);
  }
  return new Promise((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve('live');
    });
    probe.once('error', () => resolve('stale'));
  });
}

function invalid(error: string): { error: string } {
  return { error: `invalid request: ${error}` };
}

function str(v: unknown, field: string, required: boolean): string | { error: string } {
  if (v === undefined && !required) return '';
  if (typeof v !== 'string') return invalid(`"${field}" must be a string`);
  if (v.length > MAX_FIELD) return invalid(`"${field}" is longer than ${MAX_FIELD} characters`);
  return v;
}

export function parseRequest(line: string): { request: CniRequest } | { error: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    return invalid('not a JSON line');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return invalid('not a JSON object');
  const o = raw as Record<string, unknown>;
  if (o.cmd !== 'ADD' && o.cmd !== 'DEL' && o.cmd !== 'CHECK') return invalid('"cmd" must be ADD, DEL or CHECK');
  const fields = {} as Record<'containerId' | 'netns' | 'ifname' | 'namespace' | 'name' | 'uid', string>;
  for (const f of ['containerId', 'netns', 'ifname', 'namespace', 'name', 'uid'] as const) {
    const v = str(o[f], f, f === 'containerId' || (f === 'netns' && o.cmd === 'ADD'));
    if (typeof v !== 'string') return v;
    fields[f] = v;
  }
  const ips = o.ips ?? [];
  if (!Array.isArray(ips) || ips.length > 16 || !ips.every((a) => typeof a === 'string' && net.isIP(a))) {
    return invalid('"ips" must be a list of at most 16 IP addresses');
  }
  let timeoutMs: number | undefined;
  if (o.timeoutMs !== undefined) {
    if (typeof o.timeoutMs !== 'number' || !Number.isInteger(o.timeoutMs) || o.timeoutMs < 1) {
      return invalid('"timeoutMs" must be a positive integer');
    }
    timeoutMs = o.timeoutMs;
  }
  return { request: { cmd: o.cmd, ...fields, ips: ips as string[], timeoutMs } };
}
