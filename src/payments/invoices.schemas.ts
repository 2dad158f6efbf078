import { z } from 'zod';
import { refundInvoice } from '../jobs/jobs.schemas.js';

/** `POST /api/invoices/:paymentHash/refund`: what the route validates with and what the OpenAPI document describes. */
export const refundClaimBody = z.object({
  preimage: z
    .string({ error: 'preimage must be a string' })
    .regex(/^[0-9a-fA-F]{64}$/, 'preimage must be 64 hex characters (32 bytes)')
    .meta({ description: 'The preimage the payment revealed to its payer: the proof that the payment is yours.' }),
  invoice: refundInvoice,
});
