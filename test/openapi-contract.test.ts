import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobs as jobsTable } from '../src/db/schema.js';
import { ServerMessage } from '../src/runs/socket-messages.js';
import { contractChecker, mismatch } from './helpers/contract.js';
import { WsClient } from './helpers/ws.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { routeConfigs } from './helpers/openapi.js';
import { client, poll, type Client } from './testkit/client.js';
import { runAll } from './testkit/index.js';

/**
 * The OpenAPI document against real answers: the testkit's flows (sessions, jobs, runs, the OpenAI face) and the
 * routes they do not reach, over a real socket; every exchange is checked against the document's own zod schemas
 * (documented route and status, and a body or SSE frames that parse and lose no field). Then every documented
 * operation must have been seen succeeding, so a response described but never checked is caught too.
 */
let t: TestServer;
let api: Client;
let checker: ReturnType<typeof contractChecker>;

beforeAll(async () => {
  t = await startTestServer({ STUB_TOKEN_DELAY_MS: 1, DEMO_RATE_LIMIT: 100 });
  checker = contractChecker(routeConfigs(t.ctx));
  api = client(t.url, { observe: checker.check });
});
afterAll(() => t?.close());

/** The routes the testkit does not reach, with their success and a few of their errors. */
async function theRest(api: Client) {
  const created = await api.post('/api/sessions', { body: { amount_sats: 2000 }, expect: 201 });
  const { sessionId, sessionToken: token } = created.body;
  await api.post(`/api/dev/stub/pay/${created.body.invoice.paymentHash}`, { expect: 200 });
  await api.post(`/api/dev/stub/pay/${created.body.invoice.paymentHash}`, { expect: 200 });
  await api.post(`/api/sessions/${sessionId}/topup`, { token, body: { amount_sats: 100 }, expect: 201 });
  await api.post(`/api/sessions/${sessionId}/topup`, { token, body: { amount_sats: 1 }, expect: 400 });
  await api.get(`/api/invoices/${created.body.invoice.paymentHash}`, { expect: 200 });
  await api.get(`/api/invoices/${'0'.repeat(64)}`, { expect: 404 });
  await api.get('/api/openapi.json', { expect: 200 });
  await api.get('/api/demo?request=hello', { expect: 200 });
  await api.get('/api/demo?request=fail%20%5Bstub%3Afail%5D', { expect: 502 });
  await api.get('/api/demo', { expect: 400 });
  await api.get('/api/runs?cursor=nonsense', { token, expect: 400 });

  // A run that ended: stopping it is harmless, its stream after the final event is 204; one that failed.
  const done = await api.post(`/api/sessions/${sessionId}/request`, { token, body: { request: 'short [stub:tokens=3]' }, expect: 202 });
  const events = await api.stream(`/api/sessions/${sessionId}/requests/${done.body.requestId}/stream`, { authorization: `Bearer ${token}` });
  await api.post(`/api/runs/${done.body.requestId}/stop`, { token, expect: 200 });
  await api.get(`/api/runs/${done.body.requestId}/stream`, { token, headers: { 'Last-Event-ID': events.at(-1)!.id! }, expect: 204 });
  await api.get(`/api/runs/${done.body.requestId}/stream?starting_after=x`, { token, expect: 400 });
  await api.get(`/api/sessions/${sessionId}/requests/${done.body.requestId}`, { token, expect: 200 });
  const failed = await api.post(`/api/sessions/${sessionId}/request`, { token, body: { request: 'no [stub:fail]' }, expect: 202 });
  await api.stream(`/api/runs/${failed.body.requestId}/stream`, { authorization: `Bearer ${token}` });
  await api.post(`/api/sessions/${sessionId}/request`, { token, body: { request: 'x' }, headers: { 'Idempotency-Key': ' bad key' }, expect: 400 });
  await api.post(`/api/sessions/${sessionId}/request`, { token, body: { request: 'x', model: 'no-such-model' }, expect: 400 });
  const busy = await api.post(`/api/sessions/${sessionId}/request`, { token, body: { request: 'long [stub:tokens=400] [stub:delay=20]' }, expect: 202 });
  await api.delete(`/api/runs/${busy.body.requestId}`, { token, expect: 409 });
  await api.post(`/api/runs/${busy.body.requestId}/stop`, { token, expect: 202 });

  // A job stream that cannot start, and one rejected.
  const rejected = await api.post('/api/jobs', { body: { request: 'nope [stub:reject]' }, expect: 201 });
  await api.post(`/api/dev/stub/pay/${rejected.body.evalInvoice.paymentHash}`, { expect: 200 });
  await poll(async () => (await api.get(`/api/jobs/${rejected.body.jobId}`, { expect: 200 })).body.state === 'rejected', 'the job to be rejected');
  await api.stream(`/api/jobs/${rejected.body.jobId}/stream`);
  await api.post(`/api/jobs/${rejected.body.jobId}/refund`, { body: { invoice: 'lnbc1' }, expect: 409 });

  // A payment for a job that is gone is held as refundable, and claimed back with its preimage.
  const orphan = await api.post('/api/jobs', { body: { request: 'orphan' }, expect: 201 });
  await t.ctx.db.delete(jobsTable).where(eq(jobsTable.id, orphan.body.jobId));
  const { paymentHash, amountSats } = orphan.body.evalInvoice;
  const paid = await api.post(`/api/dev/stub/pay/${paymentHash}`, { expect: 200 });
  await api.get(`/api/invoices/${paymentHash}`, { expect: 200 });
  const wallet = await api.post('/api/dev/stub/wallet/invoice', { body: { amount_sats: amountSats, memo: 'my refund' }, expect: 201 });
  await api.post(`/api/invoices/${paymentHash}/refund`, { body: { preimage: 'ab'.repeat(32), invoice: wallet.body.paymentRequest }, expect: 403 });
  await api.post(`/api/invoices/${paymentHash}/refund`, { body: { preimage: paid.body.preimage, invoice: wallet.body.paymentRequest }, expect: 200 });
  await api.get(`/api/invoices/${paymentHash}`, { expect: 200 });
  await api.post(`/api/invoices/${created.body.invoice.paymentHash}/refund`, { body: { preimage: 'ab'.repeat(32), invoice: wallet.body.paymentRequest }, expect: 409 });

  // The WebSocket: the handshake (101) and its refusals, and every message the server sends, against the document.
  await api.get('/api/ws', { token, expect: 426 });
  const ws = await WsClient.open(t.url, { token });
  checker.check({ method: 'GET', path: '/api/ws', status: 101, contentType: null });
  await ws.wait((m) => m.type === 'authenticated');
  await ws.ask({ type: 'subscribe', session: true }, (m) => m.type === 'subscribed');
  const watched = await api.post(`/api/sessions/${sessionId}/request`, { token, body: { request: 'socket [stub:tokens=30] [stub:delay=5]' }, expect: 202 });
  ws.send({ type: 'subscribe', runId: watched.body.requestId, after: 1 });
  await ws.wait((m) => m.type === 'event' && m.seq === 3);
  await ws.ask({ type: 'stop', runId: watched.body.requestId }, (m) => m.type === 'stopping');
  const last = await ws.final(watched.body.requestId);
  await ws.wait((m) => m.type === 'run' && m.state === 'cancelled');
  await ws.ask({ type: 'subscribe', runId: failed.body.requestId }, (m) => m.type === 'event' && m.event === 'error');
  await ws.ask({ type: 'subscribe', runId: watched.body.requestId, after: last.seq }, (m) => m.type === 'unsubscribed');
  await ws.ask({ type: 'subscribe', runId: '00000000-0000-4000-8000-000000000000' }, (m) => m.type === 'error');
  await ws.ask({ type: 'unsubscribe', session: true }, (m) => m.type === 'unsubscribed');
  const kinds = new Set(ws.messages.map((m) => m.type));
  expect([...kinds].sort()).toEqual(['authenticated', 'error', 'event', 'run', 'stopping', 'subscribed', 'unsubscribed']);
  for (const m of ws.messages) {
    const why = mismatch(ServerMessage, m);
    if (why) checker.problems.push(`GET /api/ws → message ${JSON.stringify(m).slice(0, 200)}: ${why}`);
  }
  await ws.close();

  // The OpenAI face's other routes.
  const model = (await api.get('/v1/models', { token, expect: 200 })).body.data[0].id as string;
  await api.get(`/v1/models/${model}`, { token, expect: 200 });
  await api.get('/v1/models/nope', { token, expect: 404 });
  const r = await api.post('/v1/responses', { token, body: { model, input: [{ role: 'user', content: 'items [stub:tokens=2]' }], metadata: { k: 'v' } }, expect: 200 });
  await api.get(`/v1/responses/${r.body.id}/input_items?order=asc`, { token, expect: 200 });
  await api.delete(`/v1/responses/${r.body.id}`, { token, expect: 200 });
  await api.post('/v1/responses', { token, body: { model, input: [{ role: 'tool', content: 'x' }] }, expect: 400 });
  await api.stream('/v1/responses', { authorization: `Bearer ${token}` }, { model, input: 'fails [stub:fail]', stream: true });
  await api.stream('/v1/chat/completions', { authorization: `Bearer ${token}` }, { model, messages: [{ role: 'user', content: 'fails [stub:fail]' }], stream: true });
  // The other ends of a stream: incomplete (the token cap, a content filter), and chat's usage chunk and length.
  await api.stream('/v1/responses', { authorization: `Bearer ${token}` }, { model, input: 'capped [stub:tokens=9]', max_output_tokens: 3, stream: true });
  await api.stream('/v1/responses', { authorization: `Bearer ${token}` }, { model, input: 'filtered [stub:filter] [stub:tokens=6]', stream: true, background: true });
  await api.stream('/v1/chat/completions', { authorization: `Bearer ${token}` }, { model, messages: [{ role: 'user', content: 'usage [stub:tokens=9]' }], max_tokens: 3, stream: true, stream_options: { include_usage: true } });
  await api.post('/v1/responses', { token, body: { model, input: 'capped [stub:tokens=9]', max_output_tokens: 3 }, expect: 200 });
  await api.post('/v1/chat/completions', { token, body: { model, messages: [{ role: 'user', content: 'capped [stub:tokens=9]' }], max_completion_tokens: 3 }, expect: 200 });
  await api.post('/v1/chat/completions', { token, body: { model, messages: [{ role: 'user', content: 'fails [stub:fail]' }] }, expect: 502 });
  const conv = await api.post('/v1/conversations', { token, body: { items: [{ role: 'system', content: 'Be terse.' }], metadata: { topic: 'canals' } }, expect: 200 });
  await api.get(`/v1/conversations/${conv.body.id}`, { token, expect: 200 });
  await api.post(`/v1/conversations/${conv.body.id}`, { token, body: { metadata: { topic: 'locks' } }, expect: 200 });
  await api.get(`/v1/conversations/${conv.body.id}/items`, { token, expect: 200 });
  await api.get(`/v1/conversations/${conv.body.id}/items?after=nope`, { token, expect: 400 });
  await api.delete(`/v1/conversations/${conv.body.id}`, { token, expect: 200 });
  await api.get(`/v1/conversations/${conv.body.id}`, { token, expect: 404 });
}

describe('the OpenAPI document against real answers', () => {
  it('describes every answer of the testkit’s flows and of the other routes, and every operation is seen succeeding', async () => {
    await runAll(api);
    await theRest(api);
    expect(checker.problems).toEqual([]);
    const unchecked = [...routeConfigs(t.ctx).keys()].filter((key) => ![...(checker.seen.get(key) ?? [])].some((s) => s < 300));
    expect(unchecked, 'documented operations never seen succeeding here').toEqual([]);
  }, 120_000);
});
