import { expect } from 'vitest';
import type { TestServer } from './context.js';
import { waitFor } from './wait.js';

export async function createJob(t: Pick<TestServer, 'http'>, request: string) {
  const res = await t.http.post('/api/jobs').send({ request });
  expect(res.status, JSON.stringify(res.body)).toBe(201);
  return res.body as { jobId: string; state: string; evalInvoice: { paymentHash: string; paymentRequest: string; amountSats: number; state: string; expiresAt: string } };
}

export async function getJob(t: Pick<TestServer, 'http'>, jobId: string) {
  return (await t.http.get(`/api/jobs/${jobId}`).expect(200)).body;
}

export async function waitJob(t: Pick<TestServer, 'http'>, jobId: string, states: string[], timeoutMs = 10_000) {
  return waitFor(
    async () => {
      const j = await getJob(t, jobId);
      return states.includes(j.state) ? j : null;
    },
    { timeoutMs, what: `job ${jobId} to reach ${states.join('|')}` },
  );
}

export const pay = (t: Pick<TestServer, 'http'>, hash: string) => t.http.post(`/api/dev/stub/pay/${hash}`).expect(200);

/** Create a job, pay its evaluation, wait for the work invoice: ready for the work payment. */
export async function quotedJob(t: Pick<TestServer, 'http'>, request: string) {
  const job = await createJob(t, request);
  await pay(t, job.evalInvoice.paymentHash);
  return waitJob(t, job.jobId, ['awaiting_work_payment']);
}

/** Run the payout sweep until the job's refund reaches `state` (a retry is due only once its backoff passes). */
export async function refundReaches(t: Pick<TestServer, 'http' | 'ctx'>, jobId: string, state: string) {
  return waitFor(
    async () => {
      await t.ctx.payouts.sweep();
      const j = await getJob(t, jobId);
      return j.costLedger.refundState === state ? j : null;
    },
    { what: `the refund of ${jobId} to be ${state}`, intervalMs: 20 },
  );
}
