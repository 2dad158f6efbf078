import { eq } from 'drizzle-orm';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ledgerEntries } from '../src/db/schema.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { pay, quotedJob, waitJob } from './helpers/jobs.js';
import { expectNoLeaks } from './helpers/sessions.js';

/**
 * Adversarial checks of the money invariants: each test here once found a way for a sat to be minted, lost or
 * paid twice (see the commit that added it).
 */
let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ JOB_WORK_FEE_SATS: 7 });
});
afterAll(() => t.close());
afterEach(() => expectNoLeaks(t));

const jobRows = async (jobId: string) =>
  (await t.ctx.db.select().from(ledgerEntries).where(eq(ledgerEntries.jobId, jobId))).map((r) => [r.kind, r.amountSats] as const);

describe('a job work fee', () => {
  it('is kept when the work completes: it is charged, not refunded as unused', async () => {
    const quoted = await quotedJob(t, 'fee kept [stub:tokens=6] [stub:delay=1]');
    expect(quoted.pricingBreakdown.feeSats).toBe(7);
    const work = quoted.workInvoice.amountSats;
    await pay(t, quoted.workInvoice.paymentHash);
    const done = await waitJob(t, quoted.jobId, ['complete', 'failed']);
    expect(done.state).toBe('complete');
    const cl = done.costLedger;
    // The estimate was exact (the stub did what it was priced for): everything was used, the fee included.
    expect(cl.actualOutputTokens).toBe(6);
    expect(cl).toMatchObject({ workAmountSats: work, actualAmountSats: work, refundAmountSats: 0, refundState: 'not_applicable' });
    expect(cl.actualAmountSats + cl.refundAmountSats).toBe(work);
    expect((await jobRows(quoted.jobId)).sort()).toEqual([['job_eval_payment', 10], ['job_work_payment', work]].sort());
  });

  it('is refunded with the rest when the work fails', async () => {
    const quoted = await quotedJob(t, 'fee back [stub:tokens=6] [stub:fail] [stub:delay=1]');
    const work = quoted.workInvoice.amountSats;
    await pay(t, quoted.workInvoice.paymentHash);
    const failed = await waitJob(t, quoted.jobId, ['complete', 'failed']);
    expect(failed.state).toBe('failed');
    expect(failed.costLedger).toMatchObject({ workAmountSats: work, actualAmountSats: 0, refundAmountSats: work, refundState: 'pending' });
  });
});
