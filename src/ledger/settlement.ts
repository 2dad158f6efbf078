import { and, asc, eq, inArray, lt, sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Bus } from '../bus.js';
import type { Config } from '../config.js';
import type { Db, DbOrTx, Tx } from '../db/pool.js';
import { invoices, type InvoicePurpose } from '../db/schema.js';
import { AppError } from '../http/errors.js';
import { PaymentError, type Invoice, type PaymentProvider } from '../providers/payments/types.js';
import { recordUndeliverable } from './ledger.js';

export type InvoiceRow = typeof invoices.$inferSelect;

/**
 * What paying an invoice of a purpose does, inside the settlement transaction: move what awaited the payment
 * (compare-and-set) and record the money, then return an effect to run after commit (start an evaluation,
 * hand a run to the executor) — never before the money is on record. Null when nothing awaits it any more
 * (the job is gone, or moved on): the handler must then have written nothing, and the payment is held as
 * undeliverable.
 */
export type InvoiceHandler = (tx: Tx, invoice: InvoiceRow) => Promise<{ effect?: () => void } | null>;
/** What closing an unpaid invoice does (a job or an unpaid session expires), in the closing transaction. */
export type ExpiryHandler = (tx: Tx, invoice: InvoiceRow) => Promise<(() => void) | void>;

/** A webhook may ask about one invoice this often; the rest are dropped (the polls still reconcile). */
const HINT_INTERVAL_MS = 1_000;
const HINTS_KEPT = 10_000;

/**
 * Turns settled invoices into credits and state changes, exactly once, and closes invoices nobody paid.
 *
 * Why it cannot credit twice or lose a payment: the invoice row is locked, and moved out of `pending` (or
 * `expired`) in the same transaction as its effect; a repeated notification, a poll racing a webhook, or two
 * processes all find it moved and do nothing. Nothing is settled on anyone's say-so but the provider's
 * `lookupInvoice` (a webhook only makes us ask). An invoice is closed (`expired`) only after the provider,
 * asked past its expiry plus INVOICE_EXPIRY_GRACE_S, says it is unpaid; a payment that still arrives after
 * that — or for a job that no longer exists — is recorded as `undeliverable_payment` and the invoice turns
 * `refundable`: held for the payer, who claims it back with the preimage. It is never silently kept.
 */
export function createSettlement(deps: { db: Db; bus: Bus; log: Logger; payments: PaymentProvider; config: Config }) {
  const { db, log, config } = deps;
  const handlers = new Map<InvoicePurpose, InvoiceHandler>();
  const expiryHandlers = new Map<InvoicePurpose, ExpiryHandler>();
  const hinted = new Map<string, number>();
  const graceMs = () => config.INVOICE_EXPIRY_GRACE_S * 1000;

  async function settle(paymentHash: string): Promise<'settled' | 'refundable' | 'already' | 'unknown'> {
    let effect: (() => void) | undefined;
    let inv: InvoiceRow | undefined;
    const outcome = await db.transaction(async (tx) => {
      [inv] = await tx.select().from(invoices).where(eq(invoices.paymentHash, paymentHash)).for('update');
      if (!inv) return 'unknown' as const;
      if (inv.state === 'paid' || inv.state === 'refundable') return 'already' as const;
      if (inv.state === 'pending') {
        const handler = handlers.get(inv.purpose);
        if (!handler) throw new Error(`no settlement handler for ${inv.purpose}`);
        const applied = await handler(tx, inv);
        if (applied) {
          await tx.update(invoices).set({ state: 'paid', paidAt: new Date() }).where(eq(invoices.paymentHash, paymentHash));
          effect = applied.effect;
          return 'settled' as const;
        }
      }
      // Closed before the money came, or nothing awaits it any more: hold it for the payer.
      await tx.update(invoices).set({ state: 'refundable', paidAt: new Date() }).where(eq(invoices.paymentHash, paymentHash));
      await recordUndeliverable(tx, { kind: 'undeliverable_payment', amountSats: inv.amountSats, paymentHash });
      return 'refundable' as const;
    });
    if (inv && (outcome === 'settled' || outcome === 'refundable')) {
      const settled = inv as InvoiceRow;
      if (outcome === 'settled') log.info({ paymentHash, purpose: settled.purpose, amountSats: settled.amountSats }, 'invoice settled');
      else log.warn({ paymentHash, purpose: settled.purpose, amountSats: settled.amountSats, jobId: settled.jobId }, 'payment arrived for something that can no longer be delivered; held as refundable');
      try {
        effect?.();
      } finally {
        deps.bus.emit('invoice:settle', { paymentHash, purpose: settled.purpose, sessionId: settled.sessionId, jobId: settled.jobId, state: outcome === 'settled' ? 'paid' : 'refundable' });
      }
    }
    return outcome;
  }

  /** Close a pending invoice past its expiry and grace, once the provider says it is unpaid (or settle it, if paid). */
  async function closeIfUnpaid(paymentHash: string): Promise<void> {
    const status = await deps.payments.lookupInvoice(paymentHash);
    if (status?.state === 'paid') {
      await settle(paymentHash);
      return;
    }
    let effect: (() => void) | void = undefined;
    const closed = await db.transaction(async (tx) => {
      const [inv] = await tx.select().from(invoices).where(eq(invoices.paymentHash, paymentHash)).for('update');
      if (!inv || inv.state !== 'pending' || inv.expiresAt.getTime() + graceMs() > Date.now()) return false;
      await tx.update(invoices).set({ state: 'expired' }).where(eq(invoices.paymentHash, paymentHash));
      effect = await expiryHandlers.get(inv.purpose)?.(tx, inv);
      return true;
    });
    if (closed) {
      log.info({ paymentHash }, 'invoice expired unpaid');
      (effect as (() => void) | void)?.();
    }
  }

  /**
   * Ask the provider about an invoice and act on its answer: settle it if paid — a pending one as usual, an
   * expired one as undeliverable — or close it if it is past due. A missed notification only delays.
   */
  async function reconcile(paymentHash: string): Promise<void> {
    const [inv] = await db.select({ state: invoices.state, expiresAt: invoices.expiresAt }).from(invoices).where(eq(invoices.paymentHash, paymentHash));
    if (!inv || (inv.state !== 'pending' && inv.state !== 'expired')) return;
    try {
      if (inv.state === 'pending' && inv.expiresAt.getTime() + graceMs() <= Date.now()) return await closeIfUnpaid(paymentHash);
      const status = await deps.payments.lookupInvoice(paymentHash);
      if (status?.state === 'paid') await settle(paymentHash);
    } catch (err) {
      // The provider being away must not fail the read that asked: the next poll or sweep asks again.
      if (!(err instanceof PaymentError)) throw err;
      log.warn({ paymentHash, code: err.code }, 'could not reconcile an invoice with the payment provider');
    }
  }

  // The provider tells us of settlements; a failed handler is logged, and the next poll reconciles.
  deps.payments.onSettled(async (hash) => {
    try {
      await settle(hash);
    } catch (err) {
      log.error({ err, paymentHash: hash }, 'settling an invoice failed; a later poll will retry');
    }
  });

  return {
    on(purpose: InvoicePurpose, handler: InvoiceHandler) {
      handlers.set(purpose, handler);
    },
    onExpire(purpose: InvoicePurpose, handler: ExpiryHandler) {
      expiryHandlers.set(purpose, handler);
    },

    /**
     * Ask the provider for an invoice that expires after INVOICE_EXPIRY_S. Its failure is the provider's, not
     * the client's: `502 payment_provider_error`. Call it outside any transaction (it is a network call).
     */
    async issue(req: { amountSats: number; memo: string }): Promise<Invoice> {
      try {
        return await deps.payments.createInvoice({ ...req, expirySeconds: config.INVOICE_EXPIRY_S });
      } catch (err) {
        if (!(err instanceof PaymentError)) throw err;
        log.error({ err: { code: err.code, message: err.message } }, 'the payment provider could not create an invoice');
        throw new AppError(502, 'payment_provider_error', 'the payment provider could not create an invoice; try again shortly', undefined, { cause: err });
      }
    },

    /** Record a new invoice of ours. */
    async record(tx: DbOrTx, inv: Omit<typeof invoices.$inferInsert, 'expiresAt'> & { expiresAt: Date }) {
      await tx.insert(invoices).values(inv);
    },

    settle,
    reconcile,

    /**
     * Someone (an LNbits webhook, or anyone at all) says an invoice was paid. Believe nothing: reconcile it
     * with the provider, at most once a second per invoice, and only if it is one of ours still open.
     */
    async hint(paymentHash: string): Promise<void> {
      const now = Date.now();
      if (now - (hinted.get(paymentHash) ?? 0) < HINT_INTERVAL_MS) return;
      if (hinted.size >= HINTS_KEPT) for (const [h, at] of hinted) if (now - at >= HINT_INTERVAL_MS) hinted.delete(h);
      if (hinted.size < HINTS_KEPT) hinted.set(paymentHash, now);
      await reconcile(paymentHash);
    },

    /** Close the invoices past their expiry and grace (a bounded batch per sweep, oldest first). */
    async sweep(limit = 20): Promise<void> {
      const due = await db
        .select({ hash: invoices.paymentHash })
        .from(invoices)
        .where(and(eq(invoices.state, 'pending'), lt(invoices.expiresAt, sql`now() - make_interval(secs => ${config.INVOICE_EXPIRY_GRACE_S})`)))
        .orderBy(asc(invoices.expiresAt))
        .limit(limit);
      for (const d of due) {
        await closeIfUnpaid(d.hash).catch((err) => log.warn({ err, paymentHash: d.hash }, 'closing an expired invoice failed; the next sweep retries'));
      }
    },

    async find(paymentHash: string): Promise<InvoiceRow | undefined> {
      const [row] = await db.select().from(invoices).where(eq(invoices.paymentHash, paymentHash));
      return row;
    },

    async findMany(hashes: string[]): Promise<InvoiceRow[]> {
      return hashes.length ? db.select().from(invoices).where(inArray(invoices.paymentHash, hashes)) : [];
    },
  };
}

export type Settlement = ReturnType<typeof createSettlement>;

/** An invoice as clients see it: what to pay, how much, until when, and what became of it. */
export function invoiceView(i: Pick<InvoiceRow, 'paymentRequest' | 'paymentHash' | 'amountSats' | 'state' | 'expiresAt'>) {
  return { paymentRequest: i.paymentRequest, paymentHash: i.paymentHash, amountSats: i.amountSats, state: i.state, expiresAt: i.expiresAt.toISOString() };
}
