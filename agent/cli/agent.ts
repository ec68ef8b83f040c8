// `trellis agent`: runs the node agent until SIGTERM/SIGINT, then drains and exits.
import type { Command } from 'commander';
import { startAgent } from '../app.js';
import { agentConfig, DEFAULT_OPAQUE_PORTS, DEFAULT_TAP_SOCKET, MAX_WORKERS, type AgentFlags } from '../config.js';
import { TAP_PORT } from '../constants.js';
import { createLogger } from '../telemetry/log.js';

/**
 * V8 flags the agent runs with (docs/bench.md: Memory), measured with one bulk stream through two agents on one CPU:
 * - Small semi-spaces (2 MB): V8 would grow the young generation to 64 MB semi-spaces on a machine with
 *   gigabytes of RAM and keep what a burst made it grow to (tens of MB per agent). Small ones also mean a
 *   scavenge every few MB of JS allocation, which frees the socket buffers of bulk transfers before they add
 *   up to the 64 MB of external memory that makes V8 run a full mark-compact.
 * - An old generation of 64 MB before any full GC: the heap is ~16 MB live, and with V8's own limit (live size
 *   plus 8 MB, less than the young generation's capacity) it marked the whole heap after nearly every
 *   scavenge: about 50 full GCs per GB per agent under bulk load.
 * Together: CPU per GB down 29% (paired runs), idle RSS down ~6 MB per agent; V8 grows the old generation to
 * about as much under connection churn by itself.
 * - Single-threaded GC: the agent's event loop is one thread and DaemonSets usually get a core or less; V8's
 *   parallel scavenge hands every young-generation GC to helper threads and waits for them, a wake-up and a
 *   context switch each time on a busy core. Without them: ~15% more requests/s at L7 with both agents on
 *   one CPU (bench lab, paired runs), 5-10% less CPU per request at 1 000 requests/s.
 * - --expose-gc: the 64 MB old generation keeps a burst's garbage while nothing allocates; an idle agent runs
 *   one full GC itself (telemetry/memory.ts) instead of holding it.
 * - --no-async-context-frame: Node 24 saves and restores an AsyncLocalStorage frame around every callback from
 *   libuv, ~1% of the agents' CPU at L7; nothing in the agent or its dependencies uses AsyncLocalStorage (pino only
 *   in its tests). Paired bench runs: ~2% less CPU per request at 4 000 req/s, max req/s +2% (within the noise of one
 *   run, the same sign in all three).
 */
const HEAP_FLAGS = ['--max-semi-space-size=2', '--initial-old-space-size=64', '--single-threaded-gc', '--expose-gc', '--no-async-context-frame'];

/**
 * V8 reads heap sizes only as it starts: unless node already has these flags (its own flags or NODE_OPTIONS,
 * which then win), this process is replaced, same pid, by one with the missing ones.
 */
function execWithHeapFlags(): void {
  const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  const missing = HEAP_FLAGS.filter((f) => !given.some((a) => a.startsWith(f.slice(0, f.indexOf('=')))));
  if (missing.length === 0 || !process.execve) return;
  process.execve(process.execPath, [process.execPath, ...missing, ...process.execArgv, ...process.argv.slice(1)]);
}

/** Starts the V8 profiler in this process; the returned function stops it and writes the profile. */
async function startCpuProfile(): Promise<(file: string) => Promise<void>> {
  const { Session } = await import('node:inspector/promises');
  const { writeFile } = await import('node:fs/promises');
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.start');
  return async (file) => {
    const { profile } = await session.post('Profiler.stop');
    await writeFile(file, JSON.stringify(profile));
    session.disconnect();
  };
}

export function registerAgentCommand(program: Command): void {
  program
    .command('agent')
    .description('run the node agent: capture meshed pods on this node, carry their traffic over HBONE mTLS, export metrics')
    .requiredOption('--node <name>', "this node's name; pods with this spec.nodeName are enrolled")
    .option('--source <kind>', 'where Kubernetes objects come from: dir or kube', 'dir')
    .option('--dir <path>', 'with --source dir: directory of Kubernetes YAML, reloaded on change')
    .option('--kubeconfig <path>', 'with --source kube: kubeconfig file; in-cluster service account config when absent')
    .option('--ca-dir <path>', 'local mode: directory of the in-process CA (created if absent)', '/var/lib/trellis/ca')
    .option('--identity-service <host:port>', 'get workload certificates from the identity service (cluster mode) instead of the local CA')
    .option('--identity-token-file <path>', 'with --identity-service: projected service-account token, audience trellis-identity (default /var/run/secrets/trellis/token)')
    .option('--identity-ca-file <path>', 'with --identity-service: the mesh root, the mounted trellis-ca-root ConfigMap (default /var/run/trellis/ca-root/root-cert.pem)')
    .option('--identity-ca-poll <duration>', 'with --identity-service: how often the trust bundle file is read again, so a CA rotation needs no restart (default 10s)')
    .option('--trust-domain <td>', 'SPIFFE trust domain', 'cluster.local')
    .option('--probe-source <ip...>', "addresses the node's health probes come from; never captured")
    .option('--metrics-addr <ip:port>', 'Prometheus /metrics listener', '0.0.0.0:15020')
    .option('--health-addr <ip:port>', '/healthz/ready listener', '0.0.0.0:15021')
    .option('--cert-ttl <duration>', 'workload certificate lifetime, renewed at half-life', '24h')
    .option('--connect-timeout <duration>', 'limit for an upstream connect or HBONE handshake', '5s')
    .option('--drain <duration>', 'how long open connections may finish after SIGTERM', '5s')
    .option('--max-connections-per-source <n>', 'open plaintext connections (port 15006, clients outside the mesh) one source address may hold, per agent thread; more are reset (0: no limit)', '1024')
    .option('--ready-file <path>', "kept while this process is ready, removed when it is not or stops (tells a new agent's readiness from the old one's during a hand-over)")
    .option('--workers <n>', `threads that carry traffic, each with listeners of its own in every pod (1 to ${MAX_WORKERS}; default: the CPUs the agent may use, at most ${MAX_WORKERS})`)
    .option('--cni-socket <path>', 'serve trellis-cni on this Unix socket (cluster mode): new meshed pods start only once captured')
    .option('--cni-optin-file <path>', 'with --cni-socket: the opt-in file trellis-cni reads while the agent is down (default /var/run/trellis/cni/optin)')
    .option('--cni-wait-for-pod <duration>', 'with --cni-socket: how long a CNI ADD waits for the pod to reach the agent (default 5s)')
    .option('--hbone-max-streams-per-session <n>', 'connections an HBONE session carries before the next gets a new session and TLS handshake (0: no limit; 1: a handshake per connection)', '0')
    .option('--tcp-health <on|off>', 'RTT and retransmissions per edge from a sockops program on the agent\'s cgroup (trellis_tcp_rtt_seconds, trellis_tcp_retransmits_total) where the kernel allows it; off: no program, no figures', 'on')
    .option('--same-node <on|off>', 'a meshed pod of this node is reached in process, without HBONE or TLS (authorized, recorded and served by its inbound side as over HBONE; trellis_same_node_connections_total); off: over HBONE to the agent itself', 'on')
    .option('--same-node-splice <user|kernel>', "who moves an opaque same-node connection's bytes: user (user space, with backpressure), or kernel (a sockhash and a stream verdict program, no payload byte in user space, where it loads; no backpressure yet: a slow server lets the kernel buffer without bound)", 'user')
    .option('--preserve-source-ip <on|off>', "connections to apps leave from the caller's address, so apps see who calls (IP_TRANSPARENT and policy routing in each pod's netns); off: from the pod's own address", 'on')
    .option('--tls-groups <list>', "TLS key exchange groups of HBONE connections, in order of preference, e.g. X25519 or X25519MLKEM768,X25519 (default: Node's)")
    .option('--capture <mode>', "how meshed pods' traffic is captured: nft (nftables NAT in each pod), ebpf (inbound by an sk_lookup program, outbound by cgroup connect4/6 programs, no NAT; refuses to start when the kernel lacks what it needs), auto (ebpf where the kernel allows, else nft; the log and trellis_capture_mode say which and why)", 'auto')
    .option('--cgroup-root <path>', "eBPF capture: the cgroup (v2) the outbound programs attach to, above every pod's processes; one set for all pods, which it tells apart by their netns (default: the root of the cgroup2 mount the agent sees; in a container, mount the host's and name it here)")
    .option('--drift-interval <duration>', "how often enrolled pods' capture rules and listeners are checked and repaired (0: never)", '30s')
    .option('--l7 <on|off>', 'parse HTTP/1.1, HTTP/2 and gRPC (outbound: routes, retries, per-request metrics; inbound: per-request authorization and metrics); off: everything is opaque TCP both ways, and policy rules with HTTP fields fail safe', 'on')
    .option('--protocol-detect-timeout <duration>', 'how long a connection to an undeclared Service port waits for the client to speak before it is carried as opaque TCP (0: never sniff)', '100ms')
    .option('--opaque-ports <list>', 'comma-separated ports never sniffed (server-speaks-first protocols)', DEFAULT_OPAQUE_PORTS)
    .option('--max-header-bytes <n>', 'largest HTTP request head accepted; larger answers 431', '61440')
    .option('--max-header-count <n>', 'most header fields in an HTTP request; more answers 431', '100')
    .option('--http-header-timeout <duration>', 'an HTTP/1.1 request head must arrive whole within this long of its first byte, else 408 and the connection closes (0: no limit)', '10s')
    .option('--http-idle-timeout <duration>', 'a kept-alive HTTP/1.1 connection with no request in flight closes after this long (0: never)', '60s')
    .option('--audit-file <path>', 'write the audit trail (one access line per connection and per request) to this file, rotated by size, instead of stdout')
    .option('--audit-max-bytes <size>', 'with --audit-file: rotate when the file would pass this size (bytes, or Ki/Mi/Gi) (default 100Mi)')
    .option('--audit-max-files <n>', 'with --audit-file: rotated files kept, PATH.1 the newest (default 5)')
    .option('--no-audit', 'write no audit trail (the access lines); --log-level never turns it off')
    .option('--tap-socket <path>', `serve the tap API (trellis tap) on this Unix socket, mode 0600; off: no tap (default ${DEFAULT_TAP_SOCKET})`)
    .option('--tap-addr <ip:port>', `with --source kube: serve the tap API over TLS on this address too, callers authorized by Kubernetes RBAC (a bearer token, TokenReview, SubjectAccessReview for watch on tap.tap.trellis.dev); off: not (default 0.0.0.0:${TAP_PORT} with --source kube, off with --source dir)`)
    .option('--tap-redact-headers <list>', 'comma-separated headers whose values taps never see, beside authorization, cookie, set-cookie, proxy-authorization, x-forwarded-client-cert (always redacted)')
    .option('--tap-max-rps <n>', 'observations per second one tap may carry at most; more are dropped and counted in the stream (default 100)')
    .option('--tracing-endpoint <url>', 'send a span per HTTP/gRPC request the agent carries to this OTLP collector, e.g. http://otel-collector:4317 (default: no tracing)')
    .option('--tracing-protocol <p>', 'with --tracing-endpoint: grpc (OTLP/gRPC), http/protobuf or http/json (OTLP/HTTP, POST /v1/traces) (default grpc)')
    .option('--tracing-sample-ratio <r>', "with --tracing-endpoint: share of new traces sampled, 0 to 1; a caller's sampled flag is kept (default 0.01)")
    .option('--log-level <level>', "trace|debug|info|warn|error: the agent's own log (the audit trail is written whatever the level)", 'info')
    .option('--cpu-profile <file>', 'diagnostics: record a V8 CPU profile from start to shutdown and write it to FILE (open it in Chrome DevTools)')
    .action(async (flags: AgentFlags & { cpuProfile?: string }) => {
      const config = agentConfig(flags);
      execWithHeapFlags();
      const logger = createLogger({ level: config.logLevel, node: config.node });
      const profile = flags.cpuProfile ? await startCpuProfile() : undefined;
      const agent = await startAgent(config, logger);
      const shutdown = (signal: string) => {
        logger.info({ signal }, 'shutting down');
        agent
          .stop()
          .then(() => profile?.(flags.cpuProfile!))
          .then(
            () => process.exit(0),
            (err: Error) => {
              logger.error({ err: err.message }, 'shutdown failed');
              process.exit(1);
            },
          );
      };
      process.once('SIGTERM', () => shutdown('SIGTERM'));
      process.once('SIGINT', () => shutdown('SIGINT'));
    });
}
