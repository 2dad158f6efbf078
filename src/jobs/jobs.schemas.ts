import { z } from 'zod';
import { perConfig, requestText } from '../http/validate.js';

/** The request bodies of the job routes: what the routes validate with and what the OpenAPI document describes. */

export const jobCreateBody = perConfig((c) =>
  z.object({
    request: requestText(c.JOB_REQUEST_MAX_CHARS).meta({ description: 'What to ask the model: non-blank text.', example: 'Write a haiku about a sluice gate' }),
  }),
);

/** A BOLT 11 invoice a client gives us to be paid a refund into. */
export const refundInvoice = z
  .string({ error: 'invoice must be a string' })
  .min(1, 'invoice is required')
  .max(2000)
  .meta({ description: 'A BOLT 11 invoice on the server\'s network for exactly the amount owed, valid for at least 30 s more; it pays one refund, ever.' });

export const jobRefundBody = z.object({ invoice: refundInvoice });
