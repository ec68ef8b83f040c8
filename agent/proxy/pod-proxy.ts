// The agent's three listeners for one enrolled pod, opened inside the pod's netns: outbound capture (15001),
// inbound plaintext (15006) and inbound HBONE (15008). Closing stops accepting; open connections drain.
import net from 'node:net';
import { AGENT_MARK, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT } from '../constants.js';
import { TrellisError } from '../errors.js';
import type { CertSource } from '../identity/certs.js';
import { listenInNetns } from '../native/index.js';
import type { Workload } from '../state/workload.js';
import type { InboundInputs } from './inbound.js';
import { HboneInbound } from './inbound-hbone.js';
import { PlaintextInbound } from './inbound-plaintext.js';
import type { Outbound } from './outbound.js';

export type PodProxyInputs = Omit<InboundInputs, 'pod'> & {
  certs: CertSource;
  outbound: Outbound;
  /** Told when the pod's listeners close (unenrolled): pooled L7 connections of the pod can go. */
  onClose?: (podKey: string) => void;
  /** Told of every connection accepted on the pod's listeners (the per-worker count). */
  onAccept?: () => void;
};

export class PodProxy {
  private constructor(
    readonly pod: Workload,
    /** The pod's inbound side: its HBONE listener's, and same-node calls' (same-node.ts). */
    readonly inbound: InboundInputs,
    private readonly servers: net.Server[],
    private readonly plain: net.Server,
    private readonly hbone: HboneInbound,
    private readonly unsubscribe: () => void,
  ) {}

  static async open(pod: Workload, inputs: PodProxyInputs): Promise<PodProxy> {
    const netns = pod.netnsPath;
    if (!netns || !pod.ip) throw new TrellisError('ENOTREADY', `pod ${pod.key} has no IP or netns yet`);
    const svid = await inputs.certs.get(pod.identity);
    // noDelay: an HTTP answer written in parts must not wait for the client's delayed ACK (Nagle).
    const outbound = net.createServer({ allowHalfOpen: true, noDelay: true }, (s) => void inputs.outbound.handle(s, pod));
    const inbound = { ...inputs, pod };
    const plain = new PlaintextInbound(inbound);
    const hbone = new HboneInbound(inbound, svid);
    const servers: net.Server[] = [];
    try {
      // The outbound port is reachable only from inside the pod: REDIRECT in OUTPUT targets loopback.
      // SO_REUSEPORT: every worker thread of the agent listens on the same ports; the kernel spreads connections.
      await listenInNetns(outbound, netns, { host: '127.0.0.1', port: OUTBOUND_PORT, reusePort: true });
      servers.push(outbound);
      // The agent's mark on the inbound listener: in eBPF mode the pod's rules refuse new connections whose socket lookup
      // finds anything else (capture/rules.ts); its accepted sockets inherit it, which no rule of the pod looks at.
      await listenInNetns(plain.server, netns, { host: '0.0.0.0', port: INBOUND_PLAINTEXT_PORT, reusePort: true, mark: AGENT_MARK });
      servers.push(plain.server);
      await listenInNetns(hbone.server, netns, { host: '0.0.0.0', port: HBONE_PORT, reusePort: true });
      servers.push(hbone.server);
      if (inputs.onAccept) for (const s of servers) s.on('connection', inputs.onAccept);
    } catch (err) {
      for (const s of servers) s.close();
      throw err;
    }
    const unsubscribe = inputs.certs.onRotate((next) => {
      if (next.identity === pod.identity) hbone.rotate(next);
    });
    return new PodProxy(pod, inbound, servers, plain.server, hbone, () => {
      unsubscribe();
      inputs.onClose?.(pod.key);
    });
  }

  /** The inbound plaintext listener's fd: the pod's sk_lookup program hands connections to it (eBPF mode). */
  inboundListenerFd(): number {
    const fd = (this.plain as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) throw new TrellisError('ENOFD', `pod ${this.pod.key}: the inbound listener is closed`);
    return fd;
  }

  /** Stops accepting and tells HBONE peers (GOAWAY) to open no new streams; open connections finish. */
  close(): void {
    this.unsubscribe();
    for (const s of this.servers) s.close();
    this.hbone.goaway();
  }
}
