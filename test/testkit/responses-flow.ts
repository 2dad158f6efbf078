import assert from 'node:assert/strict';
import { poll, type Client } from './client.js';

/**
 * The OpenAI face over plain HTTP (what the `openai` SDK sends): models, a sync response, a stream resumed
 * with starting_after, background + cancel, an idempotent retry that debits once, a conversation, chat, and
 * OpenAI's error envelope. Every response is a run of the session, and the ledger adds up.
 */
export async function responsesFlow(api: Client, log: (msg: string) => void = () => {}) {
  const created = await api.post('/api/sessions', { body: { amount_sats: 2000 }, expect: 201 });
  const { sessionId, sessionToken: token } = created.body;
  await api.post(`/api/dev/stub/pay/${created.body.invoice.paymentHash}`, { expect: 200 });
  const auth = { authorization: `Bearer ${token}` };

  const models = await api.get('/v1/models', { token, expect: 200 });
  const model = models.body.data.find((m: { sluice: { default: boolean } }) => m.sluice.default).id as string;

  // Sync: the call waits and returns the finished Response; it is a run of the session.
  const sync = await api.post('/v1/responses', { token, body: { model, input: 'testkit response [stub:tokens=6]' }, expect: 200 });
  assert.equal(sync.body.status, 'completed');
  assert.ok(sync.headers.get('x-request-id'));
  const run = await api.get(`/api/runs/${sync.body.sluice.run_id}`, { token, expect: 200 });
  assert.equal(run.body.result, sync.body.output[0].content[0].text);
  assert.equal(run.body.face, 'responses');

  // Stream: Response events numbered from 0 (the SSE id is the sequence number); resume after any of them.
  const events = await api.stream('/v1/responses', auth, { model, input: 'testkit stream [stub:tokens=8] [stub:delay=10]', stream: true });
  assert.deepEqual(events.map((e) => Number(e.id)), events.map((_, i) => i));
  assert.equal(events[0]!.event, 'response.created');
  assert.equal(events.at(-1)!.event, 'response.completed');
  const id = events[0]!.data.response.id as string;
  const resumed = await api.stream(`/v1/responses/${id}?stream=true&starting_after=5`, auth);
  assert.deepEqual(resumed, events.slice(6));
  const text = events.filter((e) => e.event === 'response.output_text.delta').map((e) => e.data.delta).join('');
  assert.equal((await api.get(`/v1/responses/${id}`, { token, expect: 200 })).body.output[0].content[0].text, text);

  // Background, then cancel (twice: the same final object).
  const bg = await api.post('/v1/responses', { token, body: { model, input: 'testkit long [stub:tokens=400] [stub:delay=20]', background: true }, expect: 200 });
  assert.equal(bg.body.status, 'queued');
  await poll(async () => (await api.get(`/v1/responses/${bg.body.id}`, { token })).body.status === 'in_progress', 'the background response to start');
  const cancelled = await api.post(`/v1/responses/${bg.body.id}/cancel`, { token, expect: 200 });
  assert.equal(cancelled.body.status, 'cancelled');
  assert.deepEqual((await api.post(`/v1/responses/${bg.body.id}/cancel`, { token, expect: 200 })).body, cancelled.body);

  // An idempotent retry: the same response, one debit.
  const key = `testkit-${Date.now()}-${Math.random()}`;
  const body = { model, input: 'testkit once [stub:tokens=2]' };
  const once = await api.post('/v1/responses', { token, body, headers: { 'Idempotency-Key': key }, expect: 200 });
  const twice = await api.post('/v1/responses', { token, body, headers: { 'Idempotency-Key': key }, expect: 200 });
  assert.equal(twice.body.id, once.body.id);
  const conflict = await api.post('/v1/responses', { token, body: { ...body, input: 'other' }, headers: { 'Idempotency-Key': key }, expect: 409 });
  assert.equal(conflict.body.error.code, 'idempotency_key_conflict');

  // A conversation: the second turn sees the first ([stub:echo] replies with the context it was given).
  const conv = await api.post('/v1/conversations', { token, body: {}, expect: 200 });
  const t1 = await api.post('/v1/responses', { token, body: { model, input: 'testkit turn one [stub:tokens=3]', conversation: conv.body.id }, expect: 200 });
  const t2 = await api.post('/v1/responses', { token, body: { model, input: 'testkit turn two [stub:echo]', conversation: conv.body.id }, expect: 200 });
  assert.equal(t2.body.output[0].content[0].text, `user: testkit turn one [stub:tokens=3]\nassistant: ${t1.body.output[0].content[0].text}\nuser: testkit turn two [stub:echo]`);

  // Chat completions, non-stream and stream.
  const chat = await api.post('/v1/chat/completions', { token, body: { model, messages: [{ role: 'user', content: 'testkit chat [stub:tokens=3]' }] }, expect: 200 });
  assert.equal(chat.body.choices[0].finish_reason, 'stop');
  assert.equal(chat.body.usage.completion_tokens, 3);
  const chunks = await api.stream('/v1/chat/completions', auth, { model, messages: [{ role: 'user', content: 'testkit chat [stub:tokens=3]' }], stream: true });
  assert.equal(chunks.at(-1)!.data, '[DONE]');
  const content = chunks.slice(1, -1).map((c) => c.data.choices[0].delta.content).join('');
  assert.equal(content.split(' ').length, 3);
  assert.equal(chunks.at(-2)!.data.choices[0].finish_reason, 'stop');

  // OpenAI's error envelope.
  const unauthorized = await api.post('/v1/responses', { body, expect: 401 });
  assert.equal(unauthorized.body.error.type, 'invalid_request_error');
  const missing = await api.get('/v1/responses/resp_00000000000000000000000000000000', { token, expect: 404 });
  assert.equal(missing.headers.get('x-should-retry'), 'false');

  const ledger = await api.get(`/api/sessions/${sessionId}/ledger`, { token, expect: 200 });
  const sum = ledger.body.entries.reduce((a: number, e: { amountSats: number }) => a + e.amountSats, 0);
  assert.equal(sum, ledger.body.balanceSats);
  assert.equal(ledger.body.entries.filter((e: { runId: string; kind: string }) => e.runId === once.body.sluice.run_id && e.kind === 'debit').length, 1);
  log('responses flow: ok');
}
