// How `trellis tap` prints an event: one line each, like `linkerd viz tap` (req, rsp, end; tcp for opaque
// connections; drop when the agent dropped observations), key=value fields; `-o wide` adds identities, the Service,
// route, request id and headers (redacted by the agent); `-o json` prints the event as the agent sent it.
import type { TapEvent, TapHeader, TapPeerInfo } from '../../agent/tap/events.js';

export type TapOutput = 'line' | 'wide' | 'json';
export const TAP_OUTPUTS: readonly TapOutput[] = ['line', 'wide', 'json'];

/** A value as one token: quoted (JSON) when it holds a space, a quote or an `=`, or is empty. */
function v(x: string | number): string {
  const s = String(x);
  return s === '' || /[\s"=]/.test(s) ? JSON.stringify(s) : s;
}

function addr(p: TapPeerInfo | undefined): string {
  if (!p?.ip) return '-';
  const ip = p.ip.includes(':') ? `[${p.ip}]` : p.ip;
  return p.port ? `${ip}:${p.port}` : ip;
}

function wl(p: TapPeerInfo | undefined): string {
  return p?.workload ? `${p.namespace}/${p.workload}` : '-';
}

export function ms(x: number): string {
  return x >= 100 ? `${x.toFixed(0)}ms` : x >= 1 ? `${x.toFixed(2)}ms` : `${Math.round(x * 1000)}µs`;
}

function headers(list: readonly TapHeader[] | undefined): string {
  return (list ?? []).map((h) => ` h:${h.name}=${v(h.value)}`).join('');
}

/** The lines of one event (none for a summary that carries no drop). */
export function formatEvent(e: TapEvent, output: Exclude<TapOutput, 'json'>): string[] {
  const out: string[] = [];
  if (e.dropped) out.push(`drop node=${v(e.node)} dropped=${e.dropped}`);
  if (e.summary) return out;
  const wide = output === 'wide';
  let common = `id=${v(e.node)}:${e.id ?? 0} proxy=${e.reporter === 'source' ? 'out' : 'in'} src=${addr(e.source)} dst=${addr(e.destination)}`;
  common += ` src_wl=${wl(e.source)} dst_wl=${wl(e.destination)}`;
  // Egress: the name the client gave (SNI, Host), as the access line's dst.host.
  if (e.destination?.host) common += ` dst_host=${v(e.destination.host)}`;
  common += ` tls=${e.security === 'mutual_tls'}`;
  if (wide) {
    common += ` src_id=${v(e.source?.identity ?? '-')} dst_id=${v(e.destination?.identity ?? '-')} svc=${v(e.destination?.service ?? '-')}`;
    if (e.route) common += ` route=${v(e.route)} rule=${v(e.rule ?? '')}`;
  }
  const authz = e.authz && (e.authz.decision === 'deny' || wide) ? ` authz=${e.authz.decision}${e.authz.policy ? ` policy=${v(e.authz.policy)}` : ''}${e.authz.decision === 'deny' ? ` reason=${v(e.authz.code ?? '')}` : ''}` : '';
  if (e.requestInit) {
    const r = e.requestInit;
    out.push(`req ${common} :method=${v(r.method)} :authority=${v(r.authority)} :path=${v(r.path)}${wide ? ` protocol=${r.protocol} request_id=${v(r.requestId)}${headers(r.headers)}` : ''}`);
  } else if (e.responseInit) {
    const r = e.responseInit;
    out.push(`rsp ${common} :status=${r.httpStatus ?? 0} latency=${r.sinceRequestInitMs ? ms(r.sinceRequestInitMs) : '-'}${wide ? headers(r.headers) : ''}`);
  } else if (e.responseEnd) {
    const r = e.responseEnd;
    let line = `end ${common} :status=${r.httpStatus ?? 0}`;
    if (r.grpcStatus) line += ` grpc-status=${r.grpcStatus}`;
    line += ` duration=${ms(r.sinceRequestInitMs ?? 0)} request-length=${r.requestBytes ?? 0}B response-length=${r.responseBytes ?? 0}B${authz}`;
    if (r.rejected) line += ' rejected';
    if (r.error) line += ` error=${v(r.error)}`;
    out.push(line);
  } else if (e.tcpOpen) {
    out.push(`tcp ${common} open${authz}`);
  } else if (e.tcpClose) {
    const c = e.tcpClose;
    let line = `tcp ${common} close duration=${ms(c.durationMs ?? 0)} bytes-received=${c.bytesReceived ?? 0}B bytes-sent=${c.bytesSent ?? 0}B${authz}`;
    if (c.error) line += ` error=${v(c.error)}`;
    out.push(line);
  }
  return out;
}
