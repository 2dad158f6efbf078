import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { createSafeLogger } from '../../src/log-safety.js';
import supertest from 'supertest';
import { afterAll } from 'vitest';
import { createApp } from '../../src/app.js';
import { loadConfig, type Config } from '../../src/config.js';
import { createContext, type AppContext, type ContextOptions } from '../../src/context.js';
import { createDatabase } from '../../src/db/pool.js';
import { listen } from '../../src/http/server.js';
import { freshDatabaseUrl } from './db.js';

export interface TestServer {
  ctx: AppContext;
  app: ReturnType<typeof createApp>;
  http: ReturnType<typeof supertest>;
  /** Base URL of a real listening socket (for SSE clients). */
  url: string;
  /** The listening HTTP server. */
  server: Server;
  /** Another context on the same database: a second process, or the same server after a restart. */
  sibling(overrides?: Partial<Config>): Promise<TestServer>;
  close(): Promise<void>;
}

/** Fast defaults for tests; each test file may override any of them. */
export const testDefaults: Partial<Config> = {
  NODE_ENV: 'test',
  LOG_LEVEL: 'silent',
  STUB_TOKEN_DELAY_MS: 5,
  STUB_OUTPUT_TOKENS: 12,
  EVENT_FLUSH_MS: 10,
  SSE_POLL_MS: 50,
  SSE_PING_MS: 15_000,
  SWEEP_INTERVAL_S: 3600,
  // Every test file creates its sessions and jobs from 127.0.0.1; the limits have their own tests.
  SESSION_CREATE_RATE_LIMIT: 0,
  JOB_CREATE_RATE_LIMIT: 0,
};

/** A whole server on its own fresh database: context, app, supertest and a real socket. */
export async function startTestServer(
  overrides: Partial<Config> = {},
  opts: Partial<Pick<ContextOptions, 'ai' | 'payments' | 'env'>> & { databaseUrl?: string; /** Listen here (default: any free port). */ port?: number; log?: Logger } = {},
): Promise<TestServer> {
  const databaseUrl = opts.databaseUrl ?? (await freshDatabaseUrl());
  const config = loadConfig({}, { ...testDefaults, ...overrides, DATABASE_URL: databaseUrl });
  const log = opts.log ?? createSafeLogger({ level: process.env.TEST_LOG_LEVEL ?? config.LOG_LEVEL });
  const database = createDatabase(databaseUrl, { max: 10, connectTimeoutMs: config.DB_CONNECT_TIMEOUT_MS, log });
  const ctx = createContext({ config, database, log, ai: opts.ai, payments: opts.payments, env: opts.env });
  await ctx.bridge.start();
  ctx.executor.startClaiming();
  const app = createApp(ctx);
  const server: Server = await listen(app, config, opts.port ?? 0, '127.0.0.1');
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  let closed = false;
  return {
    ctx,
    app,
    // Through the real server (its timeouts, header limits and parser refusals), not one supertest would make.
    http: supertest(server),
    url,
    server,
    sibling: (o = {}) => startTestServer({ ...overrides, ...o }, { ...opts, port: undefined, log: undefined, databaseUrl }),
    async close() {
      if (closed) return;
      closed = true;
      await ctx.executor.drain(0);
      await ctx.jobs.drain();
      await ctx.maintenance.stop();
      await ctx.bridge.stop();
      await ctx.sockets.closeAll('server shutting down', 500);
      server.closeAllConnections();
      await ctx.limits.close().catch(() => undefined);
      await new Promise((r) => server.close(r));
      await database.close();
    },
  };
}

/**
 * For a test file that starts servers as it goes: `server(...)` starts one (as `startTestServer`), `track` adopts
 * one started otherwise (a sibling); all are closed after the file.
 */
export function useTestServers() {
  const servers: TestServer[] = [];
  afterAll(async () => {
    for (const s of servers) await s.close();
  });
  const track = (t: TestServer) => {
    servers.push(t);
    return t;
  };
  return { track, server: async (...args: Parameters<typeof startTestServer>) => track(await startTestServer(...args)) };
}
