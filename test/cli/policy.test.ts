// `trellis policy describe` and `trellis policy check`: real manifest files read as the dir source reads them,
// the same view asked of an agent's /debug/policies over loopback HTTP (the admin server alone, and a whole
// agent started in-process), and the command's output and exit codes.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startAgent } from '../../agent/app.js';
import { checkPolicies, describeFromAgent, describeFromDir, formatCheck, loadDir } from '../../agent/cli/policy.js';
import { agentConfig } from '../../agent/config.js';
import { describe as describePolicies, formatDescription } from '../../agent/security/index.js';
import { listen, metricsServer } from '../../agent/telemetry/admin.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { captureLogger } from '../support/logger.js';
import { closedPort } from '../support/ports.js';
import { trellis } from '../support/trellis-cli.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const EXAMPLES = path.join(ROOT, 'manifests/examples');

const PODS = `
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: ratings-1, namespace: shop, labels: {app: ratings}}
spec: {nodeName: node-x, serviceAccountName: ratings, containers: [{name: app}]}
status: {podIP: 10.244.9.10}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy-1, namespace: shop, labels: {app: legacy}}
spec: {nodeName: node-x, containers: [{name: app}]}
status: {podIP: 10.244.9.11}
`;

// A typo in a field name: refused (never read as a narrower or wider rule), and named.
const TYPO = `
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: shop}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules:
    - from: [{source: {namespaces: [other], notPrincipal: ["cluster.local/ns/other/sa/ok"]}}]
`;

let dir: string;

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'trellis-policy-'));
  mkdirSync(path.join(dir, 'policies'));
  // The documented examples, in a subdirectory (the dir source reads the tree).
  for (const f of ['authorizationpolicy.yaml', 'peerauthentication.yaml']) {
    writeFileSync(path.join(dir, 'policies', f), readFileSync(path.join(EXAMPLES, f)));
  }
  writeFileSync(path.join(dir, 'pods.yaml'), PODS);
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('policy describe --dir', () => {
  it('lists what applies to a workload in the order it is checked, with the mTLS mode per port', async () => {
    const view = describeFromDir(await loadDir(dir, 'cluster.local'), 'shop/legacy-1', dir);
    expect(view.workload).toBe('shop/legacy-1');
    expect(view.authorization.map((p) => `${p.action} ${p.policy} ${p.scope}`)).toEqual([
      'DENY shop/no-admin-from-outside namespace',
      'AUDIT shop/audit-tenant-b namespace',
    ]);
    expect(view.peerAuthentication).toMatchObject({ mode: 'STRICT', modeFrom: 'shop/legacy-metrics-port', ports: { '9102': 'PERMISSIVE' } });
    expect(view.defaultOutcome).toMatch(/^allowed unless a DENY policy matches/);

    const ratings = describeFromDir(await loadDir(dir, 'cluster.local'), 'shop/ratings-1', dir);
    expect(ratings.authorization.map((p) => p.policy)).toEqual(['shop/no-admin-from-outside', 'shop/ratings-readers', 'shop/audit-tenant-b']);
    expect(ratings.defaultOutcome).toBe('denied unless an ALLOW policy matches (shop/ratings-readers)');
    const text = formatDescription(ratings);
    expect(text).toContain('mTLS: STRICT (from PeerAuthentication shop/default)');
    expect(text).toContain('ALLOW shop/ratings-readers [workload selector app=ratings]');
    expect(text).toMatch(/rule 0: from principals \[cluster.local\/ns\/shop\/sa\/frontend\].*\[HTTP only: methods, paths; on opaque TCP never matches\]/);
  });

  it('an invalid policy is named with its field, on the workloads of its namespace and by check', async () => {
    writeFileSync(path.join(dir, 'policies', 'typo.yaml'), TYPO);
    const loaded = await loadDir(dir, 'cluster.local');
    const view = describeFromDir(loaded, 'shop/ratings-1', dir);
    // In force only as its fail-closed reading (a DENY of everything it selects), and listed as a problem.
    expect(view.authorization.filter((p) => p.policy === 'shop/typo').map((p) => [p.action, p.rules.length])).toEqual([['DENY', 1]]);
    expect(view.problems).toEqual([expect.stringMatching(/^AuthorizationPolicy shop\/typo: spec.rules\[0\].from\[0\].source.notPrincipal: unknown field/)]);
    const check = checkPolicies(loaded);
    expect(check.ok).toBe(false);
    expect(check.errors).toHaveLength(1);
    const text = formatCheck(check);
    expect(text).toContain('invalid AuthorizationPolicy shop/typo');
    expect(text).toContain('ok      AuthorizationPolicy shop/ratings-readers');
    expect(text).toMatch(/7 policies checked: 6 valid, 1 invalid\. An invalid policy is not enforced as written/);
  });

  it('a pod that is not there, or a directory that is not there, is an error saying so', async () => {
    const loaded = await loadDir(dir, 'cluster.local');
    expect(() => describeFromDir(loaded, 'shop/ratings-2', dir)).toThrow(/pod shop\/ratings-2 is not in .* \(pods in shop: ratings-1, legacy-1\)/);
    await expect(loadDir(path.join(dir, 'nope'), 'cluster.local')).rejects.toThrow(/--dir .*nope: ENOENT/);
    expect(existsSync(path.join(dir, 'nope'))).toBe(false);
  });
});

describe('policy check --dir', () => {
  it('valid policies: one line each, exit 0', async () => {
    const r = await trellis(['policy', 'check', '--dir', dir]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('6 policies checked: 6 valid, 0 invalid');
  });

  it('an invalid policy, a policy file that does not parse: every error printed, exit 1; other kinds noted, not counted', async () => {
    writeFileSync(path.join(dir, 'policies', 'typo.yaml'), TYPO);
    writeFileSync(path.join(dir, 'policies', 'broken.yaml'), 'apiVersion: security.trellis.dev/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: x\n');
    writeFileSync(path.join(dir, 'pod-bad.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata: {name: BAD, namespace: shop}\nspec: {containers: [{name: a}]}\n');
    const r = await trellis(['policy', 'check', '--dir', dir]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/AuthorizationPolicy shop\/typo: spec.rules\[0\].from\[0\].source.notPrincipal: unknown field \(known: .*\); an ignored field would change what the policy matches/);
    expect(r.stdout).toMatch(/Refused before compiling[^\n]*\n\s+\S*broken.yaml: document 1: invalid YAML/);
    expect(r.stdout).toMatch(/Other objects the agent would refuse[^\n]*\n\s+\S*pod-bad.yaml: Pod\/shop\/BAD: field metadata.name/);
    const json = await trellis(['policy', 'check', '--dir', dir, '--json']);
    expect(json.code).toBe(1);
    const parsed = JSON.parse(json.stdout) as { ok: boolean; errors: string[]; problems: string[]; otherProblems: string[] };
    expect(parsed).toMatchObject({ ok: false });
    expect(parsed.errors).toHaveLength(1);
    expect(parsed.problems).toHaveLength(1);
    expect(parsed.otherProblems).toHaveLength(1);
  });

  it('describe through the command: text, JSON, and exit codes for a missing pod and for missing flags', async () => {
    const [text, json, missing, neither, badName] = await Promise.all([
      trellis(['policy', 'describe', 'shop/ratings-1', '--dir', dir]),
      trellis(['policy', 'describe', 'shop/ratings-1', '--dir', dir, '--json']),
      trellis(['policy', 'describe', 'shop/nope', '--dir', dir]),
      trellis(['policy', 'describe', 'shop/ratings-1']),
      trellis(['policy', 'describe', 'ratings-1', '--dir', dir]),
    ]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toBe(`${formatDescription(describeFromDir(await loadDir(dir, 'cluster.local'), 'shop/ratings-1', dir))}\n`);
    expect(JSON.parse(json.stdout)).toMatchObject({ workload: 'shop/ratings-1', peerAuthentication: { mode: 'STRICT' } });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('pod shop/nope is not in');
    expect(neither.code).toBe(2);
    expect(neither.stderr).toContain('give one of --dir DIR (manifests) or --agent URL (a running agent)');
    expect(badName.code).not.toBe(0);
    expect(badName.stderr).toContain('name the workload as NAMESPACE/POD');
  });
});

describe('policy describe --agent', () => {
  let server: http.Server | undefined;

  afterEach(async () => {
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    server = undefined;
  });

  async function serve(): Promise<URL> {
    const loaded = await loadDir(dir, 'cluster.local');
    const registry = new Metrics().registry;
    server = metricsServer(async () => ({ body: await registry.metrics(), contentType: registry.contentType }), {
      describePolicies: (key) => {
        const pod = loaded.state.workloads.get(key);
        return pod && describePolicies(loaded.state.policies, pod);
      },
    });
    await listen(server, '127.0.0.1', 0);
    return new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  }

  it('shows the same view as the manifests, over HTTP', async () => {
    const url = await serve();
    const fromAgent = await describeFromAgent(url, 'shop/ratings-1');
    expect(fromAgent).toEqual(JSON.parse(JSON.stringify(describeFromDir(await loadDir(dir, 'cluster.local'), 'shop/ratings-1', dir))));
    const r = await trellis(['policy', 'describe', 'shop/legacy-1', '--agent', url.href]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('mTLS: STRICT (from PeerAuthentication shop/legacy-metrics-port); port 9102: PERMISSIVE');
    const bare = await trellis(['policy', 'describe', 'shop/legacy-1', '--agent', url.host, '--json']);
    expect(JSON.parse(bare.stdout)).toMatchObject({ workload: 'shop/legacy-1' });
  });

  it('an unknown pod is 404 with the reason; a missing workload parameter 400; metrics still served', async () => {
    const url = await serve();
    await expect(describeFromAgent(url, 'shop/nope')).rejects.toThrow(/pod shop\/nope is not known to this agent/);
    const bad = await fetch(new URL('/debug/policies', url));
    expect(bad.status).toBe(400);
    expect(await bad.json()).toEqual({ error: 'name the workload: /debug/policies?workload=NAMESPACE/POD' });
    expect((await fetch(new URL('/metrics', url))).status).toBe(200);
  });

  it('an agent that is not there: the error says where to look', async () => {
    const port = await closedPort();
    await expect(describeFromAgent(new URL(`http://127.0.0.1:${port}`), 'shop/ratings-1')).rejects.toThrow(
      /cannot reach the agent at http:\/\/127.0.0.1:\d+: ECONNREFUSED \(is it running on that node\?/,
    );
  });

  it('a running agent serves the view of its current state, and its audit file is flushed and closed on stop', async () => {
    const [metricsPort, healthPort] = [await closedPort(), await closedPort()];
    const manifests = path.join(dir, 'manifests');
    mkdirSync(manifests);
    writeFileSync(path.join(manifests, 'all.yaml'), `${PODS}\n---\n${readFileSync(path.join(EXAMPLES, 'authorizationpolicy.yaml'), 'utf8')}`);
    const auditFile = path.join(dir, 'audit.log');
    const config = agentConfig({
      node: 'node-elsewhere', // no pod of the manifests runs here: nothing is captured
      dir: manifests,
      caDir: path.join(dir, 'ca'),
      metricsAddr: `127.0.0.1:${metricsPort}`,
      healthAddr: `127.0.0.1:${healthPort}`,
      driftInterval: '0',
      auditFile,
      // In process, from sources: one thread (worker threads run the compiled agent).
      workers: '1',
    });
    const agent = await startAgent(config, captureLogger().logger);
    try {
      const view = await describeFromAgent(new URL(`http://127.0.0.1:${metricsPort}`), 'shop/ratings-1');
      expect(view).toMatchObject({ workload: 'shop/ratings-1', ready: true, peerAuthentication: { mode: 'PERMISSIVE' } });
      expect(view.authorization.map((p) => p.policy)).toContain('shop/ratings-readers');
      const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      expect(metrics).toMatch(/^trellis_audit_lines_total 0$/m);
      expect(existsSync(auditFile)).toBe(true);
    } finally {
      await agent.stop();
    }
  });
});
