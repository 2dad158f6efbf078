import { Router } from 'express';
import type { AppContext } from '../context.js';
import { AppError, conflict, notFound } from '../http/errors.js';
import { parse } from '../http/validate.js';
import { payoutAnswer, payoutView } from '../ledger/payouts.js';
import { invoiceView, type InvoiceRow } from '../ledger/settlement.js';
import { preimageMatches } from '../providers/payments/bolt11.js';
import { refundClaimBody } from './invoices.schemas.js';

const HASH = /^[0-9a-f]{64}$/;

/**
 * Any invoice of ours, by payment hash — what its payer holds. `GET` says what became of it; a payment that
 * could not be delivered (`refundable`) is claimed back with `POST …/refund`, proved by the preimage: the
 * secret a payer learns by paying, which nobody else has (the hash alone, printed in the invoice, proves
 * nothing).
 */
export function invoiceRoutes(ctx: AppContext): Router {
  const r = Router();

  async function find(hash: string | undefined): Promise<InvoiceRow> {
    const h = hash?.toLowerCase();
    const inv = h && HASH.test(h) ? await ctx.settlement.find(h) : undefined;
    if (!inv) throw notFound('invoice');
    return inv;
  }

  r.get('/invoices/:paymentHash', async (req, res) => {
    let inv = await find(req.params.paymentHash);
    if (inv.state === 'pending' || inv.state === 'expired') {
      // Ask the provider (at most once a second per invoice, however often this is called).
      await ctx.settlement.hint(inv.paymentHash);
      inv = await find(inv.paymentHash);
    }
    const payout = inv.state === 'refundable' ? await ctx.payouts.latest(inv.paymentHash) : undefined;
    res.json({
      ...invoiceView(inv),
      purpose: inv.purpose,
      createdAt: inv.createdAt.toISOString(),
      ...(inv.paidAt ? { paidAt: inv.paidAt.toISOString() } : {}),
      ...(inv.state === 'refundable' ? { refund: payout ? payoutView(payout) : { state: 'claimable', amountSats: inv.amountSats } } : {}),
    });
  });

  r.post('/invoices/:paymentHash/refund', async (req, res) => {
    const inv = await find(req.params.paymentHash);
    const body = parse(refundClaimBody, req.body);
    if (inv.state !== 'refundable') {
      const why = inv.state === 'paid' ? 'its payment was delivered' : inv.state === 'expired' ? 'it expired unpaid' : 'it is not paid';
      throw conflict('not_refundable', `this invoice is ${inv.state}: ${why}; only a payment that could not be delivered is refunded here`, { state: inv.state });
    }
    if (!preimageMatches(body.preimage, inv.paymentHash)) throw new AppError(403, 'invalid_preimage', 'that preimage is not the one this payment revealed');
    const payout = await ctx.payouts.start({ kind: 'undeliverable_refund', refundOf: inv.paymentHash, amountSats: inv.amountSats }, body.invoice);
    const answer = payoutAnswer(payout);
    res.status(answer.status).json(answer.body);
  });

  return r;
}
