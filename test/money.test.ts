import { eq } from 'drizzle-orm';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ledgerEntries, sessions } from '../src/db/schema.js';
import { estimateSats, priceSnapshot } from '../src/ledger/pricing.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectLedgerBalanced, expectNoLeaks, paidSession, waitFinal } from './helpers/sessions.js';

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer();
});
afterAll(() => t.close());
afterEach(() => expectNoLeaks(t));

describe('money', () => {
  it('accepts exactly as many of 50 concurrent requests as the balance covers', async () => {
    const s = await paidSession(t, 200);
    // Long runs, so none finishes (and refunds) while the burst is still arriving.
    const text = 'race [stub:tokens=3] [stub:delay=60000]';
    const price = estimateSats(priceSnapshot(t.ctx.config), text, t.ctx.config.DEFAULT_MAX_TOKENS);
    const fits = Math.floor(200 / price);
    expect(fits).toBeGreaterThan(1);
    expect(fits).toBeLessThan(50);
    const results = await Promise.all(
      Array.from({ length: 50 }, () => t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: text })),
    );
    const accepted = results.filter((r) => r.status === 202);
    const refused = results.filter((r) => r.status === 402);
    expect(accepted).toHaveLength(fits);
    expect(refused).toHaveLength(50 - fits);
    for (const r of refused) expect(r.body.error.details.requiredSats).toBe(price);
    // Every balance a 202 reported is distinct and never negative.
    const balances = accepted.map((r) => r.body.balanceRemaining).sort((a, b) => a - b);
    expect(new Set(balances).size).toBe(fits);
    expect(balances[0]).toBeGreaterThanOrEqual(0);

    // (Past the per-session cap some wait in the queue: a stop finishes those where they wait.)
    for (const r of accepted) expect(await t.ctx.executor.cancel(r.body.requestId)).toBe(true);
    for (const r of accepted) expect((await waitFinal(t, s, r.body.requestId)).state).toBe('cancelled');
    const ledger = await expectLedgerBalanced(t, s);
    expect(ledger.balanceSats).toBe(200);
    expect(ledger.entries.filter((e) => e.kind === 'debit')).toHaveLength(fits);
    expect(ledger.entries.filter((e) => e.kind === 'refund')).toHaveLength(fits);
  });

  it('charges actual usage at the configured prices and refunds the rest', async () => {
    const s = await paidSession(t, 1000);
    const text = 'count me [stub:tokens=100] [stub:delay=0]';
    const res = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: text, max_tokens: 500 }).expect(202);
    const prices = priceSnapshot(t.ctx.config);
    expect(res.body.debitedSats).toBe(estimateSats(prices, text, 500));
    const done = await waitFinal(t, s, res.body.requestId);
    const expected = Math.ceil((done.usage.inputTokens * prices.inputPer1k + 100 * prices.outputPer1k) / 1000);
    expect(done.chargedSats).toBe(Math.max(prices.minSats, expected));
    expect(done.refundedSats).toBe(res.body.debitedSats - done.chargedSats);
    expect((await expectLedgerBalanced(t, s)).balanceSats).toBe(1000 - done.chargedSats);
  });

  it('caps the reply at max_tokens, so the debit always covers the charge', async () => {
    const s = await paidSession(t, 1000);
    const res = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: 'long [stub:tokens=90] [stub:delay=0]', max_tokens: 7 }).expect(202);
    const done = await waitFinal(t, s, res.body.requestId);
    expect(done.usage.outputTokens).toBe(7);
    expect(done.chargedSats).toBeLessThanOrEqual(res.body.debitedSats);
  });

  it('refuses a second refund of the same run at the database', async () => {
    const s = await paidSession(t, 500);
    const res = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: 'once [stub:tokens=2] [stub:delay=0]' }).expect(202);
    await waitFinal(t, s, res.body.requestId);
    await expect(
      t.ctx.db.insert(ledgerEntries).values({ sessionId: s.id, runId: res.body.requestId, kind: 'refund', amountSats: 1 }),
    ).rejects.toThrow();
    // And the balance can never go negative, whatever a bug tries.
    await expect(t.ctx.db.update(sessions).set({ balanceSats: -1 }).where(eq(sessions.id, s.id))).rejects.toThrow();
    await expectLedgerBalanced(t, s);
  });
});
