// Root-only, cluster mode: the CNI plugin through an agent hand-over. The agents serve trellis-cni (--cni-socket), and
// the lab plays the kubelet: pods created on node-a through the API while node-a's agent is replaced (`restartAgent`,
// as a DaemonSet rolling update with maxSurge 1), each started through a real CNI ADD of the real plugin, before,
// during and after the moment the new agent takes the socket over, their IP reported 3 s after they start (as a busy
// kubelet). Every ADD must succeed, the new agent must get ready as fast as without them, and every such pod must be
// in the mesh from its first packet to its last: its client calls, for 8 s across the hand-over, a server that only
// callers of namespace `mesh` may reach (an identity only mTLS carries), and the destination agent counts each call
// as mutual TLS from that pod. Found here: the pods whose ADD the old agent answered had their connections refused
// from its exit until their IP reached the new one (now the old agent hands them over), and ADDs arriving one after
// another held the new agent's first enrolment pass back, and with it its readiness (12-16 s, or never).
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab, type AddedPod } from '../../lab/cluster/lab.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import type { Pod } from '../../agent/model/objects.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const fixtures = path.join(import.meta.dirname, 'fixtures', 'cni-handover.yaml');
/** How long each added pod's client calls, every 50 ms from the moment its container starts: across the hand-over. */
const CALL_S = 8;
const EVERY_MS = 250;
/** As a busy kubelet: the pod's status (its IP) reaches the API server this long after its containers started. */
const STATUS_DELAY_MS = 3_000;
/** A restart takes 2-5 s here: pods enough for twice that. */
const MAX_PODS = 40;

interface Summary {
  sent: number;
  ok: number;
  failed: number;
  statusCounts: Record<string, number>;
}

describe('the CNI plugin through an agent hand-over (cluster mode)', () => {
  const name = `h${Math.random().toString(36).slice(2, 6)}`;
  let lab: Lab;

  beforeAll(async () => {
    requireRoot('CNI hand-over tests');
    // No audit trail: the node's log is read for the CNI lines.
    lab = await Lab.up(fixtures, { name, cluster: true, cni: true, agentArgs: ['--drain', '3s', '--no-audit'] });
  });

  afterAll(async () => {
    await lab?.down();
  });

  const vip = () => lab.services.find((s) => s.name === 'web')!.clusterIP;
  const call = async (pod: string) => {
    const r = await lab.exec(pod, ['trellis', 'tool', 'http-client', '--url', `http://${vip()}/warm`, '--count', '1']);
    return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Summary;
  };
  const latePod = (k: number): Pod =>
    ({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: `late-${k}`, namespace: 'mesh', labels: { app: `late-${k}` } },
      spec: {
        nodeName: 'node-a',
        serviceAccountName: `late-${k}`,
        // The app's first connection goes out the moment it starts, right after the CNI ADD returned; then it stays up,
        // as a pod's sandbox would (its pause container keeps the netns and a process in it).
        containers: [{ name: 'c', command: ['sh', '-c', `trellis tool http-client --url http://${vip()}/late-${k} --count 100000 --interval-ms 50 --duration-s ${CALL_S}; exec sleep infinity`] }],
      },
    }) as Pod;
  const agentPid = async () => (await lab.status()).nodes.find((n) => n.name === 'node-a')!.agent!.pid;

  it('captures every pod created on the node while its agent is replaced, and no CNI ADD fails', async () => {
    // Only callers in the mesh reach web: a pod that escaped capture would be answered 403.
    await until('the meshed client to be served', async () => (await call('mesh/client')).ok === 1, 20_000);
    expect((await call('plain/outsider')).statusCounts).toEqual({ '403': 1 });

    // A pod started through the CNI plugin with no hand-over under way, to compare.
    const first = await lab.addPod(latePod(0));
    expect(first.cni.ms).toBeLessThan(5_000);

    const oldPid = await agentPid();
    const t0 = performance.now();
    let restarted: { readyMs: number; stopMs: number } | undefined;
    let settled = false;
    const restart = lab.restartAgent('node-a').then((t) => (restarted = t)).finally(() => (settled = true));
    const adds: Promise<{ k: number; at: number; added?: AddedPod; err?: Error }>[] = [];
    // A new pod every 250 ms from the start of the restart until one after its end: some reach the old agent, some
    // the new one before it is ready, some while the old one drains, one after.
    for (let k = 1; k <= MAX_PODS; k++) {
      const at = performance.now() - t0;
      adds.push(lab.addPod(latePod(k), { statusDelayMs: STATUS_DELAY_MS }).then((added) => ({ k, at, added }), (err: Error) => ({ k, at, err })));
      if (settled) break;
      await new Promise((resolve) => setTimeout(resolve, EVERY_MS));
    }
    await restart;
    const results = await Promise.all(adds);
    expect(restarted!.readyMs, 'the new agent gets ready while pods keep starting').toBeLessThan(10_000);
    const newPid = await agentPid();
    expect(newPid).not.toBe(oldPid);

    // Which agent answered each ADD: both write the node's log, and the new one says when it took the socket over;
    // an ADD logged before that was the old agent's (one the old agent took just before and answered just after
    // would count as the new one's).
    const lines = lab.agentLog('node-a').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { time: string; msg: string; pod?: string; cmd?: string });
    const takeover = lines.find((l) => l.msg === 'took the CNI socket over from the agent serving it (a hand-over)')?.time;
    expect(takeover, 'the new agent took the CNI socket over').toBeDefined();
    // The first answer to each pod's ADD (the old agent hands its pods over to the new one with the same request).
    const answeredAt = new Map<string, string>();
    for (const l of lines) if (l.msg === 'CNI request' && l.cmd === 'ADD' && !answeredAt.has(l.pod!)) answeredAt.set(l.pod!, l.time);
    const who = (k: number) => {
      const at = answeredAt.get(`mesh/late-${k}`);
      return at === undefined ? 'none' : at < takeover! ? 'old' : 'new';
    };
    console.log(
      `restart of node-a's agent: new one ready after ${Math.round(restarted!.readyMs)} ms, old one gone ${Math.round(restarted!.stopMs)} ms later\n` +
        results.map((r) => `late-${r.k}: added at ${Math.round(r.at)} ms, ${r.err ? `FAILED: ${r.err.message}` : `CNI ADD ${Math.round(r.added!.cni.ms)} ms, answered by the ${who(r.k)} agent`}`).join('\n'),
    );
    expect(results.filter((r) => r.err).map((r) => `late-${r.k}: ${r.err!.message}`)).toEqual([]);
    expect(results.length).toBeGreaterThanOrEqual(6);
    const by = results.map((r) => who(r.k));
    expect(by, 'some ADDs reach the old agent, some the new one').toEqual(expect.arrayContaining(['old', 'new']));
    // The old agent told the new one of the pods it had enrolled before its listeners closed.
    const handedOver = lines.filter((l) => l.msg === 'pods enrolled through CNI handed over to the next agent') as unknown as { handed: number; failed: number }[];
    expect(handedOver).toHaveLength(1);
    expect(handedOver[0]!.failed).toBe(0);
    expect(handedOver[0]!.handed).toBeGreaterThanOrEqual(by.filter((w) => w === 'old').length);

    // Every pod's client: all its calls served, so it went through the mesh from its first packet to its last.
    const summaries = new Map<number, Summary>();
    for (const r of [{ k: 0 }, ...results]) {
      const pod = `mesh/late-${r.k}`;
      summaries.set(r.k, await until(`${pod}'s client to finish`, async () => {
        const line = lab.podLog(pod).trim().split('\n').filter((l) => l.startsWith('{')).at(-1);
        return line ? (JSON.parse(line) as Summary) : undefined;
      }, (CALL_S + 30) * 1000));
    }
    console.log([...summaries].map(([k, s]) => `late-${k} (${who(k)}): ${s.ok} ok, ${s.failed} failed ${JSON.stringify(s.statusCounts)}`).join('\n'));
    const sent = new Map<number, number>();
    for (const [k, summary] of summaries) {
      expect(summary, `late-${k} (CNI ADD answered by the ${who(k)} agent)`).toMatchObject({ failed: 0 });
      expect(summary.ok, `late-${k}`).toBeGreaterThan(CALL_S * 10);
      sent.set(k, summary.ok);
    }
    // ...over mutual TLS with the pod's own identity, as the destination agent saw them.
    const samples = parsePrometheus(await lab.metrics('node-b'));
    for (const r of [{ k: 0 }, ...results]) {
      const n = sumOf(samples, 'trellis_requests_total', {
        reporter: 'destination',
        source_principal: `spiffe://cluster.local/ns/mesh/sa/late-${r.k}`,
        connection_security_policy: 'mutual_tls',
        response_code: '200',
      });
      expect(n, `late-${r.k}`).toBe(sent.get(r.k));
    }
    // The new agent knows every pod it holds now, found through the plugin or, for the ones the old agent was
    // told of, through the pod's IP.
    expect(sumOf(parsePrometheus(await lab.metrics('node-a')), 'trellis_enrolled_pods')).toBe(2 + results.length);
  });
});
