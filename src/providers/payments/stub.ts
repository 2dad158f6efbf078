import { and, eq, ne, sql } from 'drizzle-orm';
import type { Db } from '../../db/pool.js';
import { stubInvoices } from '../../db/schema.js';
import { encodeInvoice, newNodeKey, newPreimage, wholeSats, type DecodedInvoice, type LightningNetwork } from './bolt11.js';
import { PaymentError, type Invoice, type PaymentProvider, type PayResult } from './types.js';

/**
 * The default payment provider: plays a Lightning node whose books are a table (so invoices survive restarts).
 * Its invoices are real BOLT 11 invoices of `network` (`lnbcrt…` on regtest), signed by a node key of its
 * own, and expire like any node's. They are settled by `markPaid` — the payer's side, exposed as
 * `POST /api/dev/stub/pay/:paymentHash` outside production — which refuses an expired invoice and reveals the
 * preimage, as paying a real invoice does.
 *
 * It pays any valid invoice of its network (checking amount and expiry, as a node would), once per payment
 * hash. A directive in the invoice's description drives the failure paths of a payout:
 * `[stub:pay=fail]` (no route, every time), `[stub:pay=fail-once]` (no route, then success), and
 * `[stub:pay=timeout]` (the payment goes through but its answer is lost: the outcome is unknown until looked up).
 */
export interface StubPaymentProvider extends PaymentProvider {
  /**
   * Pay an incoming invoice as its payer. `preimage` is revealed to the call that paid; a repeat is harmless
   * (`alreadyPaid`). An expired invoice cannot be paid.
   */
  markPaid(paymentHash: string): Promise<{ found: false } | { found: true; expired: true } | { found: true; expired: false; alreadyPaid: boolean; preimage?: string }>;
}

const DIRECTIVE = /\[stub:pay=(fail|fail-once|timeout)\]/;

export function createStubPaymentProvider(db: Db, opts: { network: LightningNetwork }): StubPaymentProvider {
  const handlers: Array<(hash: string) => Promise<void>> = [];
  // The node's identity. A new one each start is fine: the stub knows its invoices by payment hash.
  const nodeKey = newNodeKey();

  const incoming = (hash: string) => and(eq(stubInvoices.paymentHash, hash), eq(stubInvoices.direction, 'incoming'));
  const outgoing = (hash: string) => and(eq(stubInvoices.paymentHash, hash), eq(stubInvoices.direction, 'outgoing'));

  async function outgoingResult(hash: string): Promise<PayResult | null> {
    const [row] = await db.select().from(stubInvoices).where(outgoing(hash));
    if (!row) return null;
    if (row.state === 'failed') return { state: 'failed', paymentHash: hash, reason: row.failure ?? 'the payment failed', retryable: true };
    return { state: row.state, paymentHash: hash };
  }

  return {
    name: 'stub',

    async createInvoice({ amountSats, memo, expirySeconds }): Promise<Invoice> {
      if (!Number.isInteger(amountSats) || amountSats <= 0) throw new PaymentError('invalid_amount', 'invoice amount must be a positive integer');
      const { preimage, paymentHash } = newPreimage();
      const timestamp = Math.floor(Date.now() / 1000);
      const paymentRequest = encodeInvoice({ network: opts.network, amountSats, paymentHash, description: memo, expirySeconds, nodeKey, timestamp });
      const expiresAt = new Date((timestamp + expirySeconds) * 1000);
      await db.insert(stubInvoices).values({ paymentHash, paymentRequest, amountSats, memo, direction: 'incoming', preimage, expiresAt });
      return { paymentHash, paymentRequest, amountSats, expiresAt };
    },

    async lookupInvoice(paymentHash) {
      const [row] = await db.select({ state: stubInvoices.state, expiresAt: stubInvoices.expiresAt }).from(stubInvoices).where(incoming(paymentHash));
      if (!row) return null;
      if (row.state === 'paid') return { state: 'paid' };
      // Like LND, an invoice unpaid at its expiry is cancelled: it can never be paid after.
      return { state: row.expiresAt && row.expiresAt.getTime() <= Date.now() ? 'cancelled' : 'pending' };
    },

    async payInvoice(inv: DecodedInvoice): Promise<PayResult> {
      const hash = inv.paymentHash;
      if (inv.network !== opts.network) throw new PaymentError('wrong_network', `the stub node is on ${opts.network}; the invoice is for ${inv.network}`);
      const amountSats = wholeSats(inv.amountMsat);
      if (amountSats === null || amountSats <= 0) throw new PaymentError('invalid_amount', 'the stub node pays only invoices for a whole number of sats');
      const [own] = await db.select({ h: stubInvoices.paymentHash }).from(stubInvoices).where(incoming(hash));
      if (own) throw new PaymentError('self_payment', 'the stub node does not pay its own invoices');
      const before = await outgoingResult(hash);
      if (before?.state === 'paid') return before;
      if (inv.expiresAt.getTime() <= Date.now()) throw new PaymentError('invoice_expired', 'the invoice has expired');

      const directive = DIRECTIVE.exec(inv.description)?.[1];
      if (directive === 'fail' || (directive === 'fail-once' && !before)) {
        const failure = 'no route to the payee (stub directive)';
        await db
          .insert(stubInvoices)
          .values({ paymentHash: hash, paymentRequest: inv.paymentRequest, amountSats, direction: 'outgoing', state: 'failed', failure })
          .onConflictDoUpdate({ target: stubInvoices.paymentHash, set: { state: 'failed', failure }, setWhere: ne(stubInvoices.state, 'paid') });
        throw new PaymentError('no_route', failure);
      }
      // One row per payment hash, moved to paid once: a racing second payment finds it paid and pays nothing.
      await db
        .insert(stubInvoices)
        .values({ paymentHash: hash, paymentRequest: inv.paymentRequest, amountSats, direction: 'outgoing', state: 'paid', paidAt: new Date() })
        .onConflictDoUpdate({ target: stubInvoices.paymentHash, set: { state: 'paid', failure: null, paidAt: sql`now()` }, setWhere: ne(stubInvoices.state, 'paid') });
      if (directive === 'timeout') throw new PaymentError('timeout', 'the stub node did not answer in time (stub directive); the payment may have gone through', 'unknown');
      return { state: 'paid', paymentHash: hash };
    },

    lookupPayment: outgoingResult,

    onSettled(handler) {
      handlers.push(handler);
    },

    async markPaid(paymentHash) {
      const [row] = await db.select().from(stubInvoices).where(incoming(paymentHash));
      if (!row) return { found: false };
      const updated = await db
        .update(stubInvoices)
        .set({ state: 'paid', paidAt: new Date() })
        .where(and(incoming(paymentHash), eq(stubInvoices.state, 'pending'), sql`(${stubInvoices.expiresAt} is null or ${stubInvoices.expiresAt} > now())`))
        .returning({ preimage: stubInvoices.preimage });
      if (updated.length === 0) {
        // Not moved: paid already (perhaps just now, by a racing call), or past its expiry.
        const [now] = await db.select({ state: stubInvoices.state }).from(stubInvoices).where(incoming(paymentHash));
        if (now?.state !== 'paid') return { found: true, expired: true };
      }
      // Like a node's settlement stream, tell the handlers even on a repeat: they are idempotent,
      // and a handler that failed the first time gets another chance.
      for (const h of handlers) await h(paymentHash);
      const paid = updated[0];
      return paid ? { found: true, expired: false, alreadyPaid: false, preimage: paid.preimage ?? undefined } : { found: true, expired: false, alreadyPaid: true };
    },
  };
}
