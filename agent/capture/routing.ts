// Policy routing in a pod's netns for connections to the app that keep the caller's address. The agent's socket is
// bound to the caller's IP (IP_TRANSPARENT), so the app answers to an address that is not the pod's own: the capture
// rules mark those replies (capture/rules.ts) and this rule hands marked packets to a table whose only route
// delivers everything locally, to the agent's socket. Added at enrolment, removed with the capture rules.
import { TRANSPARENT_REPLY_MARK, TRANSPARENT_ROUTE_TABLE } from '../constants.js';
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

/** Removes them (what is already gone is not an error). */
export async function removeSourceRouting(netnsPath: string): Promise<void> {
  for (const f of FAMILIES) {
    const batch = [`rule del pref ${TRANSPARENT_ROUTE_TABLE}`, `route flush table ${TRANSPARENT_ROUTE_TABLE}`, ''].join('\n');
    await runInNetns(netnsPath, ['ip', f.flag, '-force', '-batch', '-'], batch, 10_000, ALREADY);
  }
}
