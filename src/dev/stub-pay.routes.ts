import { Router } from 'express';
import type { LightningNetwork } from '../providers/payments/bolt11.js';
import { encodeInvoice, newNodeKey, newPreimage } from '../providers/payments/bolt11.js';
import type { StubPaymentProvider } from '../providers/payments/stub.js';
import { conflict, notFound } from '../http/errors.js';
import { parse } from '../http/validate.js';
import { walletInvoiceBody } from './stub-pay.schemas.js';


/**
 * The stub Lightning world, for development (mounted only with the stub payment provider and outside production):
 *
 * - `POST /api/dev/stub/pay/:paymentHash` plays the payer of one of our invoices. The settlement (credit, job
 *   transition) is done when this answers. Like paying a real invoice, it reveals the preimage (the payer's proof
 *   of payment) to the call that paid, and an expired invoice cannot be paid (`409 invoice_expired`).
 * - `POST /api/dev/stub/wallet/invoice {amount_sats, memo?, expiry_s?}` plays the client's own wallet: a real,
 *   signed BOLT 11 invoice on our network, from a node key that is not the server's, so it can be given to
 *   `POST /api/jobs/:id/refund` (or an undeliverable payment's refund) and the stub node pays it. Directives in
 *   the memo drive the payout paths (`[stub:pay=fail]`, `[stub:pay=fail-once]`, `[stub:pay=timeout]`).
 */
export function stubPayRoutes(stub: StubPaymentProvider, network: LightningNetwork): Router {
  const r = Router();
  // One "client wallet" per process: its invoices are as real as any other node's.
  const walletKey = newNodeKey();

  r.post('/dev/stub/pay/:paymentHash', async (req, res) => {
    const hash = req.params.paymentHash;
    if (!/^[0-9a-f]{64}$/.test(hash)) throw notFound('invoice');
    const out = await stub.markPaid(hash);
    if (!out.found) throw notFound('invoice');
    if (out.expired) throw conflict('invoice_expired', 'the invoice has expired; it can no longer be paid');
    res.json(out.alreadyPaid ? { ok: true, alreadyPaid: true } : { ok: true, preimage: out.preimage });
  });

  r.post('/dev/stub/wallet/invoice', (req, res) => {
    const body = parse(walletInvoiceBody, req.body);
    const { paymentHash, preimage } = newPreimage();
    const paymentRequest = encodeInvoice({
      network,
      amountSats: body.amount_sats,
      paymentHash,
      description: body.memo ?? 'sluice dev wallet',
      expirySeconds: body.expiry_s ?? 3600,
      nodeKey: walletKey,
    });
    res.status(201).json({ paymentRequest, paymentHash, preimage, amountSats: body.amount_sats, network });
  });
  return r;
}
