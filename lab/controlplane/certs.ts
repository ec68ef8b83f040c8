// The control plane's PKI, made in-process: one CA, the API server's serving certificate, client certificates
// for the admin and the controller manager, and the service-account signing key. RSA 2048 (node-forge lays the
// certificates out; Node's crypto makes the keys and signs), the same way agent/identity/ca.ts makes its own.
import crypto, { type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import forge from 'node-forge';
import { forgePublicKey, nativeRsaSigner } from '../../agent/identity/ca.js';

const generateKeyPair = promisify(crypto.generateKeyPair);

const DAY_MS = 24 * 60 * 60 * 1000;
/** The lab's control plane lives for a test run or a demo; a year spares anyone a renewal. */
const VALIDITY_MS = 365 * DAY_MS;
const SKEW_MS = 60_000;
const DNS_SAN = 2;
const IP_SAN = 7;

export interface KeyPairPem {
  keyPem: string;
  certPem: string;
}

export interface ControlPlanePki {
  ca: KeyPairPem;
  /** kube-apiserver's serving certificate: 127.0.0.1, the advertised IP, the first Service IP and the kubernetes names. */
  apiserver: KeyPairPem;
  /** O=system:masters: every permission, as kubeadm's admin.conf. */
  admin: KeyPairPem;
  /** CN=system:kube-controller-manager: the user the bootstrap RBAC policy binds the controller manager's roles to. */
  controllerManager: KeyPairPem;
  /** Signs service-account tokens (apiserver) and legacy token Secrets (controller manager). */
  serviceAccount: { keyPem: string; publicPem: string };
}

export interface PkiOptions {
  /** The API server's advertised address (CONTROL_PLANE_IP). */
  advertiseIp: string;
  /** The first address of the Service range: the `kubernetes` Service, which in-cluster clients dial. */
  kubernetesServiceIp: string;
}

async function rsaKey(): Promise<KeyObject> {
  const { privateKey } = await generateKeyPair('rsa', { modulusLength: 2048 });
  return privateKey;
}

function keyPem(key: KeyObject): string {
  return key.export({ type: 'pkcs8', format: 'pem' }) as string;
}

function serial(): string {
  const bytes = crypto.randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x40;
  return bytes.toString('hex');
}

interface CertSpec {
  subject: forge.pki.CertificateField[];
  extensions: object[];
}

function sign(spec: CertSpec, key: KeyObject, issuer: { key: KeyObject; subject: forge.pki.CertificateField[] } | undefined): string {
  const now = Date.now();
  const cert = forge.pki.createCertificate();
  cert.publicKey = forgePublicKey(key);
  cert.serialNumber = serial();
  cert.validity.notBefore = new Date(now - SKEW_MS);
  cert.validity.notAfter = new Date(now + VALIDITY_MS);
  cert.setSubject(spec.subject);
  cert.setIssuer(issuer ? issuer.subject : spec.subject);
  cert.setExtensions(spec.extensions);
  cert.sign(nativeRsaSigner(issuer ? issuer.key : key), forge.md.sha256.create());
  return forge.pki.certificateToPem(cert).replace(/\r\n/g, '\n');
}

const leafUsage = { name: 'keyUsage', critical: true, digitalSignature: true, keyEncipherment: true };

/** Makes every key and certificate of a control plane (about 0.3 s: five RSA keys, made in parallel off the event loop). */
export async function makePki(opts: PkiOptions): Promise<ControlPlanePki> {
  const [caKey, apiKey, adminKey, kcmKey, saKey] = await Promise.all([rsaKey(), rsaKey(), rsaKey(), rsaKey(), rsaKey()]);
  const caSubject = [{ name: 'commonName', value: 'trellis-lab-ca' }];
  const issuer = { key: caKey, subject: caSubject };
  const ca = sign(
    {
      subject: caSubject,
      extensions: [
        { name: 'basicConstraints', cA: true, critical: true },
        { name: 'keyUsage', critical: true, keyCertSign: true, cRLSign: true, digitalSignature: true },
        { name: 'subjectKeyIdentifier' },
      ],
    },
    caKey,
    undefined,
  );
  const dnsNames = ['localhost', 'kubernetes', 'kubernetes.default', 'kubernetes.default.svc', 'kubernetes.default.svc.cluster.local'];
  const apiserver = sign(
    {
      subject: [{ name: 'commonName', value: 'kube-apiserver' }],
      extensions: [
        leafUsage,
        { name: 'extKeyUsage', serverAuth: true },
        {
          name: 'subjectAltName',
          altNames: [
            ...['127.0.0.1', opts.advertiseIp, opts.kubernetesServiceIp].map((ip) => ({ type: IP_SAN, ip })),
            ...dnsNames.map((value) => ({ type: DNS_SAN, value })),
          ],
        },
      ],
    },
    apiKey,
    issuer,
  );
  const client = (commonName: string, organization?: string) =>
    sign(
      {
        subject: [...(organization ? [{ name: 'organizationName', value: organization }] : []), { name: 'commonName', value: commonName }],
        extensions: [leafUsage, { name: 'extKeyUsage', clientAuth: true }],
      },
      commonName === 'trellis-admin' ? adminKey : kcmKey,
      issuer,
    );
  return {
    ca: { keyPem: keyPem(caKey), certPem: ca },
    apiserver: { keyPem: keyPem(apiKey), certPem: apiserver },
    admin: { keyPem: keyPem(adminKey), certPem: client('trellis-admin', 'system:masters') },
    controllerManager: { keyPem: keyPem(kcmKey), certPem: client('system:kube-controller-manager') },
    serviceAccount: { keyPem: keyPem(saKey), publicPem: crypto.createPublicKey(saKey).export({ type: 'spki', format: 'pem' }) as string },
  };
}
