// `trellis policy describe` and `trellis policy check`: which AuthorizationPolicies and PeerAuthentication apply
// to a workload and what they do, read from a directory of manifests (exactly as the agent's dir source reads
// and the store compiles it) or asked of a running agent (/debug/policies on its metrics listener); and a check
// of every policy in a directory before it is applied. Reads only; changes nothing.
import { statSync } from 'node:fs';
import { InvalidArgumentError, type Command } from 'commander';
import pino from 'pino';
import { DEFAULT_TRUST_DOMAIN } from '../constants.js';
import { TrellisError } from '../errors.js';
import { describe, formatDescription, type PolicyStatus, type WorkloadPoliciesView } from '../security/index.js';
import { DirSource, type Snapshot, type SourceProblem } from '../sources/dir.js';
import { compile, type MeshState } from '../state/store.js';

const POLICY_KINDS = ['AuthorizationPolicy', 'PeerAuthentication'];

/** A directory read as the agent's dir source reads it, compiled as the agent's store compiles it. */
export interface DirState {
  readonly state: MeshState;
  /** Files and objects the dir source refuses (their objects are not in `state`). */
  readonly problems: readonly SourceProblem[];
}

export async function loadDir(dir: string, trustDomain: string): Promise<DirState> {
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch (err) {
    throw new TrellisError('ENOENT', `--dir ${dir}: ${(err as Error).message}`);
  }
  // DirSource would create a missing directory; a typo in --dir must not look like an empty mesh.
  if (!isDir) throw new TrellisError('ENOTDIR', `--dir ${dir}: not a directory`);
  let snapshot: Snapshot | undefined;
  const source = new DirSource({ dir, logger: pino({ level: 'silent' }), onSnapshot: (s) => (snapshot = s) });
  try {
    await source.start();
  } finally {
    source.close();
  }
  if (!snapshot) throw new TrellisError('EIO', `--dir ${dir}: the directory could not be read`);
  return { state: compile(snapshot.objects, trustDomain, 1), problems: snapshot.problems };
}

/** NAMESPACE/POD, checked. */
export function parseWorkload(text: string): string {
  if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?\/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(text)) {
    throw new InvalidArgumentError('name the workload as NAMESPACE/POD, e.g. shop/ratings-7d9f');
  }
  return text;
}

export function describeFromDir(loaded: DirState, workload: string, dir: string): WorkloadPoliciesView {
  const pod = loaded.state.workloads.get(workload);
  if (!pod) {
    const namespace = workload.split('/')[0]!;
    const others = [...loaded.state.workloads.values()].filter((w) => w.namespace === namespace).map((w) => w.pod);
    const hint = others.length ? `pods in ${namespace}: ${others.slice(0, 10).join(', ')}${others.length > 10 ? ', ...' : ''}` : `no pod of namespace ${namespace} is there`;
    throw new TrellisError('ENOTFOUND', `pod ${workload} is not in ${dir} (${hint})`);
  }
  return describe(loaded.state.policies, pod);
}

/** The agent's base URL: http://IP:PORT, or IP:PORT. */
export function agentUrl(text: string): URL {
  try {
    const url = new URL(text.includes('://') ? text : `http://${text}`);
    if (url.protocol !== 'http:') throw new Error('only http');
    return url;
  } catch {
    throw new InvalidArgumentError('expected the agent\'s metrics listener, e.g. http://10.0.0.5:15020');
  }
}

export async function describeFromAgent(base: URL, workload: string, timeoutMs = 5000): Promise<WorkloadPoliciesView> {
  const url = new URL('/debug/policies', base);
  url.searchParams.set('workload', workload);
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).name;
    throw new TrellisError('EAGENT', `cannot reach the agent at ${base.origin}: ${cause} (is it running on that node? /debug/policies is on its metrics listener, --metrics-addr, port 15020 by default)`);
  }
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  if (res.status !== 200) {
    const error = (body as { error?: unknown } | undefined)?.error;
    const what = typeof error === 'string' ? error : `HTTP ${res.status}${res.status === 404 ? ' (an agent older than this command, without /debug/policies?)' : ''}`;
    throw new TrellisError(res.status === 404 ? 'ENOTFOUND' : 'EAGENT', `agent ${base.origin}: ${what}`);
  }
  const view = body as Partial<WorkloadPoliciesView> | undefined;
  if (!view || typeof view.workload !== 'string' || !Array.isArray(view.authorization) || typeof view.peerAuthentication !== 'object') {
    throw new TrellisError('EAGENT', `agent ${base.origin}: /debug/policies answered something that is not a policy view`);
  }
  return view as WorkloadPoliciesView;
}

export interface CheckResult {
  readonly ok: boolean;
  readonly statuses: readonly PolicyStatus[];
  /** One line per problem: the policy, the field, what is wrong. */
  readonly errors: readonly string[];
  /** Files or policy objects the dir source refuses before compiling (bad YAML, bad metadata, duplicates). */
  readonly problems: readonly string[];
  /** Refusals of objects that are not policies: reported, not counted against the check. */
  readonly otherProblems: readonly string[];
}

/** Every policy of the directory compiled as the agent would; invalid ones named with their field. */
export function checkPolicies(loaded: DirState): CheckResult {
  const policy: string[] = [];
  const other: string[] = [];
  for (const p of loaded.problems) {
    const line = `${p.file}${p.object ? `: ${p.object}` : ''}: ${p.reason}`;
    // An object the source could not even name (bad YAML, a document without kind) may be a policy.
    const kind = p.object?.split('/')[0];
    if (!p.object || p.object.startsWith('document ') || POLICY_KINDS.includes(kind ?? '')) policy.push(line);
    else other.push(line);
  }
  const { statuses, errors } = loaded.state.policies;
  return { ok: errors.length === 0 && policy.length === 0, statuses, errors, problems: policy, otherProblems: other };
}

export function formatCheck(r: CheckResult): string {
  const lines: string[] = [];
  for (const s of r.statuses) {
    const mark = !s.accepted ? 'invalid' : s.message === 'valid; in force' ? 'ok     ' : 'note   ';
    lines.push(`${mark} ${s.kind} ${s.namespace}/${s.name}${s.accepted && s.message !== 'valid; in force' ? `: ${s.message}` : ''}`);
  }
  if (r.errors.length) {
    lines.push('', 'Errors:');
    for (const e of r.errors) lines.push(`  ${e}`);
  }
  if (r.problems.length) {
    lines.push('', 'Refused before compiling (their policies are not read):');
    for (const p of r.problems) lines.push(`  ${p}`);
  }
  if (r.otherProblems.length) {
    lines.push('', 'Other objects the agent would refuse (not policies, not counted):');
    for (const p of r.otherProblems) lines.push(`  ${p}`);
  }
  const invalid = r.statuses.filter((s) => !s.accepted).length;
  lines.push(
    '',
    `${r.statuses.length} ${r.statuses.length === 1 ? 'policy' : 'policies'} checked: ${r.statuses.length - invalid} valid, ${invalid} invalid` +
      (r.problems.length ? `; ${r.problems.length} refused before compiling` : '') +
      (r.ok ? '' : '. An invalid policy is not enforced as written: its last valid version stays in force, or, if it never had one, its fail-closed reading (ALLOW: matches nothing; DENY: denies everything it selects). Fix the fields named above.'),
  );
  return lines.join('\n');
}

export function registerPolicyCommands(program: Command): void {
  const policy = program.command('policy').description('inspect AuthorizationPolicy and PeerAuthentication');

  policy
    .command('describe')
    .description('which AuthorizationPolicies and PeerAuthentication apply to a workload, in the order they are checked, and what happens to a request none matches')
    .argument('<workload>', 'the pod, as NAMESPACE/POD', parseWorkload)
    .option('--dir <path>', 'read the manifests of this directory, as `trellis agent --source dir` does')
    .option('--agent <url>', "ask a running agent: its metrics listener, e.g. http://10.0.0.5:15020 (the agent of the pod's node)", agentUrl)
    .option('--trust-domain <td>', 'with --dir: the mesh trust domain', DEFAULT_TRUST_DOMAIN)
    .option('--json', 'print the view as JSON')
    .action(async (workload: string, o: { dir?: string; agent?: URL; trustDomain: string; json?: boolean }) => {
      if (!o.dir === !o.agent) throw new TrellisError('ECONFIG', 'give one of --dir DIR (manifests) or --agent URL (a running agent)');
      let view: WorkloadPoliciesView;
      if (o.dir) {
        const loaded = await loadDir(o.dir, o.trustDomain);
        for (const p of checkPolicies(loaded).problems) process.stderr.write(`warning: refused by the dir source, not read: ${p}\n`);
        view = describeFromDir(loaded, workload, o.dir);
      } else {
        view = await describeFromAgent(o.agent!, workload);
      }
      process.stdout.write(o.json ? `${JSON.stringify(view, null, 2)}\n` : `${formatDescription(view)}\n`);
    });

  policy
    .command('check')
    .description('compile every AuthorizationPolicy and PeerAuthentication of a directory as the agent would; print each invalid field; exit 1 if any')
    .requiredOption('--dir <path>', 'the manifests, as `trellis agent --source dir` reads them')
    .option('--trust-domain <td>', 'the mesh trust domain', DEFAULT_TRUST_DOMAIN)
    .option('--json', 'print the result as JSON')
    .action(async (o: { dir: string; trustDomain: string; json?: boolean }) => {
      const result = checkPolicies(await loadDir(o.dir, o.trustDomain));
      process.stdout.write(o.json ? `${JSON.stringify(result, null, 2)}\n` : `${formatCheck(result)}\n`);
      if (!result.ok) process.exitCode = 1;
    });
}
