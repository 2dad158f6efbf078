import { z } from 'zod';

/** `POST /api/dev/stub/wallet/invoice`: what the route validates with and what the OpenAPI document describes. */
export const walletInvoiceBody = z.object({
  amount_sats: z
    .number({ error: 'amount_sats must be a whole number of sats' })
    .int('amount_sats must be a whole number of sats')
    .min(1, 'amount_sats must be at least 1')
    .max(100_000_000, 'amount_sats must be at most 100000000')
    .meta({ example: 42 }),
  memo: z
    .string({ error: 'memo must be a string' })
    .max(200, 'memo must be at most 200 characters')
    .meta({ description: 'The invoice\'s description; a `[stub:pay=fail]`, `[stub:pay=fail-once]` or `[stub:pay=timeout]` directive drives the payout that pays it.' })
    .optional(),
  expiry_s: z
    .number({ error: 'expiry_s must be a number of seconds' })
    .int('expiry_s must be whole seconds')
    .min(1, 'expiry_s must be at least 1')
    .max(7 * 86_400, 'expiry_s must be at most a week')
    .meta({ description: 'Seconds until it expires (default 3600).' })
    .optional(),
});
