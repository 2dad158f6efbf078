import type { Server } from 'node:http';
import type { Logger } from 'pino';
import { createApp } from './app.js';
import { createWorkerApp } from './health.js';
import { ConfigError, loadConfig, type Config } from './config.js';
import { createContext, type AppContext } from './context.js';
import { DataDirInUseError, DataDirUnreachableError, startEmbeddedPostgres, type EmbeddedPostgres } from './db/embedded.js';
import { runMigrations } from './db/migrate.js';
import { createDatabase } from './db/pool.js';
import { createLogger } from './logger.js';
import { loadCatalogue, type Catalogue } from './models/catalogue.js';
import { checkProviderKeys, providerFactories } from './models/providers.js';
import { listen } from './http/server.js';

/**
 * Start-up: configuration, database (embedded unless DATABASE_URL), migrations, recovery of runs a dead
 * process left behind, the HTTP server, and a graceful shutdown on SIGTERM/SIGINT.
 */
export interface Running {
  ctx: AppContext;
  server: Server;
  url: string;
  shutdown(reason?: string): Promise<void>;
}

export async function start(config: Config, baseLog: Logger, catalogue?: Catalogue): Promise<Running> {
  // Every line says which role wrote it: in a fleet the logs of N processes end up side by side.
  const log = baseLog.child({ role: config.PROCESS_ROLE });
  let embedded: EmbeddedPostgres | null = null;
  let url = config.DATABASE_URL;
  if (!url) {
    log.info({ dataDir: config.DATA_DIR, port: config.EMBEDDED_PG_PORT }, 'starting embedded Postgres');
    embedded = await startEmbeddedPostgres({
      dataDir: config.DATA_DIR,
      port: config.EMBEDDED_PG_PORT,
      onLog: (line) => log.debug({ postgres: line }, 'postgres'),
      onOrphan: ({ pid, sluicePid }) => log.warn({ pid, deadSluicePid: sluicePid }, 'stopping the embedded Postgres a dead Sluice left running'),
    });
    url = embedded.connectionString;
  }
  const database = createDatabase(url, { max: config.DB_POOL_MAX, connectTimeoutMs: config.DB_CONNECT_TIMEOUT_MS, log });
  let ctx: AppContext;
  let server: Server;
  try {
    await runMigrations(database);
    ctx = createContext({ config, database, log, catalogue });
    // With an embedded cluster we are its only process, so every live run in it is an orphan of our last life.
    const recovered = await ctx.maintenance.recoverOrphans(embedded !== null);
    if (recovered > 0) log.warn({ recovered }, 'interrupted and refunded runs left by a previous process');
    await ctx.jobs.sweep(embedded !== null);
    await ctx.bridge.start();
    ctx.maintenance.start();
    // Listening to the bus first, so no `run:queued` between the first claim and the LISTEN is missed.
    ctx.executor.startClaiming();
    server = await listen(config.PROCESS_ROLE === 'worker' ? createWorkerApp(ctx) : createApp(ctx), config);
  } catch (err) {
    // Leave nothing running behind a failed start (the embedded Postgres would outlive us).
    await bounded(log, 'closing the database pool', 5_000, database.close());
    if (embedded) await bounded(log, 'stopping the embedded Postgres', 45_000, embedded.stop());
    throw err;
  }
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : config.PORT;
  const base = `http://${config.HOST === '0.0.0.0' ? 'localhost' : config.HOST}:${port}`;
  log.info(
    { url: base, database: embedded ? 'embedded' : 'DATABASE_URL', slots: config.PROCESS_ROLE === 'api' ? 0 : config.MAX_CONCURRENT_RUNS, models: ctx.models.list().map((m) => m.name), payments: ctx.payments.name },
    'sluice is listening',
  );

  let stopping: Promise<void> | null = null;
  /**
   * Graceful, and bounded even with a dead database: every step gets a deadline, so a hung connection or a Postgres
   * that died under us costs seconds, not a process that never exits. Runs still going after the grace period are
   * interrupted; those whose end cannot be recorded are left to recovery at the next start.
   */
  async function shutdown(reason = 'shutdown'): Promise<void> {
    stopping ??= (async () => {
      log.info({ reason, graceMs: config.SHUTDOWN_GRACE_MS }, 'shutting down: no new work; letting running work finish');
      server.close();
      const drained = await bounded(log, 'draining runs', config.SHUTDOWN_GRACE_MS + 15_000, ctx.executor.drain(config.SHUTDOWN_GRACE_MS));
      if (drained && drained.interrupted > 0) log.warn({ interrupted: drained.interrupted }, 'interrupted and refunded runs still going after the grace period');
      await bounded(log, 'waiting for job evaluations', 5_000, ctx.jobs.drain());
      await bounded(log, 'stopping maintenance', 5_000, ctx.maintenance.stop());
      await bounded(log, 'stopping the bus bridge', 2_000, ctx.bridge.stop());
      // WebSockets are not the server's HTTP connections: each is closed with 1001 (going away), so its client
      // reconnects elsewhere; they stayed open through the drain, so their readers got the runs' final events.
      await bounded(log, 'closing WebSockets', 5_000, ctx.sockets.closeAll('server shutting down'));
      server.closeAllConnections();
      // The slots of the streams just closed, given back now: their clients reconnect at once, and are not refused.
      await bounded(log, 'giving back stream slots', 2_000, ctx.limits.close());
      await bounded(log, 'closing the database pool', 5_000, database.close());
      if (embedded) await bounded(log, 'stopping the embedded Postgres', 45_000, embedded.stop());
      log.info('stopped');
    })();
    return stopping;
  }
  return { ctx, server, url: base, shutdown };
}

/** `p`'s value, or undefined once `ms` have passed (logged): one hung step must not hold shutdown for ever. */
async function bounded<T>(log: Logger, what: string, ms: number, p: Promise<T>): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => {
      log.warn({ ms }, `${what} did not finish in time; going on`);
      resolve(undefined);
    }, ms);
  });
  try {
    return await Promise.race([p.catch((err: unknown) => void log.warn({ err }, `${what} failed`)), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function main() {
  let config: Config;
  let catalogue: Catalogue;
  try {
    config = loadConfig();
    // Before anything starts: a bad catalogue is a configuration mistake, named like any other.
    catalogue = loadCatalogue(config, Object.keys(providerFactories));
    checkProviderKeys(catalogue, process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`sluice: ${err.message}`);
      process.exit(1);
    }
    throw err;
  }
  // Coloured one-line logs on a terminal, JSON lines otherwise (LOG_FORMAT); secrets redacted either way.
  const log = createLogger(config);
  if (config.TRUST_PROXY === true) {
    log.warn('TRUST_PROXY=true believes every X-Forwarded-For hop, so any client can choose its own IP; set a hop count or the proxy addresses instead');
  }
  let running: Running;
  try {
    running = await start(config, log, catalogue);
  } catch (err) {
    if (err instanceof DataDirUnreachableError || err instanceof DataDirInUseError) {
      console.error(`sluice: ${err.message}`);
    } else {
      log.fatal({ err }, 'start-up failed');
    }
    process.exit(1);
  }
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    if (++signals > 1) {
      log.warn({ signal: sig }, 'second signal: exiting now');
      process.exit(1);
    }
    running.shutdown(sig).then(
      () => process.exit(0),
      (err) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

// Run when executed directly (node dist/main.js, tsx src/main.ts), not when imported by tests.
const entry = process.argv[1] ?? '';
if (/main\.(ts|js)$/.test(entry)) void main();
