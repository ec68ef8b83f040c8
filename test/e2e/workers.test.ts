// Agents with worker threads (--workers 2): every thread listens in every pod (SO_REUSEPORT) and the kernel
// spreads connections among them; certificates come from the main thread, and /metrics and the audit trail add
// up every thread's work exactly as if one thread had done it.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab } from '../../lab/cluster/lab.js';
import { parsePrometheus, sumOf } from '../../lab/load/promtext.js';
import { requireRoot } from '../support/root.js';
import { until } from '../support/until.js';

const fixtures = path.join(import.meta.dirname, 'fixtures', 'workers.yaml');

describe('agents with worker threads (two-node lab, --workers 2)', () => {
  const name = `w${Math.random().toString(36).slice(2, 6)}`;
  let lab: Lab;

  beforeAll(async () => {
    requireRoot('worker thread tests');
    lab = await Lab.up(fixtures, { name, agentArgs: ['--workers', '2'] });
  });

  afterAll(async () => {
    await lab?.down();
  });

  const vip = (service: string) => lab.services.find((s) => s.name === service)!.clusterIP;
  const metric = async (node: string, metricName: string, labels: Record<string, string> = {}) => sumOf(parsePrometheus(await lab.metrics(node)), metricName, labels);
  const load = async (url: string, count: number, concurrency: number) => {
    const r = await lab.exec('mesh/client', ['trellis', 'tool', 'http-load', '--url', url, '--count', String(count), '--concurrency', String(concurrency)], { timeoutMs: 60_000 });
    return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { ok: number; failed: number };
  };

  it('starts a worker thread beside the main thread in each agent', () => {
    for (const node of ['node-a', 'node-b']) expect(lab.agentLog(node)).toMatch(/"workers":2,"msg":"worker threads started"/);
  });

  it('spreads opaque TCP connections across the threads, and counts each connection once', async () => {
    await until('the path to answer', async () => (await load(`http://${vip('web-tcp')}:81/warm`, 1, 1)).ok === 1, 20_000);
    const accepted0 = await metric('node-a', 'trellis_worker_connections_total', { worker: '0' });
    const accepted1 = await metric('node-a', 'trellis_worker_connections_total', { worker: '1' });
    const opened = await metric('node-a', 'trellis_tcp_connections_opened_total', { reporter: 'source', destination_workload: 'web' });
    const r = await load(`http://${vip('web-tcp')}:81/`, 200, 40);
    expect(r).toMatchObject({ ok: 200, failed: 0 });
    const closedAll = async () => (await metric('node-a', 'trellis_tcp_connections_closed_total', { reporter: 'source', destination_workload: 'web' })) >= opened + 40;
    await until('the 40 connections to close on node-a', closedAll, 10_000);
    // Every connection is counted by exactly one thread, and the merged counters add up to what the client made.
    expect(await metric('node-a', 'trellis_tcp_connections_opened_total', { reporter: 'source', destination_workload: 'web' })).toBe(opened + 40);
    const by0 = (await metric('node-a', 'trellis_worker_connections_total', { worker: '0' })) - accepted0;
    const by1 = (await metric('node-a', 'trellis_worker_connections_total', { worker: '1' })) - accepted1;
    expect(by0 + by1).toBe(40);
    expect(by0, 'connections the main thread took').toBeGreaterThan(0);
    expect(by1, 'connections the worker thread took').toBeGreaterThan(0);
  });

  it('routes HTTP on every thread: metrics and access lines on both agents count each request exactly once', async () => {
    const marker = `/workers-${Date.now()}`;
    const before = {
      src: await metric('node-a', 'trellis_requests_total', { reporter: 'source', destination_workload: 'web' }),
      dst: await metric('node-b', 'trellis_requests_total', { reporter: 'destination', destination_workload: 'web' }),
    };
    const r = await load(`http://${vip('web-http')}${marker}`, 500, 40);
    expect(r).toMatchObject({ ok: 500, failed: 0 });
    expect(await metric('node-a', 'trellis_requests_total', { reporter: 'source', destination_workload: 'web' })).toBe(before.src + 500);
    expect(await metric('node-b', 'trellis_requests_total', { reporter: 'destination', destination_workload: 'web' })).toBe(before.dst + 500);
    // Access lines: one per request on each agent, whichever thread served it (the trail gathers for 20 ms).
    const lines = (node: string) => lab.agentLog(node).split('\n').filter((l) => l.includes('"msg":"request"') && l.includes(`"path":"${marker}"`));
    await until('both agents to write 500 access lines', async () => lines('node-a').length === 500 && lines('node-b').length === 500, 5000);
    for (const node of ['node-a', 'node-b']) expect(lines(node).every((l) => JSON.parse(l).status === 200)).toBe(true);
  });

  it('stops both threads on SIGTERM, draining what is open', async () => {
    await lab.stopAgent('node-a');
    expect(lab.agentLog('node-a')).toMatch(/"msg":"connections drained"/);
    expect(lab.agentLog('node-a')).toMatch(/"msg":"agent stopped"/);
    await lab.startAgent('node-a');
    await until('the restarted agent to carry requests', async () => (await load(`http://${vip('web-http')}/again`, 1, 1)).ok === 1, 20_000);
  });
});
