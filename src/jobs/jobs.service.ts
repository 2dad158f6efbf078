import { busMessage } from '../bus-bridge.js';
import { and, eq, lt, sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Bus } from '../bus.js';
import type { Config } from '../config.js';
import type { Db, Tx } from '../db/pool.js';
import { jobs, type JobPricing, type JobState } from '../db/schema.js';
import { conflict, notFound } from '../http/errors.js';
import { isUuid } from '../http/validate.js';
import { recordJobMovement } from '../ledger/ledger.js';
import { costSats, priceSnapshot } from '../ledger/pricing.js';
import type { Payouts } from '../ledger/payouts.js';
import type { Settlement } from '../ledger/settlement.js';
import type { Models } from '../models/providers.js';
import type { AiEvaluation } from '../providers/ai/types.js';
import type { Executor } from '../runs/executor.js';
import type { Settler } from '../runs/finish.js';
import type { RunStore } from '../runs/store.js';

export type JobRow = typeof jobs.$inferSelect;

export interface JobsDeps {
  config: Config;
  db: Db;
  bus: Bus;
  log: Logger;
  /** Jobs run on the catalogue's default model. */
  models: Models;
  settlement: Settlement;
  payouts: Payouts;
  executor: Executor;
  store: RunStore;
  instanceId: string;
  /**
   * Whether this process asks the AI provider itself (roles `all` and `worker`). An `api` process evaluates nothing:
   * it emits `job:evaluate`, which reaches the others by NOTIFY, and one of them evaluates (default true).
   */
  evaluates?: boolean;
}

/** States in which the job's run exists (so a stream can attach to it). */
export const RUN_STATES: JobState[] = ['executing', 'complete', 'failed'];

/**
 * A job's run finished: the job follows it, in the run's finish statement (runs/finish.ts: `fin` is the finished
 * run). What the work did not use stays owed to the client (the run's `refunded_sats`) until it claims it with an
 * invoice.
 */
export const settleJobRun: Settler = {
  sql: `
  job_settle as (
    update jobs set state = case when fin.state = 'complete' then 'complete' else 'failed' end,
      error_message = case fin.state
        when 'complete' then null
        when 'failed' then coalesce(fin.error->>'message', 'the work failed')
        when 'interrupted' then 'the work was interrupted (server restart or shutdown)'
        else 'the work was cancelled' end,
      updated_at = now()
    from fin where fin.kind = 'job' and jobs.id = fin.job_id and jobs.state = 'executing')`,
};

/** How long an evaluation may take before it counts as failed. */
const EVAL_TIMEOUT_MS = 30_000;

export function createJobsService(deps: JobsDeps) {
  const { config, db, bus, log } = deps;
  const evaluating = new Map<string, Promise<void>>();

  const emit = (jobId: string, state: JobState) => bus.emit('job:update', { jobId, state });
  const evaluates = deps.evaluates ?? true;
  // An evaluation paid for through an `api` process: every process that evaluates hears it; the first to claim it does.
  if (evaluates) bus.on('job:evaluate', (e) => startEvaluation(e.jobId, e.at));

  // Paying the evaluation fee starts the evaluation (after commit). A job that no longer awaits it (deleted,
  // expired) cannot take the payment: the settlement holds it for the payer.
  deps.settlement.on('job_eval', async (tx, inv) => {
    if (!inv.jobId) return null;
    const jobId = inv.jobId;
    const moved = await tx
      .update(jobs)
      .set({ state: 'evaluating', updatedAt: sql`now()` })
      .where(and(eq(jobs.id, jobId), eq(jobs.state, 'awaiting_eval_payment')))
      .returning({ id: jobs.id, at: sql<string>`${jobs.updatedAt}::text` });
    if (moved.length === 0) return null;
    await recordJobMovement(tx, { jobId, kind: 'job_eval_payment', amountSats: inv.amountSats, paymentHash: inv.paymentHash });
    return {
      effect: () => {
        emit(jobId, 'evaluating');
        // Here when this process asks providers; else by whichever other process claims it first.
        if (evaluates) startEvaluation(jobId, moved[0]!.at);
        else bus.emit('job:evaluate', { jobId, at: moved[0]!.at });
      },
    };
  });

  // Paying the work invoice creates the run, in the same transaction, and hands it to the executor.
  deps.settlement.on('job_work', async (tx, inv) => {
    if (!inv.jobId) return null;
    const jobId = inv.jobId;
    const [job] = await tx
      .update(jobs)
      .set({ state: 'executing', updatedAt: sql`now()` })
      .where(and(eq(jobs.id, jobId), eq(jobs.state, 'awaiting_work_payment'), sql`${jobs.pricing} is not null`))
      .returning();
    if (!job?.pricing) return null;
    await recordJobMovement(tx, { jobId, kind: 'job_work_payment', amountSats: inv.amountSats, paymentHash: inv.paymentHash });
    const run = await deps.store.insert(tx, {
      id: job.runId,
      kind: 'job',
      jobId,
      request: job.request,
      model: deps.models.default.entry.name,
      turn: [{ role: 'user', content: job.request }],
      input: [{ role: 'user', content: job.request }],
      maxTokens: job.pricing.estimatedOutputTokens,
      // The fee is in the work amount, so it is in the run's prices: a finished run keeps it, not refunds it as unused.
      pricing: { inputPer1k: job.pricing.inputRateSatsPer1k, outputPer1k: job.pricing.outputRateSatsPer1k, minSats: job.pricing.minSats, feeSats: job.pricing.feeSats },
      debitedSats: inv.amountSats,
      // Into the shared queue: this process claims it at once if it has a slot, else any other that does.
      notice: busMessage(deps.instanceId, 'run:queued', { runId: job.runId }),
    });
    return {
      effect: () => {
        emit(jobId, 'executing');
        deps.executor.accept(run);
      },
    };
  });

  // An invoice closed unpaid: the job that waited on it expires.
  const expireJob = (awaiting: JobState) => async (tx: Tx, inv: { jobId: string | null }) => {
    if (!inv.jobId) return;
    const jobId = inv.jobId;
    const moved = await tx
      .update(jobs)
      .set({ state: 'expired', updatedAt: sql`now()` })
      .where(and(eq(jobs.id, jobId), eq(jobs.state, awaiting)))
      .returning({ id: jobs.id });
    if (moved.length) return () => emit(jobId, 'expired');
  };
  deps.settlement.onExpire('job_eval', expireJob('awaiting_eval_payment'));
  deps.settlement.onExpire('job_work', expireJob('awaiting_work_payment'));

  // The run's finish moved the job in its transaction; tell the watchers.
  bus.on('run:finish', (e) => {
    if (e.kind === 'job' && e.jobId) emit(e.jobId, e.state === 'complete' ? 'complete' : 'failed');
  });

  function startEvaluation(jobId: string, at: string) {
    if (!evaluates || evaluating.has(jobId)) return;
    const p = evaluate(jobId, at)
      .catch((err) => log.error({ err, jobId }, 'job evaluation crashed; the sweeper will retry'))
      .finally(() => evaluating.delete(jobId));
    evaluating.set(jobId, p);
  }

  /**
   * Ask the provider, price the work, and move evaluating → awaiting_work_payment or rejected. Several processes may
   * be told of the same evaluation (`job:evaluate` reaches them all, the sweeps find a stale one). Each is told the
   * `updated_at` it was told about (`at`: the payment's, or the stale one a sweep read), and the first to move it from
   * exactly that value evaluates (a compare-and-set on the timestamp); the rest do nothing, including one that hears
   * of it only after the claim (it still holds the old value, never the claim's). For the next 60 s the sweeps leave
   * it to that one.
   */
  async function evaluate(jobId: string, at: string) {
    const [job] = await db
      .update(jobs)
      .set({ updatedAt: sql`now()` })
      .where(and(eq(jobs.id, jobId), eq(jobs.state, 'evaluating'), sql`${jobs.updatedAt} = ${at}::timestamptz`))
      .returning({ request: jobs.request });
    if (!job) return;
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
    const inv = await deps.settlement.issue({ amountSats: work, memo: `sluice job work ${jobId}` });
    const moved = await db.transaction(async (tx) => {
      const rows = await tx
        .update(jobs)
        .set({ state: 'awaiting_work_payment', pricing, workPaymentHash: inv.paymentHash, updatedAt: sql`now()` })
        .where(and(eq(jobs.id, jobId), eq(jobs.state, 'evaluating')))
        .returning({ id: jobs.id });
      if (rows.length) await deps.settlement.record(tx, { paymentHash: inv.paymentHash, purpose: 'job_work', jobId, amountSats: work, paymentRequest: inv.paymentRequest, expiresAt: inv.expiresAt });
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
      const inv = await deps.settlement.issue({ amountSats: config.JOB_EVAL_FEE_SATS, memo: 'sluice job evaluation' });
      return db.transaction(async (tx) => {
        const [job] = await tx.insert(jobs).values({ request, evalPaymentHash: inv.paymentHash }).returning();
        await deps.settlement.record(tx, { paymentHash: inv.paymentHash, purpose: 'job_eval', jobId: job!.id, amountSats: inv.amountSats, paymentRequest: inv.paymentRequest, expiresAt: inv.expiresAt });
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
      const rows = await deps.settlement.findMany([job.evalPaymentHash, job.workPaymentHash].filter((h): h is string => Boolean(h)));
      return { evalInvoice: rows.find((r) => r.paymentHash === job.evalPaymentHash)!, workInvoice: rows.find((r) => r.paymentHash === job.workPaymentHash) };
    },

    /** The latest payout of this job's refund, if one was ever asked for. */
    async payoutOf(job: JobRow) {
      return job.workPaymentHash ? deps.payouts.latest(job.workPaymentHash) : undefined;
    },

    /**
     * Pay back what the work did not use, to an invoice of exactly that amount: at most once (see payouts.ts),
     * retried through failures; a payout that fails for good leaves the refund owed for another invoice.
     */
    async refund(job: JobRow, invoice: string) {
      if (job.state !== 'complete' && job.state !== 'failed') {
        throw conflict('not_refundable', `the job is ${job.state}; a refund is owed only once its work has ended`);
      }
      const run = await deps.store.get(job.runId);
      const owed = run?.refundedSats ?? 0;
      const before = await this.payoutOf(job);
      if (before?.state === 'paid') {
        throw conflict('refund_already_paid', 'the refund was already paid', { refundPaymentHash: before.paymentHash, amountSats: before.amountSats });
      }
      if (owed <= 0 || !job.workPaymentHash) throw conflict('nothing_owed', 'the work used everything it was paid for; no refund is owed');
      return deps.payouts.start({ kind: 'job_refund', refundOf: job.workPaymentHash, jobId: job.id, amountSats: owed }, invoice);
    },

    startEvaluation,

    /** Finish what a dead process (or a failed call) left half done: evaluations. (Payouts sweep themselves.) */
    async sweep(everyone = false) {
      const stale = everyone ? sql`true` : lt(jobs.updatedAt, sql`now() - interval '60 seconds'`);
      const stuck = await db.select({ id: jobs.id, at: sql<string>`${jobs.updatedAt}::text` }).from(jobs).where(and(eq(jobs.state, 'evaluating'), stale)).limit(100);
      for (const j of stuck) startEvaluation(j.id, j.at);
      await this.deleteExpired();
    },

    /**
     * Forget jobs past retention that nobody can act on any more: rejected, expired unpaid, or ended with
     * nothing owed (or the refund paid). A job still owed a refund is kept however old. Ledger rows, invoices
     * and payouts stay: a late payment must still find its invoice (and is then held for its payer).
     */
    async deleteExpired(): Promise<number> {
      const cutoff = new Date(Date.now() - config.RUN_RETENTION_DAYS * 86_400_000).toISOString();
      const res = await db.execute(sql`
        delete from jobs j where j.updated_at < ${cutoff}::timestamptz and (
          j.state in ('rejected', 'expired')
          or (j.state in ('complete', 'failed') and (
                not exists (select 1 from runs r where r.id = j.run_id and r.refunded_sats > 0)
                or exists (select 1 from payouts p where p.refund_of = j.work_payment_hash and p.state = 'paid'))))`);
      return res.rowCount ?? 0;
    },

    async drain() {
      await Promise.allSettled(evaluating.values());
    },
  };
}

export type JobsService = ReturnType<typeof createJobsService>;
