import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { RequestListener } from 'node:http';
import type { Config } from '../config.js';
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
export function createServer(app: RequestListener, config: Pick<Config, 'HTTP_HEADERS_TIMEOUT_MS' | 'HTTP_REQUEST_TIMEOUT_MS' | 'MAX_CONNECTIONS'>): http.Server {
  const server = http.createServer(
    {
      headersTimeout: config.HTTP_HEADERS_TIMEOUT_MS,
      requestTimeout: config.HTTP_REQUEST_TIMEOUT_MS,
      connectionsCheckingInterval: Math.max(50, Math.min(1_000, Math.floor(config.HTTP_HEADERS_TIMEOUT_MS / 4))),
    },
    app,
  );
  server.maxConnections = config.MAX_CONNECTIONS > 0 ? config.MAX_CONNECTIONS : defaultMaxConnections();
  // Upgrade requests (`GET /api/ws`) go through the app too.
  routeUpgrades(server, app);
  return server;
}

/** Listen on `port`/`host`; resolves once listening. */
export function listen(app: RequestListener, config: Pick<Config, 'PORT' | 'HOST' | 'HTTP_HEADERS_TIMEOUT_MS' | 'HTTP_REQUEST_TIMEOUT_MS' | 'MAX_CONNECTIONS'>, port = config.PORT, host = config.HOST): Promise<http.Server> {
  const server = createServer(app, config);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
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
