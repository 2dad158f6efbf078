import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { createJob, pay, quotedJob, waitJob } from './helpers/jobs.js';
import { expectLedgerBalanced, expectNoLeaks, paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';

/**
 * Backpressure (MAX_QUEUED_RUNS): one run executes, two wait; past that every way of starting work is refused
 * `503 overloaded` with `Retry-After` before any money moves — and a job's work, paid before the queue filled, is
 * never refused: it queues all the same and runs.
 */
let t: TestServer;
let s: PaidSession;
const held: string[] = [];
beforeAll(async () => {
  t = await startTestServer({ MAX_CONCURRENT_RUNS: 1, MAX_QUEUED_RUNS: 2, SESSION_RATE_LIMIT_PER_MIN: 0 });
  s = await paidSession(t, 10_000);
});
afterAll(() => t.close());

const long = 'wait [stub:tokens=1] [stub:delay=60000]';

describe('a full queue', () => {
  it('refuses a session request with 503 overloaded and Retry-After, debiting nothing', async () => {
    for (let i = 0; i < 3; i++) held.push((await postRequest(t, s, long)).requestId);
    expect(t.ctx.executor.stats()).toMatchObject({ running: 1, queued: 2 });
    const before = (await expectLedgerBalanced(t, s)).balanceSats;
    const res = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: 'one more' });
    expect(res.status).toBe(503);
    expect(res.body.error).toMatchObject({ code: 'overloaded', details: { retryAfterSeconds: expect.any(Number) } });
    expect(Number(res.headers['retry-after'])).toBe(res.body.error.details.retryAfterSeconds);
    expect((await expectLedgerBalanced(t, s)).balanceSats).toBe(before);
    // The session's own answers still come first: a bad token is 401, not 503.
    await t.http.post(`/api/sessions/${s.id}/request`).set('Authorization', 'Bearer sk_nope').send({ request: 'x' }).expect(401);
  });

  it('refuses /v1 in OpenAI’s envelope, as a retryable 503', async () => {
    const client = new OpenAI({ baseURL: `${t.url}/v1`, apiKey: s.token, maxRetries: 0 });
    const err = await client.responses.create({ model: 'sluice-stub', input: 'more', background: true }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(OpenAI.InternalServerError);
    const e = err as InstanceType<typeof OpenAI.InternalServerError>;
    expect(e.status).toBe(503);
    expect(e.code).toBe('overloaded');
    expect(e.type).toBe('server_error');
    expect(Number(e.headers?.get('retry-after'))).toBeGreaterThan(0);
    expect(e.headers?.get('x-should-retry')).toBeNull();
  });

  it('refuses a new job and the demo, before any invoice or count', async () => {
    const job = await t.http.post('/api/jobs').send({ request: 'a job' });
    expect(job.status).toBe(503);
    expect(job.body.error.code).toBe('overloaded');
    expect(Number(job.headers['retry-after'])).toBeGreaterThan(0);
    const demo = await t.http.get('/api/demo').query({ request: 'hi' });
    expect(demo.status).toBe(503);
    expect(demo.body.error.code).toBe('overloaded');
  });

  it('takes again once runs end', async () => {
    // (Queued runs are not this process's: stopping one finishes it wherever it waits.)
    for (const id of held.splice(1)) expect(await t.ctx.executor.cancel(id)).toBe(true);
    const r = await postRequest(t, s, 'back in [stub:tokens=1] [stub:delay=0]');
    expect(await t.ctx.executor.cancel(r.requestId)).toBe(true);
    await waitFinal(t, s, r.requestId);
  });
});

describe('a job whose work was paid', () => {
  it('queues past the limit rather than lose or refund work already paid for, and runs once a slot frees', async () => {
    const quoted = await quotedJob(t, 'paid work [stub:tokens=3] [stub:delay=1]');
    // Fill the queue behind the run that holds the slot.
    for (let i = 0; i < 2; i++) held.push((await postRequest(t, s, long)).requestId);
    expect(t.ctx.executor.overloaded).toBe(true);
    await pay(t, quoted.workInvoice.paymentHash);
    await waitJob(t, quoted.jobId, ['executing']);
    expect(t.ctx.executor.stats().queued).toBe(3);
    for (const id of held.splice(0)) await t.ctx.executor.cancel(id);
    const done = await waitJob(t, quoted.jobId, ['complete']);
    expect(done.costLedger).toMatchObject({ actualOutputTokens: 3 });
    const ledger = await t.ctx.database.pool.query(`select kind from ledger_entries where job_id = $1 order by id`, [quoted.jobId]);
    expect(ledger.rows.map((r) => r.kind)).toEqual(['job_eval_payment', 'job_work_payment']);
    // A new job is taken again.
    await createJob(t, 'later');
    await expectLedgerBalanced(t, s);
    await expectNoLeaks(t);
  });
});
