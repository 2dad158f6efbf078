import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectLedgerBalanced, paidSession } from './helpers/sessions.js';
import { waitFor } from './helpers/wait.js';

/**
 * Concurrent `interrupt` turns of one conversation (the lead's finding, once pending the engine work): the accept
 * transaction locked the session row (the debit) and then the interrupted runs' rows (their stop flag), while a
 * finish of one of those runs locks its run row and then the session row (the refund). Opposite orders: Postgres
 * killed one with `deadlock detected`, and an accept was answered 500. The accept now flags the runs first.
 */
let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ STUB_TOKEN_DELAY_MS: 2 });
});
afterAll(() => t.close());

describe('multitask_strategy interrupt under concurrency', () => {
  it('several interrupting turns at once: each is accepted (or refused with a 4xx), never a 500', async () => {
    const s = await paidSession(t, 10_000);
    const statuses: number[] = [];
    for (let round = 0; round < 8; round++) {
      const conv = (await t.http.post('/v1/conversations').set(s.auth).send({}).expect(200)).body.id;
      await t.http.post('/v1/responses').set(s.auth).send({ input: 'active [stub:tokens=200] [stub:delay=5]', conversation: conv, background: true }).expect(200);
      const answers = await Promise.all(
        [0, 1, 2, 3].map((i) =>
          t.http.post('/v1/responses').set(s.auth).send({ input: `turn ${i} [stub:tokens=5]`, conversation: conv, multitask_strategy: 'interrupt', background: true }),
        ),
      );
      statuses.push(...answers.map((a) => a.status));
    }
    expect(statuses.filter((st) => st >= 500)).toEqual([]);
    await waitFor(async () => (await t.http.get('/api/runs?state=executing').set(s.auth)).body.data.length === 0 && (await t.http.get('/api/runs?state=queued').set(s.auth)).body.data.length === 0, { timeoutMs: 30_000, what: 'every run to end' });
    await expectLedgerBalanced(t, s);
  });
});
