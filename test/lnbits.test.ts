import { eq, isNotNull, sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobs as jobsTable, ledgerEntries } from '../src/db/schema.js';
import { decodeInvoice } from '../src/providers/payments/bolt11.js';
import { startFakeLnbits, type FakeLnbits } from './fakes/lnbits.js';
import { clientInvoice } from './helpers/bolt11.js';
import supertest from 'supertest';
import type { TestServer } from './helpers/context.js';
import { getJob, refundReaches as refundReachesOf, waitJob } from './helpers/jobs.js';
import { failedLnbitsJob, payFromLnbitsWallet, payRequestsFor, startLnbitsServer } from './helpers/lnbits.js';
import { freePort } from './helpers/global-setup.js';
import { startServerProcess } from './helpers/process.js';
import { readSse } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';

let fake: FakeLnbits;
let t: TestServer;
beforeAll(async () => {
  fake = await startFakeLnbits({ network: 'bitcoin' });
  t = await startLnbitsServer(fake);
});
afterAll(async () => {
  await t?.close();
  await fake?.close();
});

const auth = (token: string) => ({ Authorization: `Bearer ${token}` });
const lookups = (hash: string) => fake.requests.filter((r) => r.method === 'GET' && r.path === `/api/v1/payments/${hash}`);
const jobLedger = (jobId: string) => t.ctx.db.select().from(ledgerEntries).where(eq(ledgerEntries.jobId, jobId));
const refundReaches = (jobId: string, state: string) => refundReachesOf(t, jobId, state);

describe('LNbits: receiving', () => {
  it('a session deposit: LNbits makes the invoice, another wallet pays it, the webhook makes us ask, the GET confirms', async () => {
    const created = await t.http.post('/api/sessions').send({ amount_sats: 200 }).expect(201);
    const { paymentHash, paymentRequest } = created.body.invoice;
    expect(decodeInvoice(paymentRequest)).toMatchObject({ network: 'bitcoin', paymentHash, amountMsat: 200_000n });

    // What went over the wire: the invoice key in X-Api-Key, and LNbits's create-invoice body.
    const create = fake.requests.find((r) => r.method === 'POST' && r.body.includes(`sluice deposit ${created.body.sessionId}`))!;
    expect(create.path).toBe('/api/v1/payments');
    expect(create.headers['x-api-key']).toBe(fake.wallet.inkey);
    expect(create.headers['content-type']).toBe('application/json');
    expect(JSON.parse(create.body)).toEqual({
      out: false,
      amount: 200,
      unit: 'sat',
      memo: `sluice deposit ${created.body.sessionId}`,
      expiry: 3600,
      webhook: t.ctx.config.LNBITS_WEBHOOK_URL,
    });

    const paid = await payFromLnbitsWallet(fake, paymentRequest);
    expect(paid.status).toBe(201);
    expect(paid.body.status).toBe('success');
    await fake.idle();
    // LNbits posted its webhook once: a JSON string holding the payment's JSON, which we answered 200.
    const hook = fake.webhooks.find((w) => w.body.includes(paymentHash))!;
    expect(hook.status).toBe(200);
    expect(hook.headers['User-Agent']).toMatch(/^LNbits\//);
    expect(JSON.parse(JSON.parse(hook.body))).toMatchObject({ payment_hash: paymentHash, status: 'success', amount: 200_000 });
    // …and we believed it only after asking LNbits, with the invoice key.
    expect(lookups(paymentHash).map((r) => r.headers['x-api-key'])).toContain(fake.wallet.inkey);

    const session = await t.http.get(`/api/sessions/${created.body.sessionId}`).set(auth(created.body.sessionToken)).expect(200);
    expect(session.body).toMatchObject({ state: 'active', balanceSats: 200 });
    expect(session.body.invoices[0]).toMatchObject({ paymentHash, purpose: 'session_deposit', state: 'paid' });
    // The admin key was never used to receive or to look up an invoice.
    expect(fake.requests.filter((r) => r.headers['x-api-key'] === fake.wallet.adminkey && !r.body.includes('"out":true'))).toEqual([]);
  });

  it('a job over Lightning: evaluation and work invoices settle, the work fails, the refund is paid with the admin key', async () => {
    const job = await failedLnbitsJob(t, fake);
    const client = clientInvoice(job.owed, { network: 'bitcoin' });
    const refund = await t.http.post(`/api/jobs/${job.jobId}/refund`).send({ invoice: client.bolt11 }).expect(200);
    expect(refund.body).toMatchObject({ state: 'paid', amountSats: job.owed, refundPaymentHash: client.paymentHash, attempts: 1 });

    const [payReq] = payRequestsFor(fake, client.bolt11);
    expect(payReq!.headers['x-api-key']).toBe(fake.wallet.adminkey);
    expect(JSON.parse(payReq!.body)).toEqual({ out: true, bolt11: client.bolt11 });
    expect(fake.paymentsOf(client.paymentHash)).toMatchObject([{ status: 'success', amount: -job.owed * 1000 }]);
    const rows = await jobLedger(job.jobId);
    expect(rows.map((r) => [r.kind, r.amountSats]).sort()).toEqual(
      [['job_eval_payment', 10], ['job_refund_payout', -job.owed], ['job_work_payment', job.owed]].sort(),
    );
    expect((await getJob(t, job.jobId)).costLedger).toMatchObject({ refundState: 'paid', refundPaymentHash: client.paymentHash });
  });

  it('a webhook that lies (claims paid; LNbits says not) credits nothing, and a flood of them asks LNbits once', async () => {
    const created = await t.http.post('/api/sessions').send({ amount_sats: 300 }).expect(201);
    const { paymentHash } = created.body.invoice;
    const forged = JSON.stringify(JSON.stringify({ checking_id: paymentHash, payment_hash: paymentHash, amount: 300_000, status: 'success', preimage: '00'.repeat(32) }));
    const before = lookups(paymentHash).length;
    for (let i = 0; i < 5; i++) {
      await t.http.post('/api/webhooks/lnbits').set('content-type', 'application/json').send(forged).expect(200, { ok: true });
    }
    expect(lookups(paymentHash).length - before).toBe(1);
    const session = await t.http.get(`/api/sessions/${created.body.sessionId}`).set(auth(created.body.sessionToken)).expect(200);
    expect(session.body).toMatchObject({ state: 'awaiting_payment', balanceSats: 0 });
    expect(await t.ctx.db.select().from(ledgerEntries).where(eq(ledgerEntries.paymentHash, paymentHash))).toEqual([]);

    // A hash we never issued costs LNbits nothing; a body without a hash is a 400 in the envelope.
    const unknown = 'ab'.repeat(32);
    await t.http.post('/api/webhooks/lnbits').send({ payment_hash: unknown }).expect(200);
    expect(lookups(unknown)).toEqual([]);
    const bad = await t.http.post('/api/webhooks/lnbits').set('content-type', 'text/plain').send('nonsense').expect(400);
    expect(bad.body.error.code).toBe('invalid_request');
  });

  it('the provider failing is a 502 that names no key; a read of a pending invoice still answers', async () => {
    const wrongKey = await t.sibling({ LNBITS_INVOICE_KEY: 'not-a-key-of-this-lnbits' });
    const otherNet = await t.sibling({ LIGHTNING_NETWORK: 'regtest' });
    const down = await t.sibling({ LNBITS_URL: 'http://127.0.0.1:9/' });
    try {
      for (const s of [wrongKey, otherNet, down]) {
        const res = await s.http.post('/api/sessions').send({ amount_sats: 100 }).expect(502);
        expect(res.body.error.code).toBe('payment_provider_error');
        expect(JSON.stringify(res.body)).not.toContain(fake.wallet.inkey);
        expect(JSON.stringify(res.body)).not.toContain(fake.wallet.adminkey);
      }
      // Made through the healthy server, read through the one whose LNbits is down: 200, still pending.
      const created = await t.http.post('/api/sessions').send({ amount_sats: 100 }).expect(201);
      const read = await down.http.get(`/api/sessions/${created.body.sessionId}`).set(auth(created.body.sessionToken)).expect(200);
      expect(read.body.state).toBe('awaiting_payment');
    } finally {
      await Promise.all([wrongKey.close(), otherNet.close(), down.close()]);
    }
  });

  it('believes a lookup only when LNbits answers for our wallet', async () => {
    // Invoices made without a webhook, so only a lookup can settle them.
    const quiet = await t.sibling({ LNBITS_WEBHOOK_URL: undefined });
    const stranger = await t.sibling({ LNBITS_INVOICE_KEY: 'a-key-lnbits-does-not-know' });
    try {
      const created = await quiet.http.post('/api/sessions').send({ amount_sats: 120 }).expect(201);
      await fake.settleExternally(created.body.invoice.paymentHash);
      // LNbits answers an unknown key too, but for no wallet (no `details`): that proves nothing.
      const asStranger = await stranger.http.get(`/api/sessions/${created.body.sessionId}`).set(auth(created.body.sessionToken)).expect(200);
      expect(asStranger.body).toMatchObject({ state: 'awaiting_payment', balanceSats: 0 });
      const asOwner = await quiet.http.get(`/api/sessions/${created.body.sessionId}`).set(auth(created.body.sessionToken)).expect(200);
      expect(asOwner.body).toMatchObject({ state: 'active', balanceSats: 120 });
    } finally {
      await Promise.all([quiet.close(), stranger.close()]);
    }
  });
});

describe('LNbits: expiry', () => {
  it('an expired invoice opens no session and starts no job; the node refuses it; the state says so', async () => {
    const short = await t.sibling({ INVOICE_EXPIRY_S: 1 });
    try {
      const session = await short.http.post('/api/sessions').send({ amount_sats: 150 }).expect(201);
      const job = await short.http.post('/api/jobs').send({ request: 'too slow to pay' }).expect(201);
      expect(JSON.parse(fake.requests.find((r) => r.body.includes(`sluice deposit ${session.body.sessionId}`))!.body).expiry).toBe(1);
      const stream = readSse(`${short.url}/api/jobs/${job.body.jobId}/stream`);

      const expired = await waitFor(
        async () => {
          const s = await short.http.get(`/api/sessions/${session.body.sessionId}`).set(auth(session.body.sessionToken)).expect(200);
          return s.body.state === 'expired' ? s.body : null;
        },
        { what: 'the unpaid session to expire', intervalMs: 100 },
      );
      expect(expired.invoices[0]).toMatchObject({ state: 'expired', paymentHash: session.body.invoice.paymentHash });
      const j = await waitJob(short, job.body.jobId, ['expired']);
      expect(j.evalInvoice.state).toBe('expired');
      expect((await stream).events).toEqual([{ event: 'error', data: expect.objectContaining({ state: 'expired', code: 'invoice_expired' }) }]);

      await expect(fake.settleExternally(session.body.invoice.paymentHash)).rejects.toThrow(/expired/);
      const ask = await short.http.post(`/api/sessions/${session.body.sessionId}/request`).set(auth(session.body.sessionToken)).send({ request: 'hi' }).expect(409);
      expect(ask.body.error.code).toBe('session_not_active');
    } finally {
      await short.close();
    }
  });

  it('a payment for an expired and deleted job is recorded, held, and refunded to whoever shows its preimage', async () => {
    const short = await t.sibling({ INVOICE_EXPIRY_S: 1 });
    // A funding source that leaves expired invoices pending (LNbits's FakeWallet): they stay payable internally.
    fake.node.cancelsExpired = false;
    try {
      const job = await short.http.post('/api/jobs').send({ request: 'abandoned' }).expect(201);
      const { paymentHash, paymentRequest, amountSats } = job.body.evalInvoice;
      await waitJob(short, job.body.jobId, ['expired']);
      // Retention forgets the job…
      await short.ctx.db.update(jobsTable).set({ updatedAt: new Date(Date.now() - 40 * 86_400_000) }).where(eq(jobsTable.id, job.body.jobId));
      await short.ctx.maintenance.sweep();
      await short.http.get(`/api/jobs/${job.body.jobId}`).expect(404);

      // …then someone pays its invoice from a wallet on the same LNbits (internal payments skip expiry).
      const paid = await payFromLnbitsWallet(fake, paymentRequest);
      expect(paid.body.status).toBe('success');
      await fake.idle();
      const inv = await t.http.get(`/api/invoices/${paymentHash}`).expect(200);
      expect(inv.body).toMatchObject({ paymentHash, purpose: 'job_eval', state: 'refundable', refund: { state: 'claimable', amountSats } });
      const held = await t.ctx.db.select().from(ledgerEntries).where(eq(ledgerEntries.paymentHash, paymentHash));
      expect(held.map((r) => [r.kind, r.amountSats, r.jobId, r.sessionId])).toEqual([['undeliverable_payment', amountSats, null, null]]);

      const claim = (body: object) => t.http.post(`/api/invoices/${paymentHash}/refund`).send(body);
      const client = clientInvoice(amountSats, { network: 'bitcoin' });
      expect((await claim({ invoice: client.bolt11, preimage: 'ab'.repeat(32) }).expect(403)).body.error.code).toBe('invalid_preimage');
      expect((await claim({ invoice: client.bolt11, preimage: 'xyz' }).expect(400)).body.error.code).toBe('invalid_request');
      const refunded = await claim({ invoice: client.bolt11, preimage: paid.body.preimage }).expect(200);
      expect(refunded.body).toMatchObject({ state: 'paid', amountSats, refundPaymentHash: client.paymentHash });
      const again = await claim({ invoice: clientInvoice(amountSats, { network: 'bitcoin' }).bolt11, preimage: paid.body.preimage }).expect(409);
      expect(again.body.error.code).toBe('refund_already_paid');
      expect((await t.http.get(`/api/invoices/${paymentHash}`).expect(200)).body.refund).toMatchObject({ state: 'paid', refundPaymentHash: client.paymentHash });
      const out = await t.ctx.db.select().from(ledgerEntries).where(eq(ledgerEntries.paymentHash, client.paymentHash));
      expect(out.map((r) => [r.kind, r.amountSats])).toEqual([['undeliverable_refund_payout', -amountSats]]);

      // A delivered payment is not refundable here.
      const session = await t.http.post('/api/sessions').send({ amount_sats: 100 }).expect(201);
      const p2 = await payFromLnbitsWallet(fake, session.body.invoice.paymentRequest);
      await fake.idle();
      const notOwed = await t.http.post(`/api/invoices/${session.body.invoice.paymentHash}/refund`).send({ invoice: clientInvoice(100, { network: 'bitcoin' }).bolt11, preimage: p2.body.preimage }).expect(409);
      expect(notOwed.body.error).toMatchObject({ code: 'not_refundable', details: { state: 'paid' } });
    } finally {
      fake.node.cancelsExpired = true;
      await short.close();
    }
  });
});

describe('LNbits: refund payouts', () => {
  it('one that fails once (the wallet could not cover it) is retried with backoff and paid once', async () => {
    const job = await failedLnbitsJob(t, fake);
    const client = clientInvoice(job.owed, { network: 'bitcoin' });
    const balance = fake.wallet.balanceMsat;
    fake.wallet.balanceMsat = 0;
    const first = await t.http.post(`/api/jobs/${job.jobId}/refund`).send({ invoice: client.bolt11 }).expect(202);
    expect(first.body).toMatchObject({ state: 'paying', attempts: 1, lastError: 'Insufficient balance.', outcomeUnknown: false });
    expect((await getJob(t, job.jobId)).costLedger).toMatchObject({ refundState: 'paying', refundAttempts: 1, refundLastError: 'Insufficient balance.' });
    // A second request while it is under way pays nothing.
    expect((await t.http.post(`/api/jobs/${job.jobId}/refund`).send({ invoice: clientInvoice(job.owed, { network: 'bitcoin' }).bolt11 }).expect(409)).body.error.code).toBe('refund_in_progress');

    fake.wallet.balanceMsat = balance;
    const paid = await refundReaches(job.jobId, 'paid');
    expect(paid.costLedger).toMatchObject({ refundPaymentHash: client.paymentHash, refundAttempts: 2 });
    expect(payRequestsFor(fake, client.bolt11)).toHaveLength(2);
    expect(fake.paymentsOf(client.paymentHash).filter((p) => p.status === 'success')).toHaveLength(1);
    expect((await jobLedger(job.jobId)).filter((r) => r.kind === 'job_refund_payout')).toHaveLength(1);
  });

  it('one with no route spends its invoice (LNbits never retries it): it fails, stays owed, and a new invoice is paid', async () => {
    const job = await failedLnbitsJob(t, fake);
    const spent = clientInvoice(job.owed, { network: 'bitcoin' });
    fake.node.next = ['no_route'];
    const failed = await t.http.post(`/api/jobs/${job.jobId}/refund`).send({ invoice: spent.bolt11 }).expect(502);
    expect(failed.body.error).toMatchObject({ code: 'payment_failed', details: { state: 'failed', attempts: 1 } });
    expect(failed.body.error.message).toMatch(/NO_ROUTE/);
    expect((await getJob(t, job.jobId)).costLedger).toMatchObject({ refundState: 'failed', refundAmountSats: job.owed });
    await t.ctx.payouts.sweep();
    expect(payRequestsFor(fake, spent.bolt11)).toHaveLength(1);
    expect((await t.http.post(`/api/jobs/${job.jobId}/refund`).send({ invoice: spent.bolt11 }).expect(400)).body.error.code).toBe('invoice_already_used');

    const fresh = clientInvoice(job.owed, { network: 'bitcoin' });
    await t.http.post(`/api/jobs/${job.jobId}/refund`).send({ invoice: fresh.bolt11 }).expect(200);
    expect((await getJob(t, job.jobId)).costLedger).toMatchObject({ refundState: 'paid', refundPaymentHash: fresh.paymentHash });
    expect((await jobLedger(job.jobId)).filter((r) => r.kind === 'job_refund_payout').map((r) => r.paymentHash)).toEqual([fresh.paymentHash]);
  });

  it('one whose answer never comes (a timeout) is resolved by a lookup, never by paying again', async () => {
    const quick = await t.sibling({ LNBITS_TIMEOUT_MS: 400 });
    try {
      for (const outcome of ['hang', 'in_flight'] as const) {
        const job = await failedLnbitsJob(quick, fake);
        const client = clientInvoice(job.owed, { network: 'bitcoin' });
        fake.node.next = [outcome];
        const first = await quick.http.post(`/api/jobs/${job.jobId}/refund`).send({ invoice: client.bolt11 }).expect(202);
        expect(first.body).toMatchObject({ state: 'paying', outcomeUnknown: true, attempts: 1 });
        await refundReachesOf(quick, job.jobId, 'paid');
        expect(payRequestsFor(fake, client.bolt11)).toHaveLength(1);
        expect(lookups(client.paymentHash).map((r) => r.headers['x-api-key'])).toContain(fake.wallet.adminkey);
        expect((await jobLedger(job.jobId)).filter((r) => r.kind === 'job_refund_payout')).toHaveLength(1);
      }
    } finally {
      await quick.close();
    }
  });

  it('one whose outcome is unknown stays unknown while LNbits cannot be asked, past its attempts, and is never paid twice', async () => {
    const s = await t.sibling({ REFUND_MAX_ATTEMPTS: 2, REFUND_RETRY_BASE_S: 0.01, LNBITS_TIMEOUT_MS: 400 });
    try {
      const job = await failedLnbitsJob(s, fake);
      const client = clientInvoice(job.owed, { network: 'bitcoin' });
      fake.node.next = ['hang'];
      await s.http.post(`/api/jobs/${job.jobId}/refund`).send({ invoice: client.bolt11 }).expect(202);
      fake.down = true;
      const stuck = await waitFor(
        async () => {
          await s.ctx.payouts.sweep();
          const j = await getJob(s, job.jobId);
          return j.costLedger.refundAttempts >= 4 ? j : null;
        },
        { what: 'attempts past the maximum while LNbits is down', intervalMs: 20 },
      );
      expect(stuck.costLedger).toMatchObject({ refundState: 'paying', refundOutcomeUnknown: true });
      fake.down = false;
      await refundReachesOf(s, job.jobId, 'paid');
      expect(payRequestsFor(fake, client.bolt11)).toHaveLength(1);
    } finally {
      fake.down = false;
      await s.close();
    }
  });

  it('refuses a wrong-network, expired or amountless refund invoice with a 400, before anything is paid', async () => {
    const job = await failedLnbitsJob(t, fake);
    const cases = [
      [clientInvoice(job.owed, { network: 'regtest' }).bolt11, 'wrong_network'],
      [clientInvoice(job.owed, { network: 'testnet' }).bolt11, 'wrong_network'],
      [clientInvoice(job.owed, { network: 'bitcoin', timestamp: Math.floor(Date.now() / 1000) - 7200 }).bolt11, 'invoice_expired'],
      [clientInvoice(null, { network: 'bitcoin' }).bolt11, 'amount_required'],
      [clientInvoice(job.owed + 1, { network: 'bitcoin' }).bolt11, 'wrong_amount'],
    ] as const;
    for (const [invoice, code] of cases) {
      const res = await t.http.post(`/api/jobs/${job.jobId}/refund`).send({ invoice }).expect(400);
      expect(res.body.error.code).toBe(code);
      expect(payRequestsFor(fake, invoice)).toEqual([]);
    }
    const wrongNet = await t.http.post(`/api/jobs/${job.jobId}/refund`).send({ invoice: cases[0][0] }).expect(400);
    expect(wrongNet.body.error.details).toEqual({ expectedNetwork: 'bitcoin', invoiceNetwork: 'regtest' });
  });

  it('every sat that moved through the LNbits wallet is a ledger row, and every ledger row moved one', async () => {
    const [row] = await t.ctx.db
      .select({
        inSats: sql<string>`coalesce(sum(amount_sats) filter (where amount_sats > 0), 0)`,
        outSats: sql<string>`coalesce(-sum(amount_sats) filter (where amount_sats < 0), 0)`,
      })
      .from(ledgerEntries)
      .where(isNotNull(ledgerEntries.paymentHash));
    const settled = fake.walletPayments(fake.wallet.id).filter((p) => p.status === 'success');
    expect(Number(row!.inSats)).toBe(settled.filter((p) => p.amount > 0).reduce((a, p) => a + p.amount / 1000, 0));
    expect(Number(row!.outSats)).toBe(settled.filter((p) => p.amount < 0).reduce((a, p) => a - p.amount / 1000, 0));
  });
});

describe('LNbits: the real server process', () => {
  it('configured by its environment alone, takes a deposit and pays a refund, and never logs a key or a preimage', async () => {
    const port = await freePort();
    const p = await startServerProcess({
      PORT: String(port),
      DATABASE_URL: t.ctx.config.DATABASE_URL!,
      LOG_LEVEL: 'trace',
      PAYMENT_PROVIDER: 'lnbits',
      LNBITS_URL: fake.url,
      LNBITS_INVOICE_KEY: fake.wallet.inkey,
      LNBITS_ADMIN_KEY: fake.wallet.adminkey,
      LNBITS_WEBHOOK_URL: `http://127.0.0.1:${port}/api/webhooks/lnbits`,
    });
    try {
      const http = supertest(p.url);
      const created = await http.post('/api/sessions').send({ amount_sats: 250 }).expect(201);
      // LIGHTNING_NETWORK defaults to bitcoin with LNbits.
      expect(decodeInvoice(created.body.invoice.paymentRequest).network).toBe('bitcoin');
      const paid = await payFromLnbitsWallet(fake, created.body.invoice.paymentRequest);
      await fake.idle();
      const session = await http.get(`/api/sessions/${created.body.sessionId}`).set(auth(created.body.sessionToken)).expect(200);
      expect(session.body).toMatchObject({ state: 'active', balanceSats: 250 });

      const job = await failedLnbitsJob({ http, ctx: t.ctx } as TestServer, fake);
      const client = clientInvoice(job.owed, { network: 'bitcoin' });
      await http.post(`/api/jobs/${job.jobId}/refund`).send({ invoice: client.bolt11 }).expect(200);

      p.proc.kill('SIGTERM');
      expect(await p.exited).toBe(0);
      const log = p.output();
      expect(log).toMatch(/invoice settled/);
      for (const secret of [fake.wallet.inkey, fake.wallet.adminkey, paid.body.preimage!, client.preimage]) expect(log).not.toContain(secret);
    } finally {
      p.proc.kill('SIGKILL');
    }
  });
});
