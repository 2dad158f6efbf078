import { and, asc, desc, eq, isNull, lt, or, sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { Db } from '../db/pool.js';
import { invoices, payouts, type PayoutKind } from '../db/schema.js';
import { AppError, conflict } from '../http/errors.js';
import { checkRefundInvoice, decodeInvoice } from '../providers/payments/bolt11.js';
import { PaymentError, type PaymentProvider, type PayResult } from '../providers/payments/types.js';
import { recordJobMovement, recordUndeliverable } from './ledger.js';

export type PayoutRow = typeof payouts.$inferSelect;

/** A refund owed: how much, for which incoming payment, and (for a job) to whose account it is booked. */
export interface Debt {
  kind: PayoutKind;
  /** The incoming payment whose money goes back. */
  refundOf: string;
  jobId?: string;
  amountSats: number;
}

/** Failures no retry of the same invoice can mend: the client must give another. */
const PERMANENT = new Set(['wrong_network', 'invoice_expired', 'invalid_amount', 'self_payment', 'payment_refused']);
/** Seconds to leave a refund invoice at least, so a payment can still cross the network before it expires. */
const EXPIRY_MARGIN_S = 30;

const isUniqueViolation = (err: unknown, constraint: string): boolean =>
  typeof err === 'object' &&
  err !== null &&
  (((err as { code?: string }).code === '23505' && (err as { constraint?: string }).constraint === constraint) || isUniqueViolation((err as { cause?: unknown }).cause, constraint));

/**
 * Refund payouts: money paid back to an invoice a client gave us, at most once, retried through failures.
 *
 * Why it cannot pay twice:
 * - One live payout per debt: a partial unique index on `refund_of` (state <> 'failed') lets a second request
 *   for the same debt fail on insert; one invoice settles one payout ever (unique `payment_hash`).
 * - One attempt at a time: an attempt first *holds* the row (an UPDATE that only succeeds when nobody holds
 *   it), so a request and the sweeper, or two processes, never pay at once; a dead holder's hold lapses.
 * - Look before paying: every attempt after the first asks the provider about our payment of that hash, and
 *   a payment that went through or is in flight is recorded or waited for, never repeated. A payout whose
 *   outcome is unknown (a timeout) never turns `failed` while unknown: only a lookup ends it. Nodes, LNbits
 *   included, refuse to pay one payment hash twice besides.
 * - Record once: `paid` moves by compare-and-set from `pending`, with its ledger row in the same transaction
 *   (one job payout per job, one ledger row per payment hash). Other outcomes are written only by the attempt
 *   that holds the row (fenced by the attempt number), so a late writer cannot undo a newer attempt.
 */
export function createPayouts(deps: { db: Db; log: Logger; payments: PaymentProvider; config: Config }) {
  const { db, log, config } = deps;
  // Long enough for a lookup, a payment and a second lookup to time out.
  const holdMs = () => config.LNBITS_TIMEOUT_MS * 3 + 10_000;
  const backoffS = (attempts: number) => Math.min(3600, config.REFUND_RETRY_BASE_S * 2 ** Math.max(0, attempts - 1));

  async function latest(refundOf: string): Promise<PayoutRow | undefined> {
    const [row] = await db.select().from(payouts).where(eq(payouts.refundOf, refundOf)).orderBy(desc(payouts.createdAt)).limit(1);
    return row;
  }

  function alreadyUnderWay(p: PayoutRow): AppError {
    return p.state === 'paid'
      ? conflict('refund_already_paid', 'the refund was already paid', { refundPaymentHash: p.paymentHash, amountSats: p.amountSats })
      : conflict('refund_in_progress', 'the refund is being paid', payoutView(p));
  }

  /** Settle the outcome of an attempt that held `p` (attempt number `p.attempts`). */
  async function record(p: PayoutRow, result: PayResult | PaymentError): Promise<void> {
    if (!(result instanceof PaymentError) && result.state === 'paid') {
      await db.transaction(async (tx) => {
        const moved = await tx
          .update(payouts)
          .set({ state: 'paid', paidAt: sql`now()`, heldUntil: null, lastError: null, outcomeUnknown: false, updatedAt: sql`now()` })
          .where(and(eq(payouts.id, p.id), eq(payouts.state, 'pending')))
          .returning({ id: payouts.id });
        if (moved.length === 0) return;
        if (p.kind === 'job_refund' && p.jobId) {
          await recordJobMovement(tx, { jobId: p.jobId, kind: 'job_refund_payout', amountSats: -p.amountSats, paymentHash: p.paymentHash });
        } else {
          await recordUndeliverable(tx, { kind: 'undeliverable_refund_payout', amountSats: -p.amountSats, paymentHash: p.paymentHash });
        }
      });
      log.info({ payoutId: p.id, jobId: p.jobId, refundOf: p.refundOf, amountSats: p.amountSats, paymentHash: p.paymentHash }, 'refund paid');
      return;
    }
    // An error cannot settle an unknown outcome (a failed lookup says nothing about the payment): only an
    // answer from the provider — paid, pending, failed, or never heard of — can.
    const unknown = result instanceof PaymentError ? result.outcome === 'unknown' || p.outcomeUnknown : result.state === 'pending';
    const message =
      result instanceof PaymentError
        ? result.message
        : result.state === 'pending'
          ? 'the payment is in flight; it will be looked up'
          : result.reason;
    const permanent =
      !unknown &&
      ((result instanceof PaymentError && PERMANENT.has(result.code)) ||
        (!(result instanceof PaymentError) && result.state === 'failed' && !result.retryable) ||
        p.attempts >= config.REFUND_MAX_ATTEMPTS);
    await db
      .update(payouts)
      .set({
        state: permanent ? 'failed' : 'pending',
        lastError: message,
        outcomeUnknown: unknown,
        heldUntil: null,
        nextAttemptAt: sql`now() + make_interval(secs => ${backoffS(p.attempts)})`,
        updatedAt: sql`now()`,
      })
      .where(and(eq(payouts.id, p.id), eq(payouts.state, 'pending'), eq(payouts.attempts, p.attempts)));
    log.warn({ payoutId: p.id, jobId: p.jobId, attempts: p.attempts, unknown, permanent, error: message }, permanent ? 'refund payout failed for good; the refund stays owed' : 'refund payout did not complete; it will be tried again');
  }

  /** One attempt, if the payout is due and nobody else holds it. Returns the payout as it stands after. */
  async function attempt(id: string): Promise<PayoutRow> {
    const [p] = await db
      .update(payouts)
      .set({ attempts: sql`${payouts.attempts} + 1`, heldUntil: sql`now() + make_interval(secs => ${holdMs() / 1000})`, updatedAt: sql`now()` })
      .where(and(eq(payouts.id, id), eq(payouts.state, 'pending'), sql`${payouts.nextAttemptAt} <= now()`, or(isNull(payouts.heldUntil), lt(payouts.heldUntil, sql`now()`))))
      .returning();
    if (p) {
      let result: PayResult | PaymentError;
      try {
        result = await payOnce(p);
      } catch (err) {
        if (!(err instanceof PaymentError)) throw err;
        result = err;
      }
      await record(p, result);
    }
    const [now] = await db.select().from(payouts).where(eq(payouts.id, id));
    return now!;
  }

  async function payOnce(p: PayoutRow): Promise<PayResult> {
    // Nothing can exist before the first attempt; after it, what the provider knows decides.
    const known = p.attempts > 1 ? await deps.payments.lookupPayment(p.paymentHash) : null;
    if (known && (known.state !== 'failed' || !known.retryable)) return known;
    if (p.attempts > config.REFUND_MAX_ATTEMPTS) {
      return { state: 'failed', paymentHash: p.paymentHash, reason: known?.reason ?? p.lastError ?? 'the payment failed', retryable: false };
    }
    try {
      return await deps.payments.payInvoice(decodeInvoice(p.invoice));
    } catch (err) {
      if (!(err instanceof PaymentError) || err.outcome !== 'failed' || PERMANENT.has(err.code)) throw err;
      // A definite failure: would the provider try this invoice again? (LNbits never does.)
      const after = await deps.payments.lookupPayment(p.paymentHash).catch(() => null);
      if (after?.state === 'failed' && !after.retryable) return { ...after, reason: err.message };
      throw err;
    }
  }

  return {
    latest,
    attempt,

    /**
     * Start paying `debt` to `invoice`: check the invoice (network, expiry, exact amount; not one of ours),
     * record the payout, and make its first attempt now. Returns the payout: `paid`, `pending` (to be retried,
     * or its outcome unknown), or `failed`.
     */
    async start(debt: Debt, invoice: string): Promise<PayoutRow> {
      const before = await latest(debt.refundOf);
      if (before && before.state !== 'failed') throw alreadyUnderWay(before);
      const checked = checkRefundInvoice(invoice, { network: config.LIGHTNING_NETWORK, amountSats: debt.amountSats, marginS: EXPIRY_MARGIN_S });
      if (!checked.ok) {
        const { code, message } = checked.problem;
        throw new AppError(400, code, message, 'details' in checked.problem ? checked.problem.details : undefined);
      }
      const inv = checked.invoice;
      const [ours] = await db.select({ h: invoices.paymentHash }).from(invoices).where(eq(invoices.paymentHash, inv.paymentHash));
      if (ours) throw new AppError(400, 'invalid_invoice', 'that is an invoice of this server; give an invoice of your own wallet');
      let row: PayoutRow;
      try {
        [row] = (await db
          .insert(payouts)
          .values({ kind: debt.kind, refundOf: debt.refundOf, jobId: debt.jobId, amountSats: debt.amountSats, invoice: inv.paymentRequest, paymentHash: inv.paymentHash })
          .returning()) as [PayoutRow];
      } catch (err) {
        if (isUniqueViolation(err, 'payouts_payment_hash_uq')) throw new AppError(400, 'invoice_already_used', 'that invoice was already given for a refund; make a new one');
        if (isUniqueViolation(err, 'payouts_refund_of_live_uq')) {
          const now = await latest(debt.refundOf);
          if (now) throw alreadyUnderWay(now);
        }
        throw err;
      }
      return attempt(row.id);
    },

    /** Attempt the payouts that are due (a bounded batch per sweep). */
    async sweep(limit = 20): Promise<void> {
      const due = await db
        .select({ id: payouts.id })
        .from(payouts)
        .where(and(eq(payouts.state, 'pending'), sql`${payouts.nextAttemptAt} <= now()`, or(isNull(payouts.heldUntil), lt(payouts.heldUntil, sql`now()`))))
        .orderBy(asc(payouts.nextAttemptAt))
        .limit(limit);
      for (const d of due) await attempt(d.id).catch((err) => log.error({ err, payoutId: d.id }, 'a refund payout attempt crashed; the next sweep retries'));
    },
  };
}

export type Payouts = ReturnType<typeof createPayouts>;

/** A payout as clients see it. `state` is `paying` while under way (or waiting to retry), `paid` or `failed`. */
export function payoutView(p: PayoutRow) {
  return {
    state: p.state === 'pending' ? ('paying' as const) : p.state,
    amountSats: p.amountSats,
    refundPaymentHash: p.paymentHash,
    attempts: p.attempts,
    ...(p.lastError && p.state !== 'paid' ? { lastError: p.lastError } : {}),
    ...(p.state === 'pending' ? { outcomeUnknown: p.outcomeUnknown, nextAttemptAt: p.nextAttemptAt.toISOString() } : {}),
    ...(p.paidAt ? { paidAt: p.paidAt.toISOString() } : {}),
  };
}

/** The HTTP answer to a refund request: 200 paid, 202 under way, 502 failed for good (still owed). */
export function payoutAnswer(p: PayoutRow): { status: number; body: unknown } {
  if (p.state === 'failed') {
    throw new AppError(502, 'payment_failed', `paying the refund failed: ${p.lastError ?? 'unknown error'}; the refund is still owed: give another invoice`, payoutView(p));
  }
  return { status: p.state === 'paid' ? 200 : 202, body: payoutView(p) };
}
