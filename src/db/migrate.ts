import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { migrate } from 'drizzle-orm/node-postgres/migrator';
import pg from 'pg';
import type { Database } from './pool.js';

/** drizzle/ at the project root, whether running from src/ (tsx) or dist/ (built). */
export const migrationsFolder = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../drizzle');

/**
 * Apply the migrations not yet applied. The processes of a fleet start together against one database: a session
 * advisory lock, held on one client for the whole run, lets one of them migrate while the others wait, then find
 * nothing left to do (drizzle's migrator reads what was applied inside its own transaction, after the lock).
 */
export async function runMigrations({ db, url }: Pick<Database, 'db' | 'url'>, folder = migrationsFolder): Promise<void> {
  // A client of its own, outside the pool (which may have a single connection: the migrator needs it).
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  await client.connect();
  try {
    await client.query('select pg_advisory_lock(hashtext($1))', ['sluice:migrations']);
    try {
      await migrate(db, { migrationsFolder: folder });
    } finally {
      await client.query('select pg_advisory_unlock(hashtext($1))', ['sluice:migrations']);
    }
  } finally {
    await client.end();
  }
}
