import { Router } from 'express';
import type { StubPaymentProvider } from '../providers/payments/stub.js';
import { notFound } from '../http/errors.js';

/**
 * `POST /api/dev/stub/pay/:paymentHash`: play the payer of a stub invoice. Mounted only with the stub payment
 * provider and outside production. The settlement (credit, job transition) is done when this answers.
 */
export function stubPayRoutes(stub: StubPaymentProvider): Router {
  const r = Router();
  r.post('/dev/stub/pay/:paymentHash', async (req, res) => {
    const hash = req.params.paymentHash;
    if (!/^[0-9a-f]{64}$/.test(hash)) throw notFound('invoice');
    const out = await stub.markPaid(hash);
    if (!out.found) throw notFound('invoice');
    res.json({ ok: true });
  });
  return r;
}
