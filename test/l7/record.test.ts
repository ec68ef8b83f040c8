// The request record's access line: built by hand on the fast path (AccessLog.line), it must read exactly as the
// generic path (a pino logger's info) writes the same record, field for field, whatever is set or left out.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Registry } from 'prom-client';
import { afterAll, describe, expect, it } from 'vitest';
import { Body } from '../../agent/l7/body.js';
import type { L7Request } from '../../agent/l7/exchange.js';
import { RequestRecord, type RecordPeer } from '../../agent/l7/record.js';
import type { CompiledRule } from '../../agent/model/routes/index.js';
import type { Workload } from '../../agent/state/workload.js';
import { createAuditLog } from '../../agent/telemetry/audit.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { captureLogger } from '../support/logger.js';

const dir = mkdtempSync(path.join(tmpdir(), 'trellis-record-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const workload = (ns: string, name: string): Workload =>
  ({ key: `${ns}/${name}`, namespace: ns, name, identity: `spiffe://cluster.local/ns/${ns}/sa/${name}`, meshed: true, labels: {}, node: 'n' }) as unknown as Workload;

function request(over: Partial<L7Request> = {}): L7Request {
  return {
    protocol: 'http1',
    grpc: false,
    method: 'GET',
    authority: 'echo.mesh:80',
    path: '/a/b',
    query: '',
    headers: {},
    body: Body.EMPTY,
    requestId: 'rid-1',
    startedAt: performance.now(),
    ...over,
  };
}

const cases: { name: string; req: L7Request; src: RecordPeer; dst: RecordPeer; fill: (r: RequestRecord) => void }[] = [
  { name: 'a plain outbound request', req: request(), src: { workload: workload('mesh', 'client'), principal: 'spiffe://x/ns/mesh/sa/client', ip: '10.0.0.1', port: 4000 }, dst: {}, fill: (r) => (r.status = 200) },
  {
    name: 'a routed request with retries, a fault flag and an error',
    req: request({ method: 'POST', path: '/päth "quoted"\\', authority: 'héllo:1' }),
    src: { ip: '10.0.0.1' },
    dst: {},
    fill: (r) => {
      r.route = { route: 'mesh/split', name: 'canary' } as CompiledRule;
      r.setEndpoint({ ip: '10.0.0.9', port: 8080, workload: workload('mesh', 'server') });
      r.destinationService = 'server.mesh.svc.cluster.local';
      r.status = 503;
      r.retries = 2;
      r.fault = true;
      r.error = 'upstream "reset"\nagain';
      r.requestBytes = 12;
      r.responseBytes = 34;
    },
  },
  {
    name: 'an inbound gRPC request with the authorization decision',
    req: request({ protocol: 'h2', grpc: true, method: 'POST', path: '/pkg.Svc/Call' }),
    src: { workload: workload('a', 'caller'), principal: 'spiffe://cluster.local/ns/a/sa/caller', ip: '10.0.1.1', port: 5000 },
    dst: { workload: workload('b', 'callee'), principal: 'spiffe://cluster.local/ns/b/sa/callee', ip: '10.0.2.2', port: 9000 },
    fill: (r) => {
      r.status = 200;
      r.grpcStatus = '7';
      r.destinationService = undefined;
      Object.assign(r.extra, { authz: { decision: 'deny', code: 'denied', action: 'DENY', policy: 'b/deny', rule: 0, audit: undefined, reason: 'no' } });
    },
  },
];

describe('RequestRecord access line', () => {
  for (const [i, c] of cases.entries()) {
    it(`reads the same built by hand as through pino: ${c.name}`, async () => {
      const lines: Record<string, unknown>[] = [];
      for (const fast of [false, true]) {
        const file = path.join(dir, `${i}-${fast}.log`);
        const audit = createAuditLog({ registry: new Registry(), logger: captureLogger().logger, file, base: { node: 'n1' } });
        const accessLog = fast ? audit.access : audit.logger;
        const rec = new RequestRecord(c.req, { metrics: new Metrics({ defaultMetrics: false }), accessLog }, c.dst.workload ? 'inbound' : 'outbound', c.src, c.dst, c.dst.principal ? 'mutual_tls' : 'none');
        c.fill(rec);
        rec.finish();
        await audit.close();
        const text = readFileSync(file, 'utf8');
        expect(text.endsWith('\n') && text.split('\n').length).toBe(2);
        const line = JSON.parse(text) as Record<string, unknown>;
        delete line.time;
        delete line.duration_ms;
        lines.push(line);
      }
      expect(lines[1]).toEqual(lines[0]);
      expect(Object.keys(lines[1]!)).toEqual(Object.keys(lines[0]!));
    });
  }
});

describe('RequestRecord metrics on one connection', () => {
  it('each request counts in the series of its own labels, the memo of the connection notwithstanding', async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    const audit = createAuditLog({ registry: new Registry(), logger: captureLogger().logger, enabled: false });
    const connection = {};
    const client = workload('mesh', 'client');
    const server = workload('mesh', 'server');
    const split = { route: 'mesh/split', name: 'canary' } as CompiledRule;
    // [status, route, endpoint workload]: repeats (the memo's hits) between changes of each label.
    const sequence: [number, CompiledRule | undefined, Workload][] = [
      [200, undefined, server], [200, undefined, server], [503, undefined, server], [200, undefined, server],
      [200, split, server], [200, split, server], [200, split, client], [200, undefined, server],
    ];
    for (const [status, route, ep] of sequence) {
      const rec = new RequestRecord(request(), { metrics, accessLog: audit.access }, 'outbound', { workload: client, principal: client.identity }, {}, 'none', connection);
      rec.destinationService = 'server.mesh.svc.cluster.local';
      rec.route = route;
      rec.setEndpoint({ ip: '10.0.0.9', port: 8080, workload: ep });
      rec.status = status;
      rec.finish();
    }
    await audit.close();
    const counted = (await metrics.registry.getSingleMetric('trellis_requests_total')!.get()).values.map(
      (v) => `${v.labels['response_code']} ${v.labels['route_name'] || '-'} ${v.labels['destination_workload']} ${v.value}`,
    );
    expect(counted.sort()).toEqual(['200 - server 4', '200 split client 1', '200 split server 2', '503 - server 1']);
  });
});
