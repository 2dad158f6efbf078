import { createHash, randomBytes } from 'node:crypto';
import { and, eq } from 'drizzle-orm';
import type { Db } from '../../db/pool.js';
import { stubInvoices } from '../../db/schema.js';
import { PaymentError, type Invoice, type PaymentProvider } from './types.js';

/**
 * The default payment provider: plays a Lightning node whose books are a table (so invoices survive restarts).
 * Its invoices look like `lnbcrt<sats>u1stub<random>` — the number is the amount in sats — and are settled by
 * `markPaid` (exposed as `POST /api/dev/stub/pay/:paymentHash` outside production). It pays any invoice of
 * that same format, checking its amount.
 */
export interface StubPaymentProvider extends PaymentProvider {
  /** Settle an incoming invoice; `found: false` for an unknown hash. Settling twice is harmless. */
  markPaid(paymentHash: string): Promise<{ found: boolean; alreadyPaid: boolean }>;
}

const outgoingHash = (paymentRequest: string) => createHash('sha256').update(paymentRequest.trim()).digest('hex');

const INVOICE = /^lnbcrt([1-9]\d{0,9})u1stub([0-9a-z]{1,200})$/;

export function createStubPaymentProvider(db: Db): StubPaymentProvider {
  const handlers: Array<(hash: string) => Promise<void>> = [];

  return {
    name: 'stub',
    async createInvoice({ amountSats, memo }): Promise<Invoice> {
      if (!Number.isInteger(amountSats) || amountSats <= 0) throw new PaymentError('invalid_amount', 'invoice amount must be a positive integer');
      const preimage = randomBytes(32);
      const paymentHash = createHash('sha256').update(preimage).digest('hex');
      const paymentRequest = `lnbcrt${amountSats}u1stub${randomBytes(20).toString('hex')}`;
      await db.insert(stubInvoices).values({ paymentHash, paymentRequest, amountSats, memo, direction: 'incoming' });
      return { paymentHash, paymentRequest, amountSats };
    },

    async lookupInvoice(paymentHash) {
      const [row] = await db
        .select({ state: stubInvoices.state })
        .from(stubInvoices)
        .where(and(eq(stubInvoices.paymentHash, paymentHash), eq(stubInvoices.direction, 'incoming')));
      return row ?? null;
    },

    decodeInvoice(paymentRequest) {
      const m = INVOICE.exec(paymentRequest.trim());
      return m ? { amountSats: Number(m[1]) } : null;
    },

    async payInvoice(paymentRequest) {
      const decoded = this.decodeInvoice(paymentRequest);
      if (!decoded) throw new PaymentError('invalid_invoice', 'not an invoice this provider can pay');
      const paymentHash = outgoingHash(paymentRequest);
      const inserted = await db
        .insert(stubInvoices)
        .values({ paymentHash, paymentRequest: paymentRequest.trim(), amountSats: decoded.amountSats, direction: 'outgoing', state: 'paid', paidAt: new Date() })
        .onConflictDoNothing()
        .returning({ h: stubInvoices.paymentHash });
      if (inserted.length === 0) throw new PaymentError('already_paid', 'this invoice has already been paid');
      return { paymentHash, amountSats: decoded.amountSats };
    },

    async lookupPayment(paymentRequest) {
      const paymentHash = outgoingHash(paymentRequest);
      const [row] = await db
        .select({ paymentHash: stubInvoices.paymentHash })
        .from(stubInvoices)
        .where(and(eq(stubInvoices.paymentHash, paymentHash), eq(stubInvoices.direction, 'outgoing')));
      return row ?? null;
    },

    onSettled(handler) {
      handlers.push(handler);
    },

    async markPaid(paymentHash) {
      const [row] = await db
        .select()
        .from(stubInvoices)
        .where(and(eq(stubInvoices.paymentHash, paymentHash), eq(stubInvoices.direction, 'incoming')));
      if (!row) return { found: false, alreadyPaid: false };
      const updated = await db
        .update(stubInvoices)
        .set({ state: 'paid', paidAt: new Date() })
        .where(and(eq(stubInvoices.paymentHash, paymentHash), eq(stubInvoices.state, 'pending')))
        .returning({ h: stubInvoices.paymentHash });
      // Like a node's settlement stream, tell the handlers even on a repeat: they are idempotent,
      // and a handler that failed the first time gets another chance.
      for (const h of handlers) await h(paymentHash);
      return { found: true, alreadyPaid: updated.length === 0 };
    },
  };
}
