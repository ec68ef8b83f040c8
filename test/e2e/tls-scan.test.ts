// The HBONE listener (15008) as anyone on the pod network sees it, checked with a real TLS scanner (sslscan, from
// Debian) from a pod outside the mesh: TLS 1.3 only, its three AEAD suites, only the key exchange groups the agent
// was given (--tls-groups), no renegotiation, nothing flagged; and no handshake completes without a client
// certificate.
import { execFile } from 'node:child_process';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectInNetns } from '../../agent/native/index.js';
import { Lab } from '../../lab/cluster/lab.js';
import { requireRoot } from '../support/root.js';

const run = promisify(execFile);
const fixtures = path.join(import.meta.dirname, 'fixtures', 'edges.yaml');

describe('the HBONE listener under a TLS scanner (two-node lab)', () => {
  const name = `ts${Math.random().toString(36).slice(2, 5)}`;
  let lab: Lab;

  beforeAll(async () => {
    requireRoot('the TLS scan');
    await run('sslscan', ['--version']).catch(() => {
      throw new Error('the TLS scan needs sslscan: apt-get install -y sslscan (or bash scripts/setup-debian.sh)');
    });
    lab = await Lab.up(fixtures, { name, agentArgs: ['--tls-groups', 'X25519'] });
  });

  afterAll(async () => {
    await lab?.down();
  });

  it('offers TLS 1.3 only, with the configured group, and nothing sslscan flags', async () => {
    const target = `${lab.pod('mesh/web').ip}:15008`;
    const { stdout } = await run('nsenter', [`--net=${lab.pod('plain/outsider').netnsPath}`, '--', 'sslscan', '--no-colour', target], { timeout: 60_000 });
    const section = (title: string) => {
      const start = stdout.indexOf(`  ${title}:`);
      expect(start, `sslscan's "${title}" section:\n${stdout}`).toBeGreaterThanOrEqual(0);
      const rest = stdout.slice(start + title.length + 4);
      return rest.slice(0, rest.search(/\n\s*\n|\n {2}\S/)).trim().split('\n').map((l) => l.trim().replace(/\s+/g, ' '));
    };
    expect(section('SSL/TLS Protocols')).toEqual(['SSLv2 disabled', 'SSLv3 disabled', 'TLSv1.0 disabled', 'TLSv1.1 disabled', 'TLSv1.2 disabled', 'TLSv1.3 enabled']);
    expect(section('TLS renegotiation')).toEqual(['Session renegotiation not supported']);
    expect(section('Heartbleed')).toEqual(['TLSv1.3 not vulnerable to heartbleed']);
    expect(section('Supported Server Cipher(s)').map((l) => l.split(' ').slice(1, 5).join(' ')).sort()).toEqual([
      'TLSv1.3 128 bits TLS_AES_128_GCM_SHA256',
      'TLSv1.3 256 bits TLS_AES_256_GCM_SHA384',
      'TLSv1.3 256 bits TLS_CHACHA20_POLY1305_SHA256',
    ]);
    // Only what --tls-groups names: no finite-field groups, no curve it was not given.
    expect(section('Server Key Exchange Group(s)')).toEqual(['TLSv1.3 128 bits x25519']);
  });

  it('completes no handshake without a client certificate', async () => {
    const raw = connectInNetns(lab.pod('plain/outsider').netnsPath, { host: lab.pod('mesh/web').ip, port: 15008, timeoutMs: 3000 });
    await new Promise<void>((resolve, reject) => {
      raw.once('connect', resolve);
      raw.once('error', reject);
    });
    const outcome = await new Promise<string>((resolve) => {
      const s = tls.connect({ socket: raw, rejectUnauthorized: false, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'] });
      s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      // In TLS 1.3 the client finishes first; the server's refusal arrives as an alert on the first read.
      s.on('secureConnect', () => s.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
      s.on('data', () => resolve('answered'));
      s.on('end', () => resolve('closed without an alert'));
    });
    expect(outcome).toBe('ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED');
  });
});
