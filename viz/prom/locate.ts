// Which Prometheus the viewer reads: the one --prometheus names (a cluster's), or a lab's. Without a flag the lab is
// found by itself: the only lab on this machine that runs a Prometheus (viz/endpoints.ts is how a lab says so).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { ENDPOINTS_FILE, LAB_STATE_FILE, LAB_STATE_ROOT, LabEndpoints } from '../endpoints.js';
import { VizError } from '../errors.js';
import { netnsTransport, urlTransport, type PromTransport } from './transport.js';

export interface Located {
  readonly transport: PromTransport;
  /** The lab read, when it is one. */
  readonly lab?: string;
  /** The lab's realized objects (its routes), when it is a lab. */
  readonly objectsDir?: string;
}

export interface LocateFlags {
  prometheus?: string | undefined;
  lab?: string | undefined;
}

const CLUSTER_HINT = 'check --prometheus (e.g. `kubectl -n monitoring port-forward svc/prometheus-operated 9090` and --prometheus http://127.0.0.1:9090)';

export function locate(flags: LocateFlags, stateRoot: string = LAB_STATE_ROOT): Located {
  if (flags.prometheus !== undefined && flags.lab !== undefined) {
    throw new VizError('ECONFIG', '--prometheus and --lab both name a Prometheus: give one of them');
  }
  if (flags.prometheus !== undefined) {
    let url: URL;
    try {
      url = new URL(flags.prometheus);
    } catch {
      throw new VizError('ECONFIG', `--prometheus ${flags.prometheus}: not a URL; write its base URL, e.g. http://127.0.0.1:9090`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new VizError('ECONFIG', `--prometheus ${flags.prometheus}: use an http:// or https:// URL`);
    }
    return { transport: urlTransport(flags.prometheus, CLUSTER_HINT) };
  }
  const labs = runningLabs(stateRoot);
  const withProm = labs.filter((l) => l.endpoints?.prometheus);
  let chosen: (typeof labs)[number] | undefined;
  if (flags.lab !== undefined) {
    chosen = labs.find((l) => l.name === flags.lab);
    if (!chosen) {
      const up = labs.length ? `labs up: ${labs.map((l) => l.name).join(', ')}` : 'no lab is up';
      throw new VizError('ENOLAB', `lab '${flags.lab}' is not up (${up}): bring it up with \`trellis lab up -f FILE --name ${flags.lab} --prometheus\``);
    }
    if (!chosen.endpoints?.prometheus) {
      throw new VizError('ENOLAB', `lab '${flags.lab}' runs without Prometheus: bring it up again with \`trellis lab up ... --prometheus\`, or pass --prometheus URL`);
    }
  } else if (withProm.length === 1) {
    chosen = withProm[0];
  } else if (withProm.length > 1) {
    throw new VizError('ENOLAB', `several labs run a Prometheus (${withProm.map((l) => l.name).join(', ')}): choose one with --lab NAME`);
  } else {
    const without = labs.length ? ` (lab${labs.length > 1 ? 's' : ''} ${labs.map((l) => l.name).join(', ')} run${labs.length > 1 ? '' : 's'} without one)` : '';
    throw new VizError(
      'ENOLAB',
      `no Prometheus to read${without}: pass --prometheus URL (a cluster's), or bring a lab up with \`trellis lab up -f FILE --prometheus\` (\`npm run demo\` runs one)`,
    );
  }
  const { endpoints, name } = chosen!;
  const prom = endpoints!.prometheus!;
  const hint = `is lab '${name}' still up? (\`trellis lab status --name ${name}\`; after a crash, \`trellis lab sweep\`)`;
  return { transport: netnsTransport(prom.url, prom.netns, hint), lab: name, objectsDir: endpoints!.objectsDir };
}

/** Labs with a state file under stateRoot, and what their endpoints file says (undefined when it has none). */
export function runningLabs(stateRoot: string): { name: string; endpoints: LabEndpoints | undefined }[] {
  let entries: string[];
  try {
    entries = readdirSync(stateRoot);
  } catch {
    return [];
  }
  return entries
    .filter((e) => existsSync(path.join(stateRoot, e, LAB_STATE_FILE)))
    .sort()
    .map((name) => ({ name, endpoints: readEndpoints(path.join(stateRoot, name, ENDPOINTS_FILE)) }));
}

function readEndpoints(file: string): LabEndpoints | undefined {
  try {
    const parsed = LabEndpoints.safeParse(JSON.parse(readFileSync(file, 'utf8')));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}
