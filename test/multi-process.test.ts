import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { createJob, pay, waitJob } from './helpers/jobs.js';
import { expectNoLeaks, paidSession, postRequest } from './helpers/sessions.js';
import { idsOf, readSse, tokensOf } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';

/**
 * Two processes on one database, coordinated by Postgres alone. B polls only once a minute, so everything
 * here that happens in seconds happens because LISTEN/NOTIFY woke B.
 */
let a: TestServer;
let b: TestServer;
beforeAll(async () => {
  a = await startTestServer();
  b = await a.sibling({ SSE_POLL_MS: 60_000 });
});
afterAll(async () => {
  await b.close();
  await a.close();
});

describe('several processes', () => {
  it('a stream on B of a run executing on A gets every token and done, live', async () => {
    const s = await paidSession(a, 5000);
    const r = await postRequest(a, s, 'cross [stub:tokens=40] [stub:delay=15]');
    const started = Date.now();
    const { events } = await readSse(`${b.url}/api/sessions/${s.id}/requests/${r.requestId}/stream`, { headers: s.auth });
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(idsOf(events)).toEqual(Array.from({ length: 41 }, (_, i) => i + 1));
    expect(events.at(-1)!.data.result).toBe(tokensOf(events).join(''));
    await expectNoLeaks(b);
  });

  it('a job stream waiting on B wakes when A settles the payments, and streams A’s run', async () => {
    const job = await createJob(a, 'cross job [stub:tokens=12] [stub:delay=10]');
    const open = readSse(`${b.url}/api/jobs/${job.jobId}/stream`);
    await pay(a, job.evalInvoice.paymentHash);
    const quoted = await waitJob(a, job.jobId, ['awaiting_work_payment']);
    await pay(a, quoted.workInvoice.paymentHash);
    const { events } = await open;
    expect(idsOf(events)).toEqual(Array.from({ length: 13 }, (_, i) => i + 1));
    expect(events.at(-1)).toMatchObject({ event: 'done', data: { state: 'complete' } });
  });

  it('relays bus events to the other process once, and never back to their sender', async () => {
    const onB: string[] = [];
    const onA: string[] = [];
    const fb = (e: { requestId: string }) => onB.push(e.requestId);
    const fa = (e: { requestId: string }) => onA.push(e.requestId);
    b.ctx.bus.on('session:request:complete', fb);
    a.ctx.bus.on('session:request:complete', fa);
    try {
      const s = await paidSession(a, 1000);
      const r = await postRequest(a, s, 'echo [stub:tokens=2] [stub:delay=0]');
      await waitFor(() => onB.includes(r.requestId), { what: 'the event on B' });
      await new Promise((res) => setTimeout(res, 200));
      expect(onB.filter((id) => id === r.requestId)).toHaveLength(1);
      expect(onA.filter((id) => id === r.requestId)).toHaveLength(1);
    } finally {
      b.ctx.bus.off('session:request:complete', fb);
      a.ctx.bus.off('session:request:complete', fa);
    }
  });
});
