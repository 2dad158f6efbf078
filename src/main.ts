import type { Server } from 'node:http';
import type { Logger } from 'pino';
import { createApp } from './app.js';
import { ConfigError, loadConfig, type Config } from './config.js';
import { createContext, type AppContext } from './context.js';
import { DataDirUnreachableError, startEmbeddedPostgres, type EmbeddedPostgres } from './db/embedded.js';
import { runMigrations } from './db/migrate.js';
import { createDatabase } from './db/pool.js';
import { createLogger } from './logger.js';
import { loadCatalogue, type Catalogue } from './models/catalogue.js';
import { checkProviderKeys, providerFactories } from './models/providers.js';

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

export async function start(config: Config, log: Logger, catalogue?: Catalogue): Promise<Running> {
  let embedded: EmbeddedPostgres | null = null;
  let url = config.DATABASE_URL;
  if (!url) {
    log.info({ dataDir: config.DATA_DIR, port: config.EMBEDDED_PG_PORT }, 'starting embedded Postgres');
    embedded = await startEmbeddedPostgres({
      dataDir: config.DATA_DIR,
      port: config.EMBEDDED_PG_PORT,
      onLog: (line) => log.debug({ postgres: line }, 'postgres'),
    });
    url = embedded.connectionString;
  }
  const database = createDatabase(url, { max: config.DB_POOL_MAX });
  await runMigrations(database.db);
  const ctx = createContext({ config, database, log, catalogue });
  // With an embedded cluster we are its only process, so every live run in it is an orphan of our last life.
  const recovered = await ctx.maintenance.recoverOrphans(embedded !== null);
  if (recovered > 0) log.warn({ recovered }, 'interrupted and refunded runs left by a previous process');
  await ctx.jobs.sweep(embedded !== null);
  await ctx.bridge.start();
  ctx.maintenance.start();

  const app = createApp(ctx);
  const server = await new Promise<Server>((resolve, reject) => {
    const s = app.listen(config.PORT, config.HOST, () => resolve(s));
    s.once('error', reject);
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : config.PORT;
  const base = `http://${config.HOST === '0.0.0.0' ? 'localhost' : config.HOST}:${port}`;
  log.info({ url: base, database: embedded ? 'embedded' : 'DATABASE_URL', models: ctx.models.list().map((m) => m.name), payments: ctx.payments.name }, 'sluice is listening');

  let stopping: Promise<void> | null = null;
  async function shutdown(reason = 'shutdown'): Promise<void> {
    stopping ??= (async () => {
      log.info({ reason, graceMs: config.SHUTDOWN_GRACE_MS }, 'shutting down: no new work; letting running work finish');
      server.close();
      const { interrupted } = await ctx.executor.drain(config.SHUTDOWN_GRACE_MS);
      if (interrupted > 0) log.warn({ interrupted }, 'interrupted and refunded runs still going after the grace period');
      await ctx.jobs.drain();
      await ctx.maintenance.stop();
      await ctx.bridge.stop();
      server.closeAllConnections();
      await database.close();
      if (embedded) await embedded.stop();
      log.info('stopped');
    })();
    return stopping;
  }
  return { ctx, server, url: base, shutdown };
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
  // Coloured one-line logs on a terminal, JSON lines otherwise (LOG_FORMAT).
  const log = createLogger(config);
  let running: Running;
  try {
    running = await start(config, log, catalogue);
  } catch (err) {
    if (err instanceof DataDirUnreachableError) {
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
