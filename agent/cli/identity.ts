// `trellis identity` (the cluster CA as a gRPC service, until SIGTERM) and `trellis ca create` (the root
// key and certificate that go into its Secret). Flags are parsed and checked here, once.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import type { Command } from 'commander';
import { parseDuration } from '../config.js';
import { DEFAULT_TRUST_DOMAIN } from '../constants.js';
import { TrellisError } from '../errors.js';
import { LocalCa } from '../identity/ca.js';
import { KubeIdentityCluster } from '../identity-service/cluster.js';
import { CA_CERT_FILE, CA_KEY_FILE, MAX_CERT_TTL_MS, startIdentityService, type ObjectRef } from '../identity-service/service.js';
import { parseTrustDomainId } from '../identity/spiffe.js';
import { registerCaRotationCommands } from './ca.js';
import { createLogger } from '../telemetry/log.js';

export const IDENTITY_PORT = 15012;
const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
const SHUTDOWN_GRACE_MS = 5_000;
// Namespace and object names: DNS labels / subdomains.
const NAMESPACE = /^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$/;
const NAME = /^[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?$/;
const SA_USER = /^system:serviceaccount:([a-z0-9-]+):([a-z0-9.-]+)$/;

export interface IdentityFlags {
  listen?: string;
  caSecret?: string;
  bundleConfigmap?: string;
  trustDomain?: string;
  audience?: string;
  agentServiceAccount?: string;
  certTtl?: string;
  caPoll?: string;
  dnsName?: string[];
  kubeconfig?: string;
  logLevel?: string;
}

export interface IdentityConfig {
  readonly listen: { readonly host: string; readonly port: number };
  readonly caSecret: Readonly<ObjectRef>;
  readonly bundleConfigMap: Readonly<ObjectRef>;
  readonly trustDomain: string;
  readonly audience: string;
  readonly agentServiceAccount: string;
  readonly certTtlMs: number;
  /** How often the CA Secret is read again. */
  readonly caPollMs: number;
  readonly extraDnsNames: readonly string[];
  /** undefined: in-cluster config. */
  readonly kubeconfig: string | undefined;
  readonly logLevel: string;
}

function parseRef(text: string, flag: string): ObjectRef {
  const [namespace = '', name = '', ...rest] = text.split('/');
  if (rest.length > 0 || !NAMESPACE.test(namespace) || !NAME.test(name)) {
    throw new TrellisError('ECONFIG', `${flag}: "${text}" must be NAMESPACE/NAME, e.g. trellis-system/trellis-ca`);
  }
  return Object.freeze({ namespace, name });
}

function parseListen(text: string): { host: string; port: number } {
  const m = /^(.*):(\d{1,5})$/.exec(text);
  const host = m?.[1]?.replace(/^\[|\]$/g, '') ?? '';
  const port = Number(m?.[2]);
  if (!m || !net.isIP(host) || port > 65535) {
    throw new TrellisError('ECONFIG', `--listen: "${text}" must be IP:PORT, e.g. 0.0.0.0:${IDENTITY_PORT}`);
  }
  return Object.freeze({ host, port });
}

function checkTrustDomain(td: string): string {
  if (!parseTrustDomainId(`spiffe://${td}`)) {
    throw new TrellisError('ECONFIG', `--trust-domain: "${td}" is not a trust domain; use lowercase DNS labels such as cluster.local`);
  }
  return td;
}

export function identityConfig(flags: IdentityFlags): IdentityConfig {
  const level = flags.logLevel ?? 'info';
  if (!LEVELS.includes(level)) throw new TrellisError('ECONFIG', `--log-level ${level}: use one of ${LEVELS.join(', ')}`);
  const certTtlMs = parseDuration(flags.certTtl ?? '24h', '--cert-ttl');
  if (certTtlMs < 60_000 || certTtlMs > MAX_CERT_TTL_MS) {
    throw new TrellisError('ECONFIG', `--cert-ttl ${flags.certTtl}: must be between 1m and 48h; agents renew at half-life, so short is cheap`);
  }
  const caPollMs = parseDuration(flags.caPoll ?? '10s', '--ca-poll');
  if (caPollMs < 100) throw new TrellisError('ECONFIG', `--ca-poll ${flags.caPoll}: at least 100ms`);
  const audience = flags.audience ?? 'trellis-identity';
  if (!audience.trim()) throw new TrellisError('ECONFIG', '--audience must not be empty: it is the audience of the agents\' projected tokens');
  const agentServiceAccount = flags.agentServiceAccount ?? 'system:serviceaccount:trellis-system:trellis-agent';
  if (!SA_USER.test(agentServiceAccount)) {
    throw new TrellisError(
      'ECONFIG',
      `--agent-service-account ${agentServiceAccount}: must be a service account username, system:serviceaccount:NAMESPACE:NAME`,
    );
  }
  const extraDnsNames = (flags.dnsName ?? []).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
  for (const name of extraDnsNames) {
    if (!net.isIP(name) && !/^[a-z0-9*]([-a-z0-9.]*[a-z0-9])?$/i.test(name)) throw new TrellisError('ECONFIG', `--dns-name ${name}: not a DNS name`);
  }
  return Object.freeze({
    listen: parseListen(flags.listen ?? `0.0.0.0:${IDENTITY_PORT}`),
    caSecret: parseRef(flags.caSecret ?? 'trellis-system/trellis-ca', '--ca-secret'),
    bundleConfigMap: parseRef(flags.bundleConfigmap ?? 'trellis-system/trellis-ca-root', '--bundle-configmap'),
    trustDomain: checkTrustDomain(flags.trustDomain ?? DEFAULT_TRUST_DOMAIN),
    audience,
    agentServiceAccount,
    certTtlMs,
    caPollMs,
    extraDnsNames: Object.freeze(extraDnsNames),
    kubeconfig: flags.kubeconfig,
    logLevel: level,
  });
}

function kubeConfig(file: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  try {
    if (file) kc.loadFromFile(file);
    else kc.loadFromCluster();
  } catch (err) {
    const where = file ? `kubeconfig ${file}` : 'the in-cluster configuration';
    throw new TrellisError('ECONFIG', `cannot load ${where}: ${(err as Error).message}; pass --kubeconfig FILE outside a cluster`, { cause: err });
  }
  // Outside a pod, client-node builds "https://undefined:undefined" instead of failing.
  const server = kc.getCurrentCluster()?.server ?? '';
  if (!URL.canParse(server) || server.includes('undefined')) {
    throw new TrellisError('ECONFIG', `no API server address${file ? ` in ${file}` : ' (not running in a pod: KUBERNETES_SERVICE_HOST is unset)'}; pass --kubeconfig FILE`);
  }
  return kc;
}

/** `trellis ca create`: a new root for the cluster, written where the operator can turn it into a Secret. */
function createCa(flags: { trustDomain?: string; out: string }): void {
  const trustDomain = checkTrustDomain(flags.trustDomain ?? DEFAULT_TRUST_DOMAIN);
  const dir = path.resolve(flags.out);
  for (const file of [CA_KEY_FILE, CA_CERT_FILE]) {
    if (fs.existsSync(path.join(dir, file))) {
      throw new TrellisError('ECONFIG', `${path.join(dir, file)} already exists; a new CA would replace it, so remove it first or pick another --out`);
    }
  }
  LocalCa.generate({ trustDomain }).save(dir);
  process.stdout.write(
    `wrote ${path.join(dir, CA_KEY_FILE)} and ${path.join(dir, CA_CERT_FILE)} (trust domain ${trustDomain})\n` +
      `store them in the cluster, then keep the key offline or delete it:\n` +
      `  kubectl -n trellis-system create secret generic trellis-ca --from-file=${path.join(dir, CA_KEY_FILE)} --from-file=${path.join(dir, CA_CERT_FILE)}\n`,
  );
}

export function registerIdentityCommands(program: Command): void {
  program
    .command('identity')
    .description("run the identity service: sign workload certificates for agents, for pods on the caller's node only")
    .option('--listen <ip:port>', 'gRPC over TLS listener', `0.0.0.0:${IDENTITY_PORT}`)
    .option('--ca-secret <ns/name>', 'Secret with ca.key.pem and ca.cert.pem (made with `trellis ca create`)', 'trellis-system/trellis-ca')
    .option('--bundle-configmap <ns/name>', 'ConfigMap the root certificate is published in, key root-cert.pem', 'trellis-system/trellis-ca-root')
    .option('--trust-domain <td>', 'SPIFFE trust domain; must match the CA', DEFAULT_TRUST_DOMAIN)
    .option('--audience <aud>', "audience of the agents' projected service-account tokens", 'trellis-identity')
    .option('--agent-service-account <user>', 'the only caller allowed', 'system:serviceaccount:trellis-system:trellis-agent')
    .option('--cert-ttl <duration>', 'longest (and default) certificate lifetime, at most 48h', '24h')
    .option('--ca-poll <duration>', 'how often the CA Secret is read again (a CA rotation needs no restart)', '10s')
    .option('--dns-name <name...>', 'extra DNS names (or IP addresses) for the serving certificate')
    .option('--kubeconfig <file>', 'kubeconfig to use; in-cluster configuration when omitted')
    .option('--log-level <level>', 'trace|debug|info|warn|error', 'info')
    .action(async (flags: IdentityFlags) => {
      const config = identityConfig(flags);
      const logger = createLogger({ level: config.logLevel });
      const service = await startIdentityService({
        listen: config.listen,
        caSecret: config.caSecret,
        bundleConfigMap: config.bundleConfigMap,
        trustDomain: config.trustDomain,
        audience: config.audience,
        agentServiceAccount: config.agentServiceAccount,
        certTtlMs: config.certTtlMs,
        caPollMs: config.caPollMs,
        extraDnsNames: config.extraDnsNames,
        cluster: new KubeIdentityCluster(kubeConfig(config.kubeconfig)),
        logger,
      });
      const shutdown = (signal: string) => {
        logger.info({ signal }, 'shutting down');
        service.stop(SHUTDOWN_GRACE_MS).then(() => process.exit(0));
      };
      process.once('SIGTERM', () => shutdown('SIGTERM'));
      process.once('SIGINT', () => shutdown('SIGINT'));
    });

  const ca = program.command('ca').description('the mesh CA: create one, and rotate it (docs/install.md, "Rotating the CA")');
  ca.command('create')
    .description('create a root key and certificate (ca.key.pem, ca.cert.pem) for the identity service')
    .option('--trust-domain <td>', 'SPIFFE trust domain', DEFAULT_TRUST_DOMAIN)
    .requiredOption('--out <dir>', 'directory to write into (created, mode 0700)')
    .action((flags: { trustDomain?: string; out: string }) => createCa(flags));
  registerCaRotationCommands(ca);
}
