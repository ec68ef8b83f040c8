// The dashboard's HTTP server (`trellis dashboard`): the page (page/: HTML, JS, CSS), the chart library from the
// installed uplot package (never copied into the repo, never from a CDN: the page works offline), and one JSON
// endpoint, /api/view, that runs the viewer's queries on the server, and the live tap as server-sent events (/api/tap,
// live.ts). The browser never reaches Prometheus nor an agent: there is no PromQL endpoint, only the views this file
// serves. Meant for loopback: requests naming another host are refused
// (a web page elsewhere cannot reach it through DNS rebinding).
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { VizError } from '../errors.js';
import type { DashboardView } from './view.js';

export interface DashboardServerInputs {
  readonly host: string;
  readonly port: number;
  /** The view of a namespace (undefined: the server's choice), at the moment of the call. */
  readonly view: (namespace: string | undefined) => Promise<DashboardView>;
  /** How often the page asks again. */
  readonly refreshMs: number;
  /** Serves /api/tap (live.ts liveTapHandler); absent: the page's live view says tap is not available. */
  readonly liveTap?: (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => void;
}

export interface DashboardServer {
  /** http://HOST:PORT/ */
  readonly url: string;
  close(): Promise<void>;
}

interface Asset {
  readonly type: string;
  readonly body: Buffer;
}

const PAGE_DIR = fileURLToPath(new URL('./page/', import.meta.url));
const PAGE_FILES: Readonly<Record<string, [file: string, type: string]>> = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/app.css': ['app.css', 'text/css; charset=utf-8'],
};
const VENDOR_FILES: Readonly<Record<string, [file: string, type: string]>> = {
  '/vendor/uPlot.iife.min.js': ['uPlot.iife.min.js', 'text/javascript; charset=utf-8'],
  '/vendor/uPlot.min.css': ['uPlot.min.css', 'text/css; charset=utf-8'],
};
const HEADERS = {
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  // Everything from here; uPlot sets element styles from script, which style-src governs.
  'content-security-policy': "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
};
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);

/** The page and uPlot's files, read once (a missing one is a broken build, said at start, not on the first request). */
function loadAssets(): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  for (const [route, [file, type]] of Object.entries(PAGE_FILES)) {
    assets.set(route, { type, body: readOrExplain(path.join(PAGE_DIR, file), 'the dashboard page; `npm run build` copies viz/dashboard/page/ next to the compiled code') });
  }
  let uplotDir: string;
  try {
    uplotDir = path.dirname(createRequire(import.meta.url).resolve('uplot'));
  } catch {
    throw new VizError('ENOENT', 'the uplot package is not installed: run `npm ci` in the checkout (the dashboard serves its charts from node_modules)');
  }
  for (const [route, [file, type]] of Object.entries(VENDOR_FILES)) assets.set(route, { type, body: readOrExplain(path.join(uplotDir, file), 'the uplot package; run `npm ci`') });
  return assets;
}

function readOrExplain(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new VizError('ENOENT', `${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}: ${what}`);
  }
}

export async function startDashboard(inputs: DashboardServerInputs): Promise<DashboardServer> {
  const assets = loadAssets();
  let port = inputs.port;
  const loopbackOnly = LOOPBACK.has(inputs.host) || inputs.host.startsWith('127.');
  const server = http.createServer((req, res) => {
    void handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) send(res, 500, 'application/json', JSON.stringify({ error: (err as Error).message }));
      else res.destroy();
    });
  });

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (loopbackOnly && !hostAllowed(req.headers.host, port)) {
      send(res, 421, 'text/plain; charset=utf-8', 'this dashboard answers to 127.0.0.1 and localhost only\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      send(res, 405, 'text/plain; charset=utf-8', 'GET only\n');
      return;
    }
    const url = new URL(req.url ?? '/', 'http://dashboard');
    if (url.pathname === '/api/view') {
      const ns = url.searchParams.get('namespace') || undefined;
      if (ns !== undefined && !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(ns)) {
        send(res, 400, 'application/json', JSON.stringify({ error: `"${ns}" is not a namespace name` }));
        return;
      }
      try {
        const view = await inputs.view(ns);
        send(res, 200, 'application/json', JSON.stringify({ refreshMs: inputs.refreshMs, ...view }));
      } catch (err) {
        // Prometheus down, a lab gone: the page shows the line and keeps what it had.
        const e = err as VizError;
        const status = e instanceof VizError ? (e.code === 'EPROMETHEUS' || e.code === 'ENOLAB' ? 502 : 422) : 500;
        send(res, status, 'application/json', JSON.stringify({ refreshMs: inputs.refreshMs, error: e.message, code: e.code ?? null }));
      }
      return;
    }
    if (url.pathname === '/api/tap') {
      // A HEAD would open taps for nothing.
      if (req.method !== 'GET') {
        res.setHeader('allow', 'GET');
        send(res, 405, 'text/plain; charset=utf-8', 'GET only\n');
      } else if (inputs.liveTap) inputs.liveTap(req, res, url);
      else send(res, 404, 'application/json', JSON.stringify({ error: 'this dashboard serves no live tap' }));
      return;
    }
    if (url.pathname === '/favicon.ico') {
      res.writeHead(204, HEADERS).end();
      return;
    }
    const asset = assets.get(url.pathname);
    if (!asset) {
      send(res, 404, 'text/plain; charset=utf-8', 'not found\n');
      return;
    }
    send(res, 200, asset.type, asset.body, req.method === 'HEAD');
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new VizError(
          err.code === 'EADDRINUSE' ? 'EADDRINUSE' : 'ECONFIG',
          err.code === 'EADDRINUSE' ? `--listen ${inputs.host}:${inputs.port}: the port is in use; choose another (port 0 picks a free one)` : `--listen ${inputs.host}:${inputs.port}: ${err.message}`,
          { cause: err },
        ),
      ),
    );
    server.listen(inputs.port, inputs.host, () => resolve());
  });
  port = (server.address() as AddressInfo).port;
  const host = inputs.host.includes(':') && !inputs.host.startsWith('[') ? `[${inputs.host}]` : inputs.host;
  return {
    url: `http://${host}:${port}/`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** The Host header names this server on loopback (not a name that resolved here by rebinding). */
export function hostAllowed(header: string | undefined, port: number): boolean {
  if (!header) return false;
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(header.toLowerCase());
  if (!m) return false;
  return (LOOPBACK.has(m[1]!) || /^127\.\d+\.\d+\.\d+$/.test(m[1]!)) && (m[2] === undefined ? port === 80 : Number(m[2]) === port);
}

function send(res: http.ServerResponse, status: number, type: string, body: string | Buffer, headOnly = false): void {
  res.writeHead(status, { ...HEADERS, 'content-type': type, 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
  res.end(headOnly ? undefined : body);
}
