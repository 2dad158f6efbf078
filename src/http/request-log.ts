import { randomUUID } from 'node:crypto';
import type { Express, Request, RequestHandler, Response } from 'express';
import type { Logger } from 'pino';
import { requestLineRedaction, serializeError } from '../log-safety.js';

declare module 'http' {
  interface IncomingMessage {
    /** The request's id (`x-request-id`), on every line logged about it. */
    id: string;
    /** A logger whose lines carry the request (made on first use). */
    log: Logger;
  }
}

/** Requests not worth a line: probes, scrapes, the console's static files. */
const quiet = (url: string | undefined) => url === '/api/healthz' || url === '/metrics' || url?.startsWith('/console/') === true;

/**
 * The request as it is logged: pino's standard request fields (`id method url query params headers remoteAddress
 * remotePort`), the URL without the `?access_token=` a browser's EventSource must put there. Credentials in the
 * headers are redacted by the logger itself (log-safety.ts), like on every line.
 */
function requestFields(req: Request, remote: { address?: string; port?: number }) {
  return {
    id: req.id,
    method: req.method,
    url: req.originalUrl?.replace(/([?&]access_token=)[^&]*/, '$1[redacted]'),
    query: req.query,
    // As the logger saw it before routing: route parameters are not known yet when a request arrives.
    params: {},
    headers: req.headers,
    remoteAddress: remote.address,
    remotePort: remote.port,
  };
}

/**
 * One line per request when it completes (or its client goes), exactly the line pino-http wrote — `req`, `res`
 * (the status only), `responseTime`, `request completed | aborted | errored` at info, warn (4xx) or error (5xx) —
 * and `req.log`, a logger that carries the request, for a handler that has something to say about it.
 *
 * Why not pino-http itself: it makes a child logger per request as the request arrives, serialising the request
 * into it, and that child lives as long as the request — for an SSE stream, hours. Measured at 5,000 idle streams,
 * that child (its bindings, its bound level methods, their shapes) was the largest thing a stream held of ours.
 * Here the line is built once, when the request ends, and `req.log` is a getter on the app's request prototype that
 * makes the child only when a handler asks for it: an idle stream holds two listeners and a start time.
 */
export function requestLogging(app: Express, log: Logger): RequestHandler {
  // The line is redacted here, as the logger's own redaction would (log-safety.ts), and written by a child that
  // redacts nothing more: pino's redactor was a tenth of an accepted request's CPU. Every other line keeps it.
  const redact = requestLineRedaction();
  const lineLog = log.child({}, { redact: { paths: [] } });
  const LOG = Symbol('log');
  const REMOTE = Symbol('remote');
  const START = Symbol('start');
  type Logged = Request & { [LOG]?: Logger; [REMOTE]?: { address?: string; port?: number }; [START]?: number };
  Object.defineProperty(app.request, 'log', {
    configurable: true,
    get(this: Logged) {
      return (this[LOG] ??= log.child({ req: requestFields(this, this[REMOTE] ?? {}) }));
    },
  });
  // 'close' comes after 'finish', or alone when the client went first: one listener sees both ends. One function
  // for every request (`this` is the response; its request and start time are on it), not a closure each: an SSE
  // stream holds its listener for as long as it lasts.
  function completed(this: Response) {
    const req = this.req as Logged;
    const res = this;
    const responseTime = Date.now() - req[START]!;
    const fields = { req: redact(requestFields(req, req[REMOTE]!)), res: { statusCode: res.statusCode } };
    if (res.statusCode >= 500) {
      lineLog.error({ ...fields, err: serializeError(new Error(`failed with status code ${res.statusCode}`)), responseTime }, 'request errored');
      return;
    }
    const level = res.statusCode >= 400 ? 'warn' : 'info';
    // An upgraded request (101: a WebSocket) completes when its socket closes; its response is never ended.
    const done = res.statusCode === 101 || (!req.readableAborted && res.writableEnded);
    lineLog[level]({ ...fields, responseTime }, done ? 'request completed' : 'request aborted');
  }
  return (req, res, next) => {
    (req as Logged)[START] = Date.now();
    const given = req.headers['x-request-id'];
    req.id = typeof given === 'string' && /^[\w.-]{1,100}$/.test(given) ? given : randomUUID();
    res.setHeader('x-request-id', req.id);
    // Read now: once a long stream's socket has closed, its peer's address is gone.
    (req as Logged)[REMOTE] = { address: req.socket.remoteAddress, port: req.socket.remotePort };
    if (quiet(req.url)) return next();
    // Node emits a response's 'close' once: `on`, without `once`'s wrapper and its state.
    res.on('close', completed);
    next();
  };
}
