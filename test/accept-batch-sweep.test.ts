import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashToken } from '../src/http/auth.js';
import { sweepExpired } from '../src/limits/rate-limit.js';
import { createPlainAccepts } from '../src/runs/accept-batch.js';
import { plainAcceptance } from './helpers/accepts.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectLedgerBalanced, paidSession, type PaidSession } from './helpers/sessions.js';
import { waitFor } from './helpers/wait.js';

/**
 * An accept batch counts several budget rows in one statement (key order); the sweep of ended windows deletes many
 * rows in one statement. If the sweep took its rows in its scan order and waited for locked ones, the two could
 * wait on each other in a cycle (a deadlock: the batch aborted after deadlock_timeout, every accept of the process
 * stalled behind it). Here the sweep is made to hold one ended window (K2) while a held row (K0) stops it, the batch
 * takes K1 and reaches K2, then K0 is let go: the sweep's next row is K1.
 */
let t: TestServer;
let pool: pg.Pool;
let holder: pg.Client;
beforeAll(async () => {
  t = await startTestServer({ LEASE_TTL_S: 600 });
  pool = new pg.Pool({ connectionString: t.ctx.config.DATABASE_URL, max: 6 });
  holder = new pg.Client({ connectionString: t.ctx.config.DATABASE_URL });
  await holder.connect();
});
afterAll(async () => {
  await holder.end();
  await pool.end();
  await t.close();
});

const TEXT = 'swept [stub:tokens=1] [stub:delay=0]';
const acceptance = (s: PaidSession, counted: boolean) => plainAcceptance(t, s, 10, TEXT, counted ? { limit: 100 } : {});

/** Whether a backend running a statement that contains `marker` waits on a lock. */
async function waitsOnLock(marker: string) {
  const r = await pool.query(`select 1 from pg_stat_activity where query like '%' || $1 || '%' and wait_event_type = 'Lock' and pid <> pg_backend_pid()`, [marker]);
  return r.rowCount! > 0;
}

describe('accept batch and the sweep of ended budget windows', () => {
  it('never deadlock: the batch is answered by its one statement and the sweep finishes', async () => {
    const [first, a, b] = [await paidSession(t, 100), await paidSession(t, 100), await paidSession(t, 100)];
    const keyOf = (s: PaidSession) => `session_requests:${hashToken(s.token)}`;
    const ordered = await pool.query<{ k: string }>(`select k from unnest($1::text[]) k order by k`, [[keyOf(a), keyOf(b)]]);
    const [k1, k2] = ordered.rows.map((r) => r.k) as [string, string];
    const k0 = `blocker:${randomUUID()}`;
    // Three ended windows, in the sweep's order (by expire, and as stored): K2, then K0, then K1.
    await pool.query(`delete from rate_limits`);
    for (const [key, expire] of [[k2, 1], [k0, 2], [k1, 3]] as const) await pool.query(`insert into rate_limits (key, points, expire) values ($1, 5, $2)`, [key, expire]);
    await holder.query('begin');
    await holder.query(`select 1 from rate_limits where key = $1 for update`, [k0]);

    const sweep = sweepExpired(pool).then(
      (n) => ({ n }),
      (err: { code?: string }) => ({ err: err.code ?? String(err) }),
    );
    let swept = false;
    void sweep.then(() => (swept = true));
    await waitFor(async () => swept || (await waitsOnLock('from rate_limits')), { what: 'the sweep stopped at K0, or done' });

    // Record the accept statements this group commit sends (the statements themselves go to Postgres as ever).
    const sent: string[] = [];
    const recording = new Proxy(pool, {
      get(target, prop, recv) {
        if (prop !== 'query') return Reflect.get(target, prop, recv);
        return (q: { text?: string }, ...rest: unknown[]) => {
          const text = q?.text ?? '';
          const kind = text.includes('jsonb_to_recordset($1::jsonb) as x(ord int') ? 'batch' : 'single';
          sent.push(kind);
          const res = (target.query as (...x: unknown[]) => Promise<unknown>).call(target, q, ...rest);
          // (What a failed statement answered, for the assertion's message.)
          res.catch((err: { code?: string }) => sent.push(`${kind} failed: ${err.code}`));
          return res;
        };
      },
    });
    const accepts = createPlainAccepts(recording);
    // The first goes alone at once; a and b wait for it and go together, counting K1 then K2.
    const calls = [accepts.accept(acceptance(first, false)), accepts.accept(acceptance(a, true)), accepts.accept(acceptance(b, true))];
    let answered = false;
    const all = Promise.all(calls).finally(() => (answered = true));
    await waitFor(async () => answered || (sent.includes('batch') && (await waitsOnLock('jsonb_to_recordset($1::jsonb) as x(ord int'))), { what: 'the batch stopped at K2, or done' });
    await holder.query('commit');

    const outs = await all;
    expect(outs.map((o) => o.balance)).toEqual([90, 90, 90]);
    // One statement for the batch: it was not aborted as a deadlock victim and sent again request by request.
    expect(sent).toEqual(['single', 'batch']);
    // The sweep finished, and freed the windows nobody was counting (K0's holder let it go only after it began).
    expect(await sweep).toEqual({ n: expect.any(Number) });
    expect(((await sweep) as { n: number }).n).toBeGreaterThanOrEqual(2);
    for (const s of [first, a, b]) expect((await expectLedgerBalanced(t, s)).balanceSats).toBe(90);
    for (const o of outs) await t.ctx.executor.cancel(o.run!.id).catch(() => undefined);
  });
});
