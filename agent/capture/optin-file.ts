// The opt-in file trellis-cni reads only when the agent is unreachable: which namespaces have the mesh enabled and
// which pods on this node opt in or out themselves. Written atomically (tmp + rename) whenever the objects change.
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { MESH_ANNOTATION } from '../constants.js';
import type { KubeObject } from '../model/objects.js';

export interface OptinSnapshot {
  /** Namespaces annotated `trellis.dev/mesh: enabled`. */
  namespaces: readonly string[];
  /** Pods on this node with their own annotation, which wins over the namespace's. */
  pods: readonly { namespace: string; name: string; mode: 'enabled' | 'disabled' }[];
}

/** What the plugin needs to decide as the store does (`isMeshed`), from the objects a source hands the store. */
export function optinFromObjects(objects: readonly KubeObject[], node: string): OptinSnapshot {
  const namespaces: string[] = [];
  const pods: { namespace: string; name: string; mode: 'enabled' | 'disabled' }[] = [];
  for (const o of objects) {
    const mode = o.metadata.annotations?.[MESH_ANNOTATION];
    if (o.kind === 'Namespace' && mode === 'enabled') namespaces.push(o.metadata.name);
    if (o.kind === 'Pod' && o.spec.nodeName === node && (mode === 'enabled' || mode === 'disabled')) {
      pods.push({ namespace: o.metadata.namespace ?? 'default', name: o.metadata.name, mode });
    }
  }
  return { namespaces, pods };
}

// Kubernetes names never hold whitespace; anything that would break a line of the file is left out.
const SAFE = /^[^\s/]+$/;

export function renderOptin(s: OptinSnapshot): string {
  const lines = ['# trellis: mesh opt-in for trellis-cni when the agent is unreachable; written by the agent, do not edit'];
  for (const ns of [...new Set(s.namespaces)].filter((n) => SAFE.test(n)).sort()) lines.push(`namespace ${ns}`);
  const pods = s.pods
    .filter((p) => SAFE.test(p.namespace) && SAFE.test(p.name))
    .map((p) => `pod ${p.namespace}/${p.name} ${p.mode}`);
  lines.push(...[...new Set(pods)].sort());
  return `${lines.join('\n')}\n`;
}

export class OptinFile {
  private last: string | undefined;

  constructor(private readonly inputs: { path: string; logger: Logger }) {}

  /** Writes the file if its content changed. A failed write is logged, not thrown: the agent itself keeps working. */
  write(s: OptinSnapshot): void {
    const text = renderOptin(s);
    if (text === this.last) return;
    const { path, logger } = this.inputs;
    const tmp = `${path}.tmp-${process.pid}`;
    try {
      mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
      writeFileSync(tmp, text, { mode: 0o644, flush: true });
      // rename() is atomic: the plugin reads either the old file or the new one, never half of one.
      renameSync(tmp, path);
      this.last = text;
      logger.debug({ path, namespaces: s.namespaces.length, pods: s.pods.length }, 'CNI opt-in file written');
    } catch (err) {
      rmSync(tmp, { force: true });
      logger.error({ path, err: (err as Error).message }, 'writing the CNI opt-in file failed: while the agent is down, trellis-cni decides from a stale file');
    }
  }
}
