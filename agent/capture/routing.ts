// Policy routing in a pod's netns for connections to the app that keep the caller's address. The agent's socket is
// bound to the caller's IP (IP_TRANSPARENT), so the app answers to an address that is not the pod's own: the capture
// rules mark those replies (capture/rules.ts) and this rule hands marked packets to a table whose only route
// delivers everything locally, to the agent's socket. Added at enrolment, removed with the capture rules.
//
// In eBPF capture mode the pod's sk_lookup program must tell those connections of the agent from a caller's own: both
// come from the caller's address. The agent binds them to lo (SO_BINDTODEVICE), and a second rule sends lookups bound
// to lo to a table where the pod's own address is local through lo; the kernel then reports the connection as arriving
// on lo (its route's interface: the pod's eth0 otherwise), which the program leaves alone. The app's replies come back
// through lo by the first rule, where the socket bound to lo takes them.
import net from 'node:net';
import { LOOPBACK_ROUTE_TABLE, TRANSPARENT_REPLY_MARK, TRANSPARENT_ROUTE_TABLE } from '../constants.js';
import { runInNetns } from './nft.js';

const FAMILIES = [
  { flag: '-4', everything: '0.0.0.0/0' },
  { flag: '-6', everything: '::/0' },
] as const;

/** `ip -batch` lines whose failure means the state is already the wanted one. */
const ALREADY = /File exists|No such file or directory|Command failed -:\d+|FIB table does not exist|Dump terminated/;

/** Installs (idempotently) the rule and the local route, for IPv4 and, when the pod has IPv6, IPv6. */
export async function addSourceRouting(netnsPath: string, ipv6: boolean): Promise<void> {
  for (const f of ipv6 ? FAMILIES : FAMILIES.slice(0, 1)) {
    const batch = [
      `route replace local ${f.everything} dev lo table ${TRANSPARENT_ROUTE_TABLE}`,
      `rule add pref ${TRANSPARENT_ROUTE_TABLE} fwmark 0x${TRANSPARENT_REPLY_MARK.toString(16)} lookup ${TRANSPARENT_ROUTE_TABLE}`,
      '',
    ].join('\n');
    await runInNetns(netnsPath, ['ip', f.flag, '-force', '-batch', '-'], batch, 10_000, ALREADY);
  }
}

/** eBPF mode: the pod's addresses local through lo in their own table, for lookups bound to lo (idempotent). */
export async function addLoopbackDelivery(netnsPath: string, podIps: readonly string[]): Promise<void> {
  for (const f of FAMILIES) {
    const ips = podIps.filter((ip) => net.isIP(ip) === (f.flag === '-4' ? 4 : 6));
    if (ips.length === 0) continue;
    const batch = [
      ...ips.map((ip) => `route replace local ${ip} dev lo table ${LOOPBACK_ROUTE_TABLE}`),
      `rule add pref ${LOOPBACK_ROUTE_TABLE} oif lo lookup ${LOOPBACK_ROUTE_TABLE}`,
      '',
    ].join('\n');
    await runInNetns(netnsPath, ['ip', f.flag, '-force', '-batch', '-'], batch, 10_000, ALREADY);
  }
}

/** Removes both (what is already gone is not an error): an agent in either mode cleans up after one in the other. */
export async function removeSourceRouting(netnsPath: string): Promise<void> {
  for (const f of FAMILIES) {
    const batch = [
      `rule del pref ${TRANSPARENT_ROUTE_TABLE}`,
      `route flush table ${TRANSPARENT_ROUTE_TABLE}`,
      `rule del pref ${LOOPBACK_ROUTE_TABLE}`,
      `route flush table ${LOOPBACK_ROUTE_TABLE}`,
      '',
    ].join('\n');
    await runInNetns(netnsPath, ['ip', f.flag, '-force', '-batch', '-'], batch, 10_000, ALREADY);
  }
}
