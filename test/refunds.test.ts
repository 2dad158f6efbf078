import { and, eq } from 'drizzle-orm';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ledgerEntries, stubInvoices } from '../src/db/schema.js';
import { clientInvoice } from './helpers/bolt11.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { createJob, getJob, pay, quotedJob, refundReaches as refundReachesOf, waitJob } from './helpers/jobs.js';
import { expectNoLeaks } from './helpers/sessions.js';
import { readSse } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ REFUND_RETRY_BASE_S: 0.05, REFUND_MAX_ATTEMPTS: 3, INVOICE_EXPIRY_GRACE_S: 0 });
});
afterAll(() => t.close());
afterEach(() => expectNoLeaks(t));

/** A job whose work failed: its whole work amount is owed back. */
async function failedJob(label: string) {
  const quoted = await quotedJob(t, `${label} [stub:fail] [stub:tokens=4] [stub:delay=1]`);
  await pay(t, quoted.workInvoice.paymentHash);
  await waitJob(t, quoted.jobId, ['failed']);
  return { jobId: quoted.jobId as string, owed: quoted.workInvoice.amountSats as number };
}
const refund = (jobId: string, invoice: string) => t.http.post(`/api/jobs/${jobId}/refund`).send({ invoice });
const refundReaches = (jobId: string, state: string) => refundReachesOf(t, jobId, state);
const payoutRows = (jobId: string) => t.ctx.db.select().from(ledgerEntries).where(and(eq(ledgerEntries.jobId, jobId), eq(ledgerEntries.kind, 'job_refund_payout')));
const stubPayments = (hash: string) => t.ctx.db.select().from(stubInvoices).where(and(eq(stubInvoices.paymentHash, hash), eq(stubInvoices.direction, 'outgoing')));

describe('refund payouts with the stub node', () => {
  it('the stub plays the client wallet too: its dev invoice is real, for the amount asked, and the refund pays it once', async () => {
    const job = await failedJob('dev wallet');
    const made = await t.http.post('/api/dev/stub/wallet/invoice').send({ amount_sats: job.owed, memo: 'my refund' }).expect(201);
    expect(made.body).toMatchObject({ amountSats: job.owed, network: 'regtest', paymentRequest: expect.stringMatching(/^lnbcrt/) });
    const paid = await refund(job.jobId, made.body.paymentRequest).expect(200);
    expect(paid.body).toMatchObject({ state: 'paid', refundPaymentHash: made.body.paymentHash });
    expect(await stubPayments(made.body.paymentHash)).toHaveLength(1);
    // Bad input is a 400 in the envelope, never a 5xx.
    const bad = await t.http.post('/api/dev/stub/wallet/invoice').send({ amount_sats: 0 }).expect(400);
    expect(bad.body.error).toMatchObject({ code: 'invalid_request' });
  });

  it('a payout that fails once ([stub:pay=fail-once]) stays visible, is retried, and is paid once', async () => {
    const job = await failedJob('fail once');
    const client = clientInvoice(job.owed, { description: 'my refund [stub:pay=fail-once]' });
    const first = await refund(job.jobId, client.bolt11).expect(202);
    expect(first.body).toMatchObject({ state: 'paying', attempts: 1, outcomeUnknown: false, lastError: expect.stringMatching(/no route/) });
    expect(await payoutRows(job.jobId)).toEqual([]);
    const paid = await refundReaches(job.jobId, 'paid');
    expect(paid.costLedger).toMatchObject({ refundAttempts: 2, refundPaymentHash: client.paymentHash });
    expect(await stubPayments(client.paymentHash)).toMatchObject([{ state: 'paid', amountSats: job.owed }]);
    expect(await payoutRows(job.jobId)).toHaveLength(1);
  });

  it('a payout whose outcome is unknown ([stub:pay=timeout]) is resolved by lookup, not by paying again', async () => {
    const job = await failedJob('timeout');
    const client = clientInvoice(job.owed, { description: '[stub:pay=timeout]' });
    const first = await refund(job.jobId, client.bolt11).expect(202);
    expect(first.body).toMatchObject({ state: 'paying', outcomeUnknown: true });
    expect((await getJob(t, job.jobId)).costLedger).toMatchObject({ refundState: 'paying', refundOutcomeUnknown: true });
    await refundReaches(job.jobId, 'paid');
    expect(await stubPayments(client.paymentHash)).toHaveLength(1);
    expect(await payoutRows(job.jobId)).toHaveLength(1);
  });

  it('a payout that keeps failing gives up after REFUND_MAX_ATTEMPTS; the refund stays owed for a new invoice', async () => {
    const job = await failedJob('always fails');
    const doomed = clientInvoice(job.owed, { description: '[stub:pay=fail]' });
    await refund(job.jobId, doomed.bolt11).expect(202);
    const failed = await refundReaches(job.jobId, 'failed');
    expect(failed.costLedger).toMatchObject({ refundAttempts: 3, refundAmountSats: job.owed, refundLastError: expect.stringMatching(/no route/) });
    expect(await payoutRows(job.jobId)).toEqual([]);
    const fresh = clientInvoice(job.owed);
    const paid = await refund(job.jobId, fresh.bolt11).expect(200);
    expect(paid.body).toMatchObject({ state: 'paid', refundPaymentHash: fresh.paymentHash });
    expect((await payoutRows(job.jobId)).map((r) => r.paymentHash)).toEqual([fresh.paymentHash]);
  });

  it('many refund requests at once pay exactly one', async () => {
    const job = await failedJob('stampede');
    const answers = await Promise.all(Array.from({ length: 8 }, () => refund(job.jobId, clientInvoice(job.owed).bolt11)));
    const statuses = answers.map((a) => a.status).sort();
    expect(statuses.filter((s) => s === 200)).toHaveLength(1);
    for (const a of answers.filter((x) => x.status !== 200)) {
      expect(a.status).toBe(409);
      expect(['refund_in_progress', 'refund_already_paid']).toContain(a.body.error.code);
    }
    expect(await payoutRows(job.jobId)).toHaveLength(1);
  });

  it('refuses invoices it must not pay: other networks, expired, amountless, or one of its own', async () => {
    const job = await failedJob('picky');
    const cases = [
      [clientInvoice(job.owed, { network: 'bitcoin' }).bolt11, 'wrong_network'],
      [clientInvoice(job.owed, { network: 'signet' }).bolt11, 'wrong_network'],
      [clientInvoice(job.owed, { expirySeconds: 1, timestamp: Math.floor(Date.now() / 1000) - 5 }).bolt11, 'invoice_expired'],
      // Expiring before a payment could cross the network counts as expired.
      [clientInvoice(job.owed, { expirySeconds: 10 }).bolt11, 'invoice_expired'],
      [clientInvoice(null).bolt11, 'amount_required'],
      ['lnbcrt10u1stubold', 'invalid_invoice'],
    ] as const;
    for (const [invoice, code] of cases) {
      const res = await refund(job.jobId, invoice).expect(400);
      expect(res.body.error.code).toBe(code);
    }
    const same = await t.sibling({ JOB_EVAL_FEE_SATS: job.owed });
    try {
      const ours = await createJob(same, 'an invoice of this server');
      const res = await refund(job.jobId, ours.evalInvoice.paymentRequest).expect(400);
      expect(res.body.error.code).toBe('invalid_invoice');
    } finally {
      await same.close();
    }
    expect((await getJob(t, job.jobId)).costLedger.refundState).toBe('pending');
  });
});

describe('invoices expire', () => {
  it('the stub refuses to pay an expired invoice; the session and the job it was for expire, and say so', async () => {
    // Short, but long enough for the quoted job's evaluation invoice to be paid in time on a loaded machine.
    const short = await t.sibling({ INVOICE_EXPIRY_S: 3 });
    try {
      const session = await short.http.post('/api/sessions').send({ amount_sats: 100 }).expect(201);
      const job = await createJob(short, 'never paid in time');
      const quoted = await quotedJob(short, 'quoted but the work is never paid');
      const stream = readSse(`${short.url}/api/jobs/${quoted.jobId}/stream`);
      const invoices: Array<{ paymentHash: string; expiresAt: string }> = [session.body.invoice, job.evalInvoice, quoted.workInvoice];
      const last = Math.max(...invoices.map((i) => Date.parse(i.expiresAt)));
      await waitFor(() => Date.now() > last, { what: 'the invoices to pass their expiry', intervalMs: 50 });
      for (const { paymentHash: hash } of invoices) {
        const refused = await short.http.post(`/api/dev/stub/pay/${hash}`).expect(409);
        expect(refused.body.error.code).toBe('invoice_expired');
      }
      await short.ctx.maintenance.sweep();
      const s = await short.http.get(`/api/sessions/${session.body.sessionId}`).set({ Authorization: `Bearer ${session.body.sessionToken}` }).expect(200);
      expect(s.body).toMatchObject({ state: 'expired', balanceSats: 0, invoices: [{ state: 'expired', paymentHash: session.body.invoice.paymentHash }] });
      expect(await getJob(short, job.jobId)).toMatchObject({ state: 'expired', evalInvoice: { state: 'expired' }, reason: expect.stringMatching(/expired/) });
      expect(await getJob(short, quoted.jobId)).toMatchObject({ state: 'expired', workInvoice: { state: 'expired' } });
      expect((await stream).events.at(-1)).toMatchObject({ event: 'error', data: { code: 'invoice_expired', state: 'expired' } });
      const inv = await short.http.get(`/api/invoices/${job.evalInvoice.paymentHash}`).expect(200);
      expect(inv.body).toMatchObject({ state: 'expired', purpose: 'job_eval', amountSats: 10 });
      expect(await short.ctx.db.select().from(ledgerEntries).where(eq(ledgerEntries.jobId, job.jobId))).toEqual([]);
    } finally {
      await short.close();
    }
  });

  it('shows any invoice by payment hash, and 404s what is not one', async () => {
    const created = await t.http.post('/api/sessions').send({ amount_sats: 100 }).expect(201);
    const hash = created.body.invoice.paymentHash;
    expect((await t.http.get(`/api/invoices/${hash}`).expect(200)).body).toMatchObject({ state: 'pending', purpose: 'session_deposit', amountSats: 100 });
    await pay(t, hash);
    const paid = await t.http.get(`/api/invoices/${hash.toUpperCase()}`).expect(200);
    expect(paid.body).toMatchObject({ state: 'paid', paidAt: expect.any(String) });
    expect(paid.body.refund).toBeUndefined();
    await t.http.get(`/api/invoices/${'0'.repeat(64)}`).expect(404);
    await t.http.get('/api/invoices/nope').expect(404);
    await t.http.post('/api/invoices/nope/refund').send({}).expect(404);
  });
});
