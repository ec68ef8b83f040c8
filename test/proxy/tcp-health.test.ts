// TCP health per connection, in process: the reader takes a socket's cookie when the connection starts and reads its
// entry when it ends (taken for a socket of its own, kept for an HBONE session's) and each minute of a long one, every
// reading with the retransmissions since the previous one, and the record turns it into trellis_tcp_rtt_seconds and
// trellis_tcp_retransmits_total with the connection's TCP labels; nothing is read or made without the program.
import { EventEmitter } from 'node:events';
import type http2 from 'node:http2';
import type net from 'node:net';
import { describe, expect, it, vi } from 'vitest';
import { ConnectionRecord, HEALTH_PERIOD_MS, type ConnectionFields } from '../../agent/proxy/connection.js';
import { Drain } from '../../agent/proxy/drain.js';
import { TcpHealthReader } from '../../agent/proxy/tcp-health.js';
import type { TcpStats } from '../../agent/native/index.js';
import type { Workload } from '../../agent/state/workload.js';
import type { AccessLog } from '../../agent/telemetry/audit.js';
import { Metrics } from '../../agent/telemetry/metrics.js';

/** A stand-in for the kernel's map: cookie -> stats, and every call the reader made. */
function fakeMap(entries: Record<number, TcpStats>) {
  const calls: string[] = [];
  return {
    calls,
    entries,
    inputs: {
      mapFd: 9,
      read: (mapFd: number, cookie: number, remove: boolean) => {
        calls.push(`${remove ? 'take' : 'read'} ${cookie} fd ${mapFd}`);
        const s = entries[cookie];
        if (remove) delete entries[cookie];
        return s;
      },
      forget: (_mapFd: number, cookie: number) => {
        calls.push(`forget ${cookie}`);
        delete entries[cookie];
      },
      cookieOf: (socket: net.Socket) => {
        const c = (socket as unknown as { cookie?: number }).cookie;
        if (c === undefined) throw new Error('ENOFD');
        return c;
      },
    },
  };
}

const socket = (cookie?: number) => ({ cookie }) as unknown as net.Socket;
const session = (cookie?: number) => Object.assign(new EventEmitter(), { socket: cookie === undefined ? undefined : socket(cookie), destroyed: false }) as unknown as http2.Http2Session;
const stats = (srttUs: number, retransmits: number): TcpStats => ({ srttUs, retransmits, rttSamples: 3 });

describe('TCP health reader', () => {
  it('reads a socket of its own once, at the end, by the cookie it took at the start, and removes its entry', () => {
    const map = fakeMap({ 41: stats(20_500, 3) });
    const reader = new TcpHealthReader(map.inputs);
    const peer = reader.own(socket(41))!;
    expect(map.calls).toEqual([]);
    expect(peer.read(true)).toEqual({ rttSeconds: 0.0205, retransmits: 3 });
    expect(map.calls).toEqual(['take 41 fd 9']);
    expect(map.entries).toEqual({});
  });

  it('reads a long connection\'s own socket along the way (kept) and gives the last reading only what is new', () => {
    const map = fakeMap({ 12: stats(300, 2) });
    const peer = new TcpHealthReader(map.inputs).own(socket(12))!;
    expect(peer.read(false)).toEqual({ rttSeconds: 0.0003, retransmits: 2 });
    map.entries[12] = stats(400, 5);
    expect(peer.read(true)).toEqual({ rttSeconds: 0.0004, retransmits: 3 });
    expect(map.calls).toEqual(['read 12 fd 9', 'take 12 fd 9']);
  });

  it('says nothing for a socket without an fd or without an entry, and never throws', () => {
    const map = fakeMap({});
    const reader = new TcpHealthReader({ ...map.inputs, read: () => { throw new Error('EBADF'); } });
    expect(reader.own(socket())).toBeUndefined();
    expect(reader.own(socket(5))!.read(true)).toBeUndefined();
    expect(new TcpHealthReader(map.inputs).own(socket(6))!.read(true)).toBeUndefined();
    expect(reader.session(undefined)).toBeUndefined();
    expect(reader.session(session())).toBeUndefined();
  });

  it('gives each connection of an HBONE session its RTT and the retransmissions since the previous one, never twice', () => {
    const map = fakeMap({ 7: stats(1_000, 0) });
    const reader = new TcpHealthReader(map.inputs);
    const s = session(7);
    const first = reader.session(s)!;
    const second = reader.session(s)!;
    map.entries[7] = stats(1_200, 4);
    expect(first.read(true)).toEqual({ rttSeconds: 0.0012, retransmits: 4 });
    map.entries[7] = stats(900, 5);
    expect(second.read(true)).toEqual({ rttSeconds: 0.0009, retransmits: 1 });
    expect(reader.session(s)!.read(true)).toEqual({ rttSeconds: 0.0009, retransmits: 0 });
    // The session's entry is kept while it lives (read, not taken), and forgotten when it closes.
    expect(map.calls.filter((c) => c.startsWith('take'))).toEqual([]);
    (s as unknown as EventEmitter).emit('close');
    expect(map.calls.at(-1)).toBe('forget 7');
    expect(map.entries).toEqual({});
  });
});

describe('TCP health in the connection record', () => {
  const fields = (): ConnectionFields => ({
    direction: 'outbound',
    src: { workload: { name: 'client', namespace: 'mesh' } as Workload, principal: 'spiffe://cluster.local/ns/mesh/sa/client' },
    dst: { workload: { name: 'sink', namespace: 'mesh' } as Workload, principal: 'spiffe://cluster.local/ns/mesh/sa/sink', service: 'sink.mesh.svc.cluster.local' },
    security: 'mutual_tls',
  });
  const sinks = (metrics: Metrics) => ({ metrics, accessLog: { info: () => undefined } as unknown as AccessLog, drain: new Drain() });

  it('observes the RTT and adds the retransmissions once, with the labels of the connection counts', async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    let reads = 0;
    const record = new ConnectionRecord(fields(), sinks(metrics), { read: () => (reads++, { rttSeconds: 0.02, retransmits: 2 }) });
    record.finish();
    record.finish();
    expect(reads).toBe(1);
    const text = await metrics.registry.metrics();
    const labels = 'reporter="source",source_workload="client",source_workload_namespace="mesh",source_principal="spiffe://cluster.local/ns/mesh/sa/client",destination_workload="sink",destination_workload_namespace="mesh",destination_principal="spiffe://cluster.local/ns/mesh/sa/sink",destination_service="sink.mesh.svc.cluster.local",connection_security_policy="mutual_tls"';
    expect(text).toContain(`trellis_tcp_connections_opened_total{${labels}} 1`);
    expect(text).toContain(`trellis_tcp_rtt_seconds_bucket{le="0.025",${labels}} 1`);
    expect(text).toContain(`trellis_tcp_rtt_seconds_bucket{le="0.01",${labels}} 0`);
    expect(text).toContain(`trellis_tcp_rtt_seconds_count{${labels}} 1`);
    expect(text).toContain(`trellis_tcp_retransmits_total{${labels}} 2`);
  });

  it('reads a connection moving bytes for longer than a minute along the way, then at its end', async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    let now = 1_000;
    const clock = vi.spyOn(performance, 'now').mockImplementation(() => now);
    try {
      const reads: boolean[] = [];
      const record = new ConnectionRecord(fields(), sinks(metrics), { read: (final) => (reads.push(final), { rttSeconds: 0.001, retransmits: 1 }) });
      now += 30_000;
      record.downToUp(10);
      expect(reads).toEqual([]);
      now += HEALTH_PERIOD_MS;
      record.upToDown(10);
      record.downToUp(10);
      expect(reads).toEqual([false]);
      now += 5_000;
      record.finish();
      expect(reads).toEqual([false, true]);
    } finally {
      clock.mockRestore();
    }
    expect(await metrics.registry.metrics()).toMatch(/^trellis_tcp_retransmits_total\{[^}]*\} 2$/m);
  });

  it('makes no TCP health series without the program, or when the map had nothing', async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    new ConnectionRecord(fields(), sinks(metrics)).finish();
    new ConnectionRecord(fields(), sinks(metrics), { read: () => undefined }).finish();
    const text = await metrics.registry.metrics();
    expect(text).toContain('trellis_tcp_connections_closed_total{');
    expect(text).not.toMatch(/^trellis_tcp_rtt_seconds_count\{/m);
    expect(text).not.toMatch(/^trellis_tcp_retransmits_total\{/m);
  });
});
