import pg from 'pg';
import type { Logger } from 'pino';
import { drizzle, NodePgSession, NodePgTransaction, type NodePgDatabase } from 'drizzle-orm/node-postgres';
import type { PgDialect } from 'drizzle-orm/pg-core';
import * as schema from './schema.js';

export type Db = NodePgDatabase<typeof schema>;
/** A transaction handle: the same query API as `Db`. */
export type Tx = Parameters<Parameters<Db['transaction']>[0]>[0];
export type DbOrTx = Db | Tx;

export interface Database {
  db: Db;
  pool: pg.Pool;
  /** The connection string (the bus bridge opens its own LISTEN connection with it). */
  url: string;
  /** End the pool: resolves once every client is given back and closed (so never while one is leaked). */
  close(): Promise<void>;
  /** Clients open, idle (so `total − idle` are checked out), and requests waiting for one. */
  stats(): { total: number; idle: number; waiting: number };
}

export interface DatabaseOptions {
  /** Connections in the pool (default 10). */
  max?: number;
  /** How long a query waits for a connection (a new one, or a free one of a full pool) before failing (default 5000). */
  connectTimeoutMs?: number;
  /** Where lost connections are reported (default: nowhere). */
  log?: Logger;
}

// bigint (int8) and numeric come back as strings by default; sats fit in a double, and sums are small.
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));
pg.types.setTypeParser(pg.types.builtins.NUMERIC, (v) => Number(v));

/**
 * The pool, made safe for a database that fails (DESIGN rule 8):
 *
 * - **Every client has an error path.** pg emits `'error'` on a client whose connection drops (a restart,
 *   `pg_terminate_backend`, a network blip); pg-pool listens only while the client is idle and removes its
 *   listener while the client is checked out, so an error then would be unhandled and kill the process. We attach
 *   our own listener to every client the moment it connects, for its whole life. The query that was running gets
 *   the error as a rejection; pg-pool drops a client that is no longer queryable when it is given back.
 * - **Every transaction gives its client back** (see `transactionOn`), and a client whose BEGIN, COMMIT or
 *   ROLLBACK failed is destroyed rather than reused.
 * - **Nothing waits for ever for a connection:** `connectionTimeoutMillis` bounds both a new connection and a wait
 *   for a free one, so a dead server or an exhausted pool is an error (503 to HTTP), not a hang.
 */
export function createDatabase(connectionString: string, opts: DatabaseOptions = {}): Database {
  const pool = new pg.Pool({
    connectionString,
    max: opts.max ?? 10,
    connectionTimeoutMillis: opts.connectTimeoutMs ?? 5_000,
    // A peer that vanished without a FIN (a dead host, a cut network) is found by TCP keepalive.
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
  });
  const log = opts.log;
  const onClientError = (err: Error) => log?.warn({ err }, 'a database connection failed; it will be replaced');
  pool.on('connect', (client) => client.on('error', onClientError));
  // pg-pool re-emits an idle client's error on the pool, where an unhandled 'error' would throw; the client's own
  // listener above has already reported it.
  pool.on('error', () => {});
  const db = drizzle({ client: pool, schema });
  db.transaction = transactionOn(pool, db);
  return {
    db,
    pool,
    url: connectionString,
    close: () => pool.end(),
    stats: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }),
  };
}

/**
 * `db.transaction` with a client that is always given back. drizzle's own runs BEGIN outside its try/finally, so a
 * failing BEGIN (a connection that died while idle in the pool) leaked the client for good; and a failing ROLLBACK
 * replaced the error that caused it. Here: connect, then everything in one try/finally that releases the client,
 * destroying it if BEGIN, COMMIT or ROLLBACK failed (its connection state is unknown). An error thrown by `fn`
 * whose ROLLBACK succeeded keeps the client: the connection is fine.
 */
function transactionOn(pool: pg.Pool, db: Db): Db['transaction'] {
  // What drizzle builds its own transaction from: the dialect and the relational schema of `db`.
  const dialect = (db as unknown as { dialect: PgDialect }).dialect;
  const relational = { fullSchema: db._.fullSchema, schema: db._.schema!, tableNamesMap: db._.tableNamesMap };
  return async (fn, config) => {
    const client = await pool.connect();
    let fnFailed = false;
    let broken: Error | undefined;
    try {
      const tx = new NodePgTransaction<typeof schema, typeof relational.schema>(dialect, new NodePgSession(client, dialect, relational), relational);
      await client.query('begin');
      if (config) await tx.setTransaction(config);
      let result: Awaited<ReturnType<typeof fn>>;
      try {
        result = await fn(tx);
      } catch (err) {
        fnFailed = true;
        await client.query('rollback').catch((e: Error) => {
          broken = e;
        });
        throw err;
      }
      await client.query('commit');
      return result;
    } catch (err) {
      // BEGIN or COMMIT failed (or ROLLBACK, recorded above): do not give this connection to anyone else.
      if (!fnFailed) broken = err instanceof Error ? err : new Error(String(err));
      throw err;
    } finally {
      client.release(broken ?? false);
    }
  };
}
/** The `pg` client a transaction runs on, for the named statements of db/statements.ts inside it. */
export const clientOf = (tx: Tx): pg.PoolClient => (tx as unknown as { session: { client: pg.PoolClient } }).session.client;
