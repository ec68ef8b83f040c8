// Which agents `trellis tap` reaches: the sockets --socket names (an agent on this node), or every node's agent of a
// lab, as its endpoints.json lists them (viz/endpoints.ts); without --lab, the only lab running with agents.
// Against a cluster (each node's agent on its tap port, authorized by RBAC): cluster.ts.
import { LAB_STATE_ROOT } from '../endpoints.js';
import { VizError } from '../errors.js';
import { runningLabs } from '../prom/locate.js';
import type { TapRemote } from './client.js';

export interface TapAgent {
  /** The node's name, or the socket path for an agent named by --socket. */
  readonly node: string;
  /** The agent's Unix socket; for an agent reached on its tap port, that port's address (for messages). */
  readonly socket: string;
  /** The agent's tap port, in a cluster (cluster.ts). */
  readonly remote?: TapRemote;
}

export function locateAgents(flags: { socket?: string[] | undefined; lab?: string | undefined }, stateRoot: string = LAB_STATE_ROOT): { agents: TapAgent[]; lab?: string } {
  if (flags.socket?.length && flags.lab !== undefined) throw new VizError('ECONFIG', '--socket and --lab both say which agents to tap: give one of them');
  if (flags.socket?.length) return { agents: flags.socket.map((socket) => ({ node: socket, socket })) };
  const labs = runningLabs(stateRoot);
  const tapped = labs.filter((l) => l.endpoints?.tap?.length);
  let chosen: (typeof labs)[number] | undefined;
  if (flags.lab !== undefined) {
    chosen = labs.find((l) => l.name === flags.lab);
    if (!chosen) {
      const up = labs.length ? `labs up: ${labs.map((l) => l.name).join(', ')}` : 'no lab is up';
      throw new VizError('ENOLAB', `lab '${flags.lab}' is not up (${up}): bring it up with \`trellis lab up -f FILE --name ${flags.lab}\``);
    }
    if (!chosen.endpoints?.tap?.length) throw new VizError('ENOLAB', `lab '${flags.lab}' lists no agent tap socket (brought up with --no-agents, or by an older build): bring it up again`);
  } else if (tapped.length === 1) {
    chosen = tapped[0];
  } else if (tapped.length > 1) {
    throw new VizError('ENOLAB', `several labs are up (${tapped.map((l) => l.name).join(', ')}): choose one with --lab NAME`);
  } else {
    throw new VizError('ENOLAB', 'no lab with agents is up: bring one up (`trellis lab up -f FILE`, `npm run demo`), name an agent\'s socket with --socket PATH, or tap a cluster with --kubeconfig');
  }
  return { agents: chosen!.endpoints!.tap!.map((t) => ({ node: t.node, socket: t.socket })), lab: chosen!.name };
}
