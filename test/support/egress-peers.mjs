// Both ends of the egress end-to-end test (test/e2e/egress.test.ts), run with the lab's node:
//   serve CERT KEY TLS_ADDR... -- HTTP_ADDR...   in the lab's internet: TLS servers on :443 (the certificate made by
//       the test at run time) answering "<address> <sni>" and the certificate's own fingerprint is the client's to
//       check; HTTP servers on :80 answering "<address> <host> <path>", /slow?ms=N after N ms. Every accepted
//       /flaky?key=K answers 503 the first time it sees K, 200 after. Every accepted
//       connection is printed as a JSON line ({"accepted": address}), so the test sees what reached the internet.
//   tls ADDR SNI|-           in a pod: one TLS connection (no SNI for "-"), prints {reply, fingerprint} or {error}.
//   raw ADDR PORT HEX|-      in a pod: writes the bytes (nothing for "-"), prints {reply} or {error} when the
//       connection ends, or {silent: true} when it is still open after 3 s.
//   http ADDR HOST PATH      in a pod: one HTTP/1.1 GET, prints {status, body} or {error}.
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';

const [mode, ...args] = process.argv.slice(2);
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

if (mode === 'serve') {
  const [certFile, keyFile, ...rest] = args;
  const split = rest.indexOf('--');
  const tlsAddrs = rest.slice(0, split);
  const httpAddrs = rest.slice(split + 1);
  const cert = fs.readFileSync(certFile);
  const key = fs.readFileSync(keyFile);
  let pending = tlsAddrs.length + httpAddrs.length;
  const ready = () => --pending === 0 && out({ ready: true });
  for (const addr of tlsAddrs) {
    const server = tls.createServer({ cert, key }, (s) => {
      s.on('error', () => undefined);
      s.end(`${addr} ${s.servername || '-'}\n`);
    });
    server.on('connection', () => out({ accepted: addr, port: 443 }));
    server.on('tlsClientError', () => undefined);
    server.listen(443, addr, ready);
  }
  for (const addr of httpAddrs) {
    const seen = new Set();
    const server = http.createServer((req, res) => {
      const url = new URL(req.url, 'http://x');
      if (url.pathname === '/flaky') {
        const key = url.searchParams.get('key');
        const first = !seen.has(key);
        seen.add(key);
        res.statusCode = first ? 503 : 200;
        return res.end(`${addr} ${first ? 'failed once' : 'ok'}\n`);
      }
      const delay = url.pathname === '/slow' ? Number(url.searchParams.get('ms') ?? '0') : 0;
      setTimeout(() => res.end(`${addr} ${req.headers.host} ${url.pathname}\n`), delay);
    });
    server.on('connection', () => out({ accepted: addr, port: 80 }));
    server.listen(80, addr, ready);
  }
} else if (mode === 'tls') {
  const [addr, sni] = args;
  const s = tls.connect({ host: addr, port: 443, rejectUnauthorized: false, ...(sni === '-' ? {} : { servername: sni }) });
  let reply = '';
  const timer = setTimeout(() => (out({ error: 'no answer in 5 s' }), process.exit(0)), 5000);
  s.on('secureConnect', () => s.setEncoding('utf8'));
  s.on('data', (d) => (reply += d));
  s.on('end', () => (clearTimeout(timer), out({ reply: reply.trim(), fingerprint: s.getPeerCertificate().fingerprint256 })));
  s.on('error', (err) => (clearTimeout(timer), out({ error: err.code ?? err.message })));
} else if (mode === 'raw') {
  const [addr, port, hex] = args;
  const s = net.connect({ host: addr, port: Number(port) });
  let reply = '';
  const timer = setTimeout(() => (out({ silent: true }), s.destroy()), 3000);
  s.on('connect', () => hex !== '-' && s.write(Buffer.from(hex, 'hex')));
  s.on('data', (d) => (reply += d.toString('latin1')));
  s.on('end', () => (clearTimeout(timer), out({ reply }), s.end()));
  s.on('error', (err) => (clearTimeout(timer), out({ error: err.code ?? err.message })));
} else if (mode === 'http') {
  const [addr, host, urlPath] = args;
  const req = http.get({ host: addr, port: 80, path: urlPath, headers: { host }, agent: false, timeout: 10_000 }, (res) => {
    let body = '';
    res.setEncoding('utf8');
    res.on('data', (d) => (body += d));
    res.on('end', () => out({ status: res.statusCode, body: body.trim() }));
  });
  req.on('timeout', () => req.destroy(new Error('no answer in 10 s')));
  req.on('error', (err) => out({ error: err.code ?? err.message }));
} else {
  process.stderr.write(`egress-peers.mjs: unknown mode ${mode}\n`);
  process.exit(2);
}
