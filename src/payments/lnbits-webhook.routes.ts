import express, { Router } from 'express';
import type { AppContext } from '../context.js';
import { badRequest } from '../http/errors.js';

/**
 * `POST /api/webhooks/lnbits`: LNbits calls it once when an invoice is paid (the `webhook` we give each
 * invoice). The call is unsigned and never retried, so anyone could send it: we take from it one thing — a
 * payment hash to ask LNbits about — and credit only what LNbits's own `GET /api/v1/payments/{hash}` confirms.
 * Asking is throttled per invoice, and only our open invoices are asked about, so the route cannot be used to
 * make us hammer LNbits either. It answers the same whatever the hash.
 *
 * LNbits (lnbits/core/services/notifications.py, `dispatch_webhook`) posts `json=payment.json()`: the body is a
 * JSON *string* holding the payment's JSON, so this route parses its own body (before the app's strict JSON
 * parser, which accepts only objects and arrays). The body holds the preimage: it is never logged.
 */
export function lnbitsWebhookRoutes(ctx: AppContext): Router {
  const r = Router();
  r.post('/webhooks/lnbits', express.text({ type: () => true, limit: '64kb' }), async (req, res) => {
    const hash = paymentHashOf(typeof req.body === 'string' ? req.body : '');
    if (!hash) throw badRequest('the body names no payment_hash');
    await ctx.settlement.hint(hash);
    res.json({ ok: true });
  });
  return r;
}

/** The payment hash of an LNbits webhook body: a Payment object, or (as LNbits sends it) a JSON string of one. */
export function paymentHashOf(text: string): string | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
    if (typeof value === 'string') value = JSON.parse(value);
  } catch {
    return null;
  }
  if (!value || typeof value !== 'object') return null;
  const hash = (value as { payment_hash?: unknown }).payment_hash;
  return typeof hash === 'string' && /^[0-9a-f]{64}$/i.test(hash) ? hash.toLowerCase() : null;
}
