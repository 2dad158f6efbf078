import { Router } from 'express';
import type { AppContext } from '../context.js';
import { overloaded } from '../http/errors.js';
import { parse } from '../http/validate.js';
import { findRun } from '../runs/lookup.js';
import { cursorOf, openStream, pipeDetached, streamRun } from '../runs/stream.js';
import { runFields } from '../runs/view.js';
import { payoutAnswer, payoutView, type PayoutRow } from '../ledger/payouts.js';
import { invoiceView } from '../ledger/settlement.js';
import { jobCreateBody, jobRefundBody } from './jobs.schemas.js';
import { RUN_STATES, type JobRow } from './jobs.service.js';

/**
 * What the job owes back, as `costLedger` shows it. `refundState`: `not_applicable` (nothing owed), `pending`
 * (owed: give an invoice), `paying` (a payout is under way or waiting to retry), `paid`, or `failed` (the last
 * payout failed for good: still owed, give another invoice).
 */
function refundFields(owed: number, payout: PayoutRow | undefined) {
  if (owed === 0) return { refundState: 'not_applicable' as const };
  if (!payout) return { refundState: 'pending' as const };
  const v = payoutView(payout);
  return {
    refundState: v.state,
    refundPaymentHash: v.refundPaymentHash,
    refundAttempts: v.attempts,
    ...(v.lastError ? { refundLastError: v.lastError } : {}),
    ...(v.nextAttemptAt ? { refundNextAttemptAt: v.nextAttemptAt, refundOutcomeUnknown: v.outcomeUnknown } : {}),
  };
}

export function jobRoutes(ctx: AppContext): Router {
  const r = Router();
  const { jobs } = ctx;
  const createBody = jobCreateBody(ctx.config);

  async function jobView(job: JobRow) {
    const { evalInvoice, workInvoice } = await jobs.invoicesOf(job);
    const run = RUN_STATES.includes(job.state) ? await ctx.store.get(job.runId) : undefined;
    const fields = run && runFields(run, ctx.registry.get(run.id));
    const ended = job.state === 'complete' || job.state === 'failed';
    const payout = ended && run && run.refundedSats > 0 ? await jobs.payoutOf(job) : undefined;
    return {
      jobId: job.id,
      state: job.state,
      request: job.request,
      evalInvoice: invoiceView(evalInvoice),
      ...(workInvoice ? { workInvoice: invoiceView(workInvoice) } : {}),
      ...(job.pricing ? { pricingBreakdown: job.pricing } : {}),
      ...(job.reason ? { reason: job.reason } : {}),
      ...(job.state === 'expired' ? { reason: 'its invoice expired unpaid' } : {}),
      ...(fields ? { result: fields.result } : {}),
      ...(job.errorMessage ? { errorMessage: job.errorMessage } : {}),
      ...(ended && run
        ? {
            costLedger: {
              actualInputTokens: run.inputTokens,
              actualOutputTokens: run.outputTokens,
              totalTokens: run.inputTokens + run.outputTokens,
              actualAmountSats: run.chargedSats,
              workAmountSats: run.debitedSats,
              refundAmountSats: run.refundedSats,
              ...refundFields(run.refundedSats, payout),
            },
          }
        : {}),
      createdAt: job.createdAt.toISOString(),
      updatedAt: job.updatedAt.toISOString(),
    };
  }

  r.post('/jobs', async (req, res) => {
    const body = parse(createBody, req.body);
    // A job is refused while this process's queue is full, before its first invoice. Its work, once paid, is never
    // refused (the money has moved): a work payment that lands while the queue is full queues all the same.
    if (ctx.executor.overloaded) throw overloaded();
    const { job } = await jobs.create(body.request);
    res.status(201).location(`/api/jobs/${job.id}`).json(await jobView(job));
  });

  r.get('/jobs/:id', async (req, res) => {
    res.json(await jobView(await jobs.get(req.params.id)));
  });

  r.post('/jobs/:id/refund', async (req, res) => {
    const job = await jobs.find(req.params.id);
    const body = parse(jobRefundBody, req.body);
    const answer = payoutAnswer(await jobs.refund(job, body.invoice));
    res.status(answer.status).json(answer.body);
  });

  /**
   * The job's tokens, whenever the stream is opened. Before the work has started it waits (woken by the bus,
   * with one shared poll per process that also reconciles payments) up to JOB_STREAM_WAIT_S; then the run's feed takes over, which
   * replays from the log and attaches live in one step, so a run that starts and ends in between is whole.
   */
  r.get('/jobs/:id/stream', async (req, res) => {
    let job = await jobs.find(req.params.id);
    const after = cursorOf(req);
    if (RUN_STATES.includes(job.state)) {
      // The run exists: stream it like any run (a reconnect after its final event gets 204).
      const found = await findRun(ctx, job.runId);
      if (found) return streamRun(ctx, req, res, found);
    }
    const sse = openStream(ctx, req, res);
    job = await ctx.jobWaits.wait(job, sse.signal);
    if (sse.signal.aborted) return sse.end();
    if (job.state === 'rejected') {
      await sse.send({ event: 'error', data: { state: 'rejected', code: 'rejected', message: job.reason ?? 'the job was rejected', reason: job.reason } });
      return sse.end();
    }
    if (job.state === 'expired') {
      await sse.send({ event: 'error', data: { state: 'expired', code: 'invoice_expired', message: 'the job expired: its invoice was not paid in time' } });
      return sse.end();
    }
    if (!RUN_STATES.includes(job.state)) {
      const unpaid = job.state === 'awaiting_eval_payment' || job.state === 'awaiting_work_payment';
      await sse.send({
        event: 'error',
        data: {
          state: job.state,
          code: unpaid ? 'payment_timeout' : 'evaluation_timeout',
          message: unpaid
            ? `the job is still ${job.state} after ${ctx.config.JOB_STREAM_WAIT_S} s; pay its invoice and reconnect`
            : `the job is still being evaluated after ${ctx.config.JOB_STREAM_WAIT_S} s; reconnect to keep waiting`,
        },
      });
      return sse.end();
    }
    pipeDetached(req, ctx, sse, job.runId, after);
  });

  return r;
}
