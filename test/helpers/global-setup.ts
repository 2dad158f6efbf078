import { mkdtempSync, rmSync, chmodSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { TestProject } from 'vitest/node';
import { startEmbeddedPostgres, ensureDatabase } from '../../src/db/embedded.js';
import { createDatabase } from '../../src/db/pool.js';
import { runMigrations } from '../../src/db/migrate.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Connection string of the cluster's `postgres` database (for CREATE DATABASE). */
    pgAdminUrl: string;
    /** A migrated database to clone per test file. */
    pgTemplate: string;
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * One real Postgres for the whole run, under the OS temp folder (the `postgres` user must reach it when we run
 * as root), with a migrated template database that each test file clones. Or TEST_DATABASE_URL's server.
 */
export default async function setup(project: TestProject) {
  const template = 'sluice_template';
  let adminUrl: string;
  let stop = async () => {};
  if (process.env.TEST_DATABASE_URL) {
    adminUrl = process.env.TEST_DATABASE_URL;
  } else {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sluice-test-'));
    chmodSync(dir, 0o755);
    const pg = await startEmbeddedPostgres({ dataDir: path.join(dir, 'pg'), port: await freePort(), database: 'postgres' });
    adminUrl = pg.urlFor('postgres');
    stop = async () => {
      await pg.stop();
      rmSync(dir, { recursive: true, force: true });
    };
  }
  const admin = createDatabase(adminUrl, { max: 1 });
  await admin.pool.query(`drop database if exists ${template}`);
  await admin.close();
  await ensureDatabase(adminUrl, template);
  const tpl = createDatabase(adminUrl.replace(/\/[^/?]+(\?|$)/, `/${template}$1`), { max: 1 });
  await runMigrations(tpl);
  await tpl.close();
  project.provide('pgAdminUrl', adminUrl);
  project.provide('pgTemplate', template);
  return stop;
}
