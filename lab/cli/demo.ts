// `trellis demo` (npm run demo): a two-node lab mesh from examples/demo, traffic driven through it, and the
// golden metrics read back from both agents until the duration ends or Ctrl-C: per route (request rate,
// success rate, p50/p99 latency over the last round) and per TCP connection pair. A Prometheus runs in the lab
// (unless --no-prometheus): the demo says where, and prints what it says of the server each round, as
// `trellis stat` in another shell would.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { formatTable } from '../../agent/cli/table.js';
import { Lab } from '../cluster/lab.js';
import { findPrometheus } from '../cluster/prometheus.js';
import { PromClient } from '../../viz/prom/client.js';
import { netnsTransport } from '../../viz/prom/transport.js';
import { ALL_RULES } from '../../viz/promql.js';
import { stat } from '../../viz/stat.js';
import { latency, percent, perSecond } from '../../viz/format.js';
import { parsePrometheus, type Sample } from '../load/promtext.js';

interface DemoFlags {
  duration?: string;
  interval?: string;
  name: string;
  keep?: boolean;
  logLevel: string;
  prometheus: boolean;
}

const here = path.dirname(fileURLToPath(import.meta.url));

function repoRoot(): string {
  // dist/agent/cli -> repo, or agent/cli -> repo
  const up = here.includes(`${path.sep}dist${path.sep}`) ? '../../..' : '../..';
  return path.resolve(here, up);
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('build a two-node mesh from network namespaces, drive traffic through it and print its metrics')
    .option('--duration <seconds>', 'stop by itself after this many seconds and exit 0 (default: until Ctrl-C)')
    .option('--interval <seconds>', 'seconds between metric tables', '5')
    .option('--name <lab>', 'lab name (netns prefix trl-<name>-)', 'demo')
    .option('--keep', 'leave the lab running on exit (remove it with `trellis lab down --name demo`)')
    .option('--log-level <level>', 'agent log level', 'info')
    .option('--prometheus', 'run a Prometheus in the lab, for `trellis stat|edges|routes|top|dashboard`', true)
    .option('--no-prometheus', 'run none')
    .action(async (flags: DemoFlags) => {
      const duration = flags.duration === undefined ? Infinity : Number(flags.duration);
      const interval = Number(flags.interval ?? 5);
      if (!(duration > 0) || !(interval > 0)) throw Object.assign(new Error('--duration and --interval take a positive number of seconds'), { code: 'ECONFIG' });
      await runDemo({ ...flags, durationS: duration, intervalS: interval });
    });
}

async function runDemo(opts: DemoFlags & { durationS: number; intervalS: number }): Promise<void> {
  const manifests = path.join(repoRoot(), 'examples', 'demo');
  const say = (s: string) => process.stdout.write(`${s}\n`);
  say(`trellis demo: building lab "${opts.name}" from ${manifests} ...`);
  let prometheus = opts.prometheus;
  if (prometheus) {
    try {
      findPrometheus();
    } catch (err) {
      say(`(no Prometheus in the lab: ${(err as Error).message})`);
      prometheus = false;
    }
  }
  const lab = await Lab.up(manifests, { name: opts.name, logLevel: opts.logLevel, prometheus });
  let stopping = false;
  const stop = async (code: number) => {
    if (stopping) return;
    stopping = true;
    if (opts.keep) say(`lab left running: trellis lab status --name ${opts.name}; remove it with trellis lab down --name ${opts.name}`);
    else {
      say('tearing down the lab ...');
      await lab.down();
    }
    process.exit(code);
  };
  process.once('SIGINT', () => void stop(0));
  process.once('SIGTERM', () => void stop(0));
  try {
    for (const p of lab.pods) say(`  pod ${p.namespace}/${p.name} on ${p.node} at ${p.ip}`);
    for (const s of lab.services) say(`  service ${s.namespace}/${s.name} at ${s.clusterIP} ports ${s.ports.map((p) => `${p.port}->${p.targetPort}`).join(',')}`);
    const vip = (ns: string, name: string) => lab.services.find((s) => s.namespace === ns && s.name === name)!.clusterIP;
    const server = vip('demo', 'server');
    const sink = vip('demo', 'sink');
    const prom = lab.prometheus;
    if (prom) {
      const flag = opts.name === 'demo' ? '' : ` --lab ${opts.name}`;
      say(`  prometheus at ${prom.url} in netns ${prom.netns} (scrapes every ${prom.scrapeInterval}); in another shell: trellis stat${flag} -n demo, trellis edges${flag} -n demo, trellis routes${flag} svc/server -n demo, trellis top${flag} demo/client, trellis dashboard${flag}`);
    }
    const deadline = Date.now() + opts.durationS * 1000;
    let round = 0;
    let previous: Sample[] = [];
    let previousAt = performance.now();
    while (!stopping && Date.now() < deadline) {
      round++;
      const seconds = Math.max(1, Math.min(opts.intervalS, (deadline - Date.now()) / 1000));
      // Meshed client -> meshed server over HBONE; outsider (not meshed) -> meshed server in plaintext;
      // a bulk transfer to the sink, whose digest must match.
      const load = (ref: string) =>
        lab.exec(ref, ['trellis', 'tool', 'http-load', '--url', `http://${server}/`, '--count', '1000000', '--concurrency', '4', '--duration-s', String(seconds)], { timeoutMs: (seconds + 30) * 1000 });
      const [meshed, plain, bulk] = await Promise.all([
        load('demo/client'),
        load('plain/outsider'),
        lab.exec('demo/client', ['trellis', 'tool', 'tcp-send', '--to', `${sink}:9000`, '--bytes', '8m'], { timeoutMs: 60_000 }),
      ]);
      say(`\n== round ${round}: ${summary('client -> server (mTLS)', meshed.stdout)}; ${summary('outsider -> server (plaintext)', plain.stdout)}; bulk 8 MiB ${bulk.code === 0 ? 'digest matches' : `FAILED: ${bulk.stderr.trim() || bulk.stdout.trim()}`}`);
      const samples: Sample[] = [];
      for (const n of lab.nodes) samples.push(...parsePrometheus(await lab.metrics(n.name)).map((s) => ({ ...s, labels: { ...s.labels, node: n.name } })));
      const now = performance.now();
      say(routeTable(samples, previous, (now - previousAt) / 1000));
      say('');
      say(tcpTable(samples));
      if (prom) say(`\n${await fromPrometheus(prom)}`);
      previous = samples;
      previousAt = now;
    }
  } catch (err) {
    process.stderr.write(`trellis demo: ${(err as Error).message}\n`);
    await stop(1);
    return;
  }
  await stop(0);
}

/** What the lab's Prometheus says of demo/server over the last minute: the first row of `trellis stat deploy/server -n demo`. */
async function fromPrometheus(prom: NonNullable<Lab['prometheus']>): Promise<string> {
  const client = new PromClient(netnsTransport(prom.url, prom.netnsPath, 'the lab is going down'));
  try {
    const rules = await client.recordingRules();
    const [row] = await stat({ kind: 'workload', name: 'server', namespace: 'demo' }, { query: (e) => client.query(e), source: { window: '1m', rules: ALL_RULES.every((r) => rules.has(r)) } });
    if (!row) return 'prometheus: no requests to demo/server in the last minute yet (it needs two scrapes)';
    const secured = row.secured === null ? '-' : percent(row.secured);
    return `prometheus (trellis stat deploy/server -n demo): ${percent(row.successRate)} success, ${perSecond(row.rps)} rps, p99 ${latency(row.latency.p99)}, ${secured} mTLS over the last minute`;
  } catch (err) {
    return `prometheus: ${(err as Error).message}`;
  }
}

function summary(what: string, stdout: string): string {
  try {
    const r = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as { sent?: number; ok?: number; p50_ms?: number; p99_ms?: number };
    return `${what}: ${r.ok}/${r.sent} ok, p50 ${r.p50_ms?.toFixed(2)} ms, p99 ${r.p99_ms?.toFixed(2)} ms`;
  } catch {
    return `${what}: no result (${stdout.trim().slice(0, 80)})`;
  }
}

/** One row per (node, reporter, source, destination, security) with the four TCP golden counters. */
export function tcpTable(samples: Sample[]): string {
  const rows = new Map<string, { key: string[]; v: Record<string, number> }>();
  const short = { trellis_tcp_connections_opened_total: 'opened', trellis_tcp_connections_closed_total: 'closed', trellis_tcp_received_bytes_total: 'rx_bytes', trellis_tcp_sent_bytes_total: 'tx_bytes' } as Record<string, string>;
  for (const s of samples) {
    const col = short[s.name];
    if (!col) continue;
    const l = s.labels;
    const key = [l.node ?? '', l.reporter ?? '', `${l.source_workload}.${l.source_workload_namespace}`, `${l.destination_workload}.${l.destination_workload_namespace}`, l.destination_service ?? '', l.connection_security_policy ?? ''];
    const id = key.join('|');
    const row = rows.get(id) ?? { key, v: {} };
    row.v[col] = (row.v[col] ?? 0) + s.value;
    rows.set(id, row);
  }
  const header = ['NODE', 'REPORTER', 'SOURCE', 'DESTINATION', 'SERVICE', 'SECURITY', 'OPENED', 'CLOSED', 'RX_BYTES', 'TX_BYTES'];
  const body = [...rows.values()]
    .sort((a, b) => a.key.join('|').localeCompare(b.key.join('|')))
    .map((r) => [...r.key, ...['opened', 'closed', 'rx_bytes', 'tx_bytes'].map((c) => String(r.v[c] ?? 0))]);
  if (!body.length) return '(no TCP metrics yet)';
  return formatTable([header, ...body], 6);
}

interface RouteRow {
  key: string[];
  requests: number;
  ok: number;
  buckets: Map<number, number>;
}

/**
 * One row per (node, reporter, route, rule, destination service) with what happened since the last table:
 * requests per second, success rate (not 5xx, and gRPC OK for gRPC) and p50/p99 from the histogram buckets.
 */
export function routeTable(now: Sample[], before: Sample[], seconds: number): string {
  const rows = new Map<string, RouteRow>();
  const rowFor = (l: Record<string, string>): RouteRow => {
    const route = l.route_name ? `${l.route_namespace}/${l.route_name}` : '-';
    const key = [l.node ?? '', l.reporter ?? '', route, l.route_rule || '-', l.destination_service ?? ''];
    const id = key.join('|');
    let row = rows.get(id);
    if (!row) {
      row = { key, requests: 0, ok: 0, buckets: new Map() };
      rows.set(id, row);
    }
    return row;
  };
  const id = (s: Sample) => `${s.name}|${Object.entries(s.labels).sort().map(([k, v]) => `${k}=${v}`).join(',')}`;
  const old = new Map(before.map((s) => [id(s), s.value]));
  for (const s of now) {
    const delta = s.value - (old.get(id(s)) ?? 0);
    if (delta <= 0) continue;
    const l = s.labels;
    if (s.name === 'trellis_requests_total') {
      const row = rowFor(l);
      row.requests += delta;
      const failed = Number(l.response_code) >= 500 || Number(l.response_code) === 0 || (l.request_protocol === 'grpc' && l.grpc_response_status !== '0');
      if (!failed) row.ok += delta;
    } else if (s.name === 'trellis_request_duration_seconds_bucket') {
      const { le, ...rest } = l;
      const row = rowFor(rest);
      const bound = le === '+Inf' ? Infinity : Number(le);
      row.buckets.set(bound, (row.buckets.get(bound) ?? 0) + delta);
    }
  }
  const header = ['NODE', 'REPORTER', 'ROUTE', 'RULE', 'SERVICE', 'RPS', 'SUCCESS', 'P50_MS', 'P99_MS'];
  const body = [...rows.values()]
    .filter((r) => r.requests > 0)
    .sort((a, b) => a.key.join('|').localeCompare(b.key.join('|')))
    .map((r) => [
      ...r.key,
      (r.requests / seconds).toFixed(1),
      `${((100 * r.ok) / r.requests).toFixed(2)}%`,
      quantileMs(r.buckets, 0.5),
      quantileMs(r.buckets, 0.99),
    ]);
  if (!body.length) return '(no HTTP requests in this round)';
  return formatTable([header, ...body], 5);
}

/** A quantile from cumulative histogram buckets, interpolated inside the bucket as Prometheus does. */
function quantileMs(cumulative: Map<number, number>, q: number): string {
  const bounds = [...cumulative.keys()].sort((a, b) => a - b);
  const total = cumulative.get(Infinity) ?? 0;
  if (total === 0) return '-';
  const rank = q * total;
  let prevBound = 0;
  let prevCount = 0;
  for (const b of bounds) {
    const c = cumulative.get(b)!;
    if (c >= rank) {
      if (b === Infinity) return `>${(prevBound * 1000).toFixed(1)}`;
      const within = c - prevCount === 0 ? 0 : (rank - prevCount) / (c - prevCount);
      return ((prevBound + (b - prevBound) * within) * 1000).toFixed(2);
    }
    prevBound = b;
    prevCount = c;
  }
  return '-';
}
