import { expect } from 'vitest';
import type { TestServer } from './context.js';
import { waitFor } from './wait.js';

export interface PaidSession {
  id: string;
  token: string;
  auth: { Authorization: string };
}

/** Create a session and pay its deposit through the stub, as a client would. */
export async function paidSession(t: Pick<TestServer, "http">, amountSats = 1000): Promise<PaidSession> {
  const created = await t.http.post('/api/sessions').send({ amount_sats: amountSats }).expect(201);
  await t.http.post(`/api/dev/stub/pay/${created.body.invoice.paymentHash}`).expect(200);
  const s = { id: created.body.sessionId as string, token: created.body.sessionToken as string };
  return { ...s, auth: { Authorization: `Bearer ${s.token}` } };
}

export async function postRequest(t: Pick<TestServer, "http">, s: PaidSession, request: string, extra: Record<string, unknown> = {}) {
  const res = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request, ...extra });
  expect(res.status, JSON.stringify(res.body)).toBe(202);
  return res.body as { requestId: string; sessionId: string; state: string; debitedSats: number; balanceRemaining: number };
}

export async function getRequest(t: TestServer, s: PaidSession, requestId: string) {
  const res = await t.http.get(`/api/sessions/${s.id}/requests/${requestId}`).set(s.auth).expect(200);
  return res.body;
}

/** Poll a request until it reaches a final state. */
export async function waitFinal(t: TestServer, s: PaidSession, requestId: string, timeoutMs = 10_000) {
  return waitFor(
    async () => {
      const r = await getRequest(t, s, requestId);
      return ['complete', 'failed', 'cancelled', 'interrupted'].includes(r.state) ? r : null;
    },
    { timeoutMs, what: `request ${requestId} to finish` },
  );
}

/** The session's balance equals the sum of its ledger rows (the invariant of every money test). */
export async function expectLedgerBalanced(t: TestServer, s: PaidSession) {
  const res = await t.http.get(`/api/sessions/${s.id}/ledger`).set(s.auth).expect(200);
  const sum = res.body.entries.reduce((a: number, e: { amountSats: number }) => a + e.amountSats, 0);
  expect(sum).toBe(res.body.balanceSats);
  return res.body as { balanceSats: number; entries: Array<{ kind: string; amountSats: number; runId: string | null }> };
}

/** Nothing stays in the registry once runs end and subscribers leave. */
export async function expectNoLeaks(t: TestServer) {
  await waitFor(
    () => {
      const s = t.ctx.registry.stats();
      return s.entries === 0 && s.subscribers === 0 && s.watchers === 0 && t.ctx.news.size === 0 && t.ctx.streams.size === 0 && t.ctx.jobWaits.size === 0;
    },
    { timeoutMs: 5000, what: `an empty registry (now ${JSON.stringify({ ...t.ctx.registry.stats(), news: t.ctx.news.size, streams: t.ctx.streams.size, jobWaits: t.ctx.jobWaits.size })})` },
  );
}
