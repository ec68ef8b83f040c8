// PeerAuthentication resolution as Istio composes it (mesh < namespace < workload < port, UNSET inherits, the
// oldest wins at one level), and what STRICT means on Trellis's inbound: plaintext refused, mTLS served.
import { describe, expect, it } from 'vitest';
import { evaluateConnection, evaluateRequest, modeFor, pendingPolicies } from '../../../agent/security/index.js';
import { API, PEERS, compileAny, http, policies, request, tcp } from '../../security/helpers.js';

const pa = (ns: string, name: string, spec: string, meta = '') => `
apiVersion: security.trellis.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: ${name}, namespace: ${ns}${meta}}
spec:
${spec}
---`;

const DB = { key: 'shop/db-0', namespace: 'shop', labels: { app: 'db' } };
const OTHER_NS = { key: 'billing/x-0', namespace: 'billing', labels: { app: 'api' } };

describe('modeFor', () => {
  it('is PERMISSIVE when no policy applies', () => {
    expect(modeFor(policies(''), API, 8080)).toBe('PERMISSIVE');
  });

  it('mesh-wide, then namespace, then workload, then port: the most specific wins', () => {
    const set = policies(
      pa('trellis-system', 'mesh', '  mtls: {mode: STRICT}') +
        pa('shop', 'ns', '  mtls: {mode: PERMISSIVE}') +
        pa('shop', 'api', '  selector: {matchLabels: {app: api}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {"9000": {mode: PERMISSIVE}, "9001": {mode: DISABLE}, "9002": {mode: UNSET}}'),
    );
    expect(modeFor(set, OTHER_NS, 80)).toBe('STRICT');
    expect(modeFor(set, DB, 80)).toBe('PERMISSIVE');
    expect(modeFor(set, API, 80)).toBe('STRICT');
    expect(modeFor(set, API, 9000)).toBe('PERMISSIVE');
    expect(modeFor(set, API, 9001)).toBe('DISABLE');
    // UNSET at the port inherits the workload's mode.
    expect(modeFor(set, API, 9002)).toBe('STRICT');
  });

  it('UNSET (or no mtls) inherits from the next level up', () => {
    const set = policies(
      pa('trellis-system', 'mesh', '  mtls: {mode: STRICT}') +
        pa('shop', 'ns', '  mtls: {mode: UNSET}') +
        pa('shop', 'api', '  selector: {matchLabels: {app: api}}\n  portLevelMtls: {"9000": {mode: PERMISSIVE}}'),
    );
    expect(modeFor(set, API, 80)).toBe('STRICT');
    expect(modeFor(set, API, 9000)).toBe('PERMISSIVE');
    expect(modeFor(set, DB, 80)).toBe('STRICT');
  });

  it('the oldest policy wins at one level (then the name), and the newer one is reported as not in force', () => {
    const set = policies(
      pa('shop', 'b-old', '  mtls: {mode: STRICT}', ', creationTimestamp: "2024-01-01T00:00:00Z"') +
        pa('shop', 'a-new', '  mtls: {mode: PERMISSIVE}', ', creationTimestamp: "2025-01-01T00:00:00Z"') +
        pa('shop', 'w2', '  selector: {matchLabels: {app: db}}\n  mtls: {mode: PERMISSIVE}') +
        pa('shop', 'w1', '  selector: {matchLabels: {app: db}}\n  mtls: {mode: DISABLE}'),
    );
    expect(modeFor(set, API, 80)).toBe('STRICT');
    expect(set.statuses.find((s) => s.name === 'a-new')!.message).toMatch(/not in force: shop\/b-old is older/);
    // Without timestamps (objects from files), the name decides.
    expect(modeFor(set, DB, 80)).toBe('DISABLE');
  });

  it('a workload policy applies only in its namespace', () => {
    const set = policies(pa('shop', 'api', '  selector: {matchLabels: {app: api}}\n  mtls: {mode: STRICT}'));
    expect(modeFor(set, OTHER_NS, 80)).toBe('PERMISSIVE');
  });

  it('is STRICT before the first snapshot', () => {
    expect(modeFor(pendingPolicies(), API, 80)).toBe('STRICT');
  });
});

describe('invalid PeerAuthentications', () => {
  const cases: [string, string, RegExp][] = [
    ['portLevelMtls without a selector', pa('shop', 'x', '  portLevelMtls: {"80": {mode: STRICT}}'), /spec.portLevelMtls: needs a workload selector/],
    ['bad port key', pa('shop', 'x', '  selector: {matchLabels: {app: api}}\n  portLevelMtls: {"http": {mode: STRICT}}'), /spec.portLevelMtls.http: keys must be port numbers/],
    ['bad mode', pa('shop', 'x', '  mtls: {mode: strict}'), /spec.mtls.mode: must be one of UNSET, PERMISSIVE, STRICT, DISABLE/],
    ['selector in the root namespace', pa('trellis-system', 'x', '  selector: {matchLabels: {app: api}}\n  mtls: {mode: STRICT}'), /PeerAuthentication trellis-system\/x: spec.selector: a PeerAuthentication with a selector in the root namespace trellis-system applies to nothing/],
    ['unknown field', pa('shop', 'x', '  mtls: {mode: STRICT, level: 2}'), /spec.mtls.level: unknown field/],
    ['portLevelTls', pa('shop', 'x', '  portLevelTls: {}'), /spec.portLevelTls: not supported/],
  ];
  for (const [name, yaml, re] of cases) {
    it(name, () => {
      const set = compileAny(yaml);
      expect(set.errors.some((e) => re.test(e)), set.errors.join('\n')).toBe(true);
    });
  }
});

describe('STRICT on the inbound', () => {
  const set = policies(
    pa('shop', 'api', '  selector: {matchLabels: {app: api}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {"9000": {mode: PERMISSIVE}}') +
      pa('shop', 'ns', '  mtls: {mode: PERMISSIVE}'),
  );

  it('refuses plaintext and says where STRICT comes from', () => {
    const d = tcp(set, PEERS.plaintext, 8080);
    expect(d).toMatchObject({ allowed: false, code: 'denied_plaintext' });
    expect(d.reason).toMatch(/plaintext from 192.168.1.9 refused: shop\/api-7d9f port 8080 requires mutual TLS \(PeerAuthentication shop\/api is STRICT\)/);
    expect(http(set, PEERS.plaintext, 8080, request('GET', '/'))).toMatchObject({ allowed: false, code: 'denied_plaintext' });
  });

  it('serves mTLS peers, and plaintext on a PERMISSIVE port', () => {
    expect(tcp(set, PEERS.web, 8080)).toMatchObject({ allowed: true });
    expect(tcp(set, PEERS.plaintext, 9000)).toMatchObject({ allowed: true });
    expect(tcp(set, PEERS.plaintext, 8080, DB)).toMatchObject({ allowed: true });
  });

  it('reports the mode for the connection label', () => {
    const v = evaluateConnection(set, { workload: API, sourceIdentity: undefined, sourceIp: '10.1.1.1', destinationIp: '10.244.0.10', destinationPort: 9000, protocol: 'tcp' });
    expect(v.mtlsMode).toBe('PERMISSIVE');
  });

  it('applies to requests of a connection opened while the workload was PERMISSIVE', () => {
    const before = policies('');
    const c = evaluateConnection(before, { workload: API, sourceIdentity: undefined, sourceIp: '10.1.1.1', destinationIp: '10.244.0.10', destinationPort: 8080, protocol: 'http' });
    expect(c.decision.allowed).toBe(true);
    expect(evaluateRequest(set, c.context!, request('GET', '/'))).toMatchObject({ allowed: false, code: 'denied_plaintext' });
  });
});
