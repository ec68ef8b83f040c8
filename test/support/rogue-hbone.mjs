// A hostile HBONE client for the end-to-end tests: presents the certificate it is given to a pod's 15008
// and asks for a CONNECT. Prints one JSON line: {"outcome": "connected" | "refused", "detail": ...}.
import fs from 'node:fs';
import http2 from 'node:http2';
import tls from 'node:tls';

const [host, port, target, certFile, keyFile, caFile] = process.argv.slice(2);
const done = (outcome, detail) => {
  process.stdout.write(`${JSON.stringify({ outcome, detail })}\n`);
  process.exit(0);
};
setTimeout(() => done('refused', 'timeout'), 5000).unref();
const socket = tls.connect({
  host, port: Number(port), cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile), ca: fs.readFileSync(caFile),
  minVersion: 'TLSv1.3', ALPNProtocols: ['h2'], checkServerIdentity: () => undefined,
});
socket.on('error', (e) => done('refused', e.message));
const session = http2.connect(`https://${host}:${port}`, { createConnection: () => socket });
session.on('error', (e) => done('refused', e.message));
const stream = session.request({ ':method': 'CONNECT', ':authority': target });
stream.on('response', (h) => (h[':status'] === 200 ? done('connected', 200) : done('refused', h[':status'])));
stream.on('error', (e) => done('refused', e.message));
stream.on('close', () => done('refused', `closed ${stream.rstCode}`));
