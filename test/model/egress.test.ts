// EgressNetwork (agent/model/egress.ts): what an object compiles to, the errors an invalid one gives (naming the object
// and field), the last valid version kept and the fail-closed stand-in of one never valid, through the store as the
// sources feed it; and the decision per connection: the most specific network, declared hosts exact and wildcard,
// pinned addresses, Allow and Deny, and Deny never passing a connection without a declared name.
import { describe, expect, it } from 'vitest';
import { compileEgressNetworks, decideEgress, type EgressTable } from '../../agent/model/egress.js';
import type { KubeObject } from '../../agent/model/objects.js';
import { egressRouteKey } from '../../agent/model/routes/compile.js';
import { validateObject } from '../../agent/model/validate.js';
import { Store } from '../../agent/state/store.js';
import { captureLogger } from '../support/logger.js';

function en(name: string, spec: Record<string, unknown>, namespace = 'shop', uid?: string): KubeObject {
  return { apiVersion: 'traffic.trellis.dev/v1alpha1', kind: 'EgressNetwork', metadata: { name, namespace, ...(uid && { uid }) }, spec } as KubeObject;
}

function table(...objects: KubeObject[]): EgressTable {
  const r = compileEgressNetworks(objects);
  expect(r.errors).toEqual([]);
  return r.table;
}

describe('EgressNetwork validation', () => {
  it('is read by the sources as an extension kind', () => {
    const r = validateObject(en('internet', { trafficPolicy: 'Deny' }));
    expect(r.ok).toBe(true);
  });

  it('names the object and field of every problem', () => {
    const r = compileEgressNetworks([
      en('bad', {
        trafficPolicy: 'deny',
        networks: [{ cidr: '198.18.0.0/33' }, { cidr: 'example.com' }, {}, { cidr: '198.18.0.0/15', except: ['10.0.0.0/8', '198.18.1.0/24', 'x'] }],
        hosts: [{ name: 'API.example.com' }, { name: '198.18.0.10' }, { name: 'a.example.com', addresses: ['1.2.3.4/40'] }, { name: 'b.example.com', addresses: [] }, { name: 'c.example.com' }, { name: 'c.example.com' }, {}],
      }),
    ]);
    expect(r.errors.map((e) => e.replace(/\. Until it is fixed.*$/, ''))).toEqual([
      'EgressNetwork shop/bad: spec.trafficPolicy must be Allow or Deny (got "deny")',
      'EgressNetwork shop/bad: spec.networks[0].cidr: "198.18.0.0/33": prefix length must be 0 to 32',
      'EgressNetwork shop/bad: spec.networks[1].cidr: "example.com" is not an IP address or CIDR block (e.g. 10.0.0.0/8, fd00::/8)',
      'EgressNetwork shop/bad: spec.networks[2].cidr is required: a CIDR block such as 198.18.0.0/15',
      'EgressNetwork shop/bad: spec.networks[3].except[0]: 10.0.0.0/8 is not inside 198.18.0.0/15',
      'EgressNetwork shop/bad: spec.networks[3].except[2]: "x" is not an IP address or CIDR block (e.g. 10.0.0.0/8, fd00::/8)',
      'EgressNetwork shop/bad: spec.hosts[0].name: "API.example.com" is not a lowercase DNS name (api.example.com) or wildcard (*.example.com); IP addresses go in spec.networks',
      'EgressNetwork shop/bad: spec.hosts[1].name: "198.18.0.10" is not a lowercase DNS name (api.example.com) or wildcard (*.example.com); IP addresses go in spec.networks',
      'EgressNetwork shop/bad: spec.hosts[2].addresses[0]: "1.2.3.4/40": prefix length must be 0 to 32',
      'EgressNetwork shop/bad: spec.hosts[3].addresses must be a non-empty list of CIDR blocks (leave it out to reach the name anywhere in the network)',
      'EgressNetwork shop/bad: spec.hosts[5].name: c.example.com is declared twice',
      'EgressNetwork shop/bad: spec.hosts[6].name is required: a DNS name such as api.example.com or *.example.com',
    ]);
    expect(r.errors[0]).toMatch(/Until it is fixed it stands as Deny with no host declared over 198\.18\.0\.0\/15 \(policy never fails open\)\.$/);
  });

  it('refuses networks and hosts past their bounds (each host is a metric label value)', () => {
    const hosts = Array.from({ length: 257 }, (_, i) => ({ name: `h${i}.example.com` }));
    expect(compileEgressNetworks([en('many', { trafficPolicy: 'Allow', hosts })]).errors[0]).toMatch(/spec\.hosts has 257 entries; at most 256/);
    const networks = Array.from({ length: 65 }, (_, i) => ({ cidr: `198.18.${i}.0/24` }));
    expect(compileEgressNetworks([en('many', { trafficPolicy: 'Allow', networks })]).errors[0]).toMatch(/spec\.networks has 65 entries; at most 64/);
  });

  it('keeps the last valid version in force; one never valid stands as Deny over what it names, with no host', () => {
    const errors: number[] = [];
    const store = new Store({ trustDomain: 'cluster.local', logger: captureLogger().logger, onInvalid: (n) => errors.push(n) });
    const good = en('internet', { trafficPolicy: 'Allow', networks: [{ cidr: '198.18.0.0/15' }], hosts: [{ name: 'api.example.com' }] }, 'shop', 'u1');
    store.replace([good]);
    expect(decideEgress(store.current().traffic.egress, 'shop', '198.18.0.10', 'other.example.com')).toMatchObject({ allowed: true, code: 'undeclared_allowed' });
    store.replace([en('internet', { trafficPolicy: 'Allow', networks: [{ cidr: 'nope' }] }, 'shop', 'u1')]);
    expect(store.current().traffic.egressErrors[0]).toMatch(/Its last valid version stays in force/);
    expect(decideEgress(store.current().traffic.egress, 'shop', '198.18.0.10', 'api.example.com')).toMatchObject({ allowed: true, code: 'declared' });
    expect(errors).toEqual([1]);
    // Never valid: a typo in trafficPolicy must not open what it meant to close.
    store.replace([good, en('strict', { trafficPolicy: 'Denny', networks: [{ cidr: '198.18.5.0/24' }], hosts: [{ name: 'api.example.com' }] })]);
    const egress = store.current().traffic.egress;
    expect(decideEgress(egress, 'shop', '198.18.5.1', 'api.example.com')).toMatchObject({ allowed: false, code: 'undeclared_host' });
    expect(decideEgress(egress, 'shop', '198.18.0.10', 'api.example.com')).toMatchObject({ allowed: true, code: 'declared' });
  });
});

describe('decideEgress', () => {
  const t = table(
    en('internet', {
      trafficPolicy: 'Deny',
      networks: [{ cidr: '198.18.0.0/15', except: ['198.18.9.0/24'] }],
      hosts: [{ name: 'api.example.com', addresses: ['198.18.0.10/32'] }, { name: '*.cdn.example.com' }, { name: '*.example.com' }],
    }),
    en('lab', { trafficPolicy: 'Allow', networks: [{ cidr: '198.18.7.0/24' }] }),
  );

  it('allows a declared host where it is declared, counted under its declared name (exact, then the longest wildcard)', () => {
    expect(decideEgress(t, 'shop', '198.18.0.10', 'api.example.com')).toMatchObject({ allowed: true, code: 'declared', host: { name: 'api.example.com' } });
    expect(decideEgress(t, 'shop', '198.18.3.3', 'img.cdn.example.com')).toMatchObject({ allowed: true, host: { name: '*.cdn.example.com' } });
    expect(decideEgress(t, 'shop', '198.18.3.3', 'a.b.example.com')).toMatchObject({ allowed: true, host: { name: '*.example.com' } });
    // A wildcard never covers its own domain.
    expect(decideEgress(t, 'shop', '198.18.3.3', 'example.com')).toMatchObject({ allowed: false, code: 'undeclared_host' });
  });

  it('under Deny refuses an undeclared host, no name, and a declared name at an address it is not declared at', () => {
    expect(decideEgress(t, 'shop', '198.18.0.20', 'evil.example.net')).toMatchObject({ allowed: false, code: 'undeclared_host', reason: 'EgressNetwork shop/internet denies undeclared egress and evil.example.net is not one of its hosts' });
    expect(decideEgress(t, 'shop', '198.18.0.10', undefined)).toMatchObject({ allowed: false, code: 'no_name' });
    expect(decideEgress(t, 'shop', '198.18.0.20', 'api.example.com')).toMatchObject({
      allowed: false,
      code: 'wrong_address',
      reason: 'api.example.com is declared at 198.18.0.10/32 in EgressNetwork shop/internet, but the connection goes to 198.18.0.20',
    });
  });

  it('takes the most specific network: an Allow carved out of a Deny, an except, another namespace, an address no network covers', () => {
    expect(decideEgress(t, 'shop', '198.18.7.1', undefined)).toMatchObject({ allowed: true, code: 'undeclared_allowed', network: { key: 'shop/lab' } });
    expect(decideEgress(t, 'shop', '198.18.9.1', undefined)).toEqual({ allowed: true, code: 'no_egress_network' });
    expect(decideEgress(t, 'other', '198.18.0.20', undefined)).toEqual({ allowed: true, code: 'no_egress_network' });
    expect(decideEgress(t, 'shop', '203.0.113.1', undefined)).toEqual({ allowed: true, code: 'no_egress_network' });
  });

  it('covers every address outside the cluster when networks is left out, IPv6 too', () => {
    const all = table(en('all', { trafficPolicy: 'Deny' }));
    expect(decideEgress(all, 'shop', '203.0.113.1', 'x.example.com')).toMatchObject({ allowed: false });
    expect(decideEgress(all, 'shop', '2001:db8::1', undefined)).toMatchObject({ allowed: false, code: 'no_name' });
  });

  it('under Allow lets everything through, counting only declared hosts reached where declared under their name', () => {
    const allow = table(en('open', { trafficPolicy: 'Allow', hosts: [{ name: 'api.example.com', addresses: ['198.18.0.10/32'] }] }));
    expect(decideEgress(allow, 'shop', '198.18.0.10', 'api.example.com')).toMatchObject({ allowed: true, host: { name: 'api.example.com' } });
    const forged = decideEgress(allow, 'shop', '198.18.0.20', 'api.example.com');
    expect(forged).toMatchObject({ allowed: true, code: 'undeclared_allowed' });
    expect(forged.host).toBeUndefined();
  });
});

describe('HTTPRoute attached to an EgressNetwork', () => {
  const network = en('internet', { trafficPolicy: 'Deny', hosts: [{ name: 'api.example.com' }, { name: '*.cdn.example.com' }] });
  const route = (name: string, parentRef: Record<string, unknown>, hostnames?: string[], namespace = 'shop'): KubeObject =>
    ({
      apiVersion: 'gateway.networking.k8s.io/v1',
      kind: 'HTTPRoute',
      metadata: { name, namespace },
      spec: { parentRefs: [{ group: 'traffic.trellis.dev', kind: 'EgressNetwork', name: 'internet', ...parentRef }], ...(hostnames && { hostnames }), rules: [{ timeouts: { request: '1s' } }] },
    }) as unknown as KubeObject;

  it('is keyed by the declared host and port it names, or every declared host without hostnames', () => {
    const store = new Store({ trustDomain: 'cluster.local', logger: captureLogger().logger });
    const state = store.replace([network, route('api', { port: 80 }, ['api.example.com']), route('all', { port: 8080 })]);
    expect(state.routesFor(egressRouteKey('shop/internet', 'api.example.com'), 80, 'shop')?.routes).toEqual(['shop/api']);
    expect(state.routesFor(egressRouteKey('shop/internet', '*'), 8080, 'shop')?.routes).toEqual(['shop/all']);
    expect(state.routesFor(egressRouteKey('shop/internet', 'api.example.com'), 8080, 'shop')).toBeUndefined();
    const accepted = state.traffic.routes.statuses.find((s) => s.name === 'api')!.parents[0]!;
    expect(accepted.conditions[0]).toMatchObject({ type: 'Accepted', status: 'True', message: 'applies to plaintext HTTP from namespace shop to api.example.com in EgressNetwork shop/internet, port 80' });
  });

  it('is refused, saying why, for an undeclared hostname, no port, another namespace or a missing EgressNetwork', () => {
    const store = new Store({ trustDomain: 'cluster.local', logger: captureLogger().logger });
    const other = en('internet', { trafficPolicy: 'Allow' }, 'other');
    const state = store.replace([
      network,
      other,
      route('undeclared', { port: 80 }, ['evil.example.net']),
      route('noport', {}, ['api.example.com']),
      route('elsewhere', { port: 80, namespace: 'other' }),
      route('missing', { port: 80, name: 'nope' }),
    ]);
    const why = (name: string) => state.traffic.routes.statuses.find((s) => s.name === name)!.parents[0]!.conditions[0]!;
    expect(why('undeclared')).toMatchObject({ status: 'False', reason: 'NoMatchingParent', message: 'spec.parentRefs[0]: evil.example.net is not declared in EgressNetwork shop/internet (spec.hosts: api.example.com, *.cdn.example.com)' });
    expect(why('noport').message).toBe('spec.parentRefs[0]: a port is required for an EgressNetwork parent (the port the clients dial, e.g. 80)');
    expect(why('elsewhere').message).toMatch(/EgressNetwork other\/internet is in another namespace; an EgressNetwork governs its own namespace's pods/);
    expect(why('missing').message).toBe('spec.parentRefs[0]: EgressNetwork shop/nope not found');
  });
});
