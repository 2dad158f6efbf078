import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashToken } from '../src/http/auth.js';
import { estimateSats, priceSnapshot } from '../src/ledger/pricing.js';
import { createPlainAccepts } from '../src/runs/accept-batch.js';
import type { PlainAcceptance, PlainOutcome } from '../src/runs/accept-statement.js';
import { plainAcceptance } from './helpers/accepts.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectLedgerBalanced, paidSession, waitFinal, type PaidSession } from './helpers/sessions.js';

/**
 * The group commit of plain acceptances (runs/accept-batch.ts). Calls made in one tick are certain to batch: the
 * first goes alone at once, the rest wait for it and go together when it returns (one per token; a token's next
 * request waits for the batch after). Every statement an accept sends is recorded by kind, and a batch can be made
 * to fail as a whole, as Postgres refusing it would.
 */
let t: TestServer;
let pool: pg.Pool;
let sent: string[] = [];
/** The next batch statement fails with this SQLSTATE, as Postgres would answer it. */
let failNextBatch: string | null = null;
const query = pg.Client.prototype.query;
const runs: Array<{ s: PaidSession; id: string }> = [];

beforeAll(async () => {
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    const q = args[0] as { text?: string } | string;
    const text = typeof q === 'string' ? q : (q?.text ?? '');
    const kind = text.includes('jsonb_to_recordset($1::jsonb) as x(ord int, session_id uuid') ? 'batch' : text.includes('update sessions set balance_sats = balance_sats - $3::bigint') ? 'single' : null;
    if (kind) sent.push(kind);
    if (kind === 'batch' && failNextBatch) {
      const err = Object.assign(new Error('refused by the test'), { code: failNextBatch });
      failNextBatch = null;
      const cb = args.find((a) => typeof a === 'function') as ((e: Error) => void) | undefined;
      if (cb) return void setImmediate(() => cb(err));
      return Promise.reject(err);
    }
    return (query as (...a: unknown[]) => unknown).apply(this, args);
  } as typeof query;
  t = await startTestServer({ LEASE_TTL_S: 600 });
  pool = new pg.Pool({ connectionString: t.ctx.config.DATABASE_URL, max: 4 });
});
afterAll(async () => {
  // Every run these tests accepted waits a minute for its first token: stopped here, so nothing is left running.
  for (const r of runs) await t.ctx.executor.cancel(r.id);
  for (const r of runs) await waitFinal(t, r.s, r.id);
  pg.Client.prototype.query = query;
  await pool.end();
  await t.close();
});

const TEXT = 'batched [stub:tokens=1] [stub:delay=60000]';

/** A plain acceptance of `sats` for session `s` (its own token unless `token` says otherwise). */
const acceptance = (s: PaidSession, sats: number, o: { token?: string; runId?: string; limit?: number } = {}): PlainAcceptance => plainAcceptance(t, s, sats, TEXT, o);

/** Settle each call: its outcome, or the SQLSTATE it failed with. Accepted runs are remembered for the clean-up. */
async function settled(calls: Array<{ s: PaidSession; p: Promise<PlainOutcome> }>) {
  return Promise.all(
    calls.map(async ({ s, p }) => {
      try {
        const out = await p;
        if (out.run) runs.push({ s, id: out.run.id });
        return out;
      } catch (err) {
        return (err as { code?: string }).code ?? String(err);
      }
    }),
  );
}

const balanceOf = (o: PlainOutcome | string) => (typeof o === 'string' ? o : o.balance);

describe('group commit of plain acceptances', () => {
  it('sends those that arrive meanwhile as one batch, one request per session each, every answer its own', async () => {
    const [a, b, poor, closed] = [await paidSession(t, 100), await paidSession(t, 100), await paidSession(t, 100), await paidSession(t, 100)];
    await pool.query(`update sessions set state = 'closed' where id = $1`, [closed.id]);
    const accepts = createPlainAccepts(pool);
    sent = [];
    const call = (s: PaidSession, sats: number, o?: Parameters<typeof acceptance>[2]) => ({ s, p: accepts.accept(acceptance(s, sats, o)) });
    const out = await settled([
      call(a, 10, { limit: 2 }), // alone, at once
      call(a, 10, { limit: 2 }), // a's next: the first batch
      call(b, 10),
      call(poor, 101), // cannot pay
      call(b, 10, { token: 'not-its-token' }), // a token that names no session
      call(closed, 10), // not active
      call(b, 10), // b's next: the second batch
      call(a, 10, { limit: 2 }), // a's third: over its budget of 2, in the second batch
    ]);
    expect(sent).toEqual(['single', 'batch', 'batch']);
    expect(out.map(balanceOf)).toEqual([90, 80, 90, null, null, null, 80, null]);
    // The budget counted once per request, in order, the third refused by it (and not debited).
    expect(out.map((o) => (typeof o === 'string' ? o : o.counted?.points))).toEqual([1, 2, undefined, undefined, undefined, undefined, undefined, 3]);
    const [first, second] = out as PlainOutcome[];
    expect(first!.run!.sessionId).toBe(a.id);
    expect(second!.run!.state).toBe('queued');
    expect(second!.run!.debitedSats).toBe(10);
    expect(second!.run!.createdAt).toBeInstanceOf(Date);
    // The ledgers: one debit per accepted request, and the balances their sums.
    for (const [s, debits, balance] of [[a, 2, 80], [b, 2, 80], [poor, 0, 100], [closed, 0, 100]] as const) {
      const ledger = await expectLedgerBalanced(t, s);
      expect(ledger.entries.filter((e) => e.kind === 'debit')).toHaveLength(debits);
      expect(ledger.balanceSats).toBe(balance);
    }
    // Each accepted run is in Postgres with its own debit (queued, or claimed since by this server's claimer).
    const rows = await pool.query(`select id, session_id, debited_sats from runs where id = any($1::uuid[]) order by created_at`, [out.flatMap((o) => (typeof o !== 'string' && o.run ? [o.run.id] : []))]);
    expect(rows.rows.map((r) => [r.session_id, Number(r.debited_sats)]).sort()).toEqual([[a.id, 10], [a.id, 10], [b.id, 10], [b.id, 10]].sort());
  });

  it('a request Postgres refuses fails alone: the batch is tried again request by request, nothing counted twice', async () => {
    const [a, b, c] = [await paidSession(t, 100), await paidSession(t, 100), await paidSession(t, 100)];
    const accepts = createPlainAccepts(pool);
    sent = [];
    const runId = randomUUID();
    const out = await settled([
      { s: a, p: accepts.accept(acceptance(a, 10, { runId })) },
      { s: b, p: accepts.accept(acceptance(b, 10, { limit: 5 })) },
      // A run id already taken: a unique violation that fails the whole batch statement.
      { s: c, p: accepts.accept(acceptance(c, 10, { runId, limit: 5 })) },
      { s: a, p: accepts.accept(acceptance(a, 10, { limit: 5 })) },
    ]);
    expect(sent).toEqual(['single', 'batch', 'single', 'single', 'single']);
    expect(out.map(balanceOf)).toEqual([90, 90, '23505', 80]);
    expect((out[1] as PlainOutcome).counted?.points).toBe(1);
    expect((out[3] as PlainOutcome).counted?.points).toBe(1);
    // The refused request's count was rolled back with it (before any GET below counts one of its own).
    const points = await pool.query(`select points from rate_limits where key = $1`, [`session_requests:${hashToken(c.token)}`]);
    expect(points.rows).toEqual([]);
    expect((await expectLedgerBalanced(t, c)).balanceSats).toBe(100);
    expect((await expectLedgerBalanced(t, b)).balanceSats).toBe(90);
    expect((await expectLedgerBalanced(t, a)).balanceSats).toBe(80);
  });

  it("a failure that is every request's (the connection) reaches each of them, and is not retried", async () => {
    const [a, b, c] = [await paidSession(t, 100), await paidSession(t, 100), await paidSession(t, 100)];
    const accepts = createPlainAccepts(pool);
    sent = [];
    failNextBatch = '57P01';
    const out = await settled([
      { s: a, p: accepts.accept(acceptance(a, 10)) },
      { s: b, p: accepts.accept(acceptance(b, 10)) },
      { s: c, p: accepts.accept(acceptance(c, 10)) },
    ]);
    expect(sent).toEqual(['single', 'batch']);
    expect(out.map(balanceOf)).toEqual([90, '57P01', '57P01']);
    expect((await expectLedgerBalanced(t, b)).balanceSats).toBe(100);
    // And the next request goes as ever.
    const again = await settled([{ s: b, p: accepts.accept(acceptance(b, 10)) }]);
    expect(again.map(balanceOf)).toEqual([90]);
  });

  it('over HTTP: concurrent requests of many sessions never overdraw, and every answer is exact', async () => {
    const maxTokens = 400;
    const price = estimateSats(priceSnapshot(t.ctx.config), TEXT, maxTokens);
    const budget = 200;
    const fits = Math.floor(budget / price);
    const perSession = fits + 3;
    expect(fits).toBeGreaterThan(2);
    expect(fits).toBeLessThan(20);
    const sessions = await Promise.all(Array.from({ length: 8 }, () => paidSession(t, budget)));
    sent = [];
    // Over real sockets, all at once (supertest would start a server per request).
    const post = async (s: PaidSession) => {
      const res = await fetch(`${t.url}/api/sessions/${s.id}/request`, { method: 'POST', headers: { ...s.auth, 'content-type': 'application/json' }, body: JSON.stringify({ request: TEXT, max_tokens: maxTokens }) });
      return { s, r: { status: res.status, body: (await res.json()) as any } };
    };
    const results = await Promise.all(sessions.flatMap((s) => Array.from({ length: perSession }, () => post(s))));
    // The burst went (at least partly) as batches.
    expect(sent).toContain('batch');
    for (const s of sessions) {
      const mine = results.filter((x) => x.s === s).map((x) => x.r);
      const accepted = mine.filter((r) => r.status === 202);
      for (const r of accepted) runs.push({ s, id: r.body.requestId });
      const refused = mine.filter((r) => r.status === 402);
      expect(accepted).toHaveLength(fits);
      expect(refused).toHaveLength(perSession - fits);
      // Each debit saw the balance the one before it left: the balances are exactly budget - k × price.
      expect(accepted.map((r) => r.body.balanceRemaining).sort((x, y) => y - x)).toEqual(Array.from({ length: fits }, (_, k) => budget - (k + 1) * price));
      for (const r of refused) expect(r.body.error.details).toEqual({ balanceSats: budget - fits * price, requiredSats: price });
      const ledger = await expectLedgerBalanced(t, s);
      expect(ledger.entries.filter((e) => e.kind === 'debit')).toHaveLength(fits);
      expect(ledger.balanceSats).toBe(budget - fits * price);
    }
  });
});
