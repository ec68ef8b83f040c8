// `trellis bench` (npm run bench): the mesh measured against the direct path and HAProxy in a lab of its own.
// Flags are parsed here; the benchmark lives in lab/bench/.
import { type Command, InvalidArgumentError } from 'commander';
import { MEASUREMENTS, SLOW_MEASUREMENTS, runBench, type MeasurementId } from '../bench/run.js';
import { LabError } from '../errors.js';
import { PATHS } from '../bench/paths.js';

function list(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

function measurements(value: string): MeasurementId[] {
  const names = list(value);
  const bad = names.filter((n) => !(MEASUREMENTS as readonly string[]).includes(n));
  if (bad.length > 0) throw new InvalidArgumentError(`unknown measurement ${bad.join(', ')} (measurements: ${MEASUREMENTS.join(', ')})`);
  return names as MeasurementId[];
}

function repeats(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 20) throw new InvalidArgumentError('expected 1 to 20');
  return n;
}

interface BenchFlags {
  quick?: boolean;
  repeats?: number;
  json?: string;
  install?: boolean;
  name: string;
  paths?: string[];
  skip?: MeasurementId[];
  only?: MeasurementId[];
  agentTlsDefault?: boolean;
  agentArgs?: string;
  scaleServices?: number;
  tracing?: number;
  logLevel: string;
}

function ratio(value: string): number {
  const n = Number(value);
  if (!/^\d*\.?\d+$/.test(value) || !(n >= 0 && n <= 1)) throw new InvalidArgumentError('expected a sample ratio from 0 to 1, e.g. 0.01');
  return n;
}

function services(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 50_000) throw new InvalidArgumentError('expected 1 to 50000');
  return n;
}

export function registerBenchCommand(program: Command): void {
  program
    .command('bench')
    .description(
      'measure the mesh against the direct path and HAProxy (latency at fixed rates, CPU per request, max req/s, ' +
        'bulk throughput, connection rate, memory, config scale) in a lab of its own; needs root',
    )
    .option('--quick', `a reduced run (shorter measurements, 1 repeat, no ${SLOW_MEASUREMENTS.join(', ')} unless named in --only): under 5 minutes`)
    .option('--repeats <n>', 'runs of each measurement on each path (default 3, 1 with --quick)', repeats)
    .option('--json <file>', 'also write {"results":[{path,metric,value,unit,...}],"machine":{...}} to FILE')
    .option('--install', 'install what is missing (haproxy, util-linux...) with apt-get instead of stopping')
    .option('--paths <list>', `only these paths (${PATHS.map((p) => p.name).join(',')})`, list)
    .option('--skip <list>', `skip measurements (${MEASUREMENTS.join(',')})`, measurements)
    .option('--only <list>', 'run only these measurements (the others are skipped)', measurements)
    .option('--agent-tls-default', "leave the agents' TLS key exchange at Node's default (which HAProxy cannot match)")
    .option('--agent-args <flags>', 'extra flags for every agent, e.g. "--drift-interval 0" (stated in the report)')
    .option('--scale-services <n>', 'Services in the config-scale batches (scale, scale-kube), 5 endpoints each', services, 10_000)
    .option('--tracing <ratio>', "the agents trace at this sample ratio (0 to 1) and export OTLP/gRPC to a sink in the bench; compare with a run without it, e.g. --paths trellis-l7 --only latency,max-rps", ratio)
    .option('--name <lab>', 'lab name (netns prefix trl-<name>-)', 'bench')
    .option('--log-level <level>', 'agents\' log level (info logs one access line per connection, as in production)', 'info')
    .action(async (f: BenchFlags) => {
      if (f.only && f.skip) throw new LabError('ECONFIG', '--only and --skip: give one of them');
      const skip = f.only ? MEASUREMENTS.filter((m) => !f.only!.includes(m)) : [...(f.skip ?? []), ...(f.quick ? SLOW_MEASUREMENTS : [])];
      process.exitCode = await runBench({
        quick: f.quick ?? false,
        ...(f.repeats !== undefined && { repeats: f.repeats }),
        ...(f.json !== undefined && { json: f.json }),
        install: f.install ?? false,
        name: f.name,
        ...(f.paths !== undefined && { paths: f.paths }),
        skip,
        agentTlsDefault: f.agentTlsDefault ?? false,
        logLevel: f.logLevel,
        ...(f.agentArgs !== undefined && { agentArgs: f.agentArgs.split(/\s+/).filter(Boolean) }),
        ...(f.scaleServices !== undefined && { scaleServices: f.scaleServices }),
        ...(f.tracing !== undefined && { tracing: f.tracing }),
        out: (text) => process.stdout.write(text),
        log: (line) => process.stderr.write(`${line}\n`),
      });
    });
}
