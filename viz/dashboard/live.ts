// The dashboard's live tap (`GET /api/tap?namespace=NS&workload=NAME`): the server opens a tap stream to every agent
// that carries the workload (viz/tap/, the same streams as `trellis tap`), bounded by a rate and a duration, and
// forwards each finished request or connection to the page as a server-sent event, already joined into one row. The
// browser never reaches an agent. The streams close when the page goes away (its connection closes), at the duration,
// or when the dashboard stops.
import type http from 'node:http';
import type { TapEvent, TapHeader, TapPeerInfo } from '../../agent/tap/events.js';
import type { ObserveRequest } from '../../agent/tap/proto.js';
import type { TapStream, TapStreamHandlers } from '../tap/client.js';
import type { TapAgent } from '../tap/locate.js';
import { tapMatch } from '../tap/request.js';
import { runTap } from '../tap/tap.js';

export interface LiveTapInputs {
  /** The agents to tap, found at each request (a lab may come and go); throws a VizError saying why there are none. */
  readonly agents: () => readonly TapAgent[];
  /** Observations per second each agent sends one page at most. */
  readonly maxRps: number;
  /** How long one live view lasts before the page must ask again. */
  readonly durationMs: number;
  /** Live views open at once (each holds a stream on every agent, which allows 16). */
  readonly maxOpen?: number;
  readonly observe?: (socket: string, request: ObserveRequest, handlers: TapStreamHandlers) => TapStream;
}

/** One finished request (or opaque connection), as the page's table shows it. */
export interface LiveRow {
  /** NODE:N, as `trellis tap` prints it. */
  readonly id: string;
  readonly node: string;
  /** Unix ms of the request's head (of a connection's close). */
  readonly time: number;
  /** out: the caller's agent (reporter source); in: the callee's. */
  readonly direction: 'out' | 'in';
  readonly source: string;
  readonly destination: string;
  readonly kind: 'http' | 'tcp';
  readonly method: string;
  readonly path: string;
  readonly authority: string;
  /** 0 when no response came (a connection, an error). */
  readonly status: number;
  readonly grpcStatus: string;
  /** Time to the response's first byte; null when the agent answered itself or for a connection. */
  readonly latencyMs: number | null;
  readonly durationMs: number;
  readonly tls: boolean;
  readonly route: string;
  /** The policy that denied it, when one did. */
  readonly denied: string | null;
  readonly error: string;
  /** Request headers as the agent sent them: credentials already [REDACTED]. */
  readonly headers: readonly TapHeader[];
}

const NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;
const KEEPALIVE_MS = 15_000;

const peer = (p: TapPeerInfo | undefined) => (p?.workload ? `${p.namespace}/${p.workload}` : (p?.ip ?? '-'));

/** Joins a stream's events into rows: a request's three events share the agent's id and arrive together. */
export class LiveRows {
  private readonly inits = new Map<string, TapEvent>();
  private readonly firstByte = new Map<string, number>();

  /** The row this event completes, if it completes one. */
  add(e: TapEvent): LiveRow | undefined {
    const key = `${e.node}:${e.id ?? 0}`;
    if (e.requestInit) {
      this.inits.set(key, e);
      return undefined;
    }
    if (e.responseInit) {
      this.firstByte.set(key, e.responseInit.sinceRequestInitMs ?? 0);
      return undefined;
    }
    if (!e.responseEnd && !e.tcpClose) return undefined;
    const init = this.inits.get(key);
    const ttfb = this.firstByte.get(key);
    this.inits.delete(key);
    this.firstByte.delete(key);
    const base = {
      id: key,
      node: e.node,
      direction: e.reporter === 'source' ? ('out' as const) : ('in' as const),
      source: peer(e.source),
      destination: peer(e.destination),
      tls: e.security === 'mutual_tls',
      route: e.route ? `${e.route}:${e.rule ?? ''}` : '',
      denied: e.authz?.decision === 'deny' ? e.authz.policy || '(no ALLOW matched)' : null,
    };
    if (e.tcpClose) {
      const c = e.tcpClose;
      return { ...base, time: e.timestampMs, kind: 'tcp', method: 'TCP', path: `${c.bytesReceived ?? 0}B in, ${c.bytesSent ?? 0}B out`, authority: '', status: 0, grpcStatus: '', latencyMs: null, durationMs: c.durationMs ?? 0, error: c.error ?? '', headers: [] };
    }
    const r = e.responseEnd!;
    const q = init?.requestInit;
    return {
      ...base,
      time: init?.timestampMs ?? e.timestampMs - (r.sinceRequestInitMs ?? 0),
      kind: 'http',
      method: q?.method ?? '-',
      path: q?.path ?? '-',
      authority: q?.authority ?? '',
      status: r.httpStatus ?? 0,
      grpcStatus: r.grpcStatus ?? '',
      latencyMs: ttfb ? ttfb : null,
      durationMs: r.sinceRequestInitMs ?? 0,
      error: r.error ?? '',
      headers: q?.headers ?? [],
    };
  }
}

/** Serves one live view as server-sent events: `tapping`, then `row`s (and `drop`s), then `end`; or one `problem`. */
export function liveTapHandler(inputs: LiveTapInputs): (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => void {
  let open = 0;
  const maxOpen = inputs.maxOpen ?? 4;
  return (_req, res, url) => {
    const namespace = url.searchParams.get('namespace') ?? '';
    const workload = url.searchParams.get('workload') ?? '';
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
    const send = (event: string, data: unknown) => res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    const refuse = (problem: string) => {
      send('problem', { problem });
      res.end();
    };
    if (!NAME.test(namespace) || !NAME.test(workload)) return refuse(`"${namespace}/${workload}": choose a workload of the namespace`);
    if (open >= maxOpen) return refuse(`${open} live views are open (at most ${maxOpen}): close one, here or in another tab`);
    let agents: readonly TapAgent[];
    try {
      agents = inputs.agents();
    } catch (err) {
      return refuse(`cannot tap: ${(err as Error).message}`);
    }
    open++;
    const abort = new AbortController();
    const keepalive = setInterval(() => res.write(': keepalive\n\n'), KEEPALIVE_MS);
    // The page went away (closed the panel, the tab, or the network): the agents' streams close with it.
    res.on('close', () => abort.abort());
    const rows = new LiveRows();
    let dropped = 0;
    send('tapping', { namespace, workload, agents: agents.map((a) => a.node), maxRps: inputs.maxRps, durationMs: inputs.durationMs });
    void runTap({
      agents,
      request: { durationMs: inputs.durationMs, maxRps: inputs.maxRps, limit: 0, match: tapMatch({ target: { namespace, name: workload } }) },
      output: 'json',
      out: () => {},
      // An agent that cannot be tapped, one that ended its stream: said on the page, the others go on.
      err: (text) => send('note', { note: text.trim() }),
      signal: abort.signal,
      ...(inputs.observe && { observe: inputs.observe }),
      onEvent: (e) => {
        if (e.dropped) send('drop', { node: e.node, dropped: (dropped += e.dropped) });
        const row = rows.add(e);
        if (row) send('row', row);
      },
    }).then((result) => {
      clearInterval(keepalive);
      open--;
      if (abort.signal.aborted) return;
      const why = result.failed.length === agents.length ? 'no agent could be tapped' : `the ${inputs.durationMs / 1000} s of a live view are over`;
      send('end', { reason: why, observations: result.observations, dropped, accepted: result.accepted, failed: result.failed });
      res.end();
    });
  };
}
