import { eq } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Bus } from '../bus.js';
import type { Db, DbOrTx, Tx } from '../db/pool.js';
import { invoices, type InvoicePurpose } from '../db/schema.js';
import type { PaymentProvider } from '../providers/payments/types.js';

export type InvoiceRow = typeof invoices.$inferSelect;

/**
 * What paying an invoice of a purpose does, inside the settlement transaction. It may return an effect to
 * run after commit (start an evaluation, hand a run to the executor): never before the money is on record.
 */
export type InvoiceHandler = (tx: Tx, invoice: InvoiceRow) => Promise<(() => void) | void>;

/**
 * Turns settled invoices into credits and state changes, exactly once: the invoice row is locked and moved
 * pending → paid in the same transaction as its effect, so a repeated notification, a poll racing the
 * provider's callback, or two processes settling at once all credit once.
 */
export function createSettlement(deps: { db: Db; bus: Bus; log: Logger; payments: PaymentProvider }) {
  const handlers = new Map<InvoicePurpose, InvoiceHandler>();

  async function settle(paymentHash: string): Promise<'settled' | 'already' | 'unknown'> {
    let effect: (() => void) | void = undefined;
    let settled: InvoiceRow | undefined;
    const outcome = await deps.db.transaction(async (tx) => {
      const [inv] = await tx.select().from(invoices).where(eq(invoices.paymentHash, paymentHash)).for('update');
      if (!inv) return 'unknown' as const;
      if (inv.state === 'paid') return 'already' as const;
      await tx.update(invoices).set({ state: 'paid', paidAt: new Date() }).where(eq(invoices.paymentHash, paymentHash));
      const handler = handlers.get(inv.purpose);
      if (!handler) throw new Error(`no settlement handler for ${inv.purpose}`);
      effect = await handler(tx, inv);
      settled = inv;
      return 'settled' as const;
    });
    if (settled) {
      deps.log.info({ paymentHash, purpose: settled.purpose, amountSats: settled.amountSats }, 'invoice settled');
      try {
        (effect as (() => void) | undefined)?.();
      } finally {
        deps.bus.emit('invoice:settle', { paymentHash, purpose: settled.purpose, sessionId: settled.sessionId, jobId: settled.jobId });
      }
    }
    return outcome;
  }

  // The provider tells us of settlements; a failed handler is logged, and the next poll reconciles.
  deps.payments.onSettled(async (hash) => {
    try {
      await settle(hash);
    } catch (err) {
      deps.log.error({ err, paymentHash: hash }, 'settling an invoice failed; a later poll will retry');
    }
  });

  return {
    on(purpose: InvoicePurpose, handler: InvoiceHandler) {
      handlers.set(purpose, handler);
    },

    /** Record a new invoice of ours. */
    async record(tx: DbOrTx, inv: typeof invoices.$inferInsert) {
      await tx.insert(invoices).values(inv);
    },

    settle,

    /** Ask the provider about a pending invoice and settle it if it was paid: a missed event only delays. */
    async reconcile(paymentHash: string): Promise<void> {
      const [inv] = await deps.db.select({ state: invoices.state }).from(invoices).where(eq(invoices.paymentHash, paymentHash));
      if (!inv || inv.state === 'paid') return;
      const status = await deps.payments.lookupInvoice(paymentHash);
      if (status?.state === 'paid') await settle(paymentHash);
    },
  };
}

export type Settlement = ReturnType<typeof createSettlement>;
