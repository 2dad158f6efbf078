import fc from 'fast-check';
import type { Response, Test } from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { createJob } from './helpers/jobs.js';
import { paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';

/**
 * Property-based fuzzing of every request body and query of the `/api` face (issue #9): whatever a client sends —
 * wrong types, huge or negative numbers, NULs and lone surrogates, broken JSON, other content types, repeated
 * query keys, garbage cursors and ids — the answer is never a 5xx, and every error is in the envelope.
 */
let t: TestServer;
let s: PaidSession;
let runId: string;
let jobId: string;
beforeAll(async () => {
  t = await startTestServer({ JOB_STREAM_WAIT_S: 0.1, STUB_TOKEN_DELAY_MS: 0, STUB_OUTPUT_TOKENS: 2, DEMO_RATE_LIMIT: 1_000_000, SSE_MAX_STREAMS_PER_IP: 10_000 });
  s = await paidSession(t, 10_000);
  runId = (await postRequest(t, s, 'fixture [stub:tokens=2]')).requestId;
  await waitFinal(t, s, runId);
  jobId = (await createJob(t, 'fixture job')).jobId;
});
afterAll(() => t.close());

/** Cases per endpoint; FUZZ_RUNS=500 for a longer hunt (about 10,000 requests in 45 s). */
const RUNS = Number(process.env.FUZZ_RUNS ?? 60);

/** Values of every JSON type, and the edge cases of each. */
const value = fc.oneof(
  fc.integer(),
  fc.constantFrom(0, -1, 1, 99, 100, 10_000, 10_001, 4_096, 4_097, 2 ** 31, 2 ** 53, -(2 ** 53), 1e308, -1e-308, 0.5),
  fc.double(),
  fc.string(),
  fc.string({ unit: 'binary' }), // lone surrogates and every code point
  fc.constantFrom('', ' ', '\u0000', 'a\u0000b', '\ud800', '0', '1e3', '12abc', 'null', 'true', '[stub:tokens=1]', 'x'.repeat(9_000)),
  fc.constant(null),
  fc.boolean(),
  fc.array(fc.integer(), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.integer(), { maxKeys: 3 }),
);
/** A body: a record of the fields our endpoints read (each maybe missing, of any type), or anything else. */
const body = fc.oneof(
  fc.record({ amount_sats: value, request: value, max_tokens: value, invoice: value }, { requiredKeys: [] }),
  fc.jsonValue(),
);
/** A body as it goes on the wire: JSON, broken JSON, or another content type. */
const wire = fc.oneof(
  body.map((b) => ({ type: 'application/json', data: JSON.stringify(b) })),
  fc.string().map((raw) => ({ type: 'application/json', data: raw })),
  fc.string().map((raw) => ({ type: 'text/plain', data: raw })),
  fc.constant({ type: 'application/json', data: '{"request": "x", "request": 5}' }),
  fc.constant({ type: 'application/x-www-form-urlencoded', data: 'amount_sats=100&request=hi' }),
  // Valid but for a field nested absurdly deep (JSON.parse takes it; a recursive walk may not).
  fc.tuple(fc.integer({ min: 1, max: 30_000 }), fc.constantFrom('[', '{"a":')).map(([depth, open]) => ({
    type: 'application/json',
    data: `{"amount_sats":100,"request":"x [stub:tokens=1]","junk":${open.repeat(depth)}0${(open === '[' ? ']' : '}').repeat(depth)}}`,
  })),
);
/** An Idempotency-Key header, or none (most cases), or garbage. */
const idem = fc.option(fc.oneof(fc.string({ maxLength: 20 }).map((v) => v.replace(/[^\x21-\x7e]/g, '') || 'k'), fc.string({ maxLength: 20 }).map((v) => v.replace(/[^\x20-\x7e]/g, ''))), { nil: undefined, freq: 2 });
/** A query string: the keys we read and others, any values, keys repeated. */
const query = fc
  .array(fc.tuple(fc.oneof(fc.constantFrom('state', 'limit', 'cursor', 'access_token', 'starting_after', 'request'), fc.string({ maxLength: 8 })), fc.oneof(fc.string(), value.map((v) => (typeof v === "string" ? v : JSON.stringify(v) ?? "")))), { maxLength: 5 })
  .map((pairs) => {
    const q = new URLSearchParams();
    for (const [k, v] of pairs) q.append(k, v);
    return q.toString();
  });
/** A header value that HTTP can carry (printable ASCII). */
const headerValue = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 60 });
const id = (known: () => string) => fc.oneof(fc.constant(null).map(() => known()), fc.uuid(), fc.string({ maxLength: 40 }), fc.constantFrom('..', '%', '00000000-0000-0000-0000-000000000000'));
const auth = fc.oneof(
  fc.constant(null).map(() => `Bearer ${s.token}`),
  headerValue.map((v) => `Bearer ${v}`),
  headerValue,
  fc.constant(''),
);

/** What every answer must be: below 500, and an error in the envelope. */
async function expectWellFormed(test: Test): Promise<void> {
  const res: Response = await test;
  expect(res.status, `${res.status} ${res.text.slice(0, 300)}`).toBeLessThan(500);
  if (res.status >= 400) {
    expect(res.headers['content-type'], res.text.slice(0, 200)).toMatch(/^application\/json/);
    expect(res.body?.error, res.text.slice(0, 200)).toMatchObject({ code: expect.any(String), message: expect.any(String) });
  }
}
const path = (p: string) => p.split('/').map((seg) => (seg.startsWith(':') ? seg : encodeURIComponent(seg))).join('/');
const seg = (v: string) => encodeURIComponent(v);

type Case = [string, fc.Arbitrary<() => Test>];
const cases: Case[] = [
  ['POST /api/sessions', wire.map((w) => () => t.http.post('/api/sessions').set('content-type', w.type).send(w.data))],
  ['GET /api/sessions/:id', fc.tuple(id(() => s.id), auth).map(([i, a]) => () => t.http.get(`/api/sessions/${seg(i)}`).set('authorization', a))],
  ['POST /api/sessions/:id/topup', fc.tuple(id(() => s.id), auth, wire).map(([i, a, w]) => () => t.http.post(`/api/sessions/${seg(i)}/topup`).set('authorization', a).set('content-type', w.type).send(w.data))],
  ['GET /api/sessions/:id/ledger', fc.tuple(id(() => s.id), auth).map(([i, a]) => () => t.http.get(`/api/sessions/${seg(i)}/ledger`).set('authorization', a))],
  [
    'POST /api/sessions/:id/request',
    fc.tuple(id(() => s.id), auth, wire, idem).map(([i, a, w, k]) => () => {
      const req = t.http.post(`/api/sessions/${seg(i)}/request`).set('authorization', a).set('content-type', w.type);
      return (k === undefined ? req : req.set('idempotency-key', k)).send(w.data);
    }),
  ],
  ['GET /api/sessions/:id/requests/:rid', fc.tuple(id(() => s.id), id(() => runId), auth).map(([i, r, a]) => () => t.http.get(`/api/sessions/${seg(i)}/requests/${seg(r)}`).set('authorization', a))],
  [
    'GET /api/sessions/:id/requests/:rid/stream',
    fc.tuple(id(() => s.id), id(() => runId), auth, query, headerValue).map(([i, r, a, q, last]) => () => t.http.get(`/api/sessions/${seg(i)}/requests/${seg(r)}/stream?${q}`).set('authorization', a).set('last-event-id', last)),
  ],
  ['GET /api/runs', fc.tuple(auth, query).map(([a, q]) => () => t.http.get(`/api/runs?${q}`).set('authorization', a))],
  ['GET /api/runs/:id', fc.tuple(id(() => runId), auth).map(([r, a]) => () => t.http.get(`/api/runs/${seg(r)}`).set('authorization', a))],
  ['GET /api/runs/:id/stream', fc.tuple(id(() => runId), auth, query, headerValue).map(([r, a, q, last]) => () => t.http.get(`/api/runs/${seg(r)}/stream?${q}`).set('authorization', a).set('last-event-id', last))],
  ['POST /api/runs/:id/stop', fc.tuple(id(() => runId), auth, wire).map(([r, a, w]) => () => t.http.post(`/api/runs/${seg(r)}/stop`).set('authorization', a).set('content-type', w.type).send(w.data))],
  ['POST /api/jobs', wire.map((w) => () => t.http.post('/api/jobs').set('content-type', w.type).send(w.data))],
  ['GET /api/jobs/:id', id(() => jobId).map((j) => () => t.http.get(`/api/jobs/${seg(j)}`))],
  ['POST /api/jobs/:id/refund', fc.tuple(id(() => jobId), wire).map(([j, w]) => () => t.http.post(`/api/jobs/${seg(j)}/refund`).set('content-type', w.type).send(w.data))],
  ['GET /api/jobs/:id/stream', fc.tuple(id(() => jobId), query, headerValue).map(([j, q, last]) => () => t.http.get(`/api/jobs/${seg(j)}/stream?${q}`).set('last-event-id', last))],
  ['GET /api/demo', query.map((q) => () => t.http.get(`/api/demo?${q}`))],
  ['POST /api/dev/stub/pay/:hash', fc.oneof(fc.string({ maxLength: 70 }), fc.stringMatching(/^[0-9a-f]{64}$/)).map((h) => () => t.http.post(`/api/dev/stub/pay/${seg(h)}`))],
  ['GET /api/healthz', query.map((q) => () => t.http.get(`/api/healthz?${q}`))],
  // Last: it may delete the fixture run, after which the others above would only see 404s.
  ['DELETE /api/runs/:id', fc.tuple(id(() => runId), auth).map(([r, a]) => () => t.http.delete(`/api/runs/${seg(r)}`).set('authorization', a))],
];

describe('fuzzing the /api face', () => {
  it.each(cases)('%s: never a 5xx, every error in the envelope', async (_name, arb) => {
    await fc.assert(
      fc.asyncProperty(arb, async (request) => expectWellFormed(request())),
      { numRuns: RUNS },
    );
  });

  it('an absurdly nested body with an Idempotency-Key is a 400 in the envelope, and a sane one still works', async () => {
    const body = (depth: number) => `{"request":"deep [stub:tokens=1]","junk":${'['.repeat(depth)}${']'.repeat(depth)}}`;
    const res = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).set('idempotency-key', 'deep-1').set('content-type', 'application/json').send(body(20_000));
    expect(res.status, res.text.slice(0, 200)).toBe(400);
    expect(res.body.error.code).toBe('invalid_request');
    await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).set('idempotency-key', 'deep-2').set('content-type', 'application/json').send(body(20)).expect(202);
  });

  it('path segments of any shape (never a 5xx)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.string({ maxLength: 12 }), { minLength: 1, maxLength: 5 }), fc.constantFrom('get', 'post', 'delete', 'put', 'patch') , async (segments, method) => {
        await expectWellFormed(t.http[method](`/api/${path(segments.join('/'))}`));
      }),
      { numRuns: RUNS },
    );
  });
});
