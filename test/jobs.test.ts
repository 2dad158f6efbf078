import { eq, isNotNull, sql } from 'drizzle-orm';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ledgerEntries, stubInvoices } from '../src/db/schema.js';
import { clientInvoice } from './helpers/bolt11.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { createJob, getJob, pay, quotedJob, waitJob } from './helpers/jobs.js';
import { expectNoLeaks } from './helpers/sessions.js';
import { idsOf, readSse, tokensOf, type SseEvent } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ JOB_STREAM_WAIT_S: 20 });
});
afterAll(() => t.close());
afterEach(() => expectNoLeaks(t));

const stream = (jobId: string, headers: Record<string, string> = {}) => readSse(`${t.url}/api/jobs/${jobId}/stream`, { headers });

function expectWhole(events: SseEvent[], n: number) {
  expect(idsOf(events)).toEqual(Array.from({ length: n + 1 }, (_, i) => i + 1));
  const last = events.at(-1)!;
  expect(last.event).toBe('done');
  expect(last.data.state).toBe('complete');
  expect(last.data.result).toBe(tokensOf(events).join(''));
}

describe('the job flow', () => {
  it('evaluates, quotes, executes, completes with a cost ledger, and refunds the unused part once', async () => {
    const job = await createJob(t, 'write a poem [stub:tokens=20] [stub:delay=2]');
    expect(job).toMatchObject({ state: 'awaiting_eval_payment', evalInvoice: { amountSats: 10 } });
    expect(job.jobId).toMatch(/^[0-9a-f-]{36}$/);
    await pay(t, job.evalInvoice.paymentHash);
    const quoted = await waitJob(t, job.jobId, ['awaiting_work_payment']);
    expect(quoted.workInvoice.amountSats).toBe(quoted.pricingBreakdown.workAmountSats);
    expect(quoted.pricingBreakdown).toMatchObject({ estimatedOutputTokens: 20, inputRateSatsPer1k: 10, outputRateSatsPer1k: 40, feeSats: 0 });

    await pay(t, quoted.workInvoice.paymentHash);
    const done = await waitJob(t, job.jobId, ['complete', 'failed']);
    expect(done.state).toBe('complete');
    expect(done.result.split(' ')).toHaveLength(20);
    const cl = done.costLedger;
    expect(cl).toMatchObject({ actualOutputTokens: 20, workAmountSats: quoted.workInvoice.amountSats });
    expect(cl.totalTokens).toBe(cl.actualInputTokens + cl.actualOutputTokens);
    expect(cl.refundAmountSats).toBe(cl.workAmountSats - cl.actualAmountSats);

    if (cl.refundAmountSats === 0) {
      expect(cl.refundState).toBe('not_applicable');
      const res = await t.http.post(`/api/jobs/${job.jobId}/refund`).send({ invoice: 'lnbcrt1u1stubabc' }).expect(409);
      expect(res.body.error.code).toBe('nothing_owed');
    }
  });

  it('owes the whole work amount when the work fails, and pays it back once', async () => {
    const quoted = await quotedJob(t, 'fail please [stub:tokens=10] [stub:fail] [stub:delay=1]');
    const early = await t.http.post(`/api/jobs/${quoted.jobId}/refund`).send({ invoice: 'lnbcrt5u1stubx' }).expect(409);
    expect(early.body.error.code).toBe('not_refundable');
    await pay(t, quoted.workInvoice.paymentHash);
    const failed = await waitJob(t, quoted.jobId, ['failed', 'complete']);
    expect(failed.state).toBe('failed');
    expect(failed.errorMessage).toMatch(/stub/);
    const work = quoted.workInvoice.amountSats;
    expect(failed.costLedger).toMatchObject({ workAmountSats: work, refundAmountSats: work, actualAmountSats: 0, refundState: 'pending' });

    const bad = await t.http.post(`/api/jobs/${quoted.jobId}/refund`).send({ invoice: 'not an invoice' }).expect(400);
    expect(bad.body.error.code).toBe('invalid_invoice');
    const wrong = await t.http.post(`/api/jobs/${quoted.jobId}/refund`).send({ invoice: clientInvoice(work + 1).bolt11 }).expect(400);
    expect(wrong.body.error).toMatchObject({ code: 'wrong_amount', details: { expectedSats: work, invoiceSats: work + 1 } });
    await t.http.post(`/api/jobs/${quoted.jobId}/refund`).send({}).expect(400);

    const client = clientInvoice(work);
    const invoice = client.bolt11;
    const paid = await t.http.post(`/api/jobs/${quoted.jobId}/refund`).send({ invoice }).expect(200);
    expect(paid.body).toMatchObject({ state: 'paid', refundPaymentHash: client.paymentHash, amountSats: work, attempts: 1 });
    const again = await t.http.post(`/api/jobs/${quoted.jobId}/refund`).send({ invoice }).expect(409);
    expect(again.body.error).toMatchObject({ code: 'refund_already_paid', details: { refundPaymentHash: paid.body.refundPaymentHash } });
    const after = await getJob(t, quoted.jobId);
    expect(after.costLedger).toMatchObject({ refundState: 'paid', refundPaymentHash: paid.body.refundPaymentHash });
    // The payout is a ledger row; the job's rows sum to what the server kept (the evaluation fee).
    const rows = await t.ctx.db.select().from(ledgerEntries).where(eq(ledgerEntries.jobId, quoted.jobId));
    expect(rows.map((r) => [r.kind, r.amountSats]).sort()).toEqual(
      [['job_eval_payment', 10], ['job_refund_payout', -work], ['job_work_payment', work]].sort(),
    );
  });

  it('will not pay one invoice for two refunds', async () => {
    const a = await quotedJob(t, 'twin a [stub:fail] [stub:tokens=4] [stub:delay=1]');
    const b = await quotedJob(t, 'twin b [stub:fail] [stub:tokens=4] [stub:delay=1]');
    await pay(t, a.workInvoice.paymentHash);
    await pay(t, b.workInvoice.paymentHash);
    await waitJob(t, a.jobId, ['failed']);
    await waitJob(t, b.jobId, ['failed']);
    expect(a.workInvoice.amountSats).toBe(b.workInvoice.amountSats);
    const invoice = clientInvoice(a.workInvoice.amountSats).bolt11;
    await t.http.post(`/api/jobs/${a.jobId}/refund`).send({ invoice }).expect(200);
    const second = await t.http.post(`/api/jobs/${b.jobId}/refund`).send({ invoice }).expect(400);
    expect(second.body.error.code).toBe('invoice_already_used');
    expect((await getJob(t, b.jobId)).costLedger.refundState).toBe('pending');
  });

  it('rejects what the evaluation declines, and its stream ends at once with the reason', async () => {
    const job = await createJob(t, 'no thanks [stub:reject]');
    const open = stream(job.jobId);
    await pay(t, job.evalInvoice.paymentHash);
    const rejected = await waitJob(t, job.jobId, ['rejected']);
    expect(rejected.reason).toMatch(/declines/);
    expect(rejected.workInvoice).toBeUndefined();
    const { events } = await open;
    expect(events).toHaveLength(1);
    expect(events[0]!.data).toMatchObject({ state: 'rejected', reason: rejected.reason });
    // And a stream opened afterwards ends the same way.
    const later = await stream(job.jobId);
    expect(later.events[0]!.data.state).toBe('rejected');
  });

  it('advances once however often, and however concurrently, an invoice is paid', async () => {
    const job = await createJob(t, 'twice [stub:tokens=3] [stub:delay=1]');
    await Promise.all([pay(t, job.evalInvoice.paymentHash), pay(t, job.evalInvoice.paymentHash), getJob(t, job.jobId)]);
    const quoted = await waitJob(t, job.jobId, ['awaiting_work_payment']);
    await Promise.all([pay(t, quoted.workInvoice.paymentHash), pay(t, quoted.workInvoice.paymentHash), getJob(t, job.jobId), getJob(t, job.jobId)]);
    await waitJob(t, job.jobId, ['complete']);
    const rows = await t.ctx.db.select().from(ledgerEntries).where(eq(ledgerEntries.jobId, job.jobId));
    expect(rows.map((r) => r.kind).sort()).toEqual(['job_eval_payment', 'job_work_payment']);
  });

  it('reconciles a missed payment event on GET', async () => {
    const job = await createJob(t, 'missed [stub:tokens=2] [stub:delay=1]');
    await t.ctx.db.update(stubInvoices).set({ state: 'paid' }).where(eq(stubInvoices.paymentHash, job.evalInvoice.paymentHash));
    const j = await waitJob(t, job.jobId, ['awaiting_work_payment']);
    expect(j.workInvoice).toBeDefined();
  });

  it('400s bad requests and 404s unknown jobs', async () => {
    for (const body of [{}, { request: '' }, { request: '  ' }, { request: 'x'.repeat(501) }, { request: 7 }]) {
      const res = await t.http.post('/api/jobs').send(body).expect(400);
      expect(res.body.error.code).toBe('invalid_request');
    }
    await t.http.post('/api/jobs').send({ request: 'x'.repeat(500) }).expect(201);
    await t.http.get('/api/jobs/00000000-0000-4000-8000-000000000000').expect(404);
    await t.http.get('/api/jobs/nope').expect(404);
    await t.http.get('/api/jobs/nope/stream').expect(404);
    await t.http.post('/api/jobs/nope/refund').send({ invoice: 'x' }).expect(404);
  });

  it('accounts for every sat taken in or paid out in one query', async () => {
    const [row] = await t.ctx.db
      .select({
        inSats: sql<number>`coalesce(sum(amount_sats) filter (where amount_sats > 0), 0)::bigint`,
        outSats: sql<number>`coalesce(-sum(amount_sats) filter (where amount_sats < 0), 0)::bigint`,
      })
      .from(ledgerEntries)
      .where(isNotNull(ledgerEntries.paymentHash));
    const paidInvoices = await t.ctx.db.execute<{ s: number }>(sql`select coalesce(sum(amount_sats), 0)::bigint as s from invoices where state = 'paid'`);
    expect(Number(row!.inSats)).toBe(Number(paidInvoices.rows[0]!.s));
    const payouts = await t.ctx.db.execute<{ s: number }>(sql`select coalesce(sum(amount_sats), 0)::bigint as s from stub_invoices where direction = 'outgoing' and state = 'paid'`);
    expect(Number(row!.outSats)).toBe(Number(payouts.rows[0]!.s));
  });
});

describe('job streams', () => {
  it('opened before the evaluation is paid, delivers every token and done', async () => {
    const job = await createJob(t, 'early bird [stub:tokens=15] [stub:delay=5]');
    const open = stream(job.jobId);
    await pay(t, job.evalInvoice.paymentHash);
    const quoted = await waitJob(t, job.jobId, ['awaiting_work_payment']);
    await pay(t, quoted.workInvoice.paymentHash);
    const { events } = await open;
    expectWhole(events, 15);
    const done = await waitJob(t, job.jobId, ['complete']);
    expect(done.result).toBe(tokensOf(events).join(''));
  });

  it('opened the instant an instant job is paid, always ends in done with the full text', async () => {
    for (let i = 0; i < 25; i++) {
      const quoted = await quotedJob(t, `instant ${i} [stub:tokens=6] [stub:delay=0]`);
      // Race the payment and the stream open in every order the event loop allows.
      const [, got] = await Promise.all([pay(t, quoted.workInvoice.paymentHash), stream(quoted.jobId)]);
      expectWhole(got.events, 6);
      const after = await stream(quoted.jobId);
      expectWhole(after.events, 6);
    }
  });

  it('opened after completion, replays the whole run from the log; resumes after Last-Event-ID', async () => {
    const quoted = await quotedJob(t, 'replay [stub:tokens=9] [stub:delay=0]');
    await pay(t, quoted.workInvoice.paymentHash);
    await waitJob(t, quoted.jobId, ['complete']);
    await expectNoLeaks(t);
    const full = await stream(quoted.jobId);
    expectWhole(full.events, 9);
    const tail = await stream(quoted.jobId, { 'Last-Event-ID': '6' });
    expect(idsOf(tail.events)).toEqual([7, 8, 9, 10]);
    const bad = await fetch(`${t.url}/api/jobs/${quoted.jobId}/stream`, { headers: { 'Last-Event-ID': 'x' } });
    expect(bad.status).toBe(400);
  });

  it('ends a failed job stream with event: error owing the whole work amount', async () => {
    const quoted = await quotedJob(t, 'fails [stub:tokens=8] [stub:fail] [stub:delay=2]');
    const open = stream(quoted.jobId);
    await pay(t, quoted.workInvoice.paymentHash);
    const { events } = await open;
    expect(events.at(-1)).toMatchObject({ event: 'error', data: { state: 'failed', refundedSats: quoted.workInvoice.amountSats } });
  });

  it('ends with payment_timeout when the window passes unpaid', async () => {
    const short = await t.sibling({ JOB_STREAM_WAIT_S: 0.3 });
    try {
      const job = await createJob(short, 'never paid');
      const started = Date.now();
      const { events } = await readSse(`${short.url}/api/jobs/${job.jobId}/stream`);
      expect(Date.now() - started).toBeGreaterThanOrEqual(250);
      expect(events).toEqual([{ event: 'error', data: expect.objectContaining({ code: 'payment_timeout', state: 'awaiting_eval_payment' }) }]);
    } finally {
      await short.close();
    }
  });

  it('lets a stream be closed while waiting, leaving nothing behind', async () => {
    const job = await createJob(t, 'walk away');
    const controller = new AbortController();
    const reading = readSse(`${t.url}/api/jobs/${job.jobId}/stream`, { signal: controller.signal });
    await waitFor(() => t.ctx.jobWaits.size === 1, { what: 'the stream to wait for the job' });
    controller.abort();
    await reading.catch(() => undefined);
    await waitFor(() => t.ctx.jobWaits.size === 0 && t.ctx.streams.size === 0, { what: 'the waiting stream to let go' });
  });
});

describe('demo', () => {
  it('answers synchronously, 400s a missing request, and rate limits per IP with Retry-After', async () => {
    const d = await t.sibling({ DEMO_RATE_LIMIT: 3 });
    try {
      const ok = await d.http.get('/api/demo').query({ request: 'taste [stub:tokens=5] [stub:delay=1]' }).expect(200);
      expect(ok.body.result.split(' ')).toHaveLength(5);
      const missing = await d.http.get('/api/demo').expect(400);
      expect(missing.body.error.code).toBe('invalid_request');
      await d.http.get('/api/demo').query({ request: 'b [stub:delay=0]' }).expect(200);
      await d.http.get('/api/demo').query({ request: 'c [stub:delay=0]' }).expect(200);
      const limited = await d.http.get('/api/demo').query({ request: 'd' }).expect(429);
      expect(limited.body.error.code).toBe('rate_limited');
      expect(Number(limited.headers['retry-after'])).toBeGreaterThan(3500);
      const failed = await t.http.get('/api/demo').query({ request: 'x [stub:fail] [stub:delay=0]' }).expect(502);
      expect(failed.body.error.code).toBe('provider_error');
    } finally {
      await d.close();
    }
  });
});


describe('review fixes', () => {
  it('retention keeps a job run whose refund is still owed, and sweeps jobs nobody can act on', async () => {
    const quoted = await quotedJob(t, 'owed [stub:fail] [stub:tokens=4] [stub:delay=1]');
    await pay(t, quoted.workInvoice.paymentHash);
    await waitJob(t, quoted.jobId, ['failed']);
    const rejected = await createJob(t, 'old and rejected [stub:reject]');
    await pay(t, rejected.evalInvoice.paymentHash);
    await waitJob(t, rejected.jobId, ['rejected']);
    const { runs: runsTable, jobs: jobsTable } = await import('../src/db/schema.js');
    const longAgo = new Date(Date.now() - 40 * 86_400_000);
    await t.ctx.db.update(runsTable).set({ completedAt: longAgo }).where(isNotNull(runsTable.jobId));
    await t.ctx.db.update(jobsTable).set({ updatedAt: longAgo }).where(sql`true`);
    await t.ctx.maintenance.sweep();
    const owed = await getJob(t, quoted.jobId);
    expect(owed.costLedger).toMatchObject({ refundAmountSats: quoted.workInvoice.amountSats, refundState: 'pending' });
    await t.http.get(`/api/jobs/${rejected.jobId}`).expect(404);
    const paid = await t.http.post(`/api/jobs/${quoted.jobId}/refund`).send({ invoice: clientInvoice(quoted.workInvoice.amountSats).bolt11 }).expect(200);
    expect(paid.body.amountSats).toBe(quoted.workInvoice.amountSats);
  });

  it('a job stream reconnecting after the final event gets 204', async () => {
    const quoted = await quotedJob(t, 'reconnect [stub:tokens=5] [stub:delay=0]');
    await pay(t, quoted.workInvoice.paymentHash);
    await waitJob(t, quoted.jobId, ['complete']);
    const res = await fetch(`${t.url}/api/jobs/${quoted.jobId}/stream`, { headers: { 'Last-Event-ID': '6' } });
    expect(res.status).toBe(204);
  });

  it('says evaluation_timeout, not payment_timeout, when the window passes during the evaluation', async () => {
    const short = await t.sibling({ JOB_STREAM_WAIT_S: 0.3 });
    try {
      const job = await createJob(short, 'slow to judge [stub:delay=1000]');
      await pay(short, job.evalInvoice.paymentHash);
      const { events } = await readSse(`${short.url}/api/jobs/${job.jobId}/stream`);
      expect(events[0]!.data).toMatchObject({ code: 'evaluation_timeout', state: 'evaluating' });
      await waitJob(short, job.jobId, ['awaiting_work_payment']);
    } finally {
      await short.close();
    }
  });
});
