// Agent restarts under load, as a DaemonSet rolling update with maxSurge 1 does them: `restartAgent` starts a new
// agent beside the old one, waits until it is ready, then stops the old one, which hands its queued connections
// over (SO_REUSEPORT + tcp_migrate_req) and drains the open ones. Through four restarts (each node twice, in turn),
// with HTTP/1.1 keep-alive (meshed and plaintext), h2c, a new connection per request, and 20 paced opaque TCP
// streams across each restart: not one failed request, refused connection or altered byte.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab } from '../../lab/cluster/lab.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const fixtures = path.join(import.meta.dirname, 'fixtures', 'restart.yaml');

/** How long the loads run: long enough for four restarts, each of them bounded by the streams' 4 s. */
const LOAD_S = 40;
const RESTARTS = ['node-b', 'node-a', 'node-b', 'node-a'];

interface Summary {
  sent: number;
  ok: number;
  failed: number;
  statusCounts: Record<string, number>;
}

describe('agent restarts under load (two-node lab)', () => {
  const name = `r${Math.random().toString(36).slice(2, 6)}`;
  let lab: Lab;

  beforeAll(async () => {
    requireRoot('agent restart tests');
    // --drain 15s: the paced streams (4 s) end well inside it, so the drain, not a cut, ends each old agent.
    lab = await Lab.up(fixtures, { name, agentArgs: ['--drain', '15s'] });
  });

  afterAll(async () => {
    await lab?.down();
  });

  const vip = (service: string) => lab.services.find((s) => s.name === service)!.clusterIP;
  const exec = async (pod: string, argv: string[]) => {
    const r = await lab.exec(pod, ['trellis', 'tool', ...argv], { timeoutMs: (LOAD_S + 60) * 1000 });
    return { ...r, lines: r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) };
  };

  it('replaces each agent four times over without a failed request, a refused connection or a changed byte', async () => {
    const web = vip('web');
    await until('the mesh to answer', async () => (await exec('mesh/client', ['http-client', '--url', `http://${web}/warm`, '--count', '1'])).lines[0]?.ok === 1, 20_000);
    await until('the plaintext path to answer', async () => (await exec('plain/outsider', ['http-client', '--url', `http://${web}/warm`, '--count', '1'])).lines[0]?.ok === 1, 20_000);
    const pids = async () => Object.fromEntries((await lab.status()).nodes.map((n) => [n.name, n.agent?.pid]));
    const first = await pids();

    // The loads: ~250 req/s of HTTP/1.1 over 6 keep-alive connections, ~100 h2c req/s, ~100 plaintext req/s,
    // and new connections (one request each) one after another.
    const loads = Promise.all([
      exec('mesh/client', ['http-client', '--url', `http://${web}/h1`, '--count', '100000', '--concurrency', '6', '--interval-ms', '20', '--duration-s', String(LOAD_S)]),
      exec('mesh/client', ['http-client', '--http2', '--url', `http://${web}:82/h2`, '--count', '100000', '--concurrency', '2', '--interval-ms', '20', '--duration-s', String(LOAD_S)]),
      exec('plain/outsider', ['http-client', '--url', `http://${web}/plain`, '--count', '100000', '--concurrency', '2', '--interval-ms', '20', '--duration-s', String(LOAD_S)]),
      exec('mesh/client', ['conn-rate', '--url', `http://${web}/conn`, '--duration-s', String(LOAD_S), '--concurrency', '1']),
    ]);

    const timings: { node: string; readyMs: number; stopMs: number }[] = [];
    const streams: Promise<Awaited<ReturnType<typeof exec>>>[] = [];
    const started = Date.now();
    for (const node of RESTARTS) {
      await new Promise((resolve) => setTimeout(resolve, 1500));
      // 20 opaque TCP streams, each 512 KiB paced over 4 s, open across the restart.
      streams.push(exec('mesh/client', ['tcp-send', '--to', `${vip('sink')}:9000`, '--bytes', '512k', '--bytes-per-s', '128k', '--chunk', '16k', '--streams', '20']));
      await new Promise((resolve) => setTimeout(resolve, 500));
      const t = await lab.restartAgent(node);
      timings.push({ node, ...t });
    }
    const restartsMs = Date.now() - started;
    const [h1, h2, plain, conns] = (await loads).map((r) => r.lines.at(-1)!);
    const sent = await Promise.all(streams);
    console.log(
      `4 restarts: ${timings.map((t) => `${t.node} ready ${Math.round(t.readyMs)} ms, old gone ${Math.round(t.stopMs)} ms later`).join('; ')}\n` +
        `h1 ${JSON.stringify(h1)}\nh2 ${JSON.stringify(h2)}\nplain ${JSON.stringify(plain)}\nconns ${JSON.stringify(conns)}`,
    );

    expect(restartsMs, 'the restarts must finish while the loads run').toBeLessThan((LOAD_S - 2) * 1000);
    for (const [what, s] of [['meshed HTTP/1.1', h1], ['h2c', h2], ['plaintext HTTP/1.1', plain]] as const) {
      const summary = s as unknown as Summary;
      expect(summary.failed, `${what}: ${JSON.stringify(summary.statusCounts)}`).toBe(0);
      expect(summary.ok, what).toBeGreaterThan(LOAD_S * 40);
    }
    expect(conns!.errors, `new connections: ${JSON.stringify(conns!.error_counts)}`).toBe(0);
    expect(conns!.ok as number).toBeGreaterThan(LOAD_S * 20);
    for (const s of sent) {
      expect(s.code, s.stderr).toBe(0);
      expect(s.lines).toHaveLength(20);
      for (const line of s.lines) expect(line).toMatchObject({ sent: 512 * 1024, match: true });
    }

    // Every agent is new, and every old one ended by its drain, with nothing cut.
    const now = await pids();
    for (const node of ['node-a', 'node-b']) expect(now[node]).not.toBe(first[node]);
    for (const node of ['node-a', 'node-b']) {
      const drained = lab
        .agentLog(node)
        .split('\n')
        .filter((l) => l.includes('"msg":"connections drained"'))
        .map((l) => JSON.parse(l) as { drained: number; cut: number });
      expect(drained, node).toHaveLength(2);
      for (const d of drained) expect(d.cut, `${node}: ${JSON.stringify(d)}`).toBe(0);
    }
    // The new agents count what they carry.
    const requests = sumOf(parsePrometheus(await lab.metrics('node-b')), 'trellis_requests_total', { reporter: 'destination', destination_workload: 'web' });
    expect(requests).toBeGreaterThan(0);
  });
});
