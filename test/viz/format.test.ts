// The viewer's printing: numbers as a person reads them, tables aligned like the demo's and `lab status`.
import { describe, expect, it } from 'vitest';
import { formatTable } from '../../agent/cli/table.js';
import { bytesPerSecond, edgesTable, latency, percent, perSecond, routesTable, securedPercent, statTable } from '../../viz/format.js';
import type { StatRow } from '../../viz/stat.js';

describe('numbers', () => {
  it('prints shares, rates, latencies and byte rates', () => {
    expect([percent(0.8), percent(1), percent(null), percent(0.123456)]).toEqual(['80.00%', '100.00%', '-', '12.35%']);
    // Security never rounds up to all of it.
    expect([securedPercent(0.996), securedPercent(1), securedPercent(0), securedPercent(0.8), securedPercent(null)]).toEqual(['99%', '100%', '0%', '80%', '-']);
    expect([perSecond(6.666), perSecond(0), perSecond(1234.5)]).toEqual(['6.67', '0.00', '1235']);
    expect([latency(0.00031), latency(0.0123), latency(0.25), latency(12.3), latency(null)]).toEqual(['0.31ms', '12.3ms', '250ms', '12.3s', '-']);
    expect([bytesPerSecond(12), bytesPerSecond(1536), bytesPerSecond(3 * 1024 * 1024)]).toEqual(['12B/s', '1.5KiB/s', '3.0MiB/s']);
  });
});

describe('tables', () => {
  it('aligns text left and numbers right, two spaces apart, with no trailing blanks', () => {
    expect(formatTable([['NAME', 'N'], ['a', '100'], ['long-name', '2']], 1)).toBe('NAME         N\na          100\nlong-name    2');
    expect(formatTable([['A', 'B'], ['x', '']])).toBe('A  B\nx');
    expect(formatTable([])).toBe('');
  });

  const row = (name: string, over: Partial<StatRow> = {}): StatRow => ({
    namespace: 'viz',
    name,
    meshed: true,
    rps: 6.667,
    successRate: 0.8,
    latency: { p50: 0.0005, p95: 0.002, p99: 0.0123 },
    tcp: { open: 0, openedPerSecond: 0, readBytesPerSecond: 0, writeBytesPerSecond: 0 },
    secured: 0.8,
    securedBasis: 'requests',
    ...over,
  });

  it('stat: the columns of `linkerd viz stat`, NAMESPACE with -A, more with -o wide', () => {
    expect(statTable([row('api'), row('legacy', { meshed: false, successRate: null, rps: 0, secured: null, latency: { p50: null, p95: null, p99: null } })], { kind: 'workload', allNamespaces: false, wide: false })).toBe(
      [
        'NAME    MESHED  SUCCESS   RPS  LATENCY_P50  LATENCY_P95  LATENCY_P99  TCP_CONN  SECURED',
        'api     yes      80.00%  6.67       0.50ms       2.00ms       12.3ms         0      80%',
        'legacy  no            -  0.00            -            -            -         0        -',
      ].join('\n'),
    );
    expect(statTable([row('api')], { kind: 'workload', allNamespaces: true, wide: true }).split('\n')[0]).toBe(
      'NAMESPACE  NAME  MESHED  SUCCESS   RPS  LATENCY_P50  LATENCY_P95  LATENCY_P99  TCP_CONN  SECURED  CONN/SEC  READ_BYTES/SEC  WRITE_BYTES/SEC',
    );
    expect(statTable([row('viz')], { kind: 'namespace', allNamespaces: true, wide: false }).split('\n')[0]).toMatch(/^NAME  MESHED/);
  });

  it('edges and routes', () => {
    expect(
      edgesTable(
        [
          {
            source: { namespace: 'viz', workload: 'client', identity: 'spiffe://td/ns/viz/sa/client' },
            destination: { namespace: 'viz', workload: 'api', identity: null },
            mtls: false,
            mtlsShare: 0.5,
            rps: 1,
            connectionsPerSecond: 0,
            open: 0,
            reportedBy: ['source'],
          },
        ],
        { wide: false },
      ),
    ).toBe('SRC     DST  SRC_NS  DST_NS  SECURED       CLIENT_ID                     SERVER_ID\nclient  api  viz     viz     partly (50%)  spiffe://td/ns/viz/sa/client  -');
    expect(
      routesTable(
        [{ route: 'viz/split', rule: 'canary', backend: 'v1', match: 'PathPrefix /', weight: 0.9, split: 0.8912, rps: 10, successRate: 1, latency: { p50: 0.001, p95: 0.002, p99: 0.003 } }],
        { wide: true },
      ),
    ).toBe(
      'ROUTE      RULE    BACKEND  MATCH         WEIGHT   SPLIT  SUCCESS    RPS  LATENCY_P50  LATENCY_P95  LATENCY_P99\n' +
        'viz/split  canary  v1       PathPrefix /  90.00%  89.12%  100.00%  10.00       1.00ms       2.00ms       3.00ms',
    );
  });
});
