import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { inject } from 'vitest';
import { ensureDatabase } from '../../src/db/embedded.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** A new database cloned from the migrated template, on the shared test cluster. */
export async function freshDatabaseUrl(): Promise<string> {
  const admin = inject('pgAdminUrl');
  const name = `t_${randomBytes(6).toString('hex')}`;
  await ensureDatabase(admin, name, inject('pgTemplate'));
  return admin.replace(/\/[^/?]+(\?|$)/, `/${name}$1`);
}

/**
 * Terminate a backend and wait until it is gone, *synchronously*: the event loop of this process does not turn
 * meanwhile, so a pool client of that backend has not yet noticed its connection died when we go on. That is the
 * window a connection-kill storm hits at random; here it is hit on purpose.
 */
export function terminateBackendSync(adminUrl: string, pid: number): void {
  const script = `
    import pg from 'pg';
    const c = new pg.Client({ connectionString: process.env.ADMIN_URL });
    await c.connect();
    await c.query('select pg_terminate_backend($1, 5000)', [Number(process.env.PID)]);
    await c.end();`;
  const out = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    cwd: root,
    env: { ...process.env, ADMIN_URL: adminUrl, PID: String(pid) },
    encoding: 'utf8',
    timeout: 20_000,
  });
  if (out.status !== 0) throw new Error(`terminating backend ${pid} failed: ${out.stderr}`);
}
