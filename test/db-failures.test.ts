import { sql } from 'drizzle-orm';
import { afterEach, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { isDatabaseUnavailable } from '../src/db/errors.js';
import { createDatabase, type Database } from '../src/db/pool.js';
import { freshDatabaseUrl, terminateBackendSync } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';

/**
 * The pool under connection failures (issue #9, findings 1 and 2). Every connection here is killed for real,
 * with pg_terminate_backend; nothing is mocked. An unhandled 'error' event of a pool client would crash this
 * worker, which vitest reports as a failure of the run.
 */
const open: Database[] = [];
afterEach(async () => {
  for (const d of open.splice(0)) await d.close();
});
async function database(max: number, connectTimeoutMs = 2_000) {
  const d = createDatabase(await freshDatabaseUrl(), { max, connectTimeoutMs });
  open.push(d);
  return d;
}
const pidOf = async (q: { query: Database['pool']['query'] }) => Number((await q.query('select pg_backend_pid() as pid')).rows[0].pid);
/** No client is checked out (or waited for): everything taken was given back. */
const settled = (d: Database) => waitFor(() => d.stats().total === d.stats().idle && d.stats().waiting === 0, { timeoutMs: 5_000, what: `a settled pool (${JSON.stringify(d.stats())})` });

describe('a pool client whose connection dies', () => {
  it('while checked out, idle in a transaction, does not crash the process, and is dropped', async () => {
    const d = await database(2);
    const client = await d.pool.connect();
    const pid = await pidOf(client);
    await client.query('begin');
    const ended = new Promise((resolve) => client.once('end', resolve));
    terminateBackendSync(inject('pgAdminUrl'), pid);
    await ended; // the client saw its connection go while no query was running: it emitted 'error'
    await expect(client.query('select 1')).rejects.toThrow();
    client.release(true);
    expect(await d.db.execute(sql`select 1 as one`).then((r) => r.rows[0])).toEqual({ one: 1 });
    await settled(d);
  });

  it('a transaction whose BEGIN fails gives its client back', async () => {
    const d = await database(1);
    const pid = await pidOf(d.pool); // the one client is now idle in the pool, its backend alive
    terminateBackendSync(inject('pgAdminUrl'), pid); // ...and now dead, but the client cannot know yet
    const failed = await d.db.transaction(async (tx) => tx.execute(sql`select 1`)).catch((err: unknown) => err);
    expect(failed).toBeInstanceOf(Error);
    expect(isDatabaseUnavailable(failed)).toBe(true);
    await settled(d);
    // With one connection, a leaked client would leave every later query waiting for ever.
    expect(await d.db.execute(sql`select 2 as two`).then((r) => r.rows[0])).toEqual({ two: 2 });
  });

  it('a transaction whose statement or COMMIT fails gives its client back, and keeps the error that caused it', async () => {
    const d = await database(1);
    const admin = inject('pgAdminUrl');
    // A statement after the connection died.
    const midway = await d.db
      .transaction(async (tx) => {
        const [row] = (await tx.execute<{ pid: number }>(sql`select pg_backend_pid() as pid`)).rows;
        terminateBackendSync(admin, Number(row!.pid));
        await tx.execute(sql`select 1`);
      })
      .catch((err: unknown) => err);
    expect(isDatabaseUnavailable(midway)).toBe(true);
    await settled(d);
    // COMMIT after the connection died (the callback itself succeeded).
    const atCommit = await d.db
      .transaction(async (tx) => {
        const [row] = (await tx.execute<{ pid: number }>(sql`select pg_backend_pid() as pid`)).rows;
        terminateBackendSync(admin, Number(row!.pid));
      })
      .catch((err: unknown) => err);
    expect(isDatabaseUnavailable(atCommit)).toBe(true);
    await settled(d);
    // A plain SQL error rolls back and keeps the connection (no reconnect needed).
    const before = await pidOf(d.pool);
    const sqlError = await d.db.transaction(async (tx) => tx.execute(sql`select 1/0`)).catch((err: unknown) => err);
    expect(isDatabaseUnavailable(sqlError)).toBe(false);
    expect(await pidOf(d.pool)).toBe(before);
    await settled(d);
  });

  it('survives a storm of terminated backends under load, leaking nothing', async () => {
    const d = await database(4);
    const killer = createDatabase(inject('pgAdminUrl'), { max: 1 });
    open.push(killer);
    const dbName = new URL(d.url).pathname.slice(1);
    // The pool's clients by backend pid (pg-pool emits 'connect' and 'remove' for each), and every pid the storm killed.
    const clients = new Set<{ processID: number | null }>();
    d.pool.on('connect', (c) => clients.add(c as never));
    d.pool.on('remove', (c) => clients.delete(c as never));
    const killed = new Set<number>();
    let storming = true;
    const storm = (async () => {
      while (storming) {
        const { rows } = await killer.pool.query('select pid, pg_terminate_backend(pid) as killed from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()', [dbName]);
        for (const r of rows) if (r.killed) killed.add(Number(r.pid));
        await new Promise((r) => setImmediate(r));
      }
    })();
    const outcomes = await Promise.all(
      Array.from({ length: 300 }, async (_, i) => {
        try {
          if (i % 2) await d.db.transaction(async (tx) => {
            await tx.execute(sql`select pg_sleep(0.001)`);
            await tx.execute(sql`select 1`);
          });
          else await d.db.execute(sql`select pg_sleep(0.001)`);
          return 'ok';
        } catch (err) {
          if (!isDatabaseUnavailable(err)) throw err;
          return 'unavailable';
        }
      }),
    );
    storming = false;
    await storm;
    expect(outcomes).toContain('unavailable');
    await settled(d);
    // pg_terminate_backend only signals: the last victims may still be exiting, and a query sent to one now would
    // meet its FATAL. Once they are gone and the pool has dropped every client of theirs, nothing is left of the storm.
    await waitFor(async () => (await killer.pool.query('select count(*)::int as n from pg_stat_activity where pid = any($1)', [[...killed]])).rows[0].n === 0, { timeoutMs: 5_000, what: 'the killed backends gone' });
    await waitFor(() => [...clients].every((c) => !killed.has(Number(c.processID))), { timeoutMs: 5_000, what: 'no pool client on a killed backend' });
    await settled(d);
    expect(await d.db.execute(sql`select 3 as three`).then((r) => r.rows[0])).toEqual({ three: 3 });
  });
});

describe('a pool with no connection to give', () => {
  it('fails a query after the connect timeout instead of waiting for ever', async () => {
    const d = await database(1, 300);
    const held = await d.pool.connect();
    try {
      const started = Date.now();
      const err = await d.db.execute(sql`select 1`).catch((e: unknown) => e);
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(isDatabaseUnavailable(err)).toBe(true);
    } finally {
      held.release();
    }
  });

  it('cannot reach a server that is not there: unavailable, quickly', async () => {
    const d = createDatabase('postgres://postgres:postgres@127.0.0.1:1/none', { max: 1, connectTimeoutMs: 300 });
    open.push(d);
    const err = await d.db.execute(sql`select 1`).catch((e: unknown) => e);
    expect(isDatabaseUnavailable(err)).toBe(true);
  });
});
