// Root-only: the control plane runner itself. A start that fails says which step and shows that component's log
// and leaves nothing running; a control plane started here can be stopped from its record alone (as `lab down`
// from another process does), process groups and its own netns included.
import { execFileSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { listenInNetns } from '../../../agent/native/index.js';
import { ControlPlane } from '../../../lab/controlplane/controlplane.js';
import { sweep } from '../../../lab/cluster/lab.js';
import { procStat } from '../../../lab/cluster/procs.js';
import { requireRoot } from '../../support/root.js';

const name = () => `p${Array.from({ length: 5 }, () => 'abcdefghijklmnopqrstuvwxyz0123456789'[randomInt(36)]).join('')}`;
const dirs: string[] = [];
const labs: string[] = [];

function markedPids(lab: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      if (readFileSync(`/proc/${p}/environ`, 'latin1').split('\0').includes(`TRELLIS_LAB=${lab}`)) out.push(Number(p));
    } catch {
      // Exited while we looked.
    }
  }
  return out;
}

describe('control plane runner (root)', () => {
  afterAll(async () => {
    for (const lab of labs) await sweep({ prefix: `trl-${lab}-` }).catch(() => []);
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('a start that fails names the step, shows the last lines of that log, and leaves nothing behind', async () => {
    requireRoot('control plane tests');
    const lab = name();
    labs.push(lab);
    const netns = `trl-${lab}-fabric`;
    execFileSync('ip', ['netns', 'add', netns]);
    try {
      execFileSync('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
      // Something already holds etcd's client port in that netns.
      const squatter = net.createServer();
      await listenInNetns(squatter, `/var/run/netns/${netns}`, { host: '127.0.0.1', port: 2379 });
      const dir = mkdtempSync(path.join(tmpdir(), 'trellis-cp-'));
      dirs.push(dir);
      try {
        const err = (await ControlPlane.start({ lab, dir, netns }).then(
          () => new Error('started'),
          (e: unknown) => e as Error,
        )) as Error & { code?: string };
        expect(err).toMatchObject({ code: 'ECONTROLPLANE' });
        expect(err.message).toMatch(/^control plane: step "start etcd" failed: it exited before it was ready \(log .*etcd\.log\); last lines:\n/);
        expect(err.message).toMatch(/address already in use/);
      } finally {
        squatter.close();
      }
      expect(markedPids(lab)).toEqual([]);
    } finally {
      execFileSync('ip', ['netns', 'del', netns]);
    }
  });

  it('is stopped from its record alone: every process group in reverse order, then its own netns', async () => {
    requireRoot('control plane tests');
    const lab = name();
    labs.push(lab);
    const dir = mkdtempSync(path.join(tmpdir(), 'trellis-cp-'));
    dirs.push(dir);
    const cp = await ControlPlane.start({ lab, dir });
    const rec = cp.record();
    const pids = Object.values(rec.processes).map((p) => p!.pid);
    expect(Object.keys(rec.processes)).toEqual(['etcd', 'kube-apiserver', 'kube-controller-manager']);
    // Each daemon leads a process group of its own (nsenter execs it: the recorded pid is the daemon's).
    for (const p of pids) expect(procStat(p)?.pgrp).toBe(p);
    expect(pids.map((p) => procStat(p)?.comm)).toEqual(['etcd', 'kube-apiserver', 'kube-controller']);
    const mem = cp.memoryMb();
    process.stderr.write(`control plane ${lab}: up in ${cp.timings.total} ms; RSS etcd ${mem.etcd} MB, kube-apiserver ${mem['kube-apiserver']} MB, kube-controller-manager ${mem['kube-controller-manager']} MB\n`);
    await ControlPlane.stopRecorded(rec);
    // Gone: no /proc entry, or a zombie (dead, its exit status not yet collected by the parent that spawned it).
    expect(pids.filter((p) => existsSync(`/proc/${p}`) && procStat(p)?.state !== 'Z')).toEqual([]);
    expect(existsSync(`/var/run/netns/${rec.netns}`)).toBe(false);
    expect(markedPids(lab)).toEqual([]);
  });
});
