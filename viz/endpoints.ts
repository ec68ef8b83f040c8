// How a lab tells the viewer where its Prometheus and its agents' tap sockets are: a small JSON file (endpoints.json)
// the lab writes in its state directory when it comes up (lab/cluster/prometheus.ts) and the viewer reads
// (prom/locate.ts, tap/locate.ts). It is the whole contract between them: the viewer never reads the lab's own state.
import { z } from 'zod';

/** Where labs keep their state (lab/cluster/names.ts DEFAULT_STATE_ROOT; test/viz/locate.test.ts keeps them equal). */
export const LAB_STATE_ROOT = '/run/trellis/lab';
export const ENDPOINTS_FILE = 'endpoints.json';
/** Present while a lab is up (lab/cluster/state.ts): tells a running lab from an empty directory. */
export const LAB_STATE_FILE = 'state.json';

export const LabEndpoints = z.object({
  lab: z.string(),
  /** The lab's Prometheus (`lab up --prometheus`): its URL, answered inside the network namespace `netns`. */
  prometheus: z.object({ url: z.url(), netns: z.string() }).optional(),
  /** The realized objects the agents read (the dir source's directory): the routes `trellis routes` reads. */
  objectsDir: z.string(),
  /** Each node's agent's tap socket (`--tap-socket`): what `trellis tap` connects to. */
  tap: z.array(z.object({ node: z.string(), socket: z.string() })).optional(),
});

export type LabEndpoints = z.infer<typeof LabEndpoints>;
