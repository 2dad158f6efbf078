import assert from 'node:assert/strict';
import { poll, type Client } from './client.js';

const FINAL = ['complete', 'failed', 'cancelled', 'interrupted'];

/**
 * The session flow over plain HTTP, as a newcomer would walk it with curl. Needs the stub payment provider's
 * dev route to pay invoices (not mounted in production).
 */
export async function sessionFlow(api: Client, log: (msg: string) => void = () => {}) {
  await api.get('/api/healthz', { expect: 200 });
  const created = await api.post('/api/sessions', { body: { amount_sats: 300 }, expect: 201 });
  const { sessionId, sessionToken: token, invoice } = created.body;
  assert.equal(created.body.state, 'awaiting_payment');
  await api.post(`/api/dev/stub/pay/${invoice.paymentHash}`, { expect: 200 });
  const session = await api.get(`/api/sessions/${sessionId}`, { token, expect: 200 });
  assert.equal(session.body.state, 'active');
  assert.equal(session.body.balanceSats, 300);
  log(`session ${sessionId} is active with 300 sats`);

  const started = Date.now();
  const accepted = await api.post(`/api/sessions/${sessionId}/request`, { token, body: { request: 'testkit [stub:tokens=10] [stub:delay=30]' }, expect: 202 });
  assert.ok(Date.now() - started < 1000, '202 must come at once');
  const { requestId, debitedSats } = accepted.body;
  assert.ok(accepted.headers.get('location')?.endsWith(`/requests/${requestId}`));

  // Stream it live and, at the same time, poll it.
  const live = api.stream(`/api/sessions/${sessionId}/requests/${requestId}/stream?access_token=${encodeURIComponent(token)}`);
  const polled = await poll(async () => {
    const r = await api.get(`/api/sessions/${sessionId}/requests/${requestId}`, { token, expect: 200 });
    return FINAL.includes(r.body.state) ? r.body : null;
  }, 'the request to finish');
  const events = await live;
  assert.equal(polled.state, 'complete');
  const tokens = events.filter((e) => e.event === 'token').map((e) => e.data.content).join('');
  assert.equal(events.at(-1)?.event, 'done');
  assert.equal(polled.result, tokens);
  assert.deepEqual(events.map((e) => Number(e.id)), events.map((_, i) => i + 1));
  log(`request ${requestId}: ${events.length - 1} tokens streamed, charged ${polled.chargedSats} of ${debitedSats}`);

  // A late joiner gets the whole replay; a cursor resumes after it.
  const replay = await api.stream(`/api/sessions/${sessionId}/requests/${requestId}/stream`, { authorization: `Bearer ${token}` });
  assert.deepEqual(replay, events);
  const resumed = await api.stream(`/api/sessions/${sessionId}/requests/${requestId}/stream?starting_after=5`, { authorization: `Bearer ${token}` });
  assert.deepEqual(resumed, events.slice(5));

  // A failure refunds in full.
  const failing = await api.post(`/api/sessions/${sessionId}/request`, { token, body: { request: 'testkit [stub:fail] [stub:delay=5]' }, expect: 202 });
  const failedEvents = await api.stream(`/api/sessions/${sessionId}/requests/${failing.body.requestId}/stream`, { authorization: `Bearer ${token}` });
  assert.equal(failedEvents.at(-1)?.event, 'error');
  assert.equal(failedEvents.at(-1)?.data.refundedSats, failing.body.debitedSats);

  // The balance adds up: deposit − charges.
  const ledger = await api.get(`/api/sessions/${sessionId}/ledger`, { token, expect: 200 });
  const sum = ledger.body.entries.reduce((a: number, e: { amountSats: number }) => a + e.amountSats, 0);
  assert.equal(sum, ledger.body.balanceSats);
  assert.equal(ledger.body.balanceSats, 300 - polled.chargedSats);

  // Errors are 4xx in the envelope.
  assert.equal((await api.get(`/api/sessions/${sessionId}`)).status, 401);
  const other = await api.post('/api/sessions', { body: { amount_sats: 100 }, expect: 201 });
  assert.equal((await api.get(`/api/sessions/${sessionId}`, { token: other.body.sessionToken })).status, 404);
  await api.post(`/api/dev/stub/pay/${other.body.invoice.paymentHash}`, { expect: 200 });
  const tooBig = await api.post(`/api/sessions/${other.body.sessionId}/request`, { token: other.body.sessionToken, body: { request: 'x', max_tokens: 4096 } });
  assert.equal(tooBig.status, 402);
  assert.equal(tooBig.body.error.code, 'insufficient_balance');
  log('session flow: ok');
  return { sessionId, token };
}
