import fc from 'fast-check';
import type { Response, Test } from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { createJob } from './helpers/jobs.js';
import { headerValue, idempotencyKey, nestedBody, pathSegments, queryOf, value } from './helpers/fuzz.js';
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
/** FUZZ_SEED replays the seed a failure printed (fast-check draws a fresh one otherwise). */
const SEED = process.env.FUZZ_SEED ? { seed: Number(process.env.FUZZ_SEED) } : {};

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
  nestedBody('"amount_sats":100,"request":"x [stub:tokens=1]"', 30_000),
);
const query = queryOf(['state', 'limit', 'cursor', 'access_token', 'starting_after', 'request']);
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
    fc.tuple(id(() => s.id), auth, wire, idempotencyKey).map(([i, a, w, k]) => () => {
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
      { numRuns: RUNS, ...SEED },
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
      fc.asyncProperty(pathSegments, async ([segments, method]) => {
        await expectWellFormed(t.http[method](`/api/${path(segments.join('/'))}`));
      }),
      { numRuns: RUNS },
    );
  });
});
