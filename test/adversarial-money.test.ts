import { eq } from 'drizzle-orm';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { jobs, ledgerEntries, payouts, runs, sessions } from '../src/db/schema.js';
import type { AiProvider } from '../src/providers/ai/types.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { createJob, pay, quotedJob, waitJob } from './helpers/jobs.js';
import { uuidOfConversation } from '../src/openai/ids.js';
import { waitFor } from './helpers/wait.js';
import { expectLedgerBalanced, expectNoLeaks, paidSession, waitFinal } from './helpers/sessions.js';

/**
 * Adversarial checks of the money invariants: each test here once found a way for a sat to be minted, lost or
 * paid twice (see the commit that added it).
 */
let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ JOB_WORK_FEE_SATS: 7 });
});
afterAll(() => t.close());
afterEach(() => expectNoLeaks(t));

const jobRows = async (jobId: string) =>
  (await t.ctx.db.select().from(ledgerEntries).where(eq(ledgerEntries.jobId, jobId))).map((r) => [r.kind, r.amountSats] as const);

describe('a job work fee', () => {
  it('is kept when the work completes: it is charged, not refunded as unused', async () => {
    const quoted = await quotedJob(t, 'fee kept [stub:tokens=6] [stub:delay=1]');
    expect(quoted.pricingBreakdown.feeSats).toBe(7);
    const work = quoted.workInvoice.amountSats;
    await pay(t, quoted.workInvoice.paymentHash);
    const done = await waitJob(t, quoted.jobId, ['complete', 'failed']);
    expect(done.state).toBe('complete');
    const cl = done.costLedger;
    // The estimate was exact (the stub did what it was priced for): everything was used, the fee included.
    expect(cl.actualOutputTokens).toBe(6);
    expect(cl).toMatchObject({ workAmountSats: work, actualAmountSats: work, refundAmountSats: 0, refundState: 'not_applicable' });
    expect(cl.actualAmountSats + cl.refundAmountSats).toBe(work);
    expect((await jobRows(quoted.jobId)).sort()).toEqual([['job_eval_payment', 10], ['job_work_payment', work]].sort());
  });

  it('is refunded with the rest when the work fails', async () => {
    const quoted = await quotedJob(t, 'fee back [stub:tokens=6] [stub:fail] [stub:delay=1]');
    const work = quoted.workInvoice.amountSats;
    await pay(t, quoted.workInvoice.paymentHash);
    const failed = await waitJob(t, quoted.jobId, ['complete', 'failed']);
    expect(failed.state).toBe('failed');
    expect(failed.costLedger).toMatchObject({ workAmountSats: work, actualAmountSats: 0, refundAmountSats: work, refundState: 'pending' });
  });
});

describe('an Idempotency-Key', () => {
  it('refused for want of sats is not spent: after a top-up, the same key and body are accepted, once', async () => {
    const s = await paidSession(t, 100);
    const send = () =>
      t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).set('Idempotency-Key', 'retry-after-topup').send({ request: 'big [stub:tokens=3] [stub:delay=1]', max_tokens: 4000 });
    const refused = await send().expect(402);
    expect(refused.body.error.code).toBe('insufficient_balance');
    const top = await t.http.post(`/api/sessions/${s.id}/topup`).set(s.auth).send({ amount_sats: 1000 }).expect(201);
    await pay(t, top.body.invoice.paymentHash);

    const first = await send();
    expect(first.status, JSON.stringify(first.body)).toBe(202);
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    expect(first.body.requestId).toMatch(/^[0-9a-f-]{36}$/);
    const again = await send().expect(202);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body.requestId).toBe(first.body.requestId);
    const done = await waitFinal(t, s, first.body.requestId);
    expect(done.state).toBe('complete');
    const ledger = await expectLedgerBalanced(t, s);
    expect(ledger.entries.filter((e) => e.kind === 'debit')).toHaveLength(1);
  });

  it('sent to two processes at once, many times over, debits once and answers every copy with the one run', async () => {
    const b = await t.sibling();
    try {
      const s = await paidSession(t, 1000);
      const body = { request: 'twin [stub:tokens=3] [stub:delay=1]', max_tokens: 200 };
      const answers = await Promise.all(
        Array.from({ length: 16 }, (_, i) =>
          (i % 2 ? b : t).http.post(`/api/sessions/${s.id}/request`).set(s.auth).set('Idempotency-Key', 'two-processes').send(body),
        ),
      );
      for (const a of answers) expect(a.status, JSON.stringify(a.body)).toBe(202);
      const ids = new Set(answers.map((a) => a.body.requestId));
      expect(ids.size).toBe(1);
      expect(answers.filter((a) => a.headers['idempotent-replayed'] === undefined)).toHaveLength(1);
      await waitFinal(t, s, [...ids][0]);
      const ledger = await expectLedgerBalanced(t, s);
      expect(ledger.entries.map((e) => e.kind).sort()).toEqual(['debit', 'deposit', 'refund']);
      await expectNoLeaks(b);
    } finally {
      await b.close();
    }
  });
});

describe('multitask_strategy: interrupt', () => {
  it('refused for want of sats stops nothing: the active response goes on and completes', async () => {
    const s = await paidSession(t, 100);
    const conv = await t.http.post('/v1/conversations').set(s.auth).send({}).expect(200);
    const slow = await t.http
      .post('/v1/responses')
      .set(s.auth)
      .send({ model: 'sluice-stub', input: 'slow [stub:tokens=40] [stub:delay=15]', conversation: conv.body.id, background: true, max_output_tokens: 40 })
      .expect(200);
    const runId = slow.body.sluice.run_id as string;
    await waitFor(async () => ((await t.ctx.store.get(runId))?.outputTokens ?? 0) > 0 || t.ctx.registry.get(runId)?.outputTokens, { what: 'some output' });
    const refused = await t.http
      .post('/v1/responses')
      .set(s.auth)
      .send({ model: 'sluice-stub', input: 'instead', conversation: conv.body.id, max_output_tokens: 4000, multitask_strategy: 'interrupt' });
    // (OpenAI's answer to an empty purse.)
    expect(refused.status, JSON.stringify(refused.body)).toBe(429);
    expect(refused.body.error.code).toBe('insufficient_quota');
    const done = await waitFor(async () => {
      const r = await t.ctx.store.get(runId);
      return r && r.state !== 'queued' && r.state !== 'executing' ? r : null;
    }, { what: 'the active response to end' });
    expect(done.state).toBe('complete');
    expect(done.cancelRequested).toBe(false);
    await expectLedgerBalanced(t, s);
  });
});

describe('a run ended three ways at once', () => {
  it('a stop (from another process), its lease running out (recovered there) and its natural end: each run settles once', async () => {
    const b = await t.sibling();
    try {
      const s = await paidSession(t, 5000);
      const ids: string[] = [];
      await Promise.all(
        Array.from({ length: 12 }, async (_, i) => {
          const res = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: `race ${i} [stub:tokens=${4 + i}] [stub:delay=2]`, max_tokens: 200 });
          expect(res.status, JSON.stringify(res.body)).toBe(202);
          const id = res.body.requestId as string;
          ids.push(id);
          // Somewhere between its first token and its end, all at once.
          await new Promise((r) => setTimeout(r, (i * 3) % 25));
          await Promise.all([
            b.http.post(`/api/runs/${id}/stop`).set(s.auth),
            t.ctx.db.update(runs).set({ leaseExpiresAt: new Date(Date.now() - 1000) }).where(eq(runs.id, id)).then(() => b.ctx.maintenance.recoverOrphans(false)),
          ]);
        }),
      );
      const ended = await Promise.all(ids.map((id) => waitFinal(t, s, id)));
      const ledger = await expectLedgerBalanced(t, s);
      for (const r of ended) {
        expect(['complete', 'cancelled', 'interrupted']).toContain(r.state);
        expect(r.chargedSats + r.refundedSats).toBe(r.debitedSats);
        const rows = ledger.entries.filter((e) => e.runId === r.requestId);
        expect(rows.filter((e) => e.kind === 'debit').map((e) => e.amountSats)).toEqual([-r.debitedSats]);
        expect(rows.filter((e) => e.kind === 'refund').map((e) => e.amountSats)).toEqual(r.refundedSats > 0 ? [r.refundedSats] : []);
        if (r.state === 'interrupted') expect(r.chargedSats).toBe(0);
      }
      await expectNoLeaks(b);
    } finally {
      await b.close();
    }
  });
});

describe('a payment held for its payer', () => {
  it('claimed back by its preimage many times at once, through two processes, with different invoices: paid once', async () => {
    const b = await t.sibling();
    try {
      const orphan = await createJob(t, 'orphan');
      await t.ctx.db.delete(jobs).where(eq(jobs.id, orphan.jobId));
      const { paymentHash, amountSats } = orphan.evalInvoice;
      const paid = await pay(t, paymentHash);
      expect((await t.http.get(`/api/invoices/${paymentHash}`).expect(200)).body.state).toBe('refundable');
      const wallets = await Promise.all(
        Array.from({ length: 8 }, () => t.http.post('/api/dev/stub/wallet/invoice').send({ amount_sats: amountSats, memo: 'mine' }).expect(201)),
      );
      const claims = await Promise.all(
        wallets.map((w, i) => (i % 2 ? b : t).http.post(`/api/invoices/${paymentHash}/refund`).send({ preimage: paid.body.preimage, invoice: w.body.paymentRequest })),
      );
      const statuses = claims.map((c) => c.status).sort();
      expect(statuses, JSON.stringify(claims.map((c) => c.body))).toEqual([200, 409, 409, 409, 409, 409, 409, 409]);
      for (const c of claims.filter((c) => c.status === 409)) expect(['refund_in_progress', 'refund_already_paid']).toContain(c.body.error.code);
      expect(await t.ctx.db.select().from(payouts).where(eq(payouts.refundOf, paymentHash))).toHaveLength(1);
      const rows = await t.ctx.db.select().from(ledgerEntries).where(eq(ledgerEntries.kind, 'undeliverable_refund_payout'));
      expect(rows.filter((r) => r.amountSats === -amountSats && claims.some((c) => c.body.refundPaymentHash === r.paymentHash))).toHaveLength(1);
    } finally {
      await b.close();
    }
  });
});

describe('a response with store: false', () => {
  it('is deleted at its end, stopped or not, and its debit and refund stay in the ledger', async () => {
    const s = await paidSession(t, 1000);
    const done = await t.http.post('/v1/responses').set(s.auth).send({ model: 'sluice-stub', input: 'gone [stub:tokens=3] [stub:delay=1]', store: false, max_output_tokens: 300 }).expect(200);
    const runId = done.body.sluice.run_id as string;
    expect(done.body.sluice.refunded_sats).toBeGreaterThan(0);
    await waitFor(async () => !(await t.ctx.store.get(runId)), { what: 'the ephemeral run to be deleted' });
    const ledger = await expectLedgerBalanced(t, s);
    expect(ledger.entries.filter((e) => e.runId === runId).map((e) => [e.kind, e.amountSats])).toEqual([
      ['debit', -done.body.sluice.debited_sats],
      ['refund', done.body.sluice.refunded_sats],
    ]);
  });
});

/** A provider whose usage report is whatever it is told: more than it was allowed, fractional, or absurd. */
function reporting(usage: { inputTokens: number; outputTokens: number }): AiProvider {
  return {
    name: 'liar',
    async *stream() {
      for (let i = 0; i < 3; i++) {
        await new Promise((r) => setImmediate(r));
        yield { type: 'token', content: ` w${i}` };
      }
      yield { type: 'usage', ...usage };
      yield { type: 'finish', reason: 'stop' };
    },
    async evaluate() {
      return { accept: false, reason: 'n/a' };
    },
  };
}

describe('a provider that reports more than it was allowed', () => {
  // `full`: the report is past what was debited for, so the whole debit is charged.
  for (const [what, usage, full] of [
    ['more output than max_tokens', { inputTokens: 5, outputTokens: 5000 }, true],
    ['counts past any integer column', { inputTokens: 3e9, outputTokens: 1e15 }, true],
    ['fractional counts', { inputTokens: 2.5, outputTokens: 1.25 }, false],
    ['negative counts', { inputTokens: -100, outputTokens: -1 }, false],
  ] as const) {
    it(`(${what}) is charged at most the debit, and the run still completes at once`, async () => {
      const u = await startTestServer({}, { ai: reporting(usage) });
      try {
        const s = await paidSession(u, 1000);
        const res = await u.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: 'count this', max_tokens: 50 }).expect(202);
        const r = await waitFinal(u, s, res.body.requestId, 5000);
        expect(r.state).toBe('complete');
        expect(r.chargedSats).toBeGreaterThanOrEqual(0);
        expect(r.chargedSats).toBeLessThanOrEqual(r.debitedSats);
        expect(r.chargedSats + r.refundedSats).toBe(r.debitedSats);
        if (full) expect(r.chargedSats).toBe(r.debitedSats);
        else expect(r.refundedSats).toBeGreaterThan(0);
        const row = (await u.ctx.store.get(res.body.requestId))!;
        // What the row holds are counts: whole, never negative (one the provider botched is estimated instead).
        for (const n of [row.inputTokens, row.outputTokens]) expect(Number.isInteger(n) && n >= 0).toBe(true);
        await expectLedgerBalanced(u, s);
      } finally {
        await u.close();
      }
    });
  }
});

describe('a conversation under every strategy at once', () => {
  it('enqueue, interrupt, stop and delete racing: every turn ends, settles once, and the last one runs', async () => {
    const s = await paidSession(t, 5000);
    const conv = (await t.http.post('/v1/conversations').set(s.auth).send({}).expect(200)).body.id as string;
    const create = (input: string, strategy?: string) =>
      t.http.post('/v1/responses').set(s.auth).send({ model: 'sluice-stub', input, conversation: conv, background: true, max_output_tokens: 100, ...(strategy ? { multitask_strategy: strategy } : {}) });
    const first = await create('first [stub:tokens=60] [stub:delay=5]').expect(200);
    const queued = await Promise.all([create('second [stub:tokens=5] [stub:delay=1]', 'enqueue'), create('third [stub:tokens=5] [stub:delay=1]', 'enqueue')]);
    for (const q of queued) expect(q.status, JSON.stringify(q.body)).toBe(200);
    const ids = [first, ...queued].map((r) => r.body.id as string);
    // Stop the middle ones and interrupt everything, all at once; try deleting what may have ended meanwhile.
    const [, , last] = await Promise.all([
      t.http.post(`/v1/responses/${ids[1]}/cancel`).set(s.auth),
      t.http.post(`/v1/responses/${ids[2]}/cancel`).set(s.auth),
      create('last [stub:tokens=4] [stub:delay=1]', 'interrupt'),
      t.http.delete(`/v1/responses/${ids[0]}`).set(s.auth),
    ]);
    expect(last.status, JSON.stringify(last.body)).toBe(200);
    const all = [first, ...queued, last].map((r) => r.body.sluice.run_id as string);
    const ended = await waitFor(async () => {
      const rows = await Promise.all(all.map((id) => t.ctx.db.select().from(runs).where(eq(runs.id, id))));
      return rows.every((r) => r[0] && r[0].state !== 'queued' && r[0].state !== 'executing') ? rows.map((r) => r[0]!) : null;
    }, { what: 'every turn to end' });
    expect(ended.at(-1)!.state).toBe('complete');
    for (const r of ended.slice(0, -1)) expect(['cancelled', 'complete']).toContain(r.state);
    const ledger = await expectLedgerBalanced(t, s);
    for (const r of ended) {
      expect(r.chargedSats + r.refundedSats).toBe(r.debitedSats);
      const mine = ledger.entries.filter((e) => e.runId === r.id);
      expect(mine.filter((e) => e.kind === 'debit').map((e) => e.amountSats)).toEqual([-r.debitedSats]);
      expect(mine.filter((e) => e.kind === 'refund').map((e) => e.amountSats)).toEqual(r.refundedSats > 0 ? [r.refundedSats] : []);
    }
  });
});

describe('a session while its accepts are in flight', () => {
  it('takes top-ups, expires and is revived by one, and never loses or mints a sat', async () => {
    const s = await paidSession(t, 100);
    const tops = await Promise.all([1, 2, 3].map(() => t.http.post(`/api/sessions/${s.id}/topup`).set(s.auth).send({ amount_sats: 100 }).expect(201)));
    const send = (i: number) => t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: `burst ${i} [stub:tokens=3] [stub:delay=2]`, max_tokens: 200 });
    const [answers] = await Promise.all([
      Promise.all(Array.from({ length: 30 }, (_, i) => send(i))),
      ...tops.map((top) => pay(t, top.body.invoice.paymentHash)),
      // Expired mid-burst (by the clock and by the sweep); the top-ups paid after revive it.
      t.ctx.db.update(sessions).set({ expiresAt: new Date(Date.now() - 1000) }).where(eq(sessions.id, s.id)).then(() => t.ctx.maintenance.sweep()),
    ]);
    const accepted = answers.filter((a) => a.status === 202);
    for (const a of answers) expect([202, 402, 409], JSON.stringify(a.body)).toContain(a.status);
    expect(accepted.length).toBeGreaterThan(0);
    const ended = await Promise.all(accepted.map((a) => waitFinal(t, s, a.body.requestId)));
    const ledger = await expectLedgerBalanced(t, s);
    expect(ledger.entries.filter((e) => e.kind === 'topup')).toHaveLength(3);
    expect(ledger.entries.filter((e) => e.kind === 'debit')).toHaveLength(accepted.length);
    for (const r of ended) {
      expect(r.state).toBe('complete');
      expect(r.chargedSats + r.refundedSats).toBe(r.debitedSats);
    }
    expect(ledger.balanceSats).toBe(100 + 300 - ended.reduce((a, r) => a + r.chargedSats, 0));
  });
});

describe('the idle-conversation sweep', () => {
  it('skips a conversation that is taking a turn, rather than deleting it from under the turn', async () => {
    const s = await paidSession(t, 1000);
    const conv = (await t.http.post('/v1/conversations').set(s.auth).send({}).expect(200)).body.id as string;
    const id = uuidOfConversation(conv)!;
    // A turn being accepted holds the conversation's row (nextTurn's update) until its run is committed.
    const holder = await t.ctx.database.pool.connect();
    try {
      await holder.query('begin');
      await holder.query(`update conversations set turns = turns + 1, updated_at = now() where id = $1`, [id]);
      // The sweep, with a cutoff that makes every conversation idle. It must not wait for the turn (and then delete
      // what the turn has just written into), nor delete it.
      const sweep = t.ctx.conversations.deleteIdleBefore(new Date(Date.now() + 60_000));
      const waiting = waitFor(
        async () => (await t.ctx.database.pool.query(`select count(*)::int as n from pg_locks where not granted`)).rows[0].n > 0,
        { what: 'the sweep waiting for the turn', timeoutMs: 5000 },
      ).then(() => 'waited' as const);
      const first = await Promise.race([sweep.then(() => 'done' as const), waiting.catch(() => 'done' as const)]);
      await holder.query('commit');
      expect(first).toBe('done');
      await sweep; // (other tests' idle conversations may go)
    } finally {
      holder.release();
    }
    const still = await t.ctx.database.pool.query(`select turns from conversations where id = $1`, [id]);
    expect(still.rows).toEqual([{ turns: 1 }]);
    // Idle and not taking a turn, it goes.
    expect(await t.ctx.conversations.deleteIdleBefore(new Date(Date.now() + 60_000))).toBeGreaterThanOrEqual(1);
    expect((await t.ctx.database.pool.query(`select 1 from conversations where id = $1`, [id])).rowCount).toBe(0);
  });
});
