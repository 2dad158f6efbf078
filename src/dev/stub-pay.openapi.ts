import { z } from 'zod';
import { paymentHashParam } from '../openapi/params.js';
import { LIGHTNING_NETWORKS } from '../providers/payments/bolt11.js';
import { BODY_ERRORS, apiErrors, json, jsonBody, ok, type Registry } from '../openapi/registry.js';
import { walletInvoiceBody } from './stub-pay.schemas.js';

/** The stub Lightning world's routes (`stub-pay.routes.ts`): described only where they are mounted. */
export function describeStubPay(r: Registry): void {
  const tags = ['Development'];
  const mounted = 'Mounted only with the stub payment provider (`PAYMENT_PROVIDER=stub`, the default) and `NODE_ENV` not `production`.';
  r.registerPath({
    method: 'post',
    path: '/api/dev/stub/pay/{paymentHash}',
    operationId: 'stubPayInvoice',
    tags,
    summary: 'Pay a stub invoice (as its payer)',
    description: `Plays the payer of one of the server's invoices: the settlement (credit, job transition) is done when this answers. Like paying a real invoice, it reveals the preimage to the call that paid. ${mounted}`,
    request: { params: z.object({ paymentHash: paymentHashParam }) },
    responses: {
      200: ok(
        'Paid (or already paid: then nothing more is credited).',
        json(
          z.union([
            z.object({ ok: z.literal(true), preimage: z.string().meta({ description: 'The payer’s proof of payment (64 hex).' }) }),
            z.object({ ok: z.literal(true), alreadyPaid: z.literal(true) }),
          ]),
        ),
      ),
      ...apiErrors(BODY_ERRORS, { 404: ['not_found'], 409: ['invoice_expired'] }),
    },
  });

  r.registerPath({
    method: 'post',
    path: '/api/dev/stub/wallet/invoice',
    operationId: 'stubWalletInvoice',
    tags,
    summary: 'Make an invoice of “your” wallet',
    description: `Plays the client's own wallet: a real, signed BOLT 11 invoice on the server's network from a node key that is not the server's, ready to give to a refund (the stub node then pays it). ${mounted}`,
    request: { body: jsonBody(walletInvoiceBody, { refund: { summary: 'An invoice for a 42-sat refund', value: { amount_sats: 42, memo: 'my refund' } } }) },
    responses: {
      201: ok(
        'The invoice, and its preimage (the wallet’s secret).',
        json(
          z.object({
            paymentRequest: z.string(),
            paymentHash: z.string(),
            preimage: z.string(),
            amountSats: z.int(),
            network: z.enum(LIGHTNING_NETWORKS),
          }),
        ),
      ),
      ...apiErrors(BODY_ERRORS, { 400: ['invalid_request'] }),
    },
  });
}
