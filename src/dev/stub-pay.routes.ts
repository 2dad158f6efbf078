import { Router } from 'express';
import type { StubPaymentProvider } from '../providers/payments/stub.js';
import { conflict, notFound } from '../http/errors.js';

/**
 * `POST /api/dev/stub/pay/:paymentHash`: play the payer of a stub invoice. Mounted only with the stub payment
 * provider and outside production. The settlement (credit, job transition) is done when this answers.
 * Like paying a real invoice, it reveals the preimage (the payer's proof of payment) to the call that paid,
 * and an expired invoice cannot be paid (`409 invoice_expired`).
 */
export function stubPayRoutes(stub: StubPaymentProvider): Router {
  const r = Router();
  r.post('/dev/stub/pay/:paymentHash', async (req, res) => {
    const hash = req.params.paymentHash;
    if (!/^[0-9a-f]{64}$/.test(hash)) throw notFound('invoice');
    const out = await stub.markPaid(hash);
    if (!out.found) throw notFound('invoice');
    if (out.expired) throw conflict('invoice_expired', 'the invoice has expired; it can no longer be paid');
    res.json(out.alreadyPaid ? { ok: true, alreadyPaid: true } : { ok: true, preimage: out.preimage });
  });
  return r;
}
