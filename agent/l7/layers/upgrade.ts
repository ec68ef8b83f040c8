// The end of an Upgrade (WebSocket) on the outbound side: routed like a request (match, split, path rewrite,
// endpoint), then the request head is replayed to the endpoint over a tunnel of its own and both sides are carried
// as opaque bytes. Refusals before that are plain HTTP/1.1 answers on the client's connection, which then closes.
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import { splice } from '../../io/splice.js';
import type { Responder } from '../exchange.js';
import type { Headers } from '../headers.js';
import { local } from '../relay.js';
import { DONE, GRPC, type Handler, type Layer, type LayerInputs } from './call.js';

/** A rule that redirects (or failed to compile) cannot carry an Upgrade. */
export const plainRule: Layer = (next) => (call) => {
  if (call.matched?.rule.redirect) {
    local(call.res, call.req, call.rec, 500, GRPC.INTERNAL, 'the matching rule cannot carry an Upgrade');
    return DONE;
  }
  return next(call);
};

/** Answers on the raw connection of an Upgrade request: a status line and close. */
export class UpgradeRefusal implements Responder {
  headSent = false;
  closed = false;

  constructor(private readonly socket: Duplex) {}

  head(status: number, _headers: Headers, _endStream: boolean): void {
    if (this.headSent) return;
    this.headSent = true;
    this.socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
  }

  write(): boolean {
    return true;
  }

  end(): void {}

  reset(): void {
    this.socket.destroy();
  }

  onDrain(): void {}

  onClose(): void {}
}

/** The terminal of the upgrade stack: replays the head over a new tunnel, then splices both sides. */
export function tunnel(inputs: Pick<LayerInputs, 'upstreams'>, socket: Duplex, raw: readonly string[], head: Buffer): Handler {
  return async (call) => {
    const { rec, req } = call;
    const picked = call.picked!;
    const started = performance.now();
    let up: Duplex;
    try {
      up = await inputs.upstreams.tunnel(call.ctx.src, picked.endpoint);
    } catch (err) {
      picked.done({ latencyMs: performance.now() - started, outcome: 'connect-failure' });
      return local(call.res, req, rec, 503, GRPC.UNAVAILABLE, `upgrade: ${(err as Error).message}`);
    }
    up.on('error', () => undefined);
    let text = `${req.method} ${call.upstream!.path} HTTP/1.1\r\n`;
    for (let i = 0; i + 1 < raw.length; i += 2) text += `${raw[i]}: ${raw[i + 1]}\r\n`;
    up.write(Buffer.from(`${text}\r\n`, 'latin1'));
    if (head.length > 0) up.write(head);
    // The first bytes back carry the status line: read them before handing both sides to splice.
    const first = await firstChunk(up);
    picked.done({ latencyMs: performance.now() - started, outcome: first ? 'ok' : '5xx' });
    if (!first) {
      up.destroy();
      return local(call.res, req, rec, 503, GRPC.UNAVAILABLE, 'upstream closed before answering the Upgrade');
    }
    rec.status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(first.toString('latin1', 0, 16))?.[1] ?? 0);
    rec.responseBytes = first.length;
    socket.write(first);
    const outcome = await splice(socket, up, { downToUp: () => undefined, upToDown: (n) => (rec.responseBytes += n) });
    if (outcome.error) rec.error = outcome.error.message;
  };
}

/** The first chunk a stream sends, with the stream left paused; undefined if it ends first. */
export function firstChunk(s: Duplex): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const onData = (chunk: Buffer) => {
      s.pause();
      cleanup();
      resolve(chunk);
    };
    const onGone = () => {
      cleanup();
      resolve(undefined);
    };
    const cleanup = () => {
      s.off('data', onData);
      s.off('end', onGone);
      s.off('close', onGone);
    };
    s.on('data', onData);
    s.once('end', onGone);
    s.once('close', onGone);
  });
}
