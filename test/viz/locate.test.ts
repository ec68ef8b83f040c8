// Which Prometheus the viewer reads: --prometheus, --lab, or the only lab running one; each refusal says what to do.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DEFAULT_STATE_ROOT } from '../../lab/cluster/names.js';
import { ENDPOINTS_FILE, LAB_STATE_FILE, LAB_STATE_ROOT } from '../../viz/endpoints.js';
import { locate } from '../../viz/prom/locate.js';

let root: string;
beforeEach(() => (root = mkdtempSync(path.join(tmpdir(), 'trellis-labs-'))));
afterEach(() => rmSync(root, { recursive: true, force: true }));

function lab(name: string, opts: { prometheus?: boolean; endpoints?: boolean } = {}): void {
  const dir = path.join(root, name);
  mkdirSync(dir);
  writeFileSync(path.join(dir, LAB_STATE_FILE), '{}');
  if (opts.endpoints === false) return;
  const endpoints = {
    lab: name,
    objectsDir: path.join(dir, 'cluster'),
    ...(opts.prometheus !== false && { prometheus: { url: 'http://172.30.0.3:9090', netns: `/var/run/netns/trl-${name}-prom` } }),
  };
  writeFileSync(path.join(dir, ENDPOINTS_FILE), JSON.stringify(endpoints));
}

describe('finding Prometheus', () => {
  it('looks for labs where the lab keeps them', () => {
    expect(LAB_STATE_ROOT).toBe(DEFAULT_STATE_ROOT);
  });

  it('reads --prometheus as given, checked', () => {
    expect(locate({ prometheus: 'http://prom.monitoring:9090/' }, root).transport.where).toBe('http://prom.monitoring:9090');
    expect(() => locate({ prometheus: 'prom:9090' }, root)).toThrow(/use an http:\/\/ or https:\/\/ URL/);
    expect(() => locate({ prometheus: 'nope' }, root)).toThrow(/not a URL/);
    expect(() => locate({ prometheus: 'http://x', lab: 'a' }, root)).toThrow(/give one of them/);
  });

  it('takes the only lab running a Prometheus, with its routes', () => {
    lab('a', { prometheus: false });
    lab('b');
    lab('c', { endpoints: false });
    mkdirSync(path.join(root, 'gone'));
    const l = locate({}, root);
    expect(l).toMatchObject({ lab: 'b', objectsDir: path.join(root, 'b', 'cluster') });
    expect(l.transport.where).toBe('http://172.30.0.3:9090 (inside /var/run/netns/trl-b-prom)');
  });

  it('says what to do when there is none, or several', () => {
    expect(() => locate({}, root)).toThrow(/^no Prometheus to read: pass --prometheus URL .*`trellis lab up -f FILE --prometheus`/);
    lab('a', { prometheus: false });
    expect(() => locate({}, root)).toThrow(/^no Prometheus to read \(lab a runs without one\)/);
    lab('b');
    lab('c');
    expect(() => locate({}, root)).toThrow('several labs run a Prometheus (b, c): choose one with --lab NAME');
    expect(locate({ lab: 'c' }, root).lab).toBe('c');
    expect(() => locate({ lab: 'a' }, root)).toThrow(/^lab 'a' runs without Prometheus/);
    expect(() => locate({ lab: 'z' }, root)).toThrow("lab 'z' is not up (labs up: a, b, c)");
  });
});
