import { eq } from 'drizzle-orm';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ledgerEntries } from '../src/db/schema.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { pay, quotedJob, waitJob } from './helpers/jobs.js';
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
