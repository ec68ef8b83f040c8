// Open opaque connections are authorized once, when they open; when the policy set changes, each is checked
// again and one that the new policies deny is cut (as ztunnel does), so that a new DENY also ends the
// connections it would have refused. HTTP requests are each checked under the policies of their time instead;
// a connection upgraded from HTTP to opaque bytes (WebSocket) is tracked here with its upgrade request, checked
// again as a request (l7/inbound-http.ts).
import type { AuthzDecision } from '../security/index.js';
import type { MeshState } from '../state/store.js';

interface Tracked {
  check: (state: MeshState) => AuthzDecision;
  cut: (decision: AuthzDecision) => void;
}

export class PolicyRecheck {
  private readonly open = new Set<Tracked>();

  /** Tracks one connection until the returned function is called. */
  track(check: Tracked['check'], cut: Tracked['cut']): () => void {
    const entry = { check, cut };
    this.open.add(entry);
    return () => this.open.delete(entry);
  }

  get size(): number {
    return this.open.size;
  }

  /** Re-checks every tracked connection when the policies changed between two snapshots; returns how many were cut. */
  apply(next: MeshState, previous: MeshState): number {
    if (next.policies === previous.policies) return 0;
    let cut = 0;
    for (const entry of [...this.open]) {
      const decision = entry.check(next);
      if (decision.allowed) continue;
      this.open.delete(entry);
      entry.cut(decision);
      cut++;
    }
    return cut;
  }
}
