import { randomBytes } from 'node:crypto';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino, type Logger } from 'pino';
import supertest from 'supertest';
import { inject } from 'vitest';
import { createApp } from '../../src/app.js';
import { loadConfig, type Config } from '../../src/config.js';
import { createContext, type AppContext, type ContextOptions } from '../../src/context.js';
import { ensureDatabase } from '../../src/db/embedded.js';
import { createDatabase } from '../../src/db/pool.js';

export interface TestServer {
  ctx: AppContext;
  app: ReturnType<typeof createApp>;
  http: ReturnType<typeof supertest>;
  /** Base URL of a real listening socket (for SSE clients). */
  url: string;
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

/** A new database cloned from the migrated template, on the test cluster. */
export async function freshDatabaseUrl(): Promise<string> {
  const admin = inject('pgAdminUrl');
  const name = `t_${randomBytes(6).toString('hex')}`;
  await ensureDatabase(admin, name, inject('pgTemplate'));
  return admin.replace(/\/[^/?]+(\?|$)/, `/${name}$1`);
}

/** A whole server on its own fresh database: context, app, supertest and a real socket. */
export async function startTestServer(
  overrides: Partial<Config> = {},
  opts: Partial<Pick<ContextOptions, 'ai' | 'payments' | 'env'>> & { databaseUrl?: string; /** Listen here (default: any free port). */ port?: number; log?: Logger } = {},
): Promise<TestServer> {
  const databaseUrl = opts.databaseUrl ?? (await freshDatabaseUrl());
  const config = loadConfig({}, { ...testDefaults, ...overrides, DATABASE_URL: databaseUrl });
  const log = opts.log ?? pino({ level: process.env.TEST_LOG_LEVEL ?? config.LOG_LEVEL });
  const database = createDatabase(databaseUrl, { max: 10 });
  const ctx = createContext({ config, database, log, ai: opts.ai, payments: opts.payments, env: opts.env });
  await ctx.bridge.start();
  const app = createApp(ctx);
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(opts.port ?? 0, '127.0.0.1', () => resolve(s));
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  let closed = false;
  return {
    ctx,
    app,
    http: supertest(app),
    url,
    sibling: (o = {}) => startTestServer({ ...overrides, ...o }, { ...opts, port: undefined, log: undefined, databaseUrl }),
    async close() {
      if (closed) return;
      closed = true;
      await ctx.executor.drain(0);
      await ctx.jobs.drain();
      await ctx.maintenance.stop();
      await ctx.bridge.stop();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await database.close();
    },
  };
}
