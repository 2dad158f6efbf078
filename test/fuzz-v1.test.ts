import fc from 'fast-check';
import type { Response, Test } from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { headerValue, idempotencyKey, nestedBody, pathSegments, queryOf, value } from './helpers/fuzz.js';
import { paidSession, type PaidSession } from './helpers/sessions.js';

/**
 * Property-based fuzzing of every body, query, header and path of the `/v1` face (the `/api` face has
 * test/fuzz.test.ts): whatever a client sends — wrong types, huge numbers, NULs and lone surrogates, message items
 * of every shape, broken JSON, other content types, garbage ids, cursors and keys — the answer is never a 5xx,
 * and every error is OpenAI's envelope `{error: {message, type, param, code}}`, which the SDK parses.
 */
let t: TestServer;
let s: PaidSession;
let respId: string;
let convId: string;
beforeAll(async () => {
  t = await startTestServer({ STUB_TOKEN_DELAY_MS: 0, STUB_OUTPUT_TOKENS: 2, SSE_MAX_STREAMS_PER_IP: 10_000, SESSION_RATE_LIMIT_PER_MIN: 0, SESSION_MAX_STREAMS: 0 });
  s = await paidSession(t, 10_000);
  const r = await t.http.post('/v1/responses').set(s.auth).send({ input: 'fixture [stub:tokens=2]' }).expect(200);
  respId = r.body.id;
  convId = (await t.http.post('/v1/conversations').set(s.auth).send({}).expect(200)).body.id;
});
afterAll(() => t.close());

/** Cases per endpoint; FUZZ_RUNS=500 for a longer hunt. */
const RUNS = Number(process.env.FUZZ_RUNS ?? 40);

/** A content part or content of a message, valid or not. */
const content = fc.oneof(
  value,
  fc.array(fc.record({ type: fc.oneof(fc.constantFrom('input_text', 'output_text', 'text', 'input_image', 'refusal'), value), text: value }, { requiredKeys: [] }), { maxLength: 3 }),
);
const message = fc.oneof(
  fc.record({ type: fc.oneof(fc.constant('message'), value), role: fc.oneof(fc.constantFrom('user', 'assistant', 'system', 'developer', 'tool'), value), content }, { requiredKeys: [] }),
  value,
);
const messages = fc.oneof(fc.array(message, { maxLength: 4 }), value);
/** A boolean field of the face, or anything else; `stream` stays false-ish where it would hold the test on a stream. */
const flag = fc.oneof(fc.boolean(), value);
const known = (id: () => string) => fc.oneof(fc.constant(null).map(() => id()), value);
const responseBody = fc.oneof(
  fc.record(
    {
      model: fc.oneof(fc.constant('sluice-stub'), value),
      input: fc.oneof(value, messages),
      instructions: value,
      max_output_tokens: value,
      stream: flag,
      background: flag,
      store: flag,
      previous_response_id: known(() => respId),
      conversation: fc.oneof(known(() => convId), fc.record({ id: known(() => convId) })),
      metadata: fc.oneof(value, fc.dictionary(fc.string({ maxLength: 70 }), value, { maxKeys: 20 })),
      multitask_strategy: fc.oneof(fc.constantFrom('reject', 'enqueue', 'interrupt'), value),
      tools: value,
      text: value,
    },
    { requiredKeys: [] },
  ),
  fc.jsonValue(),
);
const chatBody = fc.oneof(
  fc.record(
    {
      model: fc.oneof(fc.constant('sluice-stub'), value),
      messages,
      max_tokens: value,
      max_completion_tokens: value,
      stream: flag,
      stream_options: fc.oneof(value, fc.record({ include_usage: value }, { requiredKeys: [] })),
      n: value,
      tools: value,
    },
    { requiredKeys: [] },
  ),
  fc.jsonValue(),
);
const conversationBody = fc.oneof(fc.record({ items: messages, metadata: value }, { requiredKeys: [] }), fc.jsonValue());
/** A body as it goes on the wire: JSON, broken JSON, or another content type. */
const wire = (body: fc.Arbitrary<unknown>) =>
  fc.oneof(
    body.map((b) => ({ type: 'application/json', data: JSON.stringify(b) ?? 'null' })),
    fc.string().map((raw) => ({ type: 'application/json', data: raw })),
    fc.string().map((raw) => ({ type: 'text/plain', data: raw })),
    fc.constant({ type: 'application/json', data: '{"input": "x", "input": 5}' }),
    nestedBody('"model":"sluice-stub","input":"x [stub:tokens=1]","messages":[{"role":"user","content":"x [stub:tokens=1]"}]', 200_000),
  );
const query = queryOf(['stream', 'starting_after', 'after', 'limit', 'order', 'access_token']);
const id = (prefix: string, known: () => string) =>
  fc.oneof(fc.constant(null).map(() => known()), fc.string({ maxLength: 40 }), fc.stringMatching(/^[0-9a-f]{32}$/).map((h) => prefix + h), fc.constantFrom('..', '%', prefix));
const auth = fc.oneof(fc.constant(null).map(() => `Bearer ${s.token}`), headerValue.map((v) => `Bearer ${v}`), headerValue, fc.constant(''));

/** What every answer must be: below 500, and an error in OpenAI's envelope. */
async function expectWellFormed(test: Test): Promise<void> {
  const res: Response = await test;
  expect(res.status, `${res.status} ${res.text.slice(0, 300)}`).toBeLessThan(500);
  if (res.status >= 400) {
    expect(res.headers['content-type'], res.text.slice(0, 200)).toMatch(/^application\/json/);
    expect(res.body?.error, res.text.slice(0, 200)).toMatchObject({ message: expect.any(String), type: expect.any(String) });
    expect(res.body.error).toHaveProperty('param');
    expect(res.body.error).toHaveProperty('code');
    expect(res.headers['x-request-id']).toBeTruthy();
  }
}
const seg = (v: string) => encodeURIComponent(v);
const post = (p: string, a: string, w: { type: string; data: string }, key?: string) => {
  const req = t.http.post(p).set('authorization', a).set('content-type', w.type);
  if (key !== undefined) req.set('idempotency-key', key);
  return req.send(w.data);
};

type Case = [string, fc.Arbitrary<() => Test>];
const cases: Case[] = [
  ['POST /v1/responses', fc.tuple(auth, wire(responseBody), idempotencyKey).map(([a, w, k]) => () => post('/v1/responses', a, w, k))],
  ['GET /v1/responses/:id', fc.tuple(id('resp_', () => respId), auth, query, fc.option(headerValue, { nil: undefined })).map(([i, a, q, last]) => () => {
    const req = t.http.get(`/v1/responses/${seg(i)}?${q}`).set('authorization', a);
    return last === undefined ? req : req.set('last-event-id', last);
  })],
  ['GET /v1/responses/:id/input_items', fc.tuple(id('resp_', () => respId), auth, query).map(([i, a, q]) => () => t.http.get(`/v1/responses/${seg(i)}/input_items?${q}`).set('authorization', a))],
  ['POST /v1/responses/:id/cancel', fc.tuple(id('resp_', () => respId), auth, wire(fc.jsonValue())).map(([i, a, w]) => () => post(`/v1/responses/${seg(i)}/cancel`, a, w))],
  ['POST /v1/chat/completions', fc.tuple(auth, wire(chatBody), idempotencyKey).map(([a, w, k]) => () => post('/v1/chat/completions', a, w, k))],
  ['POST /v1/conversations', fc.tuple(auth, wire(conversationBody)).map(([a, w]) => () => post('/v1/conversations', a, w))],
  ['GET /v1/conversations/:id', fc.tuple(id('conv_', () => convId), auth).map(([i, a]) => () => t.http.get(`/v1/conversations/${seg(i)}`).set('authorization', a))],
  ['POST /v1/conversations/:id', fc.tuple(id('conv_', () => convId), auth, wire(fc.oneof(fc.record({ metadata: value }, { requiredKeys: [] }), fc.jsonValue()))).map(([i, a, w]) => () => post(`/v1/conversations/${seg(i)}`, a, w))],
  ['GET /v1/conversations/:id/items', fc.tuple(id('conv_', () => convId), auth, query).map(([i, a, q]) => () => t.http.get(`/v1/conversations/${seg(i)}/items?${q}`).set('authorization', a))],
  ['GET /v1/models', fc.tuple(auth, query).map(([a, q]) => () => t.http.get(`/v1/models?${q}`).set('authorization', a))],
  ['GET /v1/models/:id', fc.tuple(fc.oneof(fc.constant('sluice-stub'), fc.string({ maxLength: 30 })), auth).map(([m, a]) => () => t.http.get(`/v1/models/${seg(m)}`).set('authorization', a))],
  // Last: they may delete the fixtures, after which the cases above would only see 404s.
  ['DELETE /v1/conversations/:id', fc.tuple(id('conv_', () => convId), auth).map(([i, a]) => () => t.http.delete(`/v1/conversations/${seg(i)}`).set('authorization', a))],
  ['DELETE /v1/responses/:id', fc.tuple(id('resp_', () => respId), auth).map(([i, a]) => () => t.http.delete(`/v1/responses/${seg(i)}`).set('authorization', a))],
];

describe('fuzzing the /v1 face', () => {
  it.each(cases)('%s: never a 5xx, every error in OpenAI’s envelope', async (_name, arb) => {
    await fc.assert(
      fc.asyncProperty(arb, async (request) => expectWellFormed(request())),
      { numRuns: RUNS },
    );
  });

  it('an absurdly nested body with an Idempotency-Key is a 400 naming no param, and a sane one still works', async () => {
    const body = (depth: number) => `{"input":"deep [stub:tokens=1]","junk":${'{"a":'.repeat(depth)}0${'}'.repeat(depth)}}`;
    const res = await t.http.post('/v1/responses').set(s.auth).set('idempotency-key', 'deep-1').set('content-type', 'application/json').send(body(50_000));
    expect(res.status, res.text.slice(0, 200)).toBe(400);
    expect(res.body.error).toMatchObject({ type: 'invalid_request_error', param: null });
    expect(res.headers['x-should-retry']).toBe('false');
    await t.http.post('/v1/responses').set(s.auth).set('idempotency-key', 'deep-2').set('content-type', 'application/json').send(body(20)).expect(200);
  });

  it('path segments of any shape (never a 5xx)', async () => {
    await fc.assert(
      fc.asyncProperty(pathSegments, async ([segments, method]) => {
        await expectWellFormed(t.http[method](`/v1/${segments.map(seg).join('/')}`).set('authorization', `Bearer ${s.token}`));
      }),
      { numRuns: RUNS },
    );
  });
});
