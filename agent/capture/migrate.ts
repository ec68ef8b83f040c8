// Hand-over between an old and a new agent on one node: both listen on the pod's ports (SO_REUSEPORT), and when the
// old one closes its listeners the kernel moves the connections still queued on them (handshake done, not yet
// accepted, or still in SYN-RECV) to the new one's, instead of resetting them: net.ipv4.tcp_migrate_req, per
// netns, Linux 5.14 and later. On an older kernel those few queued connections are reset at the hand-over; every
// connection the old agent had accepted still drains.
import type { Logger } from 'pino';
import { setNetSysctlInNetns } from '../native/index.js';

const SYSCTL = 'ipv4/tcp_migrate_req';

/** Returns the step enrolment runs in each pod's netns; it logs once when the kernel lacks the setting. */
export function queuedConnectionMigration(logger: Logger, set = setNetSysctlInNetns): (netnsPath: string) => void {
  let warned = false;
  return (netnsPath) => {
    try {
      set(netnsPath, SYSCTL, '1');
    } catch (err) {
      if (warned) return;
      warned = true;
      const missing = (err as { code?: string }).code === 'ENOENT';
      logger.warn(
        { err: (err as Error).message },
        missing
          ? 'this kernel has no net.ipv4.tcp_migrate_req (Linux 5.14+): connections queued on the old agent\'s listeners are reset when it hands over to a new one'
          : 'cannot set net.ipv4.tcp_migrate_req in pod netns: connections queued on the old agent\'s listeners are reset when it hands over to a new one',
      );
    }
  };
}
