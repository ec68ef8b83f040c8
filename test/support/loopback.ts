// Workloads and listeners for the in-process tests of the HBONE path: everything on 127.0.0.1, trust domain
// cluster.local.
import { createHash } from 'node:crypto';
import net from 'node:net';
import type { Workload } from '../../agent/state/workload.js';

export const TEST_TRUST_DOMAIN = 'cluster.local';

/** A meshed workload at `ip` (loopback by default) whose identity is its service account's, `sa` defaulting to `name`. */
export function loopbackWorkload(ns: string, name: string, sa = name, ip = '127.0.0.1'): Workload {
  return Object.freeze({
    key: `${ns}/${name}`, uid: undefined, namespace: ns, pod: name, name, serviceAccount: sa,
    identity: `spiffe://${TEST_TRUST_DOMAIN}/ns/${ns}/sa/${sa}`, ip, node: 'n', netnsPath: undefined, labels: {}, meshed: true,
  });
}

/** Listens on a free loopback port; resolves with it. */
export function listenLocal(server: net.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)));
}

/** An app that reads until the client half-closes, then answers "<sha256 hex> <bytes>\n" and ends. */
export function digestSink(): net.Server {
  return net.createServer({ allowHalfOpen: true }, (s) => {
    const h = createHash('sha256');
    let n = 0;
    s.on('error', () => undefined);
    s.on('data', (d: Buffer) => {
      h.update(d);
      n += d.length;
    });
    s.on('end', () => s.end(`${h.digest('hex')} ${n}\n`));
  });
}

/** An app that resets the connection at its first bytes. */
export function resetter(): net.Server {
  return net.createServer((s) => {
    s.on('error', () => undefined);
    s.once('data', () => s.resetAndDestroy());
  });
}
