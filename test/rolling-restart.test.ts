import pg from 'pg';
import supertest from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDatabaseUrl } from './helpers/db.js';
import { startServerProcess, type ServerProcess } from './helpers/process.js';
import { paidSession, type PaidSession } from './helpers/sessions.js';
import { waitFor } from './helpers/wait.js';

/**
 * A rolling restart (issue #11): two `all` processes on one Postgres, 10 runs executing and 50 queued; one of them
 * gets SIGTERM, finishes what it executes, exits, and is started again. Nothing queued is interrupted (it was never
 * the process's: it waits in the shared queue), every run ends, and the ledger is exact.
 */
let url: string;
let db: pg.Pool;
const procs: ServerProcess[] = [];
const env = () => ({
  DATABASE_URL: url,
  LOG_FORMAT: 'json',
  PROCESS_ROLE: 'all',
  WORKER_CONCURRENCY: '5',
  LEASE_TTL_S: '5',
  QUEUE_POLL_MS: '250',
  SESSION_RATE_LIMIT_PER_MIN: '0',
  SHUTDOWN_GRACE_MS: '10000',
});
const start = async () => {
  const p = await startServerProcess(env());
  procs.push(p);
  return p;
};

beforeAll(async () => {
  url = await freshDatabaseUrl();
  db = new pg.Pool({ connectionString: url, max: 2 });
}, 60_000);
afterAll(async () => {
  for (const p of procs) {
    if (p.proc.exitCode === null && p.proc.signalCode === null) {
      p.proc.kill('SIGKILL');
      await p.exited;
    }
  }
  await db?.end();
});

const count = async (state: string) => (await db.query(`select count(*)::int as n from runs where state = $1`, [state])).rows[0].n as number;

describe('a rolling restart', () => {
  it('restarting one of two processes with 50 runs queued and 10 executing interrupts nothing, and every sat is accounted for', async () => {
    const [a, b] = await Promise.all([start(), start()]);
    const sessions: PaidSession[] = [];
    for (const p of [a!, b!]) sessions.push(await paidSession({ http: supertest(p.url) }, 10_000));
    // 60 runs of about 3/4 of a second, accepted by both processes: 10 slots take 10, the rest wait in the queue.
    const accepted = await Promise.all(
      Array.from({ length: 60 }, async (_, i) => {
        const p = i % 2 ? a! : b!;
        const s = sessions[i % 2]!;
        const res = await fetch(`${p.url}/api/sessions/${s.id}/request`, {
          method: 'POST',
          headers: { ...s.auth, 'content-type': 'application/json' },
          body: JSON.stringify({ request: `roll ${i} [stub:tokens=30] [stub:delay=25]` }),
        });
        expect(res.status).toBe(202);
        return ((await res.json()) as { requestId: string }).requestId;
      }),
    );
    // (A run that just ended leaves its slot free until the claim that follows it: a moment.)
    await waitFor(async () => (await count('executing')) === 10, { intervalMs: 5, what: '10 runs executing' });
    expect(await count('queued')).toBeGreaterThanOrEqual(40);

    a!.proc.kill('SIGTERM');
    expect(await a!.exited).toBe(0);
    const restarted = await start();
    await waitFor(async () => (await count('queued')) + (await count('executing')) === 0, { timeoutMs: 60_000, intervalMs: 50, what: 'every run to end' });

    const states = await db.query(`select state, count(*)::int as n, max(attempt) as attempts from runs where id = any($1) group by state`, [accepted]);
    expect(states.rows).toEqual([{ state: 'complete', n: 60, attempts: 1 }]);
    for (const s of sessions) {
      const bal = (await db.query(`select balance_sats::int as b from sessions where id = $1`, [s.id])).rows[0].b;
      const sum = (await db.query(`select sum(amount_sats)::int as s from ledger_entries where session_id = $1`, [s.id])).rows[0].s;
      expect(sum).toBe(bal);
      const runs = await db.query(`select sum(charged_sats)::int as c, count(*) filter (where charged_sats + refunded_sats <> debited_sats)::int as bad from runs where session_id = $1`, [s.id]);
      expect(runs.rows[0].bad).toBe(0);
      expect(bal).toBe(10_000 - runs.rows[0].c);
    }
    // Both processes that stayed up did work after the restart: the restarted one claimed from the queue.
    expect(restarted.output()).toContain('"run started"');
    expect(a!.output()).not.toContain('interrupted and refunded runs still going');
  });
});
