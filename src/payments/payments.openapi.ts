import { z } from 'zod';
import { REFUND_ERRORS } from '../jobs/jobs.openapi.js';
import { InvoiceDetails, Payout } from '../openapi/api-objects.js';
import { paymentHashParam } from '../openapi/params.js';
import { BODY_ERRORS, apiErrors, json, jsonBody, ok, type Registry } from '../openapi/registry.js';
import { refundClaimBody } from './invoices.schemas.js';

const paymentHash = z.object({ paymentHash: paymentHashParam });

/** The invoice routes (`invoices.routes.ts`) and, when mounted, LNbits's webhook (`lnbits-webhook.routes.ts`). */
export function describePayments(r: Registry, opts: { lnbitsWebhook: boolean }): void {
  const tags = ['Invoices'];
  r.registerPath({
    method: 'get',
    path: '/api/invoices/{paymentHash}',
    operationId: 'getInvoice',
    tags,
    summary: 'What became of an invoice',
    description: 'Any invoice of this server, by its payment hash. A pending or expired one is first checked with the payment provider (at most once a second per invoice).',
    request: { params: paymentHash },
    responses: { 200: ok('The invoice.', json(InvoiceDetails)), ...apiErrors({ 404: ['not_found'] }) },
  });

  r.registerPath({
    method: 'post',
    path: '/api/invoices/{paymentHash}/refund',
    operationId: 'refundInvoice',
    tags,
    summary: 'Claim back a payment that could not be delivered',
    description:
      'A payment that arrived for something that could no longer be delivered (an invoice already closed as expired, a deleted job) is held as `refundable`. Whoever paid proves it with the preimage their wallet showed, and gives an invoice for the whole amount. Answers like a job refund.',
    request: {
      params: paymentHash,
      body: jsonBody(refundClaimBody, { claim: { summary: 'Preimage and an invoice of your wallet', value: { preimage: 'ab'.repeat(32), invoice: 'lnbcrt2u1p…' } } }),
    },
    responses: {
      200: ok('Paid.', json(Payout)),
      202: ok('Under way.', json(Payout)),
      ...apiErrors(BODY_ERRORS, REFUND_ERRORS, { 403: ['invalid_preimage'], 404: ['not_found'], 409: ['not_refundable'] }),
    },
  });

  if (opts.lnbitsWebhook) {
    r.registerPath({
      method: 'post',
      path: '/api/webhooks/lnbits',
      operationId: 'lnbitsWebhook',
      tags,
      summary: 'LNbits reports a paid invoice',
      description:
        'For LNbits (`LNBITS_WEBHOOK_URL`), mounted with `PAYMENT_PROVIDER=lnbits`. The call is unsigned, so it only makes the server ask LNbits about that payment hash; it answers the same whatever LNbits says. The body is LNbits’s Payment object, or (as LNbits sends it) a JSON string of one; any content type.',
      request: {
        body: jsonBody(z.object({ payment_hash: z.string().regex(/^[0-9a-fA-F]{64}$/) }).meta({ description: 'LNbits’s Payment object (only `payment_hash` is read).' })),
      },
      responses: { 200: ok('Noted.', json(z.object({ ok: z.literal(true) }))), ...apiErrors({ 400: ['invalid_request'], 413: ['payload_too_large'] }) },
    });
  }
}
