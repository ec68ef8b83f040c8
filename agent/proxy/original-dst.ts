// Where a connection accepted on a pod's outbound listener (15001) was going, for proxy/outbound.ts: in eBPF mode the
// record of the outbound programs (capture/connect.ts), read from their map by its fd; in nft mode NAT's own
// (SO_ORIGINAL_DST). Each falls back on the other for a hand-over between agents of different modes, when a pod's
// connects are captured by the other agent's means and may land on this agent's listener.
import { OUTBOUND_PORT } from '../constants.js';
import { TrellisError } from '../errors.js';
import { findOutboundMap, netnsCookie, originalDst, outboundOriginalDst } from '../native/index.js';

export type Destination = { address: string; port: number };
export type OriginalDst = (fd: number) => Destination;

export interface OriginalDstInputs {
  /** eBPF mode: the map this agent's programs file their records in. Absent: nft mode. */
  mapFd?: number | undefined;
  /** nft mode: where an eBPF-mode agent of this netns has its programs (found when NAT has nothing to say). */
  cgroupRoot?: string | undefined;
  /** SO_ORIGINAL_DST. */
  nat?: (fd: number) => Destination;
  /** A record by the map's fd, read and deleted. */
  record?: (mapFd: number, fd: number) => Destination | undefined;
  /** The map of an eBPF-mode agent of this netns on the cgroup, or undefined. */
  findMap?: (cgroupRoot: string) => number | undefined;
  now?: () => number;
}

/** How often nft mode looks for an eBPF-mode agent's map again after finding none (or none with the record). */
const FIND_EVERY_MS = 1000;

export function originalDstReader(inputs: OriginalDstInputs): OriginalDst {
  const nat = inputs.nat ?? originalDst;
  const record = inputs.record ?? outboundOriginalDst;
  // NAT's answer, unless it is the listener itself: a connection the programs sent there has a conntrack entry (the
  // pod's table tracks connections) without NAT, whose "original" destination is 127.0.0.1:15001.
  const natDst = (fd: number): Destination | undefined => {
    const d = nat(fd);
    return isListener(d) ? undefined : d;
  };
  const { mapFd } = inputs;
  if (mapFd !== undefined) {
    return (fd) => {
      const d = record(mapFd, fd) ?? tryNat(natDst, fd);
      if (!d) throw new TrellisError('ENOENT', 'no original destination recorded for this connection (it reached the outbound listener without the outbound programs or NAT)');
      return d;
    };
  }
  const peer = peerMap(inputs);
  return (fd) => {
    let failure: unknown;
    try {
      const d = natDst(fd);
      if (d) return d;
    } catch (err) {
      failure = err;
    }
    const d = peer(fd);
    if (d) return d;
    throw failure ?? new TrellisError('ENOENT', 'no original destination for this connection (it reached the outbound listener without NAT)');
  };
}

function tryNat(nat: (fd: number) => Destination | undefined, fd: number): Destination | undefined {
  try {
    return nat(fd);
  } catch {
    return undefined;
  }
}

function isListener(d: Destination): boolean {
  return d.port === OUTBOUND_PORT && d.address === '127.0.0.1';
}

/** nft mode's fallback: the record in an eBPF-mode agent's map, which is found once and kept (its fd is ours). */
function peerMap(inputs: OriginalDstInputs): (fd: number) => Destination | undefined {
  const { cgroupRoot } = inputs;
  if (cgroupRoot === undefined) return () => undefined;
  const record = inputs.record ?? outboundOriginalDst;
  const now = inputs.now ?? (() => performance.now());
  let owner: number | undefined;
  const find = inputs.findMap ?? ((root: string) => findOutboundMap(root, (owner ??= netnsCookie('/proc/self/ns/net'))));
  let map: number | undefined;
  let lastFind = -Infinity;
  const look = (fd: number) => {
    try {
      return map === undefined ? undefined : record(map, fd);
    } catch {
      return undefined;
    }
  };
  return (fd) => {
    const found = look(fd);
    if (found || now() - lastFind < FIND_EVERY_MS) return found;
    // Another agent's programs may have come since (a hand-over to the eBPF mode): looked for again, at most once a second.
    lastFind = now();
    try {
      map = find(cgroupRoot) ?? map;
    } catch {
      return undefined;
    }
    return look(fd);
  };
}
