import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { decodeInvoice, preimageMatches } from '../src/providers/payments/bolt11.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectLedgerBalanced, expectNoLeaks, getRequest, paidSession, postRequest, waitFinal } from './helpers/sessions.js';

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer();
});
afterAll(() => t.close());
afterEach(() => expectNoLeaks(t));

describe('the session flow', () => {
  it('creates, pays, requests, polls to completion, and the balance adds up', async () => {
    const created = await t.http.post('/api/sessions').send({ amount_sats: 200 }).expect(201);
    expect(created.body).toMatchObject({ state: 'awaiting_payment', invoice: { amountSats: 200, state: 'pending' } });
    // A real BOLT 11 invoice of the stub's network (regtest), for the amount, with the hash it is known by.
    const decoded = decodeInvoice(created.body.invoice.paymentRequest);
    expect(decoded).toMatchObject({ network: 'regtest', amountMsat: 200_000n, paymentHash: created.body.invoice.paymentHash });
    expect(created.body.invoice.expiresAt).toBe(decoded.expiresAt.toISOString());
    expect(decoded.expiresAt.getTime() - decoded.createdAt.getTime()).toBe(3600_000);
    // ≥128 bits of randomness in the token.
    expect(Buffer.from(created.body.sessionToken.replace(/^sk_/, ''), 'base64url').length).toBeGreaterThanOrEqual(16);
    const auth = { Authorization: `Bearer ${created.body.sessionToken}` };
    const id = created.body.sessionId;

    const before = await t.http.get(`/api/sessions/${id}`).set(auth).expect(200);
    expect(before.body).toMatchObject({ sessionId: id, state: 'awaiting_payment', balanceSats: 0 });

    const paid = await t.http.post(`/api/dev/stub/pay/${created.body.invoice.paymentHash}`).expect(200);
    // Paying reveals the preimage to the payer, as a real payment does.
    expect(preimageMatches(paid.body.preimage, created.body.invoice.paymentHash)).toBe(true);
    const active = await t.http.get(`/api/sessions/${id}`).set(auth).expect(200);
    expect(active.body).toMatchObject({ state: 'active', balanceSats: 200 });
    expect(new Date(active.body.expiresAt).getTime()).toBeGreaterThan(Date.now());

    const completions: unknown[] = [];
    t.ctx.bus.on('session:request:complete', (e) => completions.push(e));
    const res = await t.http.post(`/api/sessions/${id}/request`).set(auth).send({ request: 'tell me [stub:tokens=12]' }).expect(202);
    expect(res.headers.location).toBe(`/api/sessions/${id}/requests/${res.body.requestId}`);
    expect(res.body).toMatchObject({ sessionId: id, state: 'queued' });
    expect(res.body.balanceRemaining).toBe(200 - res.body.debitedSats);

    const s = { id, token: created.body.sessionToken, auth };
    const done = await waitFinal(t, s, res.body.requestId);
    expect(done).toMatchObject({ requestId: res.body.requestId, sessionId: id, state: 'complete', request: 'tell me [stub:tokens=12]' });
    expect(done.usage.outputTokens).toBe(12);
    expect(done.result.split(' ')).toHaveLength(12);
    expect(done.chargedSats + done.refundedSats).toBe(done.debitedSats);
    expect(done.chargedSats).toBeGreaterThan(0);
    expect(done.startedAt).not.toBeNull();
    expect(done.completedAt).not.toBeNull();
    expect(completions).toEqual([{ sessionId: id, requestId: res.body.requestId, state: 'complete' }]);

    const after = await t.http.get(`/api/sessions/${id}`).set(auth).expect(200);
    expect(after.body.balanceSats).toBe(200 - done.chargedSats);
    const ledger = await expectLedgerBalanced(t, s);
    expect(ledger.entries.map((e) => e.kind)).toEqual(['deposit', 'debit', 'refund']);
  });

  it('answers 202 in well under a second while the stub is still working', async () => {
    const s = await paidSession(t);
    const started = Date.now();
    const r = await postRequest(t, s, 'slow [stub:tokens=40] [stub:delay=50]');
    expect(Date.now() - started).toBeLessThan(500);
    const now = await getRequest(t, s, r.requestId);
    expect(['queued', 'executing']).toContain(now.state);
    expect(now.completedAt).toBeNull();
    expect((await waitFinal(t, s, r.requestId)).state).toBe('complete');
  });

  it('shows the text so far while a run executes', async () => {
    const s = await paidSession(t);
    const r = await postRequest(t, s, 'partial [stub:tokens=30] [stub:delay=30]');
    const mid = await (async () => {
      for (;;) {
        const g = await getRequest(t, s, r.requestId);
        if (g.state === 'executing' && g.result.length > 0) return g;
        await new Promise((res) => setTimeout(res, 10));
      }
    })();
    expect(mid.usage.outputTokens).toBeGreaterThan(0);
    const done = await waitFinal(t, s, r.requestId);
    expect(done.result.startsWith(mid.result)).toBe(true);
    expect(done.result.length).toBeGreaterThan(mid.result.length);
  });

  it('credits a deposit once however often it is paid, and 404s an unknown invoice', async () => {
    const created = await t.http.post('/api/sessions').send({ amount_sats: 300 }).expect(201);
    const hash = created.body.invoice.paymentHash;
    await Promise.all([1, 2, 3].map(() => t.http.post(`/api/dev/stub/pay/${hash}`).expect(200)));
    await t.http.post(`/api/dev/stub/pay/${hash}`).expect(200);
    const s = { id: created.body.sessionId, token: created.body.sessionToken, auth: { Authorization: `Bearer ${created.body.sessionToken}` } };
    const ledger = await expectLedgerBalanced(t, s);
    expect(ledger.balanceSats).toBe(300);
    expect(ledger.entries).toHaveLength(1);
    const unknown = await t.http.post(`/api/dev/stub/pay/${'0'.repeat(64)}`).expect(404);
    expect(unknown.body.error.code).toBe('not_found');
    await t.http.post('/api/dev/stub/pay/not-a-hash').expect(404);
  });

  it('tops up a balance with a second invoice', async () => {
    const s = await paidSession(t, 100);
    const top = await t.http.post(`/api/sessions/${s.id}/topup`).set(s.auth).send({ amount_sats: 250 }).expect(201);
    expect(top.body.invoice).toMatchObject({ amountSats: 250 });
    await t.http.post(`/api/dev/stub/pay/${top.body.invoice.paymentHash}`).expect(200);
    const got = await t.http.get(`/api/sessions/${s.id}`).set(s.auth).expect(200);
    expect(got.body.balanceSats).toBe(350);
    const ledger = await expectLedgerBalanced(t, s);
    expect(ledger.entries.map((e) => e.kind)).toEqual(['deposit', 'topup']);
    await t.http.post(`/api/sessions/${s.id}/topup`).set(s.auth).send({ amount_sats: 5 }).expect(400);
  });

  it('reconciles with the provider on GET when a settlement event was missed', async () => {
    const created = await t.http.post('/api/sessions').send({ amount_sats: 150 }).expect(201);
    // Mark it paid in the provider's books only, as if its notification had been lost.
    const { stubInvoices } = await import('../src/db/schema.js');
    const { eq } = await import('drizzle-orm');
    await t.ctx.db.update(stubInvoices).set({ state: 'paid' }).where(eq(stubInvoices.paymentHash, created.body.invoice.paymentHash));
    const got = await t.http.get(`/api/sessions/${created.body.sessionId}`).set({ Authorization: `Bearer ${created.body.sessionToken}` }).expect(200);
    expect(got.body).toMatchObject({ state: 'active', balanceSats: 150 });
  });
});

describe('errors', () => {
  it('400s bad session bodies with zod details', async () => {
    for (const body of [{}, { amount_sats: 99 }, { amount_sats: 10_001 }, { amount_sats: 'lots' }, { amount_sats: 150.5 }]) {
      const res = await t.http.post('/api/sessions').send(body).expect(400);
      expect(res.body.error.code).toBe('invalid_request');
      expect(res.body.error.details[0].path).toBe('amount_sats');
    }
    const bad = await t.http.post('/api/sessions').set('content-type', 'application/json').send('{"amount_sats":').expect(400);
    expect(bad.body.error.code).toBe('invalid_json');
  });

  it('401 without or with a bad token; 404 for another session or an unknown id', async () => {
    const a = await paidSession(t);
    const b = await paidSession(t);
    const noToken = await t.http.get(`/api/sessions/${a.id}`).expect(401);
    expect(noToken.body.error.code).toBe('unauthorized');
    await t.http.get(`/api/sessions/${a.id}`).set('Authorization', 'Bearer sk_nope').expect(401);
    await t.http.post(`/api/sessions/${a.id}/request`).send({ request: 'x' }).expect(401);
    const other = await t.http.get(`/api/sessions/${a.id}`).set(b.auth).expect(404);
    expect(other.body.error.code).toBe('not_found');
    await t.http.get('/api/sessions/00000000-0000-4000-8000-000000000000').set(b.auth).expect(404);
    await t.http.get('/api/sessions/not-a-uuid').set(b.auth).expect(404);
    // Requests of another session are 404 too, on every route.
    const r = await postRequest(t, a, 'mine [stub:tokens=2]');
    await t.http.get(`/api/sessions/${b.id}/requests/${r.requestId}`).set(b.auth).expect(404);
    await t.http.get(`/api/sessions/${a.id}/requests/${r.requestId}`).set(b.auth).expect(404);
    await t.http.get(`/api/sessions/${b.id}/requests/${r.requestId}/stream`).set(b.auth).expect(404);
    await t.http.get(`/api/sessions/${a.id}/requests/nope`).set(a.auth).expect(404);
    await waitFinal(t, a, r.requestId);
  });

  it('409 for a session that is not active (unpaid or expired)', async () => {
    const created = await t.http.post('/api/sessions').send({ amount_sats: 100 }).expect(201);
    const auth = { Authorization: `Bearer ${created.body.sessionToken}` };
    const unpaid = await t.http.post(`/api/sessions/${created.body.sessionId}/request`).set(auth).send({ request: 'hi' }).expect(409);
    expect(unpaid.body.error).toMatchObject({ code: 'session_not_active', details: { state: 'awaiting_payment' } });

    const s = await paidSession(t);
    const { sessions } = await import('../src/db/schema.js');
    const { eq } = await import('drizzle-orm');
    await t.ctx.db.update(sessions).set({ expiresAt: new Date(Date.now() - 1000) }).where(eq(sessions.id, s.id));
    const expired = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: 'hi' }).expect(409);
    expect(expired.body.error.details.state).toBe('expired');
    const got = await t.http.get(`/api/sessions/${s.id}`).set(s.auth).expect(200);
    expect(got.body.state).toBe('expired');
  });

  it('the sweep expires every session past its expiry, and only those', async () => {
    const [a, b, c] = [await paidSession(t), await paidSession(t), await paidSession(t)];
    const { sessions } = await import('../src/db/schema.js');
    const { inArray } = await import('drizzle-orm');
    await t.ctx.db.update(sessions).set({ expiresAt: new Date(Date.now() - 1000) }).where(inArray(sessions.id, [a.id, b.id]));
    expect(await t.ctx.maintenance.expireSessions()).toBe(2);
    const states = await t.ctx.db.select({ id: sessions.id, state: sessions.state }).from(sessions).where(inArray(sessions.id, [a.id, b.id, c.id]));
    expect(Object.fromEntries(states.map((r) => [r.id, r.state]))).toEqual({ [a.id]: 'expired', [b.id]: 'expired', [c.id]: 'active' });
    expect(await t.ctx.maintenance.expireSessions()).toBe(0);
  });

  it('402 with the balance and the price when the balance cannot cover the estimate', async () => {
    const s = await paidSession(t, 100);
    const res = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: 'big', max_tokens: 4096 }).expect(402);
    expect(res.body.error.code).toBe('insufficient_balance');
    expect(res.body.error.details).toEqual({ balanceSats: 100, requiredSats: expect.any(Number) });
    expect(res.body.error.details.requiredSats).toBeGreaterThan(100);
    const ledger = await expectLedgerBalanced(t, s);
    expect(ledger.balanceSats).toBe(100);
  });

  it('400 for bad request bodies, nothing debited', async () => {
    const s = await paidSession(t, 500);
    const cases = [{}, { request: '' }, { request: '   ' }, { request: 42 }, { request: 'x'.repeat(8_001) }, { request: 'ok', max_tokens: 0 }, { request: 'ok', max_tokens: 5000 }, { request: 'ok', max_tokens: 'many' }];
    for (const body of cases) {
      const res = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send(body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.body.error.code).toBe('invalid_request');
      expect(Array.isArray(res.body.error.details)).toBe(true);
    }
    expect((await expectLedgerBalanced(t, s)).balanceSats).toBe(500);
  });

  it('answers unknown routes with the error envelope', async () => {
    const res = await t.http.get('/api/nope').expect(404);
    expect(res.body.error.code).toBe('not_found');
  });

  it('hides the stub pay route in production', async () => {
    const prod = await t.sibling({ NODE_ENV: 'production' });
    try {
      const created = await prod.http.post('/api/sessions').send({ amount_sats: 100 }).expect(201);
      const res = await prod.http.post(`/api/dev/stub/pay/${created.body.invoice.paymentHash}`).expect(404);
      expect(res.body.error.code).toBe('not_found');
    } finally {
      await prod.close();
    }
  });

  it('reports health', async () => {
    const res = await t.http.get('/api/healthz').expect(200);
    expect(res.body).toEqual({ status: 'ok', role: 'all', runs: { executing: expect.any(Number), queued: expect.any(Number) }, pool: { total: expect.any(Number), idle: expect.any(Number), waiting: 0 } });
  });
});
