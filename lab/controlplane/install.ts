// Installs Trellis into a control plane the way docs/install.md tells a platform engineer to: Gateway API's standard
// CRDs first, then `kubectl apply --server-side -k manifests/` (CRDs, RBAC, the identity Deployment, the agent
// DaemonSet...). Nothing runs the Deployment and the DaemonSet here (there is no kubelet); the lab runs the
// identity service and the agents as processes, with the service accounts and RBAC installed here.
import path from 'node:path';
import { LabError } from '../errors.js';
import { repoRoot } from './binaries.js';
import type { ControlPlane } from './controlplane.js';

const ESTABLISH_TIMEOUT_S = 60;

export type GatewayChannel = 'standard' | 'experimental';

/** Installs Trellis; `gatewayChannel`: Gateway API's standard channel (default) or the experimental one. Returns ms taken. */
export async function installTrellis(cp: ControlPlane, opts: { manifests?: string; gatewayChannel?: GatewayChannel } = {}): Promise<number> {
  const started = Date.now();
  const manifests = opts.manifests ?? path.join(repoRoot(), 'manifests');
  const crds = opts.gatewayChannel === 'experimental' ? cp.bins.gatewayExperimentalCrds : cp.bins.gatewayCrds;
  const steps: [string, string[]][] = [
    [`Gateway API CRDs (${opts.gatewayChannel ?? 'standard'} channel)`, ['apply', '--server-side', ...crds.flatMap((f) => ['-f', f])]],
    ['kubectl apply -k manifests/', ['apply', '--server-side', '-k', manifests]],
    ['CRDs established', ['wait', '--for=condition=Established', `--timeout=${ESTABLISH_TIMEOUT_S}s`, 'crd', '--all']],
  ];
  for (const [what, args] of steps) {
    const r = await cp.kubectl(args, { timeoutMs: (ESTABLISH_TIMEOUT_S + 30) * 1000 });
    if (r.code !== 0) {
      throw new LabError(
        'ECONTROLPLANE',
        `installing Trellis: step "${what}" failed (kubectl ${args.join(' ')}, exit ${r.code}):\n${(r.stderr || r.stdout).trim().split('\n').slice(-20).join('\n')}\n` +
          `kube-apiserver log, last lines:\n${cp.logTail('kube-apiserver', 10)}`,
      );
    }
  }
  return Date.now() - started;
}
