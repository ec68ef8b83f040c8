// The lab's Prometheus (`trellis lab up --prometheus`): Debian's `prometheus` in a netns of its own on the fabric
// (PROMETHEUS_IP), scraping every agent's /metrics at its node's fabric address, with the recording rules of
// manifests/monitoring/ loaded. Its config and data live under the lab's state directory, so `down` and `sweep`
// remove them with the lab; like every lab process it carries the lab marker and is recorded with its start time.
import { existsSync, promises as fsp, readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { parse, stringify } from 'yaml';
import { METRICS_PORT } from '../../agent/constants.js';
import { ENDPOINTS_FILE, type LabEndpoints } from '../../viz/endpoints.js';
import { LabError } from '../errors.js';
import { LAB_ENV, PROMETHEUS_IP, netnsPath, prometheusNetns } from './names.js';
import type { LabNode } from './plan.js';
import { isAlive, sleep, spawnDetached, type ProcRecord } from './procs.js';
import { writeFileAtomic } from './state.js';
import { addFabricHost } from './topology.js';

export const PROMETHEUS_PORT = 9090;
/** Short, so tests see a request in Prometheus within seconds; rules are evaluated as often. */
export const DEFAULT_SCRAPE_INTERVAL = '2s';
const READY_TIMEOUT_MS = 30_000;
const LOG_TAIL_LINES = 20;
/** The recording rules the viewer reads: spec.groups of this PrometheusRule become the lab's rules file. */
const RULES_MANIFEST = path.join('manifests', 'monitoring', 'prometheusrule.yaml');

export interface PrometheusOptions {
  /** Scrape (and rule evaluation) interval, a Prometheus duration; default 2s. */
  scrapeInterval?: string;
}

/** What the lab's state keeps of its Prometheus. */
export interface PrometheusRecord {
  proc: ProcRecord;
  netns: string;
  /** http://PROMETHEUS_IP:9090, answered inside `netns` (and from any netns of the lab). */
  url: string;
  /** Config, rules and data (tsdb), under the lab's state directory. */
  dir: string;
  scrapeInterval: string;
}

/** prometheus.yml: one job, one target per node (its agent's :15020), labelled with the node's name. */
export function prometheusConfig(inputs: { lab: string; nodes: readonly LabNode[]; scrapeInterval: string; rulesFile: string }): string {
  const config = {
    global: { scrape_interval: inputs.scrapeInterval, scrape_timeout: inputs.scrapeInterval, evaluation_interval: inputs.scrapeInterval },
    rule_files: [inputs.rulesFile],
    scrape_configs: [
      {
        job_name: 'trellis-agent',
        metrics_path: '/metrics',
        static_configs: inputs.nodes.map((n) => ({ targets: [`${n.fabricIp}:${METRICS_PORT}`], labels: { node: n.name } })),
      },
    ],
  };
  return `# Written by the Trellis lab '${inputs.lab}' (lab/cluster/prometheus.ts): every agent's /metrics every ${inputs.scrapeInterval}.\n${stringify(config)}`;
}

/** The rules file: the groups of manifests/monitoring/prometheusrule.yaml, as Prometheus loads them. */
export function rulesFile(repoRoot: string): string {
  const file = path.join(repoRoot, RULES_MANIFEST);
  const rule = parse(readFileSync(file, 'utf8')) as { spec?: { groups?: unknown[] } };
  if (!Array.isArray(rule?.spec?.groups)) throw new LabError('ELAB', `${file}: no spec.groups (the recording rules the lab's Prometheus loads)`);
  return `# spec.groups of ${RULES_MANIFEST}, copied by the Trellis lab.\n${stringify({ groups: rule.spec.groups })}`;
}

/** The `prometheus` binary on PATH, or a LabError saying how to install it. */
export function findPrometheus(): string {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const file = path.join(dir || '.', 'prometheus');
    if (dir && existsSync(file)) return file;
  }
  throw new LabError(
    'ENOENT',
    'prometheus is not installed: `apt-get install --no-install-recommends prometheus` (scripts/setup-debian.sh installs it), or bring the lab up without --prometheus',
  );
}

interface StartInputs {
  lab: string;
  stateDir: string;
  logsDir: string;
  nodes: readonly LabNode[];
  repoRoot: string;
  options: PrometheusOptions;
}

/** Makes the netns, writes the config and rules, starts Prometheus and waits until it is ready. */
export async function startPrometheus(inputs: StartInputs): Promise<PrometheusRecord> {
  const binary = findPrometheus();
  const scrapeInterval = inputs.options.scrapeInterval ?? DEFAULT_SCRAPE_INTERVAL;
  if (!/^\d+(ms|s|m)$/.test(scrapeInterval)) throw new LabError('EINVAL', `scrape interval "${scrapeInterval}": write a Prometheus duration such as 2s`);
  const netns = prometheusNetns(inputs.lab);
  const dir = path.join(inputs.stateDir, 'prometheus');
  await fsp.mkdir(path.join(dir, 'data'), { recursive: true });
  await writeFileAtomic(path.join(dir, 'rules.yml'), rulesFile(inputs.repoRoot));
  await writeFileAtomic(path.join(dir, 'prometheus.yml'), prometheusConfig({ lab: inputs.lab, nodes: inputs.nodes, scrapeInterval, rulesFile: 'rules.yml' }));
  await addFabricHost(inputs.lab, netns, PROMETHEUS_IP, 'prom');
  const logFile = path.join(inputs.logsDir, 'prometheus.log');
  const argv = [
    'ip', 'netns', 'exec', netns, binary,
    `--config.file=${path.join(dir, 'prometheus.yml')}`,
    `--storage.tsdb.path=${path.join(dir, 'data')}`,
    `--web.listen-address=${PROMETHEUS_IP}:${PROMETHEUS_PORT}`,
    '--storage.tsdb.retention.time=1d',
    '--log.level=warn',
  ];
  const { record } = spawnDetached(argv, { env: { ...process.env, [LAB_ENV]: inputs.lab }, logFile });
  const rec: PrometheusRecord = { proc: await record, netns, url: `http://${PROMETHEUS_IP}:${PROMETHEUS_PORT}`, dir, scrapeInterval };
  await waitReady(rec, logFile);
  return rec;
}

/** The viewer's pointer to this lab (viz/endpoints.ts), written whether or not the lab runs a Prometheus. */
export async function writeEndpoints(stateDir: string, endpoints: LabEndpoints): Promise<void> {
  await writeFileAtomic(path.join(stateDir, ENDPOINTS_FILE), `${JSON.stringify(endpoints, null, 2)}\n`);
}

/** GET on the lab's Prometheus, connecting from inside its netns (the host's netns has no route to the lab). */
export async function prometheusGet(rec: Pick<PrometheusRecord, 'netns'>, urlPath: string, timeoutMs = 5_000): Promise<{ status: number; body: string }> {
  const { connectInNetns } = await import('../../agent/native/index.js');
  return new Promise((resolve, reject) => {
    const req = http.get(
      {
        host: PROMETHEUS_IP,
        port: PROMETHEUS_PORT,
        path: urlPath,
        // No `agent`: with one, Node ignores createConnection and would connect from this process's netns.
        createConnection: () => connectInNetns(netnsPath(rec.netns), { host: PROMETHEUS_IP, port: PROMETHEUS_PORT, timeoutMs }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    // A timer of its own: connectInNetns resets the socket's idle timeout once connected.
    const timer = setTimeout(() => req.destroy(new LabError('ETIMEDOUT', `GET ${urlPath} on the lab's Prometheus: no answer in ${timeoutMs} ms`)), timeoutMs);
    req.on('close', () => clearTimeout(timer));
    req.on('error', reject);
  });
}

async function waitReady(rec: PrometheusRecord, logFile: string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let last = 'no answer yet';
  for (;;) {
    if (!isAlive(rec.proc)) throw new LabError('ELAB', `prometheus exited before it was ready (log ${logFile}):\n${tail(logFile)}`);
    try {
      const r = await prometheusGet(rec, '/-/ready', 1_000);
      if (r.status === 200) return;
      last = `HTTP ${r.status} ${r.body.trim().slice(0, 200)}`;
    } catch (err) {
      if ((err as { code?: string }).code === 'ENATIVE') throw err;
      last = (err as Error).message;
    }
    if (Date.now() >= deadline) {
      throw new LabError('ETIMEDOUT', `prometheus not ready after ${READY_TIMEOUT_MS / 1000} s (last: ${last}); log ${logFile}:\n${tail(logFile)}`);
    }
    await sleep(100);
  }
}

function tail(file: string): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-LOG_TAIL_LINES).join('\n') || '(the log is empty)';
  } catch {
    return '(no log)';
  }
}
