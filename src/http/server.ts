import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { RequestListener } from 'node:http';
import type { Config } from '../config.js';
import { answerClientError } from './client-error.js';
import { routeUpgrades } from './upgrade.js';

/**
 * The HTTP server, bounded against slow and many clients. Each connection costs a file descriptor, and so does
 * each database connection: a flood of connections that never finish their request (slowloris) used to take every
 * descriptor, until the pool itself failed with EMFILE. So:
 *
 * - `headersTimeout` / `requestTimeout`: a client has this long to send its headers / whole request, then gets
 *   408 and is disconnected (checked every `connectionsCheckingInterval`). Neither limits a response: an SSE
 *   stream, once its request is in, lasts as long as it needs.
 * - `maxConnections`: past it, new connections are closed at once; the descriptors that remain keep the database
 *   and the streams already open working. Its default leaves room under the process's file limit.
 */
export function createServer(
  app: RequestListener,
  config: Pick<Config, 'HTTP_HEADERS_TIMEOUT_MS' | 'HTTP_REQUEST_TIMEOUT_MS' | 'MAX_CONNECTIONS'>,
  prototypes: AppPrototypes | undefined = prototypesOf(app),
): http.Server {
  const classes = prototypes ? bornWith(prototypes) : {};
  const server = http.createServer(
    {
      ...classes,
      headersTimeout: config.HTTP_HEADERS_TIMEOUT_MS,
      requestTimeout: config.HTTP_REQUEST_TIMEOUT_MS,
      connectionsCheckingInterval: Math.max(50, Math.min(1_000, Math.floor(config.HTTP_HEADERS_TIMEOUT_MS / 4))),
    },
    app,
  );
  server.maxConnections = config.MAX_CONNECTIONS > 0 ? config.MAX_CONNECTIONS : defaultMaxConnections();
  // What the parser refuses (headers too large, malformed, too slow) is answered in the envelope too.
  server.on('clientError', answerClientError);
  // Upgrade requests (`GET /api/ws`) go through the app too.
  routeUpgrades(server, app, classes.ServerResponse);
  return server;
}

/**
 * Listen on `port`/`host`; resolves once listening. `prototypes`: the Express app behind `app` (its `request` and
 * `response` become the server's classes' prototypes: see `bornWith`), when `app` is a wrapper around it.
 */
export function listen(
  app: RequestListener,
  config: Pick<Config, 'PORT' | 'HOST' | 'HTTP_HEADERS_TIMEOUT_MS' | 'HTTP_REQUEST_TIMEOUT_MS' | 'MAX_CONNECTIONS'>,
  port = config.PORT,
  host = config.HOST,
  prototypes?: AppPrototypes,
): Promise<http.Server> {
  const server = createServer(app, config, prototypes ?? prototypesOf(app));
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

/** What Express gives each request and response as its prototype: `app.request`, `app.response` (writable). */
export interface AppPrototypes {
  request: object;
  response: object;
}

function prototypesOf(app: RequestListener): AppPrototypes | undefined {
  const a = app as unknown as Partial<AppPrototypes>;
  return typeof a.request === 'object' && typeof a.response === 'object' ? (a as AppPrototypes) : undefined;
}

type NodeClasses = Pick<http.ServerOptions, 'IncomingMessage' | 'ServerResponse'>;
const classesOf = new WeakMap<AppPrototypes, NodeClasses>();

/**
 * Node's request and response classes (its `IncomingMessage` and `ServerResponse` options), made so that their
 * instances are born with the app's prototypes.
 *
 * Why: Express gives every request and response its prototypes as they arrive, `Object.setPrototypeOf(req,
 * app.request)`. V8 cannot share the shape of an object whose prototype was changed: the map that change yields
 * stands outside V8's tree of map transitions, so each property added afterwards — the router's `next`, `baseUrl`,
 * `params`, `route`, our `id`, `res.locals` — makes a fresh map for that one object. Every request and response had
 * hidden classes of their own (a map and a descriptor array each: 1.5 KB per request, the largest thing an idle SSE
 * stream held of ours), and every property access on them missed V8's inline caches.
 *
 * So: subclasses of Node's classes (a subclass, not a function that calls Node's: V8 sizes a subclass's instances
 * from its parent's constructor, so Node's fields stay inside the object; a plain function's instances got them all
 * out of line, and V8 turned them into dictionaries), whose prototypes inherit from Express's, and which become the
 * app's `request` and `response`. Express's `setPrototypeOf` then changes nothing (V8 returns at once for the
 * prototype an object already has), and every request shares the shapes of the ones before it. The instances are
 * Node's own, built by its constructors; they are still `instanceof` Node's classes and see every method of
 * Express's. Once per app (a second server of the same app reuses them).
 */
function bornWith(p: AppPrototypes): NodeClasses {
  let classes = classesOf.get(p);
  if (classes) return classes;
  class Request extends http.IncomingMessage {}
  class Response extends http.ServerResponse {}
  Object.setPrototypeOf(Request.prototype, p.request);
  Object.setPrototypeOf(Response.prototype, p.response);
  p.request = Request.prototype;
  p.response = Response.prototype;
  classes = { IncomingMessage: Request, ServerResponse: Response as unknown as typeof http.ServerResponse };
  classesOf.set(p, classes);
  return classes;
}

/** Descriptors kept back from connections: the database pool, the bus listener, the embedded Postgres's pipes, files. */
const RESERVED_FDS = 256;

/** 10 000 connections, or fewer when the soft limit on open files (`ulimit -n`) would not leave room for the rest. */
export function defaultMaxConnections(): number {
  let limit = 1024;
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (m) limit = m[1] === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(m[1]);
  } catch {
    // not Linux: assume the common default
  }
  return Math.max(64, Math.min(10_000, limit - RESERVED_FDS));
}
