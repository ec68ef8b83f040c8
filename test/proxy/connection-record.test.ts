// The connection record's access line: built by hand on the fast path (AccessLog.line), it must read exactly as the
// generic path (a pino logger's info) writes the same record, field for field, whatever is set or left out.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Registry } from 'prom-client';
import { afterAll, describe, expect, it } from 'vitest';
import { ConnectionRecord, type ConnectionFields } from '../../agent/proxy/connection.js';
import { Drain } from '../../agent/proxy/drain.js';
import type { Workload } from '../../agent/state/workload.js';
import { createAuditLog } from '../../agent/telemetry/audit.js';
import { Metrics } from '../../agent/telemetry/metrics.js';
import { captureLogger } from '../support/logger.js';

const dir = mkdtempSync(path.join(tmpdir(), 'trellis-connection-record-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const workload = (ns: string, name: string): Workload =>
  ({ key: `${ns}/${name}`, namespace: ns, name, identity: `spiffe://cluster.local/ns/${ns}/sa/${name}`, meshed: true, labels: {}, node: 'n' }) as unknown as Workload;

const cases: { name: string; fields: () => ConnectionFields; bytes: [number, number]; error?: Error }[] = [
  {
    name: 'an outbound meshed connection to a Service',
    fields: () => ({
      direction: 'outbound',
      src: { ip: '10.0.0.1', port: 40_000, workload: workload('mesh', 'client'), principal: 'spiffe://cluster.local/ns/mesh/sa/client' },
      dst: { ip: '10.0.1.9', port: 9000, workload: workload('mesh', 'sink'), principal: 'spiffe://cluster.local/ns/mesh/sa/sink', service: 'sink.mesh.svc.cluster.local' },
      security: 'mutual_tls',
    }),
    bytes: [1234, 0],
  },
  {
    name: 'an inbound plaintext connection with the authorization decision, cut with an error',
    fields: () => ({
      direction: 'inbound',
      src: { ip: '10.0.0.7', port: 5 },
      dst: { ip: '10.0.1.9', port: 9000, workload: workload('mesh', 'sink'), principal: 'spiffe://cluster.local/ns/mesh/sa/sink' },
      security: 'none',
      authz: { decision: 'deny', policy: 'mesh/"quoted"', rules: ['a', 2], skipped: undefined },
    }),
    bytes: [0, 77],
    error: Object.assign(new Error('policy now denies it "x"\n'), { code: 'EPOLICY' }),
  },
  {
    name: 'a connection with nearly nothing known',
    fields: () => ({ direction: 'outbound', src: {}, dst: { service: 'x.y.svc.cluster.local' }, security: 'none' }),
    bytes: [0, 0],
  },
];

describe('ConnectionRecord access line', () => {
  for (const [i, c] of cases.entries()) {
    it(`reads the same built by hand as through pino: ${c.name}`, async () => {
      const lines: Record<string, unknown>[] = [];
      for (const fast of [false, true]) {
        const file = path.join(dir, `${i}-${fast}.log`);
        const audit = createAuditLog({ registry: new Registry(), logger: captureLogger().logger, file, base: { node: 'n1' } });
        const accessLog = fast ? audit.access : audit.logger;
        const rec = new ConnectionRecord(c.fields(), { metrics: new Metrics({ defaultMetrics: false }), accessLog, drain: new Drain() });
        rec.downToUp(c.bytes[0]);
        rec.upToDown(c.bytes[1]);
        rec.finish(c.error);
        await audit.close();
        const text = readFileSync(file, 'utf8');
        expect(text.endsWith('\n') && text.split('\n').length).toBe(2);
        const line = JSON.parse(text) as Record<string, unknown>;
        delete line.time;
        delete line.duration_ms;
        lines.push(line);
      }
      expect(lines[1]).toEqual(lines[0]);
      expect(JSON.stringify(lines[1])).toBe(JSON.stringify(lines[0]));
    });
  }
});
