// `trellis ca status|trust|use|untrust`: the steps of a CA rotation, as edits of the trellis-ca Secret the identity
// service reads again on its own (docs/install.md, "Rotating the CA"). Each step checks what the next one relies on.
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ApiException, CoreV1Api, KubeConfig, type V1Secret } from '@kubernetes/client-node';
import type { Command } from 'commander';
import { TrellisError } from '../errors.js';
import { LocalCa } from '../identity/ca.js';
import { pemCerts } from '../identity/certs.js';
import { CA_CERT_FILE, CA_KEY_FILE, TRUSTED_ROOTS_FILE, composeBundle, describeRoot, type BundleRoot, type ObjectRef } from '../identity-service/ca-source.js';
import { BUNDLE_KEY } from '../identity-service/service.js';
import { formatTable } from './table.js';

interface CaFlags {
  kubeconfig?: string;
  caSecret?: string;
  bundleConfigmap?: string;
  output?: string;
}

interface Target {
  core: CoreV1Api;
  secret: ObjectRef;
  configMap: ObjectRef;
}

interface SecretState {
  object: V1Secret;
  data: Record<string, string>;
  /** The signing root first, then trusted-roots.pem's. */
  roots: BundleRoot[];
  trustDomain: string;
}

function parseRef(text: string, flag: string): ObjectRef {
  const [namespace = '', name = '', ...rest] = text.split('/');
  if (rest.length > 0 || !namespace || !name) throw new TrellisError('ECONFIG', `${flag}: "${text}" must be NAMESPACE/NAME`);
  return { namespace, name };
}

function target(flags: CaFlags): Target {
  const kc = new KubeConfig();
  try {
    if (flags.kubeconfig) kc.loadFromFile(flags.kubeconfig);
    else kc.loadFromDefault();
  } catch (err) {
    throw new TrellisError('ECONFIG', `cannot load ${flags.kubeconfig ?? 'the default kubeconfig'}: ${(err as Error).message}; pass --kubeconfig FILE`, { cause: err });
  }
  if (!kc.getCurrentCluster()) throw new TrellisError('ECONFIG', 'no current cluster in the kubeconfig; pass --kubeconfig FILE');
  return {
    core: kc.makeApiClient(CoreV1Api),
    secret: parseRef(flags.caSecret ?? 'trellis-system/trellis-ca', '--ca-secret'),
    configMap: parseRef(flags.bundleConfigmap ?? 'trellis-system/trellis-ca-root', '--bundle-configmap'),
  };
}

function apiError(what: string, err: unknown): TrellisError {
  if (err instanceof ApiException) {
    const body = typeof err.body === 'string' ? err.body : JSON.stringify(err.body);
    const reason = (() => {
      try {
        return (JSON.parse(body) as { message?: string }).message ?? body;
      } catch {
        return body;
      }
    })();
    const conflict = err.code === 409 ? '; someone changed it meanwhile: run the command again' : '';
    return new TrellisError('EAPI', `${what}: the API server answered ${err.code} (${reason.slice(0, 300)})${conflict}`, { cause: err });
  }
  return new TrellisError('EAPIUNAVAILABLE', `${what}: ${(err as Error).message}; check the kubeconfig's server and credentials`, { cause: err });
}

async function readSecret(t: Target): Promise<SecretState> {
  const ref = `${t.secret.namespace}/${t.secret.name}`;
  let object: V1Secret;
  try {
    object = await t.core.readNamespacedSecret(t.secret);
  } catch (err) {
    if (err instanceof ApiException && err.code === 404) {
      throw new TrellisError('ECANOTFOUND', `the CA Secret ${ref} does not exist: install Trellis first (docs/install.md, step 2)`);
    }
    throw apiError(`reading Secret ${ref}`, err);
  }
  const data = Object.fromEntries(Object.entries(object.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));
  const certPem = data[CA_CERT_FILE];
  if (!certPem || !data[CA_KEY_FILE]) throw new TrellisError('ECABAD', `the CA Secret ${ref} has no ${CA_CERT_FILE} and ${CA_KEY_FILE}: it is not a Trellis CA`);
  const trustDomain = trustDomainOf(new X509Certificate(certPem), `${CA_CERT_FILE} of Secret ${ref}`);
  const bundle = composeBundle(certPem, data[TRUSTED_ROOTS_FILE], trustDomain, `the CA Secret ${ref}`);
  return { object, data, roots: [...bundle.roots], trustDomain };
}

async function readPublished(t: Target): Promise<BundleRoot[] | undefined> {
  try {
    const cm = await t.core.readNamespacedConfigMap(t.configMap);
    const pem = cm.data?.[BUNDLE_KEY];
    return pem === undefined ? undefined : pemCerts(pem).map((p) => describeRoot(new X509Certificate(p)));
  } catch (err) {
    if (err instanceof ApiException && err.code === 404) return undefined;
    throw apiError(`reading ConfigMap ${t.configMap.namespace}/${t.configMap.name}`, err);
  }
}

/** Replaces the Secret's CA keys; the resourceVersion read makes a concurrent edit a conflict, not a lost update. */
async function writeSecret(t: Target, s: SecretState, data: Record<string, string | undefined>): Promise<void> {
  const next = { ...s.data, ...data };
  for (const [k, v] of Object.entries(next)) if (v === undefined) delete next[k];
  const encoded = Object.fromEntries(Object.entries(next).map(([k, v]) => [k, Buffer.from(v!, 'utf8').toString('base64')]));
  try {
    await t.core.replaceNamespacedSecret({ ...t.secret, body: { ...s.object, data: encoded, stringData: undefined } });
  } catch (err) {
    throw apiError(`updating Secret ${t.secret.namespace}/${t.secret.name}`, err);
  }
}

function trustDomainOf(cert: X509Certificate, what: string): string {
  const m = /URI:spiffe:\/\/([^,/\s]+)/.exec(cert.subjectAltName ?? '');
  if (!cert.ca || !m) throw new TrellisError('ECABAD', `${what} is not a Trellis root (a CA certificate with the URI SAN spiffe://<trust domain>)`);
  return m[1]!;
}

/** A root given on the command line: a PEM file, or a directory `trellis ca create` wrote. */
function readRootArg(arg: string): X509Certificate {
  const file = fs.existsSync(arg) && fs.statSync(arg).isDirectory() ? path.join(arg, CA_CERT_FILE) : arg;
  let pem: string;
  try {
    pem = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new TrellisError('ECONFIG', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  const blocks = pemCerts(pem);
  if (blocks.length !== 1) throw new TrellisError('ECONFIG', `${file} holds ${blocks.length} PEM certificates; give the one root (ca.cert.pem of \`trellis ca create\`)`);
  return new X509Certificate(blocks[0]!);
}

function rootsPem(roots: readonly BundleRoot[]): string | undefined {
  return roots.length ? roots.map((r) => r.pem).join('') : undefined;
}

function say(text: string): void {
  process.stdout.write(`${text}\n`);
}

async function status(flags: CaFlags): Promise<void> {
  const t = target(flags);
  const s = await readSecret(t);
  const published = await readPublished(t);
  const signing = s.roots[0]!;
  const inPublished = (r: BundleRoot) => {
    const i = published?.findIndex((p) => p.fingerprint === r.fingerprint) ?? -1;
    return i < 0 ? 'no' : i === 0 ? 'yes, first' : 'yes';
  };
  const extra = (published ?? []).filter((p) => !s.roots.some((r) => r.fingerprint === p.fingerprint));
  const rows = [
    ...s.roots.map((r, i) => ({ ...r, role: i === 0 ? 'signs' : 'trusted', published: inPublished(r) })),
    ...extra.map((r) => ({ ...r, role: 'not in the Secret', published: 'yes' })),
  ];
  const synced = published !== undefined && published.length === s.roots.length && published.every((p, i) => p.fingerprint === s.roots[i]!.fingerprint);
  if (flags.output === 'json') {
    say(JSON.stringify({ trustDomain: s.trustDomain, synced, roots: rows.map(({ pem: _pem, ...r }) => ({ ...r, notAfter: new Date(r.notAfter).toISOString() })) }, null, 2));
    return;
  }
  say(formatTable([['ROOT (SHA-256)', 'SUBJECT', 'NOT_AFTER', 'ROLE', 'PUBLISHED'], ...rows.map((r) => [r.fingerprint, r.subject, new Date(r.notAfter).toISOString(), r.role, r.published])]));
  const cm = `${t.configMap.namespace}/${t.configMap.name}`;
  if (!synced) {
    say(`\nThe bundle in ConfigMap ${cm} is not the Secret's yet: the identity service reads the Secret every 10 s (--ca-poll); is it running?`);
  } else if (s.roots.length === 1) {
    say('\nNo rotation in progress. To rotate: `trellis ca create --out NEW`, then `trellis ca trust NEW`.');
  } else {
    const newer = s.roots.slice(1).filter((r) => new X509Certificate(r.pem).validFromDate > new X509Certificate(signing.pem).validFromDate);
    say(
      newer.length
        ? `\nA newer root is trusted beside the signing one. Once every agent trusts it (trellis_trust_bundle_roots has it on every agent), switch: \`trellis ca use NEW\`.`
        : `\nThe signing root is the newest. Once no agent holds a certificate from the others (trellis_workload_certificates{root="<it>"} is 0 on every agent), remove them: \`trellis ca untrust ROOT\`.`,
    );
  }
}

async function trust(arg: string, flags: CaFlags): Promise<void> {
  const t = target(flags);
  const s = await readSecret(t);
  const cert = readRootArg(arg);
  const td = trustDomainOf(cert, arg);
  if (td !== s.trustDomain) throw new TrellisError('ECONFIG', `${arg} is for trust domain ${td}, the mesh's is ${s.trustDomain}: create it with \`trellis ca create --trust-domain ${s.trustDomain}\``);
  if (cert.validToDate.getTime() <= Date.now()) throw new TrellisError('ECONFIG', `${arg} expired at ${cert.validToDate.toISOString()}`);
  const root = describeRoot(cert);
  if (s.roots.some((r) => r.fingerprint === root.fingerprint)) {
    say(`${root.fingerprint} is already in the trust bundle; nothing changed`);
    return;
  }
  await writeSecret(t, s, { [TRUSTED_ROOTS_FILE]: rootsPem([...s.roots.slice(1), root]) });
  say(
    `added ${root.fingerprint} to ${TRUSTED_ROOTS_FILE} of Secret ${t.secret.namespace}/${t.secret.name}; the identity service publishes it within its --ca-poll.\n` +
      `Next: wait until every agent has it (trellis_trust_bundle_roots{root="${root.fingerprint}"} on every agent, or the log line "trust bundle changed"), then \`trellis ca use DIR\`.`,
  );
}

async function use(dir: string, flags: CaFlags): Promise<void> {
  const t = target(flags);
  const s = await readSecret(t);
  const ca = LocalCa.load(path.resolve(dir));
  if (ca.trustDomain !== s.trustDomain) throw new TrellisError('ECONFIG', `the CA in ${dir} is for trust domain ${ca.trustDomain}, the mesh's is ${s.trustDomain}`);
  const root = describeRoot(new X509Certificate(ca.rootCertPem));
  if (root.fingerprint === s.roots[0]!.fingerprint) {
    say(`the identity service already signs with ${root.fingerprint}; nothing changed`);
    return;
  }
  const published = await readPublished(t);
  if (!s.roots.some((r) => r.fingerprint === root.fingerprint) || !published?.some((p) => p.fingerprint === root.fingerprint)) {
    throw new TrellisError(
      'ECONFIG',
      `${root.fingerprint} is not in the published trust bundle yet: agents would refuse the certificates it signs. ` +
        `Run \`trellis ca trust ${dir}\` first and wait until every agent has it`,
    );
  }
  const trusted = [s.roots[0]!, ...s.roots.slice(1).filter((r) => r.fingerprint !== root.fingerprint)];
  await writeSecret(t, s, {
    [CA_KEY_FILE]: fs.readFileSync(path.join(dir, CA_KEY_FILE), 'utf8'),
    [CA_CERT_FILE]: ca.rootCertPem,
    [TRUSTED_ROOTS_FILE]: rootsPem(trusted),
  });
  say(
    `Secret ${t.secret.namespace}/${t.secret.name} now signs with ${root.fingerprint}; the previous root ${s.roots[0]!.fingerprint} stays trusted.\n` +
      `Agents renew their certificates as soon as they read the new bundle. Next: wait until trellis_workload_certificates{root="${s.roots[0]!.fingerprint}"} is 0 ` +
      `on every agent, then \`trellis ca untrust ${s.roots[0]!.fingerprint}\`. Keep ${path.join(dir, CA_KEY_FILE)} offline or delete it.`,
  );
}

async function untrust(arg: string, flags: CaFlags): Promise<void> {
  const t = target(flags);
  const s = await readSecret(t);
  const fingerprint = /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/i.test(arg) ? arg.toUpperCase() : describeRoot(readRootArg(arg)).fingerprint;
  if (fingerprint === s.roots[0]!.fingerprint) {
    throw new TrellisError('ECONFIG', `${fingerprint} is the root the identity service signs with; switch to another first (\`trellis ca use DIR\`)`);
  }
  const kept = s.roots.slice(1).filter((r) => r.fingerprint !== fingerprint);
  if (kept.length === s.roots.length - 1) {
    say(`${fingerprint} is not in the trust bundle; nothing changed`);
    return;
  }
  await writeSecret(t, s, { [TRUSTED_ROOTS_FILE]: rootsPem(kept) });
  say(`removed ${fingerprint} from the trust bundle; agents renew any certificate still from it as soon as they read the new bundle`);
}

/** Adds status, trust, use and untrust under `trellis ca`. */
export function registerCaRotationCommands(ca: Command): void {
  const common = (c: Command) =>
    c
      .option('--kubeconfig <file>', 'kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, or in-cluster)')
      .option('--ca-secret <ns/name>', 'the CA Secret the identity service signs with', 'trellis-system/trellis-ca')
      .option('--bundle-configmap <ns/name>', 'the ConfigMap the identity service publishes the bundle in', 'trellis-system/trellis-ca-root');
  common(ca.command('status').description("the CA's roots: which one signs, which are trusted, which the published bundle holds, and the next step of a rotation"))
    .option('-o, --output <format>', 'table or json', 'table')
    .action((flags: CaFlags) => status(flags));
  common(ca.command('trust').argument('<root>', 'ca.cert.pem of the new CA, or the directory `trellis ca create` wrote'))
    .description('rotation step 1: add a root to the trust bundle, beside the one the identity service signs with')
    .action((root: string, flags: CaFlags) => trust(root, flags));
  common(ca.command('use').argument('<dir>', 'the directory `trellis ca create` wrote (ca.key.pem, ca.cert.pem)'))
    .description('rotation step 2: sign with this CA (its root must be published already); the previous root stays trusted')
    .action((dir: string, flags: CaFlags) => use(dir, flags));
  common(ca.command('untrust').argument('<root>', 'a root certificate file, or its SHA-256 fingerprint as `trellis ca status` prints it'))
    .description('rotation step 3: remove a root from the trust bundle (never the signing one)')
    .action((root: string, flags: CaFlags) => untrust(root, flags));
}
