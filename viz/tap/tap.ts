// `trellis tap`'s loop: one stream per agent that carries the workload's traffic (both sides of a meshed call: the
// caller's agent reports it as `source`, the callee's as `destination`), their events printed as they come, merged
// in arrival order. It ends at --limit observations (over all agents), at --duration, at Ctrl-C, or when every
// agent ended its stream; then it says how many it saw and how many the agents dropped.
import type { TapEvent } from '../../agent/tap/events.js';
import type { ObserveRequest } from '../../agent/tap/proto.js';
import { observe as observeAgent, type TapRemote, type TapStream, type TapStreamHandlers } from './client.js';
import { formatEvent, type TapOutput } from './format.js';
import type { TapAgent } from './locate.js';

export interface TapRunInputs {
  agents: readonly TapAgent[];
  request: ObserveRequest;
  output: TapOutput;
  /** Standard output (events) and standard error (what happens to the streams). */
  out: (text: string) => void;
  /** Takes every event instead of printing it (`trellis top`'s paths, the dashboard's live view). */
  onEvent?: (e: TapEvent, node: string) => void;
  err: (text: string) => void;
  /** Ends the run early (Ctrl-C). */
  signal?: AbortSignal;
  /** How a stream is opened (a test may stand in for the agents). */
  observe?: (socket: string, request: ObserveRequest, handlers: TapStreamHandlers, remote?: TapRemote) => TapStream;
}

export interface TapRunResult {
  /** Requests and connection opens/closes printed whole. */
  observations: number;
  /** Observations the agents dropped (rate bound, slow reader), as their streams said. */
  dropped: number;
  /** Agents whose stream failed, with why. */
  failed: { node: string; error: string }[];
  /** Agents whose stream was accepted, with the rate bound each applied. */
  accepted: { node: string; maxRps: number | undefined }[];
}

/** The event that completes an observation: a request's end, a connection's open or close. */
const completes = (e: TapEvent) => e.responseEnd !== undefined || e.tcpOpen !== undefined || e.tcpClose !== undefined;

export function runTap(inputs: TapRunInputs): Promise<TapRunResult> {
  const observe = inputs.observe ?? observeAgent;
  const limit = inputs.request.limit ?? 0;
  const result: TapRunResult = { observations: 0, dropped: 0, failed: [], accepted: [] };
  return new Promise((resolve) => {
    const streams: TapStream[] = [];
    let open = inputs.agents.length;
    let finished = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = () => {
      if (finished) return;
      finished = true;
      if (timer) clearTimeout(timer);
      inputs.signal?.removeEventListener('abort', finish);
      for (const s of streams) s.cancel();
      resolve(result);
    };
    inputs.signal?.addEventListener('abort', finish);
    // The agents end their streams at the duration; this only covers one that cannot.
    if (inputs.request.durationMs) timer = setTimeout(finish, inputs.request.durationMs + 5000);
    for (const agent of inputs.agents) {
      const handlers: TapStreamHandlers = {
        accepted: (maxRps) => result.accepted.push({ node: agent.node, maxRps }),
        event: (e) => {
          if (finished) return;
          result.dropped += e.dropped ?? 0;
          if (inputs.onEvent) inputs.onEvent(e, agent.node);
          else if (inputs.output === 'json') inputs.out(`${JSON.stringify(e)}\n`);
          else for (const line of formatEvent(e, inputs.output)) inputs.out(`${line}\n`);
          if (e.summary?.end) inputs.err(`${agent.node}: stream ended (${e.summary.end}): ${e.summary.delivered ?? 0} observations, ${e.summary.droppedTotal ?? 0} dropped\n`);
          if (completes(e) && ++result.observations >= limit && limit > 0) finish();
        },
        end: (error) => {
          if (error) {
            result.failed.push({ node: agent.node, error: error.message });
            inputs.err(`${agent.node}: ${error.message}\n`);
          }
          if (--open === 0) finish();
        },
      };
      // An agent of a cluster is reached on its tap port (`remote`), a lab's or a node's on its socket.
      streams.push(observe(agent.socket, inputs.request, handlers, agent.remote));
    }
    if (open === 0) finish();
  });
}
