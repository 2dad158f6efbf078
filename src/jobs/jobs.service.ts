import { and, eq, inArray, lt, sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Bus } from '../bus.js';
import type { Config } from '../config.js';
import type { Db } from '../db/pool.js';
import { invoices, jobs, type JobPricing, type JobState } from '../db/schema.js';
import { AppError, conflict, notFound } from '../http/errors.js';
import { isUuid } from '../http/validate.js';
import { recordJobMovement } from '../ledger/ledger.js';
import { costSats, priceSnapshot } from '../ledger/pricing.js';
import type { Settlement } from '../ledger/settlement.js';
import type { Models } from '../models/providers.js';
import type { AiEvaluation } from '../providers/ai/types.js';
import { PaymentError, type PaymentProvider } from '../providers/payments/types.js';
import type { Executor } from '../runs/executor.js';
import type { Settler } from '../runs/finish.js';
import type { RunStore } from '../runs/store.js';

export type JobRow = typeof jobs.$inferSelect;

const isUniqueViolation = (err: unknown): boolean =>
  typeof err === 'object' && err !== null && ((err as { code?: string }).code === '23505' || isUniqueViolation((err as { cause?: unknown }).cause));

export interface JobsDeps {
  config: Config;
  db: Db;
  bus: Bus;
  log: Logger;
  /** Jobs run on the catalogue's default model. */
  models: Models;
  payments: PaymentProvider;
  settlement: Settlement;
  executor: Executor;
  store: RunStore;
  instanceId: string;
}

/** States in which the job's run exists (so a stream can attach to it). */
export const RUN_STATES: JobState[] = ['executing', 'complete', 'failed'];

/**
 * A job's run finished: the job follows it, in the same transaction. What the work did not use stays owed to
 * the client (the run's `refunded_sats`) until it claims it with an invoice.
 */
export const settleJobRun: Settler = async (tx, run) => {
  if (!run.jobId) return;
  const failed = run.state !== 'complete';
  const why =
    run.state === 'failed'
      ? (run.error?.message ?? 'the work failed')
      : run.state === 'interrupted'
        ? 'the work was interrupted (server restart or shutdown)'
        : 'the work was cancelled';
  await tx
    .update(jobs)
    .set({ state: failed ? 'failed' : 'complete', errorMessage: failed ? why : null, updatedAt: sql`now()` })
    .where(and(eq(jobs.id, run.jobId), eq(jobs.state, 'executing')));
};

/** How long an evaluation may take before it counts as failed. */
const EVAL_TIMEOUT_MS = 30_000;

export function createJobsService(deps: JobsDeps) {
  const { config, db, bus, log } = deps;
  const evaluating = new Map<string, Promise<void>>();

  const emit = (jobId: string, state: JobState) => bus.emit('job:update', { jobId, state });

  // Paying the evaluation fee starts the evaluation (after commit).
  deps.settlement.on('job_eval', async (tx, inv) => {
    if (!inv.jobId) return;
    const jobId = inv.jobId;
    await recordJobMovement(tx, { jobId, kind: 'job_eval_payment', amountSats: inv.amountSats, paymentHash: inv.paymentHash });
    const moved = await tx
      .update(jobs)
      .set({ state: 'evaluating', updatedAt: sql`now()` })
      .where(and(eq(jobs.id, jobId), eq(jobs.state, 'awaiting_eval_payment')))
      .returning({ id: jobs.id });
    if (moved.length === 0) return;
    return () => {
      emit(jobId, 'evaluating');
      startEvaluation(jobId);
    };
  });

  // Paying the work invoice creates the run, in the same transaction, and hands it to the executor.
  deps.settlement.on('job_work', async (tx, inv) => {
    if (!inv.jobId) return;
    const jobId = inv.jobId;
    await recordJobMovement(tx, { jobId, kind: 'job_work_payment', amountSats: inv.amountSats, paymentHash: inv.paymentHash });
    const [job] = await tx
      .update(jobs)
      .set({ state: 'executing', updatedAt: sql`now()` })
      .where(and(eq(jobs.id, jobId), eq(jobs.state, 'awaiting_work_payment')))
      .returning();
    if (!job?.pricing) return;
    const run = await deps.store.insert(tx, {
      id: job.runId,
      kind: 'job',
      jobId,
      state: 'queued',
      request: job.request,
      model: deps.models.default.entry.name,
      turn: [{ role: 'user', content: job.request }],
      input: [{ role: 'user', content: job.request }],
      maxTokens: job.pricing.estimatedOutputTokens,
      pricing: { inputPer1k: job.pricing.inputRateSatsPer1k, outputPer1k: job.pricing.outputRateSatsPer1k, minSats: job.pricing.minSats },
      debitedSats: inv.amountSats,
      leaseOwner: deps.instanceId,
      leaseTtlS: config.LEASE_TTL_S,
    });
    return () => {
      emit(jobId, 'executing');
      deps.executor.accept(run);
    };
  });

  // The run's finish moved the job in its transaction; tell the watchers.
  bus.on('run:finish', (e) => {
    if (e.kind === 'job' && e.jobId) emit(e.jobId, e.state === 'complete' ? 'complete' : 'failed');
  });

  function startEvaluation(jobId: string) {
    if (evaluating.has(jobId)) return;
    const p = evaluate(jobId)
      .catch((err) => log.error({ err, jobId }, 'job evaluation crashed; the sweeper will retry'))
      .finally(() => evaluating.delete(jobId));
    evaluating.set(jobId, p);
  }

  /** Ask the provider, price the work, and move evaluating → awaiting_work_payment or rejected. */
  async function evaluate(jobId: string) {
    const [job] = await db.select().from(jobs).where(eq(jobs.id, jobId));
    if (!job || job.state !== 'evaluating') return;
    let verdict: AiEvaluation;
    try {
      verdict = await deps.models.default.provider.evaluate(job.request, AbortSignal.timeout(EVAL_TIMEOUT_MS));
    } catch (err) {
      log.warn({ err, jobId }, 'evaluation failed');
      verdict = { accept: false, reason: 'the evaluation could not be completed; the request was not accepted' };
    }
    if (!verdict.accept) {
      const moved = await db
        .update(jobs)
        .set({ state: 'rejected', reason: verdict.reason, updatedAt: sql`now()` })
        .where(and(eq(jobs.id, jobId), eq(jobs.state, 'evaluating')))
        .returning({ id: jobs.id });
      if (moved.length) emit(jobId, 'rejected');
      return;
    }
    const model = deps.models.default.entry;
    const prices = priceSnapshot(config, model);
    const outputTokens = Math.min(verdict.estimatedOutputTokens, model.maxOutputTokens);
    // At least 1 sat: an invoice for nothing cannot exist (zero prices and no minimum would otherwise wedge the job).
    const work = Math.max(1, costSats(prices, verdict.estimatedInputTokens, outputTokens) + config.JOB_WORK_FEE_SATS);
    const pricing: JobPricing = {
      estimatedInputTokens: verdict.estimatedInputTokens,
      estimatedOutputTokens: outputTokens,
      inputRateSatsPer1k: prices.inputPer1k,
      outputRateSatsPer1k: prices.outputPer1k,
      minSats: prices.minSats,
      feeSats: config.JOB_WORK_FEE_SATS,
      workAmountSats: work,
    };
    const inv = await deps.payments.createInvoice({ amountSats: work, memo: `sluice job work ${jobId}` });
    const moved = await db.transaction(async (tx) => {
      const rows = await tx
        .update(jobs)
        .set({ state: 'awaiting_work_payment', pricing, workPaymentHash: inv.paymentHash, updatedAt: sql`now()` })
        .where(and(eq(jobs.id, jobId), eq(jobs.state, 'evaluating')))
        .returning({ id: jobs.id });
      if (rows.length) await deps.settlement.record(tx, { paymentHash: inv.paymentHash, purpose: 'job_work', jobId, amountSats: work, paymentRequest: inv.paymentRequest });
      return rows.length > 0;
    });
    if (moved) emit(jobId, 'awaiting_work_payment');
  }

  async function find(jobId: string | undefined): Promise<JobRow> {
    const [job] = isUuid(jobId) ? await db.select().from(jobs).where(eq(jobs.id, jobId)) : [];
    if (!job) throw notFound('job');
    return job;
  }

  return {
    find,

    async create(request: string) {
      const inv = await deps.payments.createInvoice({ amountSats: config.JOB_EVAL_FEE_SATS, memo: 'sluice job evaluation' });
      return db.transaction(async (tx) => {
        const [job] = await tx.insert(jobs).values({ request, evalPaymentHash: inv.paymentHash }).returning();
        await deps.settlement.record(tx, { paymentHash: inv.paymentHash, purpose: 'job_eval', jobId: job!.id, amountSats: inv.amountSats, paymentRequest: inv.paymentRequest });
        return { job: job!, evalInvoice: inv };
      });
    },

    /** The job, after asking the provider about the invoice it waits for: a missed event only delays a job. */
    async get(jobId: string | undefined): Promise<JobRow> {
      const job = await find(jobId);
      const hash = job.state === 'awaiting_eval_payment' ? job.evalPaymentHash : job.state === 'awaiting_work_payment' ? job.workPaymentHash : null;
      if (hash) {
        await deps.settlement.reconcile(hash);
        return find(jobId);
      }
      return job;
    },

    async invoicesOf(job: JobRow) {
      const hashes = [job.evalPaymentHash, job.workPaymentHash].filter((h): h is string => Boolean(h));
      const rows = await db.select().from(invoices).where(inArray(invoices.paymentHash, hashes));
      return { evalInvoice: rows.find((r) => r.paymentHash === job.evalPaymentHash)!, workInvoice: rows.find((r) => r.paymentHash === job.workPaymentHash) };
    },

    /**
     * Pay back what the work did not use, to an invoice of exactly that amount. Once: the job row moves
     * none → paying → paid by compare-and-set, and the payment is idempotent per invoice, so a retry after a
     * crash between paying and recording pays nothing twice.
     */
    async refund(job: JobRow, invoice: string) {
      if (job.state !== 'complete' && job.state !== 'failed') {
        throw conflict('not_refundable', `the job is ${job.state}; a refund is owed only once its work has ended`);
      }
      const run = await deps.store.get(job.runId);
      const owed = run?.refundedSats ?? 0;
      if (job.refundState === 'paid') {
        throw conflict('refund_already_paid', 'the refund was already paid', { refundPaymentHash: job.refundPaymentHash, amountSats: owed });
      }
      if (owed <= 0) throw conflict('nothing_owed', 'the work used everything it was paid for; no refund is owed');
      const decoded = deps.payments.decodeInvoice(invoice);
      if (!decoded) throw new AppError(400, 'invalid_invoice', 'invoice is not a payable Lightning invoice');
      if (decoded.amountSats !== owed) {
        throw new AppError(400, 'wrong_amount', `the invoice is for ${decoded.amountSats} sats; the refund is ${owed} sats`, {
          expectedSats: owed,
          invoiceSats: decoded.amountSats,
        });
      }
      const claimed = await db
        .update(jobs)
        .set({ refundState: 'paying', refundInvoice: invoice.trim(), updatedAt: sql`now()` })
        .where(and(eq(jobs.id, job.id), eq(jobs.refundState, 'none')))
        .returning({ id: jobs.id })
        .catch((err: unknown) => {
          if (isUniqueViolation(err)) throw new AppError(400, 'invoice_already_used', 'that invoice was already given for another refund');
          throw err;
        });
      if (claimed.length === 0) {
        const now = await find(job.id);
        if (now.refundState === 'paid') {
          throw conflict('refund_already_paid', 'the refund was already paid', { refundPaymentHash: now.refundPaymentHash, amountSats: owed });
        }
        throw conflict('refund_in_progress', 'the refund is being paid');
      }
      return payRefund(job.id, invoice.trim(), owed);
    },

    startEvaluation,

    /** Finish what a dead process (or a failed call) left half done: evaluations and refund payments. */
    async sweep(everyone = false) {
      const stale = everyone ? sql`true` : lt(jobs.updatedAt, sql`now() - interval '60 seconds'`);
      const stuck = await db.select({ id: jobs.id }).from(jobs).where(and(eq(jobs.state, 'evaluating'), stale)).limit(100);
      for (const j of stuck) startEvaluation(j.id);
      await this.deleteExpired();
      const paying = await db.select().from(jobs).where(and(eq(jobs.refundState, 'paying'), stale)).limit(100);
      for (const j of paying) {
        const run = await deps.store.get(j.runId);
        if (j.refundInvoice && run) await payRefund(j.id, j.refundInvoice, run.refundedSats).catch((err) => log.warn({ err, jobId: j.id }, 'refund retry failed'));
      }
    },

    /**
     * Forget jobs past retention that nobody can act on any more: rejected, never paid, or ended with nothing
     * owed (or the refund paid). A job still owed a refund is kept however old. Ledger rows stay.
     */
    async deleteExpired(): Promise<number> {
      const cutoff = new Date(Date.now() - config.RUN_RETENTION_DAYS * 86_400_000).toISOString();
      const res = await db.execute(sql`
        delete from jobs j where j.updated_at < ${cutoff}::timestamptz and (
          j.state in ('rejected', 'awaiting_eval_payment', 'awaiting_work_payment')
          or (j.state in ('complete', 'failed') and not exists (
                select 1 from runs r where r.id = j.run_id and r.refunded_sats > 0 and j.refund_state <> 'paid')))`);
      return res.rowCount ?? 0;
    },

    async drain() {
      await Promise.allSettled(evaluating.values());
    },
  };

  async function payRefund(jobId: string, invoice: string, amountSats: number) {
    let paid: { paymentHash: string };
    try {
      // A retry after a crash may find the payment already made: record it, never pay twice.
      paid = (await deps.payments.lookupPayment(invoice)) ?? (await deps.payments.payInvoice(invoice));
    } catch (err) {
      await db.update(jobs).set({ refundState: 'none', refundInvoice: null }).where(and(eq(jobs.id, jobId), eq(jobs.refundState, 'paying')));
      if (err instanceof PaymentError) throw new AppError(502, 'payment_failed', `paying the refund failed: ${err.message}`);
      throw err;
    }
    await db.transaction(async (tx) => {
      await tx
        .update(jobs)
        .set({ refundState: 'paid', refundPaymentHash: paid.paymentHash, updatedAt: sql`now()` })
        .where(and(eq(jobs.id, jobId), eq(jobs.refundState, 'paying')));
      await recordJobMovement(tx, { jobId, kind: 'job_refund_payout', amountSats: -amountSats, paymentHash: paid.paymentHash });
    });
    log.info({ jobId, amountSats, paymentHash: paid.paymentHash }, 'job refund paid');
    return { refundPaymentHash: paid.paymentHash, amountSats };
  }
}

export type JobsService = ReturnType<typeof createJobsService>;
